"""`assistant eval`: answer accuracy, citation precision and refusals on a question set."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `eval` subcommand."""
    from assistant.settings import add_arguments

    parser = subparsers.add_parser(
        "eval",
        help="score the assistant's answers on a question set",
        description="Ask every question of a JSONL question set (default benchmarks/questions.jsonl) about "
        "--folder (default corpus/) and report retrieval hit rate@k, answer accuracy (keywords), citation "
        "precision, refusal accuracy on unanswerable questions and the false-refusal rate. An open-question set "
        "(benchmarks/open_questions.jsonl: questions with \"concepts\" and a \"folder\" each) is reported per "
        "question kind: concept coverage, useful answers, refusals, words, per-sentence citation precision and "
        "time to the first sentence.",
    )
    parser.add_argument("--questions", metavar="PATH", help="JSONL question file")
    parser.add_argument("--ci-subset", action="store_true", help="only the questions marked \"ci\": true")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    parser.add_argument("--no-retrieval", action="store_true",
                        help="the model alone: no passages, to measure what retrieval adds")
    parser.add_argument("--calibrate", action="store_true",
                        help="only compute the refusal threshold that best separates answerable from "
                        "unanswerable questions (retrieval only, quick)")
    parser.add_argument("--json", action="store_true", help="print metrics and per-question records as JSON")
    parser.add_argument("--output", metavar="PATH", help="also write the JSON result to this file")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation and print the table (or JSON)."""
    from assistant.commands.common import open_assistant
    from assistant.evaluation import calibrate_threshold, evaluate, format_report, load_questions

    from assistant.open_eval import is_open_question_file

    if args.questions and is_open_question_file(args.questions):
        return run_open(args)
    questions = load_questions(args.questions, ci_subset=args.ci_subset)
    if args.limit:
        questions = questions[: args.limit]
    _, factory = open_assistant(args)
    assistant = factory()
    if args.calibrate:
        result = calibrate_threshold(assistant, questions)
        print(json.dumps(result, indent=2))
        return 0

    def progress(i: int, n: int, record: Any) -> None:
        mark = "ok " if record.correct else "BAD"
        print(f"[{i}/{n}] {mark} {record.id} ({record.total_ms / 1000:.1f} s)", file=sys.stderr, flush=True)

    result = evaluate(assistant, questions, use_retrieval=not args.no_retrieval, progress=progress)
    result["settings"] = {k: v for k, v in assistant.settings.to_dict().items()
                          if k in ("k", "retrieval_mode", "refusal_threshold", "use_adapter", "max_new_tokens",
                                   "temperature", "repetition_penalty", "generator", "encoder")}
    if args.output:
        from pathlib import Path

        out = Path(args.output)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
        tmp.replace(out)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(format_report(result))
    return 0


def run_open(args: argparse.Namespace) -> int:
    """`assistant eval --questions benchmarks/open_questions.jsonl`: per-kind report, one index per folder."""
    from dataclasses import replace

    from assistant.commands.common import progress_options, report_sync
    from assistant.open_eval import evaluate_open, format_open_report, load_open_questions
    from assistant.pipeline import Assistant
    from assistant.settings import from_args

    questions = load_open_questions(args.questions)
    if args.limit:
        questions = questions[: args.limit]
    settings = from_args(args)
    shared: dict[str, Any] = {}

    def open_folder(folder: Any) -> Any:
        bot = Assistant.from_folder(folder, settings=replace(settings, folder=folder, index=None),
                                    generator=shared.get("generator"), encoder=shared.get("encoder"),
                                    **progress_options())
        report_sync(getattr(bot, "sync_report", None))
        shared.setdefault("generator", bot.generator)
        shared.setdefault("encoder", bot.encoder)
        return bot

    def progress(i: int, n: int, record: Any) -> None:
        mark = "ok " if (record.useful or (not record.answerable and record.refused)) else "BAD"
        print(f"[{i}/{n}] {mark} {record.id} {record.kind}->{record.routed_kind} ({record.total_ms / 1000:.1f} s)",
              file=sys.stderr, flush=True)

    result = evaluate_open(open_folder, questions, progress=progress)
    if args.output:
        from pathlib import Path

        out = Path(args.output)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
        tmp.replace(out)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else format_open_report(result))
    return 0
