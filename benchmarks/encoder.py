"""Passages/s of our encoder vs sentence-transformers on the same chunks, side by side in one run.

    python benchmarks/encoder.py [--n 1000] [--words 200] [--batch-size 32] [--threads 2]

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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sentence_transformers import SentenceTransformer

    from model.encoder import Encoder
    from model.sources import resolve_encoder

    passages = make_passages(args.n, args.words)
    ours = Encoder.load(None, device="cpu", dtype=torch.float32)
    reference = SentenceTransformer(str(resolve_encoder(None)), device="cpu")
    tokens = ours.count_tokens(passages)
    print(f"{args.n} passages of {args.words} words: mean {np.mean(tokens):.0f} tokens "
          f"(truncated at {ours.max_length}); batch {args.batch_size}; {args.threads} threads; {cpu_name()}")

    # warm-up, and agreement check on a slice
    a = ours.embed(passages[:64], batch_size=args.batch_size)
    b = reference.encode(passages[:64], batch_size=args.batch_size, normalize_embeddings=True)
    print(f"agreement on 64 passages: min cosine {float((a * b).sum(1).min()):.6f}")

    t_ours = best_of(lambda: ours.embed(passages, batch_size=args.batch_size), args.repeats)
    t_ref = best_of(lambda: reference.encode(passages, batch_size=args.batch_size, normalize_embeddings=True),
                    args.repeats)
    print(f"{'implementation':<24}{'seconds':>10}{'passages/s':>14}")
    print(f"{'ours (model.Encoder)':<24}{t_ours:>10.2f}{args.n / t_ours:>14.1f}")
    print(f"{'sentence-transformers':<24}{t_ref:>10.2f}{args.n / t_ref:>14.1f}")
    print(f"ratio ours / sentence-transformers: {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
