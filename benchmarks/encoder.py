"""Passages/s of our encoder's modes vs sentence-transformers on the same passages, side by side in one run.

    python benchmarks/encoder.py [--n 256] [--text squad|random] [--batch-size 32] [--threads 2] [--rounds 3]
                                 [--group 32] [--modes float32,int16,int8,bf16] [--squad 300] [--cpu-time]
                                 [--json out.json]

Modes of ours: float32 (the reference), int16 (native int16 x int16 GEMMs with fused epilogues and attention,
model/encoder_quant.py; the fast mode on AVX2), int8 (native int8 GEMMs; fast on VNNI CPUs, cosine ~0.994) and
bf16 (torch bfloat16; fast where the CPU has avx512_bf16 / AMX). All embed the same passages with the same
weights (all-MiniLM-L6-v2) and batch size as sentence-transformers' `encode`, in one process.

Passages: `--text squad` (default) joins consecutive SQuAD paragraphs of one article until each fills the
model's 256-token window (real English prose); `--text random` draws ~200 words from a fixed vocabulary.
The machine is usually shared, so timings come from interleaved rounds: a round embeds the passages in groups
of `--group`, every implementation running each group back to back (rotating the order), and the best round
of each counts; the median over groups of the per-group time ratio is printed too (the figure load swings move
least). The load average is printed with every round. `--cpu-time` also reports process CPU seconds.

Agreement: for each mode, min / mean cosine to float32 on the timed passages, and with `--squad N` on N SQuAD
questions and their paragraphs, plus nDCG@10 / recall@10 of each mode's retrieval (one relevant paragraph per
question).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SQUAD = Path(__file__).resolve().parents[2] / "shared/data/squad_v1.1_train/train-v1.1.flat.jsonl.gz"
WORDS = ("model attention token layer embedding vector query key value retrieval passage answer context window "
         "training data loss gradient weight bias norm head decoder encoder transformer sequence position rotary "
         "cache sample greedy beam temperature nucleus probability logit softmax index search document chunk "
         "file heading page score rank fusion lexical dense sparse cosine similarity neighbour").split()


def make_passages(n: int, words: int, seed: int = 0) -> list[str]:
    """n passages of `words` words drawn from a fixed vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "." for _ in range(n)]


