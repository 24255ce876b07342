"""End-to-end RAG benchmark on held-out SQuAD articles: the product indexes a folder of their paragraphs, then
answers questions in each answer mode (guided, generate, extract), side by side.

    python benchmarks/reader_rag.py --split test --modes guided,extract,generate     # the reported numbers
    python benchmarks/reader_rag.py --split dev --calibrate                           # the answerability gate
    python benchmarks/reader_rag.py --split test --gate                               # that gate on test

The articles are those neither the reader nor the shipped generator adapter was trained on
(assistant.reader_training.reader_splits: the adapter's 40 held-out articles, split 15 dev / 25 test).
- The folder: one text file per paragraph of the split's articles (`<article>/<nnn>.txt`), minus the gold
  paragraphs of the unanswerable questions.
- Answerable questions (>= 300): their gold paragraph is in the folder.
- Unanswerable questions (>= 100): their gold paragraph is left out, and no paragraph in the folder contains
  the (normalised) answer.
The folder is indexed with the product's own sync (encoder, chunker, FAISS + BM25), cached under
~/.cache/assistant/bench/.

Metrics: retrieval recall@k (a passage from the gold paragraph's file among those retrieved), answer accuracy
(normalised gold answer contained in the answer), token F1 (SQuAD), mean answer length in words, citation
precision (cited passages that contain the answer), citing rate (answered answerable questions that cite),
refusal accuracy (unanswerable refused), false-refusal rate (answerable refused), median time to first token and
total. `--calibrate` runs retrieval + reader only and chooses the answerability gate (which terms join the reader's
score in the evidence's support, their weights, the threshold) on this split; `--gate` reports the current gate's
refusal accuracy and false refusals without generating.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def build_benchmark(rows, titles, n_answerable: int, n_unanswerable: int, seed: int = 0):
    """(paragraph files {relative path: text}, questions [{question, answer, gold_file|None}])."""
    from assistant.training_data import normalize_answer

    rng = random.Random(f"reader-rag-{seed}")
    wanted = set(titles)
    paragraphs: dict[str, str] = {}
    file_of: dict[str, str] = {}
    for row in rows:
        if row.title in wanted and row.context not in file_of:
            n = sum(1 for f in file_of.values() if f.startswith(row.title + "/"))
            name = f"{row.title}/{n:03d}.txt"
            file_of[row.context] = name
            paragraphs[name] = row.context
    normalized = {name: f" {normalize_answer(text)} " for name, text in paragraphs.items()}
    questions = [r for r in rows if r.title in wanted]
    rng.shuffle(questions)
    # Unanswerable: leave out a paragraph; keep its questions whose answer no other paragraph contains.
    left_out: set[str] = set()
    unanswerable = []
    for row in questions:
        if len(unanswerable) >= n_unanswerable:
            break
        name = file_of[row.context]
        gold = f" {normalize_answer(row.answer)} "
        if not normalize_answer(row.answer) or any(gold in normalized[f] for f in paragraphs if f != name):
            continue
        left_out.add(name)
        unanswerable.append(row)
    # Questions of a left-out paragraph that are answerable elsewhere would be ambiguous: skip them.
    unanswerable = [r for r in unanswerable
                    if not any(f" {normalize_answer(r.answer)} " in normalized[f] for f in paragraphs
                               if f not in left_out)]
    answerable = [r for r in questions if file_of[r.context] not in left_out][:n_answerable]
    files = {name: text for name, text in paragraphs.items() if name not in left_out}
    items = [{"question": r.question, "answer": r.answer, "gold_file": file_of[r.context]} for r in answerable]
    items += [{"question": r.question, "answer": r.answer, "gold_file": None} for r in unanswerable]
    return files, items


def write_folder(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    keep = {folder / name for name in files}
    for path in folder.rglob("*.txt"):
        if path not in keep:
            path.unlink()


def score(items, answers, k: int) -> dict:
    from assistant.training_data import answer_in, token_f1

    answerable = [(q, a) for q, a in zip(items, answers) if q["gold_file"]]
    unanswerable = [(q, a) for q, a in zip(items, answers) if not q["gold_file"]]
    recall = sum(any(s.path == q["gold_file"] for s in a.sources) for q, a in answerable) / max(len(answerable), 1)
    answered = [(q, a) for q, a in answerable if not a.refused]
    correct = sum(answer_in(q["answer"], a.text) for q, a in answerable if not a.refused)
    f1 = sum(token_f1(a.text if not a.refused else "", q["answer"]) for q, a in answerable)
    cited = [(q, s) for q, a in answered for s in a.cited_sources]
    precise = sum(answer_in(q["answer"], s.text) for q, s in cited)
    citing = sum(bool(a.citations) for q, a in answered)
    words = [len(a.text.split()) for q, a in answered]
    ttft = [a.timings.time_to_first_token_ms for a in answers if a.timings.time_to_first_token_ms is not None]
    total = [a.timings.total_ms for a in answers]
    return {
        "answerable": len(answerable), "unanswerable": len(unanswerable), "k": k,
        "recall_at_k": 100 * recall,
        "accuracy": 100 * correct / max(len(answerable), 1),
        "token_f1": f1 / max(len(answerable), 1),
        "mean_words": statistics.mean(words) if words else 0.0,
        "citation_precision": 100 * precise / max(len(cited), 1),
        "citing_rate": 100 * citing / max(len(answered), 1),
        "refusal_accuracy": 100 * sum(a.refused for q, a in unanswerable) / max(len(unanswerable), 1),
        "false_refusals": 100 * sum(a.refused for q, a in answerable) / max(len(answerable), 1),
        "ttft_median_ms": statistics.median(ttft) if ttft else None,
        "total_median_ms": statistics.median(total) if total else None,
        "fallbacks": sum(getattr(a, "fallback", False) for a in answers),
        "by_kind": by_kind(items, answers),
    }


def by_kind(items, answers) -> dict:
    """Per question kind (assistant.kinds, as the pipeline routed it): answerable / unanswerable counts, accuracy,
    refusal accuracy and false refusals."""
    from assistant.kinds import classify
    from assistant.training_data import answer_in

    out: dict = {}
    for q, a in zip(items, answers):
        kind = getattr(a, "kind", "") or classify(q["question"])
        row = out.setdefault(kind, {"answerable": 0, "unanswerable": 0, "correct": 0, "refused_unanswerable": 0,
                                    "refused_answerable": 0})
        if q["gold_file"]:
            row["answerable"] += 1
            row["correct"] += int(not a.refused and answer_in(q["answer"], a.text))
            row["refused_answerable"] += int(a.refused)
        else:
            row["unanswerable"] += 1
            row["refused_unanswerable"] += int(a.refused)
    return out


def answerability_features(bot, items, k: int) -> list[dict]:
    """Per question, as the pipeline computes them (no generation): for each passage's best span, the reader's
    score, the question words found in its sentence (overlap) and the IDF-weighted question terms found in its
    passage (coverage), best score first; the best retrieval cosine; `gated`: the cosine gate refuses before
    the reader. The reader's top span's values are the question's features for fitting."""
    from assistant.evidence import evidence_from_spans, question_overlap, term_coverage
    from assistant.pipeline import relevant_hits

    out = []
    for item in items:
        hits, _ = bot.retrieve(item["question"], k=k)
        best_cos = max((h.dense_score or 0.0) for h in hits) if hits else 0.0
        hits = relevant_hits(hits, bot.settings.refusal_threshold, bot.settings.relative_floor)
        texts = [h.text for h in hits]
        spans = bot.reader.read(item["question"], texts)
        ev = sorted(evidence_from_spans(spans, texts, list(range(1, len(texts) + 1)), item["question"]),
                    key=lambda e: -e.score)  # the reader's own ranking: the features are weighed afterwards
        weights = bot.retriever.term_weights(item["question"])
        per_span = [{"score": e.score, "overlap": question_overlap(item["question"], e.sentence),
                     "coverage": term_coverage(weights, texts[e.passage - 1])} for e in ev]
        top = per_span[0] if per_span else {"score": -99.0, "overlap": 0.0, "coverage": 0.0}
        out.append({"answerable": bool(item["gold_file"]), **top, "spans": per_span,
                    "cosine": best_cos, "gated": best_cos < bot.settings.refusal_threshold})
    return out


