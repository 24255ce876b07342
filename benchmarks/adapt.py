"""`assistant adapt` measured: retrieval before and after adapting the encoder to a folder, per recipe, side by side.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/adapt.py --threads 2 --out adapt.json   # the reported run
    python benchmarks/adapt.py --sets pydocs --variants gpl --question-chunks 40                  # a quick look
    python benchmarks/adapt.py --timing 5000 --threads 2        # per-step cost of the default recipe, 5,000 chunks

Sets (relevance as benchmarks/rerank.py defines it; its helpers are reused):
- squad-test: the held-out SQuAD test articles as a folder (benchmarks/reader_rag.py's), its answerable questions;
  the relevant passage is the question's paragraph file. The questions are labels for evaluation only: adaptation
  sees the folder's chunks and nothing else.
- techdocs, pydocs, reports (and corpus): the folder with the answerable questions of
  benchmarks/open_questions.jsonl (relevant: chunks of a source file that hold one of the question's concepts);
  techdocs' questions are benchmarks/techdocs_questions.jsonl (47 standard-library modules, 108 by hand).
  pydocs-all: the pydocs folder with its 25 questions and the 40 of benchmarks/pydocs_questions.jsonl.
  techdocs-small: every 4th techdocs module (64 chunks) and its 26 questions: folder size apart from question kind.
Variants: "base" (the bundled encoder), then each recipe on a fresh copy of the base index, adapted and switched
with the product's own `adapt_index`: mlm (MLM alone), gpl (synthetic questions + BM25/dense negatives + teacher
margin-MSE), gpl-rt (gpl keeping only questions whose own chunk BM25 or the dense index ranks in its top 3: round-
trip filtering), gpl-rt-howto (gpl-rt plus one more question per chunk forced to open like a how-to question,
"How do I ..."; the default recipe), mlm+gpl, and gpl-ce / gpl-ce-rt (the cross-encoder reranker as the teacher
instead of the reader). Synthetic questions and teacher scores are computed once per set and shared by the
variants (their cost is reported where they were computed).
Metrics: nDCG@10 and recall@10 of dense and hybrid search (hybrid-rrf: with the reciprocal-rank fusion it used
before 2026-12-04), with the cross-encoder reranker off and on (N=20, when
one is shipped); a general set (SQuAD dev articles, questions vs their paragraphs, dense, in memory) that must not
drop by more than a point; answers on held-out SQuAD (`--answers N` questions through the Assistant, extract or
guided mode) before and after; each step's seconds, items/s and peak memory; the load average.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant.adapt import HOWTO_OPENINGS  # noqa: E402  (after the path is set)

VARIANTS = {"mlm": {"mlm": True, "distill": False},
            "gpl": {"mlm": False, "distill": True, "consistency_depth": 0, "openings": ()},
            "gpl-rt": {"mlm": False, "distill": True, "consistency_depth": 3, "openings": ()},
            "gpl-rt-howto": {"mlm": False, "distill": True, "consistency_depth": 3, "openings": HOWTO_OPENINGS,
                             "max_openings_per_chunk": 1},
            "gpl-rt-howto3": {"mlm": False, "distill": True, "consistency_depth": 3, "openings": HOWTO_OPENINGS,
                              "max_openings_per_chunk": 3},
            "gpl-rt-howto-long": {"mlm": False, "distill": True, "consistency_depth": 3, "openings": HOWTO_OPENINGS,
                                  "max_openings_per_chunk": 1, "min_distill_examples": 1600},
            "gpl-rt-howto-short": {"mlm": False, "distill": True, "consistency_depth": 3, "openings": HOWTO_OPENINGS,
                                   "max_openings_per_chunk": 1, "min_distill_examples": 0},
            "mlm+gpl": {"mlm": True, "distill": True, "consistency_depth": 0, "openings": ()},
            "gpl-reader": {"mlm": False, "distill": True, "teacher": "reader", "openings": ()},
            "gpl-ce": {"mlm": False, "distill": True, "teacher": "cross-encoder", "consistency_depth": 0,
                       "openings": ()},
            "gpl-ce-rt": {"mlm": False, "distill": True, "teacher": "cross-encoder", "consistency_depth": 3,
                          "openings": ()}}  # gpl-rt-howto is the default recipe (AdaptConfig())


def load_set(name: str, squad_questions: int):
    """(folder, [(question, relevance spec)], unit) for a set name."""
    from benchmarks.rerank import folder_set, squad_set

    if name == "techdocs-small":
        return small_techdocs()
    return squad_set(squad_questions) if name == "squad-test" else folder_set(name)


def small_techdocs():
    """techdocs-small: every 4th techdocs module (alphabetical; 12 modules, 64 chunks) copied to a folder in the
    cache, with the techdocs questions about them (26): a small folder with the full set's kind of questions."""
    from benchmarks.rerank import folder_set
    from model.sources import cache_dir

    source, questions, unit = folder_set("techdocs")
    files = sorted(p.name for p in source.glob("*.md"))[::4]
    folder = cache_dir() / "bench" / "techdocs-small-folder"
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        if not (folder / name).is_file() or (folder / name).read_bytes() != (source / name).read_bytes():
            shutil.copy2(source / name, folder / name)
    return folder, [(q, spec) for q, spec in questions if set(spec["sources"]) <= set(files)], unit


