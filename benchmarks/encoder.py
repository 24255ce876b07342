"""Passages/s of our encoder vs sentence-transformers on the same chunks, side by side in one run.

    python benchmarks/encoder.py [--n 1000] [--words 200] [--batch-size 32] [--threads 2] [--modes float32,int8,bf16]
                                 [--squad 300]

Modes of ours: float32 (the reference), int8 (native int8 x int8 GEMMs, model/encoder_quant.py) and bf16 (torch
bfloat16 weights and activations; fast where the CPU has avx512_bf16 / AMX). For each non-float32 mode the min /
mean cosine to float32 on the passages is printed; --squad N also embeds N SQuAD questions and their paragraphs
with each mode and prints nDCG@10 / recall@10 (one relevant paragraph per question).

Both embed the same ~200-word passages (about 256 tokens: the model's window) with the same weights
(all-MiniLM-L6-v2), same batch size, float32 on CPU; the script checks the embeddings agree, then prints
passages/s for each and the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

WORDS = ("model attention token layer embedding vector query key value retrieval passage answer context window "
         "training data loss gradient weight bias norm head decoder encoder transformer sequence position rotary "
         "cache sample greedy beam temperature nucleus probability logit softmax index search document chunk "
         "file heading page score rank fusion lexical dense sparse cosine similarity neighbour").split()


def make_passages(n: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "." for _ in range(n)]


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--modes", default="float32,int8,bf16", help="our encoder's modes, comma-separated")
    parser.add_argument("--squad", type=int, default=0, help="SQuAD questions for the retrieval check (0 = skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sentence_transformers import SentenceTransformer

    from model.encoder import Encoder
    from model.sources import resolve_encoder

    passages = make_passages(args.n, args.words)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    encoders = {}
    for mode in modes:
        dtype = torch.bfloat16 if mode == "bf16" else torch.float32
        encoders[mode] = Encoder.load(None, device="cpu", dtype=dtype, quant="int8" if mode == "int8" else None)
    ours = encoders.get("float32") or Encoder.load(None, device="cpu", dtype=torch.float32)
    reference = SentenceTransformer(str(resolve_encoder(None)), device="cpu")
    tokens = ours.count_tokens(passages)
    print(f"{args.n} passages of {args.words} words: mean {np.mean(tokens):.0f} tokens "
          f"(truncated at {ours.max_length}); batch {args.batch_size}; {args.threads} threads; {cpu_name()}")
    if "int8" in encoders:
        from model import cpu_kernels

        print(f"int8 kernels: {cpu_kernels.encoder_status()} (mode in effect: {encoders['int8'].quant})")
    if hasattr(os, "getloadavg"):
        print(f"load average before: {os.getloadavg()}")

    # warm-up, and agreement check on a slice
    a = ours.embed(passages[:64], batch_size=args.batch_size)
    b = reference.encode(passages[:64], batch_size=args.batch_size, normalize_embeddings=True)
    print(f"agreement on 64 passages: min cosine {float((a * b).sum(1).min()):.6f}")
    for enc in encoders.values():
        enc.embed(passages[:64], batch_size=args.batch_size)

    times, vectors = {}, {}
    for mode, enc in encoders.items():
        def run(enc=enc, mode=mode):
            vectors[mode] = enc.embed(passages, batch_size=args.batch_size)
        times[f"ours {mode}"] = best_of(run, args.repeats)
    times["sentence-transformers"] = best_of(
        lambda: reference.encode(passages, batch_size=args.batch_size, normalize_embeddings=True), args.repeats)
    t_ref = times["sentence-transformers"]
    print(f"{'implementation':<24}{'seconds':>10}{'passages/s':>14}{'vs s-t':>9}")
    for name, t in times.items():
        print(f"{name:<24}{t:>10.2f}{args.n / t:>14.1f}{t_ref / t:>8.2f}x")
    if "ours float32" in times:
        t_ours = times["ours float32"]
        print(f"ratio ours / sentence-transformers: {t_ref / t_ours:.2f}x")
        for mode in vectors:
            if mode != "float32":
                cos = (vectors[mode] * vectors["float32"]).sum(1)
                print(f"{mode} vs float32 on the {args.n} passages: min cosine {cos.min():.6f}, mean {cos.mean():.6f}")
    if hasattr(os, "getloadavg"):
        print(f"load average after: {os.getloadavg()}")
    if args.squad:
        squad_retrieval(encoders, args.squad, args.batch_size)


def squad_retrieval(encoders: dict, n: int, batch_size: int) -> None:
    """nDCG@10 / recall@10 of N SQuAD v1.1 questions against their distinct paragraphs, per mode."""
    import gzip
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared/data/squad_v1.1_train/train-v1.1.flat.jsonl.gz"
    rows = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) >= n:
                break
    contexts = sorted({r["context"] for r in rows})
    index = {c: i for i, c in enumerate(contexts)}
    gold = np.array([index[r["context"]] for r in rows])
    print(f"SQuAD retrieval: {len(rows)} questions, {len(contexts)} paragraphs")
    for mode, enc in encoders.items():
        q = enc.embed([r["question"] for r in rows], batch_size=batch_size)
        p = enc.embed(contexts, batch_size=batch_size)
        top = np.argsort(-(q @ p.T), axis=1)[:, :10]
        hit = top == gold[:, None]
        recall = hit.any(1).mean()
        ndcg = (hit / np.log2(np.arange(2, 12))[None]).sum(1).mean()
        print(f"  {mode:<8} nDCG@10 {ndcg:.4f}  recall@10 {recall:.4f}")

if __name__ == "__main__":
    main()
