"""How hybrid search should fuse dense and BM25 results: reciprocal-rank fusion vs a convex mix of scores.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/fusion.py --threads 2            # the reported run
    python benchmarks/fusion.py --sets squad-dev --weights 0.6,0.7,0.8

For every question of each set, the candidates hybrid search starts from (the dense top 50 and the BM25 top 50,
as `Retriever.search` takes them for k <= 12) are collected once with both scores of each (the cosine from the
chunk's stored vector; BM25 over the index, 0 when no query term occurs), then ranked by each fusion:
- rrf: 1/(60 + dense rank) + 1/(60 + BM25 rank), what hybrid search did before 2026-12-04;
- z w: w * z(cosine) + (1 - w) * z(BM25), each standardised over the candidates (`retrieval.retriever.
  convex_fusion`, today's default with w = DENSE_WEIGHT);
- minmax w: the same with each score scaled to [0, 1] over the candidates.
The weight is chosen on the development sets (`--choose-on`): **squad-dev** (300 questions of the SQuAD dev
articles: neither a test set nor the reader's training articles) and **techdocs-dev** (other standard-library
modules' docs and questions written for them: benchmarks/make_techdocs.py --dev), the best mean nDCG@10 over
the two (within 0.001 of the best: the one nearest 0.7); the other sets (benchmarks/rerank.py's: held-out SQuAD
test articles, technical docs, ML notes, PDF reports, real documents) only report it. nDCG@10 per set; the
change against rrf with a 95% paired bootstrap interval for the shipped weight.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def candidates(retriever, question: str, depth: int = 50) -> list[dict]:
    """The union of the dense and BM25 top `depth`, each with its cosine, BM25 and rank in each list, scored as
    hybrid search scores them (`retrieval.retriever.score_candidates`)."""
    from retrieval.retriever import score_candidates
    from retrieval.store import lexical_tokens

    parts = retriever.store.parts()
    query_vec = retriever.embed_query(question)
    dense = parts.vectors.search(query_vec, depth, None)
    tokens = lexical_tokens([question])[0]
    lexical, score_of = parts.lexical.search(tokens, depth, None) if tokens else ([], None)
    rows, ids, cosines, bm25 = score_candidates(retriever.store, query_vec, dense, lexical, score_of)
    dense_rank = {c: i for i, (c, _) in enumerate(dense)}
    lexical_rank = {c: i for i, (c, _) in enumerate(lexical)}
    return [{"chunk": cid, "path": rows[cid].paths[0], "dense": cos, "lexical": lex,
             "dense_rank": dense_rank.get(cid), "lexical_rank": lexical_rank.get(cid)}
            for cid, cos, lex in zip(ids, cosines, bm25)]


def rank(cands: list[dict], fusion: str, weight: float = 0.0) -> list[dict]:
    """The candidates in the order `fusion` ("rrf", "z", "minmax") puts them."""
    import numpy as np

    from retrieval.retriever import RRF_K, convex_fusion

    if fusion == "rrf":
        def score(c: dict) -> float:
            return sum(1.0 / (RRF_K + r + 1) for r in (c["dense_rank"], c["lexical_rank"]) if r is not None)

        return sorted(cands, key=lambda c: (-score(c), c["chunk"]))
    if fusion == "z":
        order = convex_fusion([c["chunk"] for c in cands], [c["dense"] for c in cands],
                              [c["lexical"] for c in cands], weight)
        by_id = {c["chunk"]: c for c in cands}
        return [by_id[cid] for cid, _ in order]

    def scaled(values: list[float]) -> np.ndarray:
        x = np.asarray(values, dtype=np.float64)
        span = x.max() - x.min() if len(x) else 0.0
        return (x - x.min()) / span if span > 1e-12 else np.zeros_like(x)

    mixed = weight * scaled([c["dense"] for c in cands]) + (1 - weight) * scaled([c["lexical"] for c in cands])
    return [cands[i] for i in sorted(range(len(cands)), key=lambda i: (-mixed[i], cands[i]["chunk"]))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets",
                    default="squad-dev,techdocs-dev,squad-test,techdocs,pydocs,pydocs-all,corpus,reports,documents")
    ap.add_argument("--choose-on", default="squad-dev,techdocs-dev",
                    help="development sets: the z-score weight with the best mean nDCG@10 over them is chosen")
    ap.add_argument("--weights", default="0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from benchmarks.rerank import folder_set, paired_interval, relevant_chunks, squad_set
    from model.encoder import Encoder
    from retrieval.evaluate import ndcg_at
    from retrieval.retriever import DENSE_WEIGHT, Retriever
    from retrieval.store import default_index_path
    from retrieval.sync import sync_folder

    encoder = Encoder.load()
    weights = [float(w) for w in args.weights.split(",")]
    fusions = [("rrf", 0.0)] + [(f, w) for f in ("z", "minmax") for w in weights]
    table: dict[str, dict[tuple[str, float], list[float]]] = {}
    for name in args.sets.split(","):
        tick = time.perf_counter()
        if name.startswith("squad-"):
            folder, questions, unit = squad_set(300, name.split("-", 1)[1])
        else:
            folder, questions, unit = folder_set(name)
        sync_folder(folder, None, encoder, progress=False)
        retriever = Retriever(default_index_path(folder), encoder)
        per: dict[tuple[str, float], list[float]] = {f: [] for f in fusions}
        for question, spec in questions:
            relevant = ({str(c): 1 for c in relevant_chunks(retriever, spec)} if unit == "chunk"
                        else {p: 1 for p in spec})
            cands = candidates(retriever, question)
            for fusion in fusions:
                ranked = rank(cands, *fusion)
                keys = [str(c["chunk"]) if unit == "chunk" else c["path"] for c in ranked]
                per[fusion].append(ndcg_at(list(dict.fromkeys(keys)), relevant, 10))
        retriever.store.close()
        table[name] = per
        print(f"{name}: {len(questions)} questions ({time.perf_counter() - tick:.0f} s)", flush=True)
    names = list(table)
    print(f"\nnDCG@10 (rrf) and its change by each fusion\n{'fusion':<12}" + "".join(f"{n:>12}" for n in names))
    for fusion in fusions:
        cells = []
        for n in names:
            mean = sum(table[n][fusion]) / max(1, len(table[n][fusion]))
            base = sum(table[n][("rrf", 0.0)]) / max(1, len(table[n][("rrf", 0.0)]))
            cells.append(f"{mean:>12.4f}" if fusion[0] == "rrf" else f"{mean - base:>+12.4f}")
        label = "rrf" if fusion[0] == "rrf" else f"{fusion[0]} {fusion[1]:.2f}"
        print(f"{label:<12}" + "".join(cells))
    dev = [n for n in args.choose_on.split(",") if n in table]
    if dev:
        means = {w: sum(sum(table[n][("z", w)]) / max(1, len(table[n][("z", w)])) for n in dev) / len(dev)
                 for w in weights}
        best = max(means.values())
        # within 0.001 of the best counts as a tie, settled toward the weight shipped before (0.7)
        chosen = min((w for w in weights if means[w] >= best - 0.001), key=lambda w: abs(w - 0.7))
        print(f"\nmean nDCG@10 over {', '.join(dev)} by z-score weight: "
              + ", ".join(f"{w:.2f} {means[w]:.4f}" for w in weights) + f"\nchosen: {chosen:.2f}")
    shipped = ("z", DENSE_WEIGHT)
    if shipped in table[names[0]]:
        print(f"\nshipped (z, dense weight {DENSE_WEIGHT}) vs rrf, 95% paired bootstrap:")
        for n in names:
            low, high = paired_interval(table[n][shipped], table[n][("rrf", 0.0)])
            change = (sum(table[n][shipped]) - sum(table[n][("rrf", 0.0)])) / max(1, len(table[n][shipped]))
            print(f"  {n:<12} {change:+.4f} [{low:+.3f}..{high:+.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