def retrieval_metrics(retriever, reranker, questions, unit: str, depth: int = 20) -> dict:
    """nDCG@10 / recall@10 for dense and hybrid search, reranker off and (with one) on (the top 20 reordered as
    `--rerank 20` does: its order fused with the retriever's)."""
    from benchmarks.rerank import MODES, orders, relevant_chunks, search_options, summarize
    from retrieval.chunking import embedding_text
    from retrieval.evaluate import ndcg_at, recall_at

    out = {}
    for mode in MODES:  # dense, hybrid-rrf (the fusion before 2026-12-04), hybrid
        per: dict[str, list[tuple[float, float]]] = {"off": [], "rerank": []}  # (nDCG@10, recall@10) per question
        for question, spec in questions:
            relevant = ({str(c): 1 for c in relevant_chunks(retriever, spec)} if unit == "chunk"
                        else {p: 1 for p in spec})
            hits = retriever.search(question, k=depth, **search_options(mode))
            key = (lambda h: str(h.chunk_id)) if unit == "chunk" else (lambda h: h.path)
            variants = {"off": list(range(len(hits)))}
            if reranker is not None and hits:
                scores = reranker.score(question, [embedding_text(h.heading, h.text) for h in hits])
                variants["rerank"] = orders(len(hits), scores)["N=20 rrf"]  # what --rerank 20 does
            for name, order in variants.items():
                ranking = list(dict.fromkeys(key(hits[i]) for i in order))
                per[name].append((ndcg_at(ranking, relevant, 10), recall_at(ranking, relevant, 10)))
        out[mode] = {v: summarize(rows) for v, rows in per.items() if v == "off" or reranker is not None}
    return out


def general_set(n_questions: int):
    """SQuAD dev articles (reader_splits(rows).dev): their paragraphs and `n_questions` questions with the index
    of their paragraph; evaluated in memory (dense only)."""
    from assistant.reader_training import reader_splits
    from assistant.training_data import load_squad

    rows = load_squad()
    dev = set(reader_splits(rows).dev)
    paragraphs = list(dict.fromkeys(r.context for r in rows if r.title in dev))
    index = {p: i for i, p in enumerate(paragraphs)}
    questions = [(r.question, index[r.context]) for r in rows if r.title in dev]
    random.Random(1).shuffle(questions)
    return paragraphs, questions[:n_questions]


