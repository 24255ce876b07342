"""Embed real SQuAD v1.1 training paragraphs and questions with the project's encoder, once.

Writes float32 arrays to `<cache>/bench/squad-embeddings/` (reused by `benchmarks/scale.py`) and, with
`--fixture`, the test fixture `tests/data/squad_ivf_fixture.npz` (float16: the first `--fixture-passages`
unique paragraphs in file order and `--fixture-questions` questions about them; ~4 MB).

    OMP_NUM_THREADS=1 python benchmarks/embed_squad.py --passages 5000 --questions 2000 --fixture

Data: ../shared/data/squad_v1.1_train/train-v1.1.flat.jsonl.gz (one line per question; `context` is the
paragraph). Paragraphs are taken in file order, de-duplicated; questions are those of the chosen paragraphs,
one in every few, in file order.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "squad_v1.1_train" / "train-v1.1.flat.jsonl.gz"
FIXTURE = ROOT / "tests" / "data" / "squad_ivf_fixture.npz"


def out_dir() -> Path:
    from retrieval.store import cache_dir

    return cache_dir() / "bench" / "squad-embeddings"


def read_squad(path: Path = DATA) -> tuple[list[str], list[tuple[str, int]]]:
    """(unique paragraphs in file order, [(question, paragraph index)])."""
    paragraphs: list[str] = []
    where: dict[str, int] = {}
    questions: list[tuple[str, int]] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            ctx = row["context"]
            if ctx not in where:
                where[ctx] = len(paragraphs)
                paragraphs.append(ctx)
            questions.append((row["question"], where[ctx]))
    return paragraphs, questions


def embed_cached(name: str, texts: list[str], encoder, batch_size: int = 32) -> np.ndarray:
    """Embeddings of `texts`, computed in pieces and cached (a restart goes on where it stopped)."""
    folder = out_dir()
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{name}-{len(texts)}.npy"
    if final.exists():
        return np.load(final)
    parts, step = [], 500
    started = time.perf_counter()
    for i in range(0, len(texts), step):
        piece = folder / f".{name}-{i}-{i + step}.npy"
        if piece.exists():
            parts.append(np.load(piece))
            continue
        vectors = encoder.embed(texts[i:i + step], batch_size=batch_size).astype(np.float32)  # [<=step, dim]
        np.save(piece, vectors)
        parts.append(vectors)
        done = i + len(vectors)
        print(f"{name}: {done}/{len(texts)} in {time.perf_counter() - started:.0f} s", flush=True)
    vectors = np.concatenate(parts)
    np.save(final, vectors)
    for i in range(0, len(texts), step):
        (folder / f".{name}-{i}-{i + step}.npy").unlink(missing_ok=True)
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=5000)
    parser.add_argument("--questions", type=int, default=2000)
    parser.add_argument("--fixture", action="store_true", help="also write tests/data/squad_ivf_fixture.npz")
    parser.add_argument("--fixture-passages", type=int, default=5000)
    parser.add_argument("--fixture-questions", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--more", action="store_true",
                        help="also embed every remaining paragraph (after the first --passages), cached separately")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from model.encoder import Encoder

    paragraphs, questions = read_squad()
    paragraphs = paragraphs[:args.passages]
    about = [q for q in questions if q[1] < len(paragraphs)]
    stride = max(1, len(about) // args.questions)
    chosen = about[::stride][:args.questions]
    encoder = Encoder.load()
    q_vectors = embed_cached("questions", [q for q, _ in chosen], encoder)
    p_vectors = embed_cached("passages", paragraphs, encoder)
    np.save(out_dir() / f"question-paragraph-{len(chosen)}.npy", np.array([p for _, p in chosen], dtype=np.int64))
    if args.more:
        rest = read_squad()[0][args.passages:]
        embed_cached(f"passages-after-{args.passages}", rest, encoder)
    if args.fixture:
        n = min(args.fixture_passages, len(p_vectors))
        keep = [i for i, (_, p) in enumerate(chosen) if p < n]
        keep = keep[:: max(1, len(keep) // args.fixture_questions)][:args.fixture_questions]
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(FIXTURE, passages=p_vectors[:n].astype(np.float16),
                            questions=q_vectors[keep].astype(np.float16),
                            question_paragraph=np.array([chosen[i][1] for i in keep], dtype=np.int64),
                            encoder=np.array(encoder.name))
        print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