FEATURE_SETS = ((), ("overlap",), ("coverage",), ("coverage", "cosine"), ("overlap", "coverage", "cosine"))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 50) -> np.ndarray:
    """Weights [1 + d] (intercept first) of an L2-regularised logistic regression, by Newton's method."""
    xb = np.hstack([np.ones((len(x), 1)), x])  # [n, 1+d]
    w = np.zeros(xb.shape[1])
    reg = np.full(xb.shape[1], l2)
    reg[0] = 0.0  # the intercept is not penalised
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) + reg * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def support_weights(features: list[dict], names: tuple[str, ...]) -> dict[str, float]:
    """{feature: weight} so that support = score + sum(weight x feature) orders like the fitted logistic
    regression on (score, *names) (its weights divided by the score's)."""
    usable = [f for f in features if not f["gated"]]
    x = np.array([[f["score"], *(f[n] for n in names)] for f in usable], dtype=np.float64)
    y = np.array([f["answerable"] for f in usable], dtype=np.float64)
    w = fit_logistic(x, y)
    return {n: float(w[2 + i] / w[1]) for i, n in enumerate(names)}


def support(f: dict, weights: dict[str, float]) -> float:
    """The best support over a question's spans, as the pipeline computes it (see evidence_from_spans)."""
    values = [s["score"] + sum(w * (f["cosine"] if n == "cosine" else s[n]) for n, w in weights.items())
              for s in f["spans"]]
    return max(values, default=-1e9)


