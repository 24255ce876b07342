"""Where an answer's time goes, and when its first words appear, in the default mode (guided, drafts on: what
the browser and the terminal show), over questions of every kind.

    python benchmarks/latency.py                         # 60 held-out SQuAD + the 112 open questions, 2 threads
    python benchmarks/latency.py --squad 20 --open 30    # a shorter run

Questions:
- held-out SQuAD (benchmarks/reader_rag.py's test split: articles neither the reader nor the generator adapter was
  trained on; a folder of their paragraphs), answerable and unanswerable, mostly factoids;
- benchmarks/open_questions.jsonl: definitions, explanations, lists, procedures, comparisons, summaries, yes/no,
  counts and factoids over three folders (the bundled corpus, Python docs, reports).
Each question is streamed with `Assistant.stream(..., drafts=True)`: first words = the first non-empty text item
(a Draft, a composed sentence, or a refusal), total = the final Answer. Stages come from the Answer's Timings:
retrieval, reader, generator prefill, decode and the check (the rest is composition and bookkeeping).

"Answers unchanged": every SQuAD question is asked again without drafts (the append-only stream the server
uses) and the two final texts must be identical; the SQuAD accuracy (normalised gold answer in the answer) is
printed for both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

STAGES = ("retrieval_ms", "reader_ms", "prefill_ms", "decode_ms", "check_ms")


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def timed(bot, question: str) -> tuple[dict, object]:
    """Stream one question with drafts; (its record, the final Answer)."""
    from assistant.answer import Answer, Revision

    start = time.perf_counter()
    first = None
    events = []
    answer = None
    for item in bot.stream(question, drafts=True):
        if isinstance(item, Answer):
            answer = item
            break
        events.append("revision" if isinstance(item, Revision) else type(item).__name__.lower())
        if first is None and not isinstance(item, Revision) and str(item).strip():
            first = (time.perf_counter() - start) * 1000
    total = (time.perf_counter() - start) * 1000
    t = answer.timings
    record = {"question": question, "kind": answer.kind, "mode": answer.mode, "refused": answer.refused,
              "first_ms": first if first is not None else total, "total_ms": total,
              "revised": "revision" in events, "drafted": "draft" in events, "text": answer.text}
    for stage in STAGES:
        record[stage] = float(getattr(t, stage, 0.0) or 0.0)
    record["other_ms"] = max(0.0, total - sum(record[s] for s in STAGES))
    return record, answer


def summary(records: list[dict]) -> dict:
    """p50 / p95 of first words, total and each stage over `records`."""
    out: dict = {"n": len(records)}
    for name in ("first_ms", "total_ms", *STAGES, "other_ms"):
        values = [r[name] for r in records]
        out[name] = {"p50": percentile(values, 50), "p95": percentile(values, 95),
                     "mean": statistics.mean(values) if values else None}
    return out


def print_table(title: str, groups: dict[str, list[dict]]) -> None:
    print(f"\n{title}")
    head = f"{'':14} {'n':>4} {'first p50':>9} {'first p95':>9} {'total p50':>9} {'total p95':>9}"
    head += "".join(f" {s[:-3] + ' p50':>13}" for s in STAGES)
    print(head)
    for name, rows in groups.items():
        s = summary(rows)
        line = (f"{name[:14]:14} {s['n']:>4} {s['first_ms']['p50']:>9.0f} {s['first_ms']['p95']:>9.0f} "
                f"{s['total_ms']['p50']:>9.0f} {s['total_ms']['p95']:>9.0f}")
        line += "".join(f" {s[st]['p50']:>13.0f}" for st in STAGES)
        print(line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--squad", type=int, default=60, help="held-out SQuAD questions (3/4 answerable)")
    ap.add_argument("--open", type=int, default=112, help="open questions (benchmarks/open_questions.jsonl)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write records and summaries as JSON here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from assistant.open_eval import folder_path, load_open_questions
    from assistant.pipeline import Assistant
    from assistant.reader_training import reader_splits
    from assistant.settings import Settings
    from assistant.training_data import answer_in, load_squad
    from benchmarks.reader_rag import build_benchmark, write_folder
    from model.sources import cache_dir

    settings = Settings.load({})
    records: list[dict] = []
    result: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
                    "threads": args.threads}

    if args.squad:
        rows = load_squad()
        titles = reader_splits(rows).test
        n_answerable = max(1, args.squad * 3 // 4)
        files, items = build_benchmark(rows, titles, 300, 100)
        folder = cache_dir() / "bench" / "squad-test"
        write_folder(folder, files)
        rng = random.Random(0)
        answerable = [i for i in items if i["gold_file"]]
        unanswerable = [i for i in items if not i["gold_file"]]
        rng.shuffle(answerable)
        rng.shuffle(unanswerable)
        chosen = answerable[:n_answerable] + unanswerable[: args.squad - n_answerable]
        bot = Assistant.from_folder(folder, settings=settings, progress=True)
        bot.ask("warm-up: what is this folder about?")
        same = correct_drafts = correct_plain = 0
        for item in chosen:
            record, answer = timed(bot, item["question"])
            plain = bot.ask(item["question"])
            record.update(set="squad", answerable=bool(item["gold_file"]), unchanged=plain.text == answer.text)
            same += record["unchanged"]
            if item["gold_file"]:
                correct_drafts += (not answer.refused) and answer_in(item["answer"], answer.text)
                correct_plain += (not plain.refused) and answer_in(item["answer"], plain.text)
            records.append(record)
        result["squad"] = {"questions": len(chosen), "answerable": n_answerable,
                           "accuracy_with_drafts": 100 * correct_drafts / n_answerable,
                           "accuracy_without_drafts": 100 * correct_plain / n_answerable,
                           "identical_final_texts": same}
        print(f"SQuAD held-out: {len(chosen)} questions; final texts identical with and without drafts: "
              f"{same}/{len(chosen)}; accuracy {result['squad']['accuracy_with_drafts']:.1f}% (drafts) / "
              f"{result['squad']['accuracy_without_drafts']:.1f}% (no drafts)", flush=True)

    if args.open:
        questions = load_open_questions()[: args.open]
        bots: dict[str, object] = {}
        for q in questions:
            if q.folder not in bots:
                bots[q.folder] = Assistant.from_folder(folder_path(q.folder), settings=settings, progress=True)
                bots[q.folder].ask("warm-up: what is this folder about?")
            record, _ = timed(bots[q.folder], q.question)
            record.update(set="open:" + Path(q.folder).name)
            records.append(record)

    by_kind: dict[str, list[dict]] = {}
    for r in records:
        by_kind.setdefault(r["kind"] or "?", []).append(r)
    by_set: dict[str, list[dict]] = {}
    for r in records:
        by_set.setdefault(r["set"], []).append(r)
    print_table("milliseconds, all questions", {"all": records})
    print_table("by question set", by_set)
    print_table("by kind (as routed)", dict(sorted(by_kind.items())))
    drafted = [r for r in records if r["drafted"]]
    print(f"\ndrafted answers: {len(drafted)} ({sum(r['revised'] for r in drafted)} revised by the checked "
          f"wording); refused: {sum(r['refused'] for r in records)}")
    result.update(all=summary(records), by_kind={k: summary(v) for k, v in by_kind.items()},
                  by_set={k: summary(v) for k, v in by_set.items()}, records=records)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