def general_metrics(encoder, paragraphs, questions, cache: dict) -> dict:
    """Dense nDCG@10 / recall@10 of `encoder` on the general set (paragraph vectors cached per encoder name)."""
    import numpy as np

    from retrieval.evaluate import ndcg_at, recall_at

    if encoder.name not in cache:
        cache[encoder.name] = encoder.embed(paragraphs)
    p = cache[encoder.name]  # [n, H]
    q = encoder.embed([text for text, _ in questions])  # [m, H]
    top = np.argsort(-(q @ p.T), axis=1)[:, :10]  # [m, 10]
    ndcg = sum(ndcg_at([str(i) for i in row], {str(gold): 1}, 10) for row, (_, gold) in zip(top, questions))
    recall = sum(recall_at([str(i) for i in row], {str(gold): 1}, 10) for row, (_, gold) in zip(top, questions))
    return {"ndcg@10": ndcg / len(questions), "recall@10": recall / len(questions)}


def squad_answers(index_path: Path, encoder, generator, n: int, mode: str, k: int = 4) -> dict:
    """Answer `n` held-out SQuAD questions (3/4 answerable, 1/4 unanswerable) through the Assistant on this index;
    scored as benchmarks/reader_rag.py scores them."""
    from assistant.pipeline import Assistant
    from assistant.reader_training import reader_splits
    from assistant.settings import Settings
    from assistant.training_data import load_squad
    from benchmarks.reader_rag import build_benchmark, score

    rows = load_squad()
    _, items = build_benchmark(rows, reader_splits(rows).test, 300, 100)
    answerable = [i for i in items if i["gold_file"]]
    unanswerable = [i for i in items if not i["gold_file"]]
    rng = random.Random(0)
    rng.shuffle(answerable)
    rng.shuffle(unanswerable)
    chosen = answerable[: n - n // 4] + unanswerable[: n // 4]
    bot = Assistant.from_index(index_path, settings=Settings.load({"k": k}), generator=generator, encoder=encoder)
    tick = time.perf_counter()
    answers = [bot.ask(item["question"], answer_mode=mode) for item in chosen]
    result = score(chosen, answers, k)
    result.pop("by_kind", None)
    result["seconds"] = time.perf_counter() - tick
    result["mode"] = mode
    return result


def copy_index(base: Path, target: Path) -> None:
    """A fresh copy of the base index folder (its SQLite in WAL mode is checkpointed by closing it first)."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target, ignore=shutil.ignore_patterns("lock", ".*"))


def run_set(name: str, args, encoder, reranker, general, general_cache, generator) -> dict:
    from assistant.adapt import AdaptConfig, adapt_index, prepare_encoder
    from model.sources import cache_dir
    from retrieval.retriever import Retriever
    from retrieval.sync import sync_folder

    folder, questions, unit = load_set(name, args.squad_questions)
    root = cache_dir() / "bench" / "adapt" / name
    base_index = root / "base"
    base = copy.copy(encoder)
    base.set_adapter(None)
    prepare_encoder(base, base_index, use_adapt=False)
    sync_folder(folder, base_index, base, progress=False)
    retriever = Retriever(base_index, base)
    chunks = retriever.stats()["chunks"]
    print(f"\n== {name}: {len(questions)} questions, relevance by {unit}, {chunks} chunks", flush=True)
    result = {"questions": len(questions), "chunks": chunks, "unit": unit, "variants": {}}
    tick = time.perf_counter()
    result["variants"]["base"] = {"retrieval": retrieval_metrics(retriever, reranker, questions, unit),
                                  "general": general_metrics(base, *general, general_cache)}
    retriever.store.close()
    print(f"base evaluated in {time.perf_counter() - tick:.0f} s; load {os.getloadavg()}", flush=True)
    if args.answers and name == "squad-test":
        result["variants"]["base"]["answers"] = squad_answers(base_index, base, generator, args.answers,
                                                              args.answer_mode)
    _print_variant("base", result["variants"]["base"])
    shared = root / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    for variant in args.variants.split(","):
        index = root / variant
        copy_index(base_index, index)
        work = root / f"work-{variant}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for cache_file in ("questions.jsonl", "teacher-reader.jsonl", "teacher-cross-encoder.jsonl"):  # shared
            (shared / cache_file).touch()
            (work / cache_file).symlink_to(shared / cache_file)
        config = AdaptConfig(**{"teacher": args.teacher, **VARIANTS[variant]}, question_chunks=args.question_chunks,
                             seed=args.seed)
        if args.lora_rank:
            config.lora_rank = args.lora_rank
        if args.epochs:
            config.distill_epochs = args.epochs
        if args.preserve:
            config.preserve_weight = args.preserve
        adapted = copy.copy(encoder)
        adapted.set_adapter(None)
        load = os.getloadavg()
        report = adapt_index(index, adapted, config, work_dir=work, emit=_quiet if args.quiet else print)
        steps = [{"name": s.name, "seconds": round(s.seconds, 1), "items": s.items, "unit": s.unit,
                  "per_s": round(s.items / s.seconds, 2) if s.seconds > 0 and s.items else None,
                  "peak_rss_mb": round(s.peak_rss_mb) if s.peak_rss_mb else None, "skipped": s.skipped,
                  "resumed": s.resumed, **({"detail": s.detail} if s.detail else {})} for s in report.steps]
        retriever = Retriever(index, adapted)
        entry = {"encoder": adapted.name, "config": config.to_dict(), "steps": steps, "load_before": load,
                 "load_after": os.getloadavg(), "seconds": round(report.seconds, 1),
                 "retrieval": retrieval_metrics(retriever, reranker, questions, unit),
                 "general": general_metrics(adapted, *general, general_cache)}
        retriever.store.close()
        if args.answers and name == "squad-test":
            entry["answers"] = squad_answers(index, adapted, generator, args.answers, args.answer_mode)
        result["variants"][variant] = entry
        _print_variant(variant, entry, result["variants"]["base"])
    return result


def _quiet(line: str) -> None:
    if not line.startswith("adapt ") or line.endswith(", ETA 0s"):
        print(line, flush=True)


def _print_variant(name: str, entry: dict, base: dict | None = None) -> None:
    from benchmarks.rerank import paired_interval

    def fmt(value: float, ref: float | None) -> str:
        return f"{value:.4f}" + (f" ({value - ref:+.4f})" if ref is not None else "")

    for mode, by_rerank in entry["retrieval"].items():
        for rerank, m in by_rerank.items():
            ref = base["retrieval"][mode][rerank] if base else None
            interval = ""
            if ref is not None and m.get("per_question_ndcg@10") and ref.get("per_question_ndcg@10"):
                low, high = paired_interval(m["per_question_ndcg@10"], ref["per_question_ndcg@10"])
                interval = f" [95% {low:+.3f}..{high:+.3f}]"
            print(f"  {name:<8} {mode:<10} rerank {rerank:<6} nDCG@10 {fmt(m['ndcg@10'], ref and ref['ndcg@10'])}"
                  f"{interval}  R@10 {fmt(m['recall@10'], ref and ref['recall@10'])}", flush=True)
    g, ref = entry["general"], (base or {}).get("general")
    print(f"  {name:<8} general dense nDCG@10 {fmt(g['ndcg@10'], ref and ref['ndcg@10'])}", flush=True)
    if "answers" in entry:
        a = entry["answers"]
        print(f"  {name:<8} answers ({a['mode']}): accuracy {a['accuracy']:.1f}%, refusal accuracy "
              f"{a['refusal_accuracy']:.1f}%, false refusals {a['false_refusals']:.1f}%", flush=True)
    for step in entry.get("steps", []):
        if not step["skipped"]:
            print(f"  {name:<8} step {step['name']:<9} {step['seconds']:7.1f} s  {step['items']} {step['unit']}"
                  f"  {step['per_s'] or 0:.2f}/s  peak {step['peak_rss_mb']} MB"
                  f"{'  (cached)' if step['resumed'] else ''}", flush=True)


def timing(args, encoder) -> dict:
    """The default recipe on a folder of `args.timing` SQuAD train paragraphs (one chunk each), timed per step."""
    from assistant.adapt import AdaptConfig, adapt_index, prepare_encoder
    from assistant.reader_training import reader_splits
    from assistant.training_data import load_squad
    from benchmarks.reader_rag import write_folder
    from model.sources import cache_dir
    from retrieval.sync import sync_folder

    rows = load_squad()
    train = reader_splits(rows).train
    wanted = set(train)
    paragraphs = list(dict.fromkeys((r.title, r.context) for r in rows if r.title in wanted))[: args.timing]
    files = {f"{title}/{i:05d}.txt": text for i, (title, text) in enumerate(paragraphs)}
    root = cache_dir() / "bench" / "adapt" / f"timing-{args.timing}"
    folder = root / "folder"
    write_folder(folder, files)
    index = root / "index"
    prepare_encoder(encoder, index, use_adapt=False)  # a rerun starts from the bundled vectors again
    tick = time.perf_counter()
    sync_folder(folder, index, encoder, progress=False)
    index_seconds = time.perf_counter() - tick
    config = AdaptConfig(teacher=args.teacher, seed=args.seed)
    load = os.getloadavg()
    report = adapt_index(index, copy.copy(encoder), config, work_dir=root / "work", fresh=True, swap=True,
                         emit=_quiet if args.quiet else print)
    print(report.summary())
    return {"paragraphs": len(files), "chunks": report.chunks, "index_seconds": index_seconds,
            "load_before": load, "load_after": os.getloadavg(), "seconds": report.seconds,
            "steps": [{"name": s.name, "seconds": s.seconds, "items": s.items, "unit": s.unit,
                       "peak_rss_mb": s.peak_rss_mb, "skipped": s.skipped} for s in report.steps]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="squad-test,techdocs,pydocs")
    ap.add_argument("--variants", default="gpl-rt,gpl-rt-howto", help=f"comma-separated: {', '.join(VARIANTS)}")
    ap.add_argument("--squad-questions", type=int, default=300)
    ap.add_argument("--question-chunks", type=int, default=600, help="AdaptConfig.question_chunks (questions)")
    ap.add_argument("--teacher", default="reader", choices=("auto", "cross-encoder", "reader"),
                    help="the teacher of variants that do not name one")
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--epochs", type=float, default=0.0)
    ap.add_argument("--preserve", type=float, default=0.0, help="AdaptConfig.preserve_weight")
    ap.add_argument("--general", type=int, default=300, help="general-set questions (SQuAD dev articles)")
    ap.add_argument("--answers", type=int, default=0, help="held-out SQuAD questions answered before/after (0 = off)")
    ap.add_argument("--answer-mode", default="extract", choices=("extract", "guided"))
    ap.add_argument("--timing", type=int, default=0, help="only time the default recipe on N SQuAD paragraphs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="fewer progress lines")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from assistant.settings import DEFAULT_RERANKER
    from model.encoder import Encoder

    encoder = Encoder.load()
    results: dict = {"threads": args.threads, "load_average_start": os.getloadavg(), "args": vars(args)}
    if args.timing:
        results["timing"] = timing(args, encoder)
    else:
        reranker = None
        if (DEFAULT_RERANKER / "cross_encoder.safetensors").is_file():
            from model.cross_encoder import CrossEncoder

            reranker = CrossEncoder.load(encoder, DEFAULT_RERANKER)
        results["reranker"] = str(DEFAULT_RERANKER) if reranker is not None else None
        general = general_set(args.general)
        generator = None
        if args.answers:  # the generator the assistant would load: the shipped adapter included
            from assistant.pipeline import load_generator
            from assistant.settings import Settings

            generator = load_generator(Settings.load({}))
        cache: dict = {}
        for name in args.sets.split(","):
            results[name] = run_set(name, args, encoder, reranker, general, cache, generator)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    results["load_average_end"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