def squad_rows(limit: int | None = None) -> list[dict]:
    """SQuAD v1.1 train rows (question, context, title, ...) in file order."""
    rows = []
    with gzip.open(SQUAD, "rt") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def squad_passages(n: int, count_tokens, window: int) -> list[str]:
    """n passages of real text, each consecutive paragraphs of one SQuAD article joined until >= window tokens."""
    paragraphs: list[tuple[str, str]] = []
    seen = set()
    for row in squad_rows():
        if row["context"] not in seen:
            seen.add(row["context"])
            paragraphs.append((row.get("title", ""), row["context"]))
        if len(paragraphs) >= 40 * n:
            break
    passages, current, title, size = [], [], None, 0
    for (t, text), tokens in zip(paragraphs, count_tokens([p for _, p in paragraphs])):
        if t != title:
            current, title, size = [], t, 0
        current.append(text)
        size += tokens
        if size >= window:
            passages.append(" ".join(current))
            current, size = [], 0
            if len(passages) == n:
                break
    if len(passages) < n:
        raise SystemExit(f"only {len(passages)} SQuAD passages of {window} tokens; ask for fewer (--n)")
    return passages


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def cosines(vectors: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """(min, mean) cosine of each mode's vectors to float32's."""
    ref = vectors["float32"]
    return {mode: (float((v * ref).sum(1).min()), float((v * ref).sum(1).mean()))
            for mode, v in vectors.items() if mode != "float32"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="passages per round")
    parser.add_argument("--text", choices=("squad", "random"), default="squad")
    parser.add_argument("--words", type=int, default=200, help="words per passage with --text random")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the best of each counts)")
    parser.add_argument("--group", type=int, default=32, help="passages per interleaved group (see below)")
    parser.add_argument("--modes", default="float32,int16", help="our encoder's modes, comma-separated "
                        "(float32 is always included: the reference)")
    parser.add_argument("--no-st", action="store_true", help="skip sentence-transformers")
    parser.add_argument("--squad", type=int, default=0, help="SQuAD questions for the retrieval check (0 = skip)")
    parser.add_argument("--cpu-time", action="store_true", help="also report process CPU seconds per round")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from model import cpu_kernels
    from model.encoder import Encoder
    from model.sources import resolve_encoder

    modes = ["float32"] + [m.strip() for m in args.modes.split(",") if m.strip() and m.strip() != "float32"]
    encoders = {}
    for mode in modes:
        if mode == "int8":
            encoders[mode] = Encoder.load(None, device="cpu", dtype=torch.float32, quant="int8")
        else:
            encoders[mode] = Encoder.load(None, device="cpu", dtype=torch.float32,
                                          embed_dtype={"bf16": "bfloat16"}.get(mode, mode))
    ours = encoders["float32"]
    if args.text == "squad":
        passages = squad_passages(args.n, ours.count_tokens, ours.max_length)
    else:
        passages = make_passages(args.n, args.words)
    tokens = [min(t, ours.max_length - 2) + 2 for t in ours.count_tokens(passages)]
    print(f"{args.n} {args.text} passages: mean {np.mean(tokens):.0f} tokens (window {ours.max_length}); "
          f"batch {args.batch_size}; {args.threads} threads; {cpu_name()}; torch {torch.__version__}")
    print(f"int16 kernels: {cpu_kernels.encoder16_status()}")
    if "int8" in encoders:
        print(f"int8 kernels: {cpu_kernels.encoder_status()} (mode in effect: {encoders['int8'].quant})")
    for mode, enc in encoders.items():
        print(f"  {mode}: embeds with {enc.embed_mode}")

    runners = {f"ours {mode}": (lambda texts, enc=enc: enc.embed(texts, batch_size=args.batch_size))
               for mode, enc in encoders.items()}
    if not args.no_st:
        from sentence_transformers import SentenceTransformer

        reference = SentenceTransformer(str(resolve_encoder(None)), device="cpu")
        runners["sentence-transformers"] = lambda texts: reference.encode(texts, batch_size=args.batch_size,
                                                                          normalize_embeddings=True)
    for run in runners.values():  # warm-up: builds the int16 copy, the kernels, torch's caches
        run(passages[: args.batch_size])
    if not args.no_st:
        a = ours.embed(passages[:64], batch_size=args.batch_size)
        b = reference.encode(passages[:64], batch_size=args.batch_size, normalize_embeddings=True)
        print(f"float32 vs sentence-transformers on 64 passages: min cosine {float((a * b).sum(1).min()):.6f}")

    # Each round embeds the passages group by group (`--group` passages); within a group every implementation
    # runs back to back, in an order that rotates, so a change of load hits all of them alike. A round's time is
    # the sum over its groups; the per-group time ratios give a median that load swings barely move.
    groups = [passages[i: i + args.group] for i in range(0, len(passages), args.group)]
    names = list(runners)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    group_times: dict[str, list[float]] = {name: [] for name in names}
    vectors: dict[str, list[np.ndarray]] = {}
    for r in range(args.rounds):
        totals = {name: [0.0, 0.0] for name in names}
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for g, group in enumerate(groups):
            shift = (r * len(groups) + g) % len(names)
            for name in names[shift:] + names[:shift]:
                t0, c0 = time.perf_counter(), time.process_time()
                parts[name].append(runners[name](group))
                group_times[name].append(time.perf_counter() - t0)
                totals[name][0] += group_times[name][-1]
                totals[name][1] += time.process_time() - c0
        for name in names:
            wall[name].append(totals[name][0])
            cpu[name].append(totals[name][1])
            if name.startswith("ours "):
                vectors[name[5:]] = np.concatenate(parts[name])
        print(f"round {r + 1}: " + ", ".join(f"{name} {args.n / wall[name][-1]:.1f}/s" for name in names)
              + f"  (load average {load_average()})", flush=True)

    best = {name: min(t) for name, t in wall.items()}
    t_ref = best.get("sentence-transformers")
    t_f32 = best["ours float32"]
    print(f"\n{'implementation':<24}{'best s':>9}{'passages/s':>12}{'vs s-t':>9}{'vs float32':>12}"
          + (f"{'CPU s':>9}" if args.cpu_time else ""))
    for name, t in best.items():
        vs_st = f"{t_ref / t:>8.2f}x" if t_ref else f"{'':>9}"
        row = f"{name:<24}{t:>9.2f}{args.n / t:>12.1f}{vs_st}{t_f32 / t:>11.2f}x"
        if args.cpu_time:
            row += f"{min(cpu[name]):>9.2f}"
        print(row)
    medians = {}
    for base in ("sentence-transformers", "ours float32"):
        if base not in group_times:
            continue
        for name in names:
            if name != base:
                ratios = np.array(group_times[base]) / np.array(group_times[name])
                medians[f"{name} vs {base}"] = float(np.median(ratios))
                print(f"{name} vs {base}: median per-group speed ratio {np.median(ratios):.2f}x "
                      f"(quartiles {np.percentile(ratios, 25):.2f}-{np.percentile(ratios, 75):.2f}, "
                      f"{len(ratios)} groups)")
    agreement = cosines(vectors)
    for mode, (lo, mean) in agreement.items():
        print(f"{mode} vs float32 on the {args.n} passages: min cosine {lo:.6f}, mean {mean:.6f}")
    print(f"load average after: {load_average()}")
    results = {"passages": args.n, "text": args.text, "mean_tokens": float(np.mean(tokens)),
               "batch_size": args.batch_size, "threads": args.threads, "cpu": cpu_name(),
               "best_seconds": best, "passages_per_s": {k: args.n / v for k, v in best.items()},
               "cosine_to_float32": agreement, "wall_rounds": wall, "cpu_rounds": cpu,
               "median_group_ratios": medians, "group": args.group}
    if args.squad:
        results["squad"] = squad_retrieval(encoders, args.squad, args.batch_size)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def squad_retrieval(encoders: dict, n: int, batch_size: int) -> dict:
    """nDCG@10 / recall@10 of N SQuAD v1.1 questions against their distinct paragraphs, per mode, and each mode's
    cosine to float32 on the questions and paragraphs."""
    rows = squad_rows(n)
    contexts = sorted({r["context"] for r in rows})
    index = {c: i for i, c in enumerate(contexts)}
    gold = np.array([index[r["context"]] for r in rows])
    print(f"SQuAD retrieval: {len(rows)} questions, {len(contexts)} paragraphs")
    out, q_vectors, p_vectors = {}, {}, {}
    for mode, enc in encoders.items():
        q = q_vectors[mode] = enc.embed([r["question"] for r in rows], batch_size=batch_size)
        p = p_vectors[mode] = enc.embed(contexts, batch_size=batch_size)
        top = np.argsort(-(q @ p.T), axis=1)[:, :10]
        hit = top == gold[:, None]
        recall = float(hit.any(1).mean())
        ndcg = float((hit / np.log2(np.arange(2, 12))[None]).sum(1).mean())
        out[mode] = {"ndcg@10": ndcg, "recall@10": recall}
        print(f"  {mode:<8} nDCG@10 {ndcg:.4f}  recall@10 {recall:.4f}")
    for mode, (lo, mean) in cosines({m: np.concatenate([q_vectors[m], p_vectors[m]]) for m in encoders}).items():
        out[mode]["min_cosine"], out[mode]["mean_cosine"] = lo, mean
        print(f"  {mode} vs float32 on the questions and paragraphs: min cosine {lo:.6f}, mean {mean:.6f}")
    return out


if __name__ == "__main__":
    main()