def refusal_rates(features: list[dict], weights: dict[str, float], threshold: float) -> tuple[float, float]:
    """(refusal accuracy, false-refusal rate) of the gate support >= threshold (gated questions refused)."""
    refused = [f["gated"] or support(f, weights) < threshold for f in features]
    pos = [r for r, f in zip(refused, features) if f["answerable"]]
    neg = [r for r, f in zip(refused, features) if not f["answerable"]]
    return sum(neg) / max(len(neg), 1), sum(pos) / max(len(pos), 1)


def best_threshold(features: list[dict], weights: dict[str, float], max_false_refusals: float) -> float:
    """The support threshold that refuses the most unanswerable questions with false refusals held at or under
    `max_false_refusals` (the lowest such threshold on a tie)."""
    values = sorted({support(f, weights) for f in features if not f["gated"]})
    best, best_ra = values[0], -1.0
    for t in values:
        ra, fr = refusal_rates(features, weights, t)
        if fr <= max_false_refusals and ra > best_ra + 1e-12:
            best, best_ra = t, ra
    return best


def calibrate(features: list[dict], max_false_refusals: float = 0.08, folds: int = 5, seed: int = 0) -> dict:
    """Choose the support's terms and weights, then its threshold, on these (dev) questions.

    Each candidate feature set (FEATURE_SETS beside the reader's score) is scored by cross-validation: fit on
    4/5, set the threshold there, count refusals on the held-out fifth. The best set is refitted on all
    questions. `max_false_refusals` is 8%, not the 10% target: the previous calibration at 10% on dev measured
    12.7% on the test articles, so two points are left for the shift between article sets."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(features))
    fold_of = np.empty(len(features), dtype=int)
    fold_of[order] = np.arange(len(features)) % folds
    table = []
    for names in FEATURE_SETS:
        ras, frs = [], []
        for fold in range(folds):
            train = [f for f, g in zip(features, fold_of) if g != fold]
            held = [f for f, g in zip(features, fold_of) if g == fold]
            weights = support_weights(train, names) if names else {}
            ra, fr = refusal_rates(held, weights, best_threshold(train, weights, max_false_refusals))
            ras.append(ra)
            frs.append(fr)
        table.append({"terms": list(names), "cv_refusal_accuracy": 100 * float(np.mean(ras)),
                      "cv_false_refusals": 100 * float(np.mean(frs))})
    chosen = max(table, key=lambda row: row["cv_refusal_accuracy"])
    names = tuple(chosen["terms"])
    weights = support_weights(features, names) if names else {}
    threshold = best_threshold(features, weights, max_false_refusals)
    ra, fr = refusal_rates(features, weights, threshold)
    return {"positives": sum(f["answerable"] for f in features),
            "negatives": sum(not f["answerable"] for f in features), "candidates": table,
            "settings": {"reader_threshold": round(threshold, 4),
                         "reader_overlap_weight": round(weights.get("overlap", 0.0), 4),
                         "reader_coverage_weight": round(weights.get("coverage", 0.0), 4),
                         "reader_cosine_weight": round(weights.get("cosine", 0.0), 4)},
            "refusal_accuracy": 100 * ra, "false_refusals": 100 * fr}


def gate_report(features: list[dict], settings) -> dict:
    """Refusal accuracy and false refusals of the settings' gate on these questions (no generation)."""
    weights = {"overlap": settings.reader_overlap_weight, "coverage": settings.reader_coverage_weight,
               "cosine": settings.reader_cosine_weight}
    ra, fr = refusal_rates(features, weights, settings.reader_threshold)
    return {"refusal_accuracy": 100 * ra, "false_refusals": 100 * fr}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("dev", "test"), default="test")
    ap.add_argument("--modes", default="guided,extract,generate")
    ap.add_argument("--answerable", type=int, default=300)
    ap.add_argument("--unanswerable", type=int, default=100)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--limit", type=int, default=None, help="ask only the first N questions (smoke runs)")
    ap.add_argument("--calibrate", action="store_true",
                    help="choose the answerability gate's terms, weights and threshold on this split")
    ap.add_argument("--gate", action="store_true",
                    help="only the answerability gate of the current settings: refusal accuracy, false refusals")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-adapter", action="store_true")
    ap.add_argument("--reader-threshold", type=float, default=None)
    ap.add_argument("--rerank", type=int, default=0, help="rescore the top N hits with the cross-encoder (0 = off)")
    ap.add_argument("--reranker", default=None, help="cross-encoder folder (default: the shipped one)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from assistant.pipeline import Assistant
    from assistant.reader_training import reader_splits
    from assistant.settings import Settings
    from assistant.training_data import load_squad
    from model.sources import cache_dir

    rows = load_squad()
    titles = getattr(reader_splits(rows), args.split)
    files, items = build_benchmark(rows, titles, args.answerable, args.unanswerable)
    folder = cache_dir() / "bench" / f"squad-{args.split}"
    write_folder(folder, files)
    print(f"{args.split}: {len(files)} paragraph files from {len(titles)} articles; "
          f"{sum(1 for i in items if i['gold_file'])} answerable + {sum(1 for i in items if not i['gold_file'])} "
          f"unanswerable questions", flush=True)
    rng = random.Random(0)
    rng.shuffle(items)
    if args.limit:
        items = items[: args.limit]
    settings = Settings.load({"k": args.k, "use_adapter": not args.no_adapter,
                              "reader_threshold": args.reader_threshold, "rerank": args.rerank,
                              "reranker": args.reranker})
    tick = time.perf_counter()
    bot = Assistant.from_folder(folder, settings=settings, progress=True)
    print(f"index + models ready in {time.perf_counter() - tick:.0f} s", flush=True)
    results: dict = {"split": args.split, "files": len(files), "threads": args.threads, "rerank": args.rerank}
    if args.calibrate or args.gate:
        features = answerability_features(bot, items, args.k)
        results["features"] = features
        results["gate"] = gate_report(features, bot.settings)
        print("current gate:", json.dumps(results["gate"]))
        if args.calibrate:
            results["calibration"] = calibrate(features)
            print(json.dumps(results["calibration"], indent=2))
    else:
        for mode in args.modes.split(","):
            answers = []
            tick = time.perf_counter()
            for item in items:
                answers.append(bot.ask(item["question"], answer_mode=mode))
            results[mode] = score(items, answers, args.k)
            results[mode]["seconds"] = time.perf_counter() - tick
            print(mode, json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                                    for k, v in results[mode].items()}), flush=True)
            results[mode + "_examples"] = [
                {"question": q["question"], "gold": q["answer"], "answer": a.text, "refused": a.refused,
                 "answerable": bool(q["gold_file"])} for q, a in list(zip(items, answers))[:40]]
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
