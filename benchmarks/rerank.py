"""The cross-encoder reranker (model.cross_encoder) on two domains, off and on, side by side.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/rerank.py --threads 2                    # the reported numbers
    python benchmarks/rerank.py --reranker ~/.cache/assistant/reranker-runs/l4-lora32/cross_encoder

Sets:
- squad-test: the reader benchmark's held-out SQuAD articles (benchmarks/reader_rag.py --split test: the same
  folder of one file per paragraph, its answerable questions); the relevant passage is the question's paragraph.
  Neither the reader nor the reranker was trained on these articles.
- pydocs: benchmarks/folders/pydocs (technical docs) with the answerable questions of benchmarks/open_questions.jsonl;
  a passage is relevant when it is a chunk of a source file holding one of the question's concept strings (every
  chunk of the source file when none does).
For each set and retrieval mode (dense, hybrid), the top 20 hits are retrieved once; then
- off: that order;  N=10 / N=20: the top N rescored by the cross-encoder (`Retriever.search(rerank=N)`'s order);
- N=20 rrf: the cross-encoder's rank and the retriever's fused by reciprocal rank (k=60).
Metrics: nDCG@10 and recall@10 over passages (retrieval.evaluate), ms per query of the rerank call alone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_RERANKER = ROOT / "assistant" / "data" / "reranker"


def squad_set(limit: int) -> tuple[Path, list[tuple[str, set[str]]], str]:
    """(folder, [(question, relevant file paths)], unit) for the held-out SQuAD test articles."""
    from benchmarks.reader_rag import build_benchmark, write_folder
    from assistant.reader_training import reader_splits
    from assistant.training_data import load_squad
    from model.sources import cache_dir

    rows = load_squad()
    files, items = build_benchmark(rows, reader_splits(rows).test, 300, 100)
    folder = cache_dir() / "bench" / "squad-test"
    write_folder(folder, files)
    items = [i for i in items if i["gold_file"]]
    random.Random(0).shuffle(items)
    return folder, [(i["question"], {i["gold_file"]}) for i in items[:limit]], "path"


def pydocs_set() -> tuple[Path, list[tuple[str, dict]], str]:
    folder = ROOT / "benchmarks" / "folders" / "pydocs"
    out = []
    for line in (ROOT / "benchmarks" / "open_questions.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("folder", "").endswith("pydocs") and row.get("answerable") and row.get("sources"):
            out.append((row["question"], {"sources": row["sources"], "concepts": row.get("concepts", [])}))
    return folder, out, "chunk"


def relevant_chunks(retriever, spec: dict) -> set[int]:
    """Chunk ids of the source files that hold a concept string (all the file's chunks when none does)."""
    wanted: set[int] = set()
    for path in spec["sources"]:
        chunks = retriever.document_chunks(path)
        words = [w.lower() for alternatives in spec["concepts"] for w in alternatives]
        hits = {c.chunk_id for c in chunks if any(w in c.text.lower() for w in words)}
        wanted |= hits or {c.chunk_id for c in chunks}
    return wanted


def evaluate(retriever, reranker, questions, unit: str, modes=("dense", "hybrid"), depth: int = 20) -> dict:
    from retrieval.evaluate import ndcg_at, recall_at
    from retrieval.chunking import embedding_text

    variants = ("off", "N=10", "N=20", "N=20 rrf")
    results = {}
    for mode in modes:
        sums = {v: [0.0, 0.0] for v in variants}
        ms = {"search": 0.0, "N=10": 0.0, "N=20": 0.0}
        for question, spec in questions:
            if unit == "chunk":
                relevant = {str(c): 1 for c in relevant_chunks(retriever, spec)}
            else:
                relevant = {p: 1 for p in spec}
            tick = time.perf_counter()
            hits = retriever.search(question, k=depth, mode=mode)
            ms["search"] += 1000 * (time.perf_counter() - tick)
            texts = [embedding_text(h.heading, h.text) for h in hits]
            tick = time.perf_counter()
            reranker.score(question, texts[:10])
            ms["N=10"] += 1000 * (time.perf_counter() - tick)
            tick = time.perf_counter()
            scores = reranker.score(question, texts)
            ms["N=20"] += 1000 * (time.perf_counter() - tick)
            key = (lambda h: str(h.chunk_id)) if unit == "chunk" else (lambda h: h.path)
            order_20 = sorted(range(len(hits)), key=lambda i: -scores[i])
            order_10 = sorted(range(min(10, len(hits))), key=lambda i: -scores[i]) + list(range(10, len(hits)))
            ce_rank = {i: r for r, i in enumerate(order_20)}
            rrf = sorted(range(len(hits)), key=lambda i: -(1 / (61 + ce_rank[i]) + 1 / (61 + i)))
            for name, order in (("off", range(len(hits))), ("N=10", order_10), ("N=20", order_20),
                                ("N=20 rrf", rrf)):
                ranking = list(dict.fromkeys(key(hits[i]) for i in order))
                sums[name][0] += ndcg_at(ranking, relevant, 10)
                sums[name][1] += recall_at(ranking, relevant, 10)
        n = max(1, len(questions))
        results[mode] = {v: {"ndcg@10": s[0] / n, "recall@10": s[1] / n} for v, s in sums.items()}
        results[mode]["ms_per_query"] = {k: v / n for k, v in ms.items()}
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reranker", default=str(DEFAULT_RERANKER), help="cross-encoder folder")
    ap.add_argument("--squad-questions", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", default="squad-test,pydocs")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from model.cross_encoder import CrossEncoder
    from model.encoder import Encoder
    from retrieval.retriever import Retriever
    from retrieval.store import default_index_path
    from retrieval.sync import sync_folder

    encoder = Encoder.load()
    reranker = CrossEncoder.load(encoder, args.reranker)
    print(f"reranker {args.reranker}: {json.dumps(reranker.config.to_dict())}, runs in {reranker.run_dtype}, "
          f"{args.threads} threads", flush=True)
    reranker.score("warm up", ["a passage"] * 4)
    all_results = {"reranker": reranker.config.to_dict(), "threads": args.threads}
    for name in args.sets.split(","):
        folder, questions, unit = squad_set(args.squad_questions) if name == "squad-test" else pydocs_set()
        sync_folder(folder, None, encoder, progress=False)
        retriever = Retriever(default_index_path(folder), encoder, reranker=reranker)
        results = evaluate(retriever, reranker, questions, unit)
        all_results[name] = results
        print(f"\n{name}: {len(questions)} questions, relevance by {unit}")
        print(f"{'mode':<7} {'variant':<9} {'nDCG@10':>8} {'R@10':>7}")
        for mode, by_variant in results.items():
            for variant, m in by_variant.items():
                if variant != "ms_per_query":
                    print(f"{mode:<7} {variant:<9} {m['ndcg@10']:>8.4f} {m['recall@10']:>7.4f}")
            t = by_variant["ms_per_query"]
            print(f"{mode:<7} ms/query: search {t['search']:.0f}, rerank N=10 {t['N=10']:.0f}, "
                  f"N=20 {t['N=20']:.0f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(all_results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
