"""The cross-encoder reranker (model.cross_encoder) on several domains, off and on, side by side.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/rerank.py --threads 2                    # the reported numbers
    python benchmarks/rerank.py --reranker ~/.cache/assistant/reranker-runs/l2-own2/cross_encoder
    python benchmarks/rerank.py --speed --threads 2          # ms per query of 20 pairs per config (untrained)

Sets:
- squad-test: the reader benchmark's held-out SQuAD articles (benchmarks/reader_rag.py --split test: the same
  folder of one file per paragraph, its answerable questions); the relevant passage is the question's paragraph.
  Neither the reader nor the reranker was trained on these articles.
- techdocs (47 standard-library modules' docstrings, 108 questions written for it: benchmarks/make_techdocs.py),
  pydocs (technical docs), corpus (the bundled ML notes), reports (PDF reports, a CSV, a spec sheet), documents
  (real PDFs: manuals, papers, a spreadsheet, slides): each folder with the answerable questions written for it
  (benchmarks/open_questions.jsonl, questions.jsonl, documents_questions.jsonl, techdocs_questions.jsonl); a passage
  is relevant when it is a chunk of a source file holding one of the question's concept strings (every chunk of
  the source file when none does).
For each set and retrieval mode (dense; hybrid-rrf, hybrid search's reciprocal-rank fusion until 2026-12-04; hybrid,
its convex score fusion since), the top 20 hits are retrieved once; then
- off: that order;  N=10 / N=20: the top N rescored by the cross-encoder (`Retriever.search(rerank=N)`'s order);
- N=10 rrf / N=20 rrf: the top N ordered by the reciprocal-rank fusion (k=60) of the cross-encoder's rank and the
  retriever's.
Metrics: nDCG@10 and recall@10 over passages (retrieval.evaluate); the rerank call's ms per query (hybrid hits),
with the load average (the machine is shared: compare within one run).
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


def squad_set(limit: int, split: str = "test") -> tuple[Path, list[tuple[str, set[str]]], str]:
    """(folder, [(question, relevant file paths)], unit) for the held-out SQuAD test (or dev) articles."""
    from benchmarks.reader_rag import build_benchmark, write_folder
    from assistant.reader_training import reader_splits
    from assistant.training_data import load_squad
    from model.sources import cache_dir

    rows = load_squad()
    files, items = build_benchmark(rows, getattr(reader_splits(rows), split), 300, 100)
    folder = cache_dir() / "bench" / f"squad-{split}"
    write_folder(folder, files)
    items = [i for i in items if i["gold_file"]]
    random.Random(0).shuffle(items)
    return folder, [(i["question"], {i["gold_file"]}) for i in items[:limit]], "path"


FOLDER_SETS = {  # name -> (folder, question files holding its questions)
    "pydocs": ("benchmarks/folders/pydocs", ("open_questions.jsonl",)),
    "pydocs-all": ("benchmarks/folders/pydocs", ("open_questions.jsonl", "pydocs_questions.jsonl")),  # + 40 how-to
    "corpus": ("corpus", ("open_questions.jsonl", "questions.jsonl")),
    "reports": ("benchmarks/folders/reports", ("open_questions.jsonl",)),
    "documents": ("benchmarks/folders/documents", ("documents_questions.jsonl",)),
    "techdocs": ("benchmarks/folders/techdocs", ("techdocs_questions.jsonl",)),
    # a development set (other standard-library modules): for choosing parameters, never for reporting them
    "techdocs-dev": ("benchmarks/folders/techdocs-dev", ("techdocs_dev_questions.jsonl",)),
}


def folder_set(name: str) -> tuple[Path, list[tuple[str, dict]], str]:
    """(folder, [(question, {"sources", "concepts"})], "chunk") for one of FOLDER_SETS: the answerable questions
    written for that folder (open questions' `concepts`, the corpus set's `keywords`: groups of alternatives)."""
    folder_name, files = FOLDER_SETS[name]
    out, seen = [], set()
    for file in files:
        for line in (ROOT / "benchmarks" / file).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            folder = row.get("folder", "corpus")  # questions.jsonl is the corpus set and names no folder
            concepts = row.get("concepts") or row.get("keywords") or []
            if (folder.rstrip("/") != folder_name or row.get("unanswerable") or row.get("answerable") is False
                    or not row.get("sources") or row["question"] in seen):
                continue
            seen.add(row["question"])
            out.append((row["question"], {"sources": row["sources"], "concepts": concepts}))
    return ROOT / folder_name, out, "chunk"


def relevant_chunks(retriever, spec: dict) -> set[int]:
    """Chunk ids of the source files that hold a concept string (all the file's chunks when none does); case and
    runs of whitespace do not matter (a concept may wrap across lines in the file)."""
    from benchmarks.make_folders import _norm as norm  # the normalisation the question files are checked with

    wanted: set[int] = set()
    for path in spec["sources"]:
        chunks = retriever.document_chunks(path)
        words = [norm(w) for alternatives in spec["concepts"] for w in alternatives]
        hits = {c.chunk_id for c in chunks if any(w in norm(c.text) for w in words)}
        wanted |= hits or {c.chunk_id for c in chunks}
    return wanted


class ReaderScorer:
    """The evidence reader (model.reader) as a reranker, for comparison: a passage's score is its best answer
    span's logit minus its window's no-answer logit (the pipeline's evidence score); no span = -1e9."""

    def __init__(self, reader) -> None:
        self.reader = reader

    def score(self, question: str, passages: list[str]) -> list[float]:
        best = [-1e9] * len(passages)
        for span in self.reader.read(question, passages):
            best[span.passage] = max(best[span.passage], float(span.score))
        return best


VARIANTS = ("off", "N=10", "N=20", "N=10 rrf", "N=20 rrf")


def orders(n_hits: int, scores: list[float]) -> dict[str, list[int]]:
    """Each variant's order of the retriever's top hits (indices into them), given the cross-encoder's scores
    of all of them: off = the retriever's; N=n = the top n by score, then the rest in the retriever's order
    (`Retriever.search(rerank=n, rerank_mode="replace")`); N=n rrf = the top n by reciprocal-rank fusion (k=60) of
    the cross-encoder's rank and the retriever's, then the rest (`rerank=n`, the default mode)."""
    from retrieval.retriever import rerank_order

    out = {"off": list(range(n_hits))}
    for n in (10, 20):
        top = min(n, n_hits)
        out[f"N={n}"] = rerank_order(scores[:top], "replace") + list(range(top, n_hits))
        out[f"N={n} rrf"] = rerank_order(scores[:top], "rrf") + list(range(top, n_hits))
    return out


def summarize(rows: list[tuple[float, float]]) -> dict:
    """Mean nDCG@10 / recall@10 of per-question (nDCG@10, recall@10) rows, and the nDCG@10 of each question (for
    `paired_interval`)."""
    n = max(1, len(rows))
    return {"ndcg@10": sum(r[0] for r in rows) / n, "recall@10": sum(r[1] for r in rows) / n,
            "per_question_ndcg@10": [round(r[0], 6) for r in rows]}


def paired_interval(after: list[float], before: list[float], resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(after - before) by a paired bootstrap over the questions (how far a change on a
    small set can be noise: on 25 questions one question moving one rank is about 0.01)."""
    import numpy as np

    diffs = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    if len(diffs) == 0:
        return 0.0, 0.0
    draws = np.random.default_rng(seed).integers(0, len(diffs), size=(resamples, len(diffs)))
    means = diffs[draws].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


MODES = ("dense", "hybrid-rrf", "hybrid")  # hybrid-rrf: hybrid search's reciprocal-rank fusion (before 2026-12-04)


def search_options(mode: str) -> dict:
    """Retriever.search keywords for a benchmark mode name ("hybrid-rrf" = hybrid with fusion="rrf")."""
    return {"mode": "hybrid", "fusion": "rrf"} if mode == "hybrid-rrf" else {"mode": mode}


def evaluate(retriever, reranker, questions, unit: str, modes=MODES, depth: int = 20,
             timed: int = 40) -> dict:
    """nDCG@10 / recall@10 per mode and variant (see `orders`), and the cross-encoder's ms per query for N=10
    and N=20 (hybrid hits of the first `timed` questions, scored afresh; quality reuses one score per
    (question, passage))."""
    from retrieval.chunking import embedding_text
    from retrieval.evaluate import ndcg_at, recall_at

    results = {}
    cache: dict[tuple[str, int], float] = {}
    for mode in modes:
        per: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}  # (nDCG@10, recall@10) per question
        search_ms = 0.0
        for question, spec in questions:
            if unit == "chunk":
                relevant = {str(c): 1 for c in relevant_chunks(retriever, spec)}
            else:
                relevant = {p: 1 for p in spec}
            tick = time.perf_counter()
            hits = retriever.search(question, k=depth, **search_options(mode))
            search_ms += 1000 * (time.perf_counter() - tick)
            todo = [h for h in hits if (question, h.chunk_id) not in cache]
            if todo:
                values = reranker.score(question, [embedding_text(h.heading, h.text) for h in todo])
                cache.update({(question, h.chunk_id): v for h, v in zip(todo, values)})
            scores = [cache[(question, h.chunk_id)] for h in hits]
            key = (lambda h: str(h.chunk_id)) if unit == "chunk" else (lambda h: h.path)
            for name, order in orders(len(hits), scores).items():
                ranking = list(dict.fromkeys(key(hits[i]) for i in order))
                per[name].append((ndcg_at(ranking, relevant, 10), recall_at(ranking, relevant, 10)))
        n = max(1, len(questions))
        results[mode] = {v: summarize(rows) for v, rows in per.items()}
        results[mode]["search_ms"] = search_ms / n
    ms = {"N=10": [], "N=20": []}
    for question, _ in questions[:timed]:
        hits = retriever.search(question, k=depth, mode="hybrid")
        texts = [embedding_text(h.heading, h.text) for h in hits]
        for n in (10, 20):
            tick = time.perf_counter()
            reranker.score(question, texts[:n])
            ms[f"N={n}"].append(1000 * (time.perf_counter() - tick))
    import statistics

    results["rerank_ms"] = {k: {"median": statistics.median(v), "mean": statistics.mean(v),
                                "p90": sorted(v)[int(0.9 * len(v))]} for k, v in ms.items() if v}
    results["rerank_ms"]["questions"] = min(timed, len(questions))
    results["load_average"] = os.getloadavg()
    return results


def speed(threads: int, configs: str, rounds: int, n_pairs: int = 20, n_questions: int = 12) -> dict:
    """Milliseconds to score `n_pairs` (question, passage) pairs per config "layers/max_length", in float32.

    Pairs are real: held-out SQuAD test questions, each with `n_pairs` paragraphs of its article set (the
    benchmark folder's passages: a paragraph is ~150 tokens). Configs are timed interleaved, round after round,
    in one process (the machine is shared: ratios between configs are what to trust); the median over
    questions x rounds is reported. Weights are untrained: the cost does not depend on them, and LoRA and own
    blocks cost nothing extra at inference (they are folded into plain blocks)."""
    import statistics

    import torch

    from assistant.reader_training import reader_splits
    from assistant.training_data import load_squad
    from model.cross_encoder import CrossEncoder, CrossEncoderConfig
    from model.encoder import Encoder

    rows = load_squad()
    test = set(reader_splits(rows).test)
    contexts = list(dict.fromkeys(r.context for r in rows if r.title in test))
    questions = [r.question for r in rows if r.title in test]
    rng = random.Random(0)
    cases = [(q, rng.sample(contexts, n_pairs)) for q in rng.sample(questions, n_questions)]
    encoder = Encoder.load()
    lengths = [len(ids) for q, ps in cases for ids in encoder.tokenizer.encode_batch(ps)]
    print(f"passages: {len(lengths)}, mean {statistics.mean(lengths):.0f} tokens "
          f"(p90 {sorted(lengths)[int(0.9 * len(lengths))]}); {threads} threads, float32", flush=True)
    models = {}
    for spec in configs.split(","):
        layers, max_length = (int(x) for x in spec.split("/"))
        ce = CrossEncoder.new(encoder, CrossEncoderConfig(layers=layers, max_length=max_length),
                              run_dtype="float32")
        ce.score(*cases[0])  # builds the merged copy, warms the allocator
        models[spec] = ce
    times: dict[str, list[float]] = {spec: [] for spec in models}
    cpu: dict[str, list[float]] = {spec: [] for spec in models}
    for _ in range(rounds):
        for question, passages in cases:
            for spec, ce in models.items():
                tick, cpu_tick = time.perf_counter(), time.process_time()
                ce.score(question, passages)
                times[spec].append(1000 * (time.perf_counter() - tick))
                cpu[spec].append(1000 * (time.process_time() - cpu_tick))
    out = {}
    # cpu ms / threads: what the wall time would be on an idle machine with perfect parallelism (a lower bound
    # there); the wall time is inflated by other processes on a busy machine.
    print(f"{'layers/max_len':<15} {'median ms':>9} {'p90 ms':>7} {'cpu ms/thread':>13} {'pairs/s':>8}")
    for spec, values in times.items():
        med = statistics.median(values)
        p90 = sorted(values)[int(0.9 * len(values))]
        per_thread = statistics.median(cpu[spec]) / threads
        out[spec] = {"median_ms": med, "p90_ms": p90, "cpu_ms_per_thread": per_thread,
                     "pairs_per_s": n_pairs * 1000 / med}
        print(f"{spec:<15} {med:>9.0f} {p90:>7.0f} {per_thread:>13.0f} {n_pairs * 1000 / med:>8.1f}", flush=True)
    out["load_average"] = os.getloadavg()
    print(f"load average {out['load_average']}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reranker", default=str(DEFAULT_RERANKER), help="cross-encoder folder")
    ap.add_argument("--squad-questions", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", default="squad-test,techdocs,pydocs,corpus,reports",
                    help=f"comma-separated: squad-test, {', '.join(FOLDER_SETS)}")
    ap.add_argument("--max-length", type=int, default=None, help="override the reranker's tokens per pair")
    ap.add_argument("--compare-reader", action="store_true",
                    help="also rerank with the evidence reader's span scores (slow; a comparison, not a product path)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--speed", action="store_true", help="only time scoring 20 pairs for --configs")
    ap.add_argument("--configs", default="2/128,2/160,2/192,3/128,3/160,3/192,4/128,4/160,4/192,6/160",
                    help="layers/max_length pairs for --speed")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.speed:
        result = speed(args.threads, args.configs, args.rounds)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return 0
    from model.cross_encoder import CrossEncoder
    from model.encoder import Encoder
    from retrieval.retriever import Retriever
    from retrieval.store import default_index_path
    from retrieval.sync import sync_folder

    encoder = Encoder.load()
    reranker = CrossEncoder.load(encoder, args.reranker)
    if args.max_length:
        reranker.config.max_length = args.max_length
    print(f"reranker {args.reranker}: {json.dumps(reranker.config.to_dict())}, runs in {reranker.run_dtype}, "
          f"{args.threads} threads", flush=True)
    reranker.score("warm up", ["a passage"] * 4)
    all_results = {"reranker": reranker.config.to_dict(), "threads": args.threads}
    for name in args.sets.split(","):
        folder, questions, unit = squad_set(args.squad_questions) if name == "squad-test" else folder_set(name)
        sync_folder(folder, None, encoder, progress=False)
        retriever = Retriever(default_index_path(folder), encoder, reranker=reranker)
        started = time.perf_counter()
        results = evaluate(retriever, reranker, questions, unit)
        all_results[name] = results
        print(f"\n{name}: {len(questions)} questions, relevance by {unit} ({time.perf_counter() - started:.0f} s)")
        print(f"{'mode':<10} {'variant':<9} {'nDCG@10':>8} {'R@10':>7}")
        for mode in MODES:
            for variant in VARIANTS:
                m, off = results[mode][variant], results[mode]["off"]
                low, high = paired_interval(m["per_question_ndcg@10"], off["per_question_ndcg@10"])
                change = (f"  {m['ndcg@10'] - off['ndcg@10']:+.4f} [95% {low:+.3f}..{high:+.3f}]"
                          if variant != "off" else "")
                print(f"{mode:<10} {variant:<9} {m['ndcg@10']:>8.4f} {m['recall@10']:>7.4f}{change}")
            if mode == "hybrid":  # the fusion change itself, against hybrid-rrf
                old, new = results["hybrid-rrf"]["off"], results["hybrid"]["off"]
                low, high = paired_interval(new["per_question_ndcg@10"], old["per_question_ndcg@10"])
                print(f"{'':<10} convex vs rrf: {new['ndcg@10'] - old['ndcg@10']:+.4f} [95% {low:+.3f}..{high:+.3f}],"
                      f" R@10 {new['recall@10'] - old['recall@10']:+.4f}")
        t = results["rerank_ms"]
        print(f"rerank ms/query (hybrid hits, {t['questions']} questions): "
              + ", ".join(f"{k} median {v['median']:.0f} mean {v['mean']:.0f} p90 {v['p90']:.0f}"
                          for k, v in t.items() if k != "questions")
              + f"; search {results['hybrid']['search_ms']:.0f} ms; load average "
              + " ".join(f"{x:.1f}" for x in results["load_average"]), flush=True)
        if args.compare_reader:
            from model.reader import Reader
            from assistant.settings import DEFAULT_READER

            scorer = ReaderScorer(Reader.load(encoder, DEFAULT_READER))
            by_reader = evaluate(retriever, scorer, questions, unit, timed=10)
            all_results[name]["reader"] = by_reader
            for mode in MODES:
                for variant in VARIANTS[1:]:
                    m = by_reader[mode][variant]
                    print(f"{mode:<7} reader {variant:<9} {m['ndcg@10']:>8.4f} {m['recall@10']:>7.4f}")
            print(f"reader ms/query N=20 median {by_reader['rerank_ms']['N=20']['median']:.0f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(all_results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
