"""`assistant ask "question"`: one answer with its sources (text, or JSON with --json)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `ask` subcommand."""
    from assistant.settings import add_arguments

    parser = subparsers.add_parser(
        "ask",
        help="answer one question about your documents",
        description="Answer one question about the documents in --folder (default: the bundled corpus/) "
        "or in an existing --index, citing the passages used as [n].",
    )
    parser.add_argument("question", help="the question (quote it)")
    parser.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    parser.add_argument("--no-stream", action="store_true", help="print the answer only when it is complete")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Answer `args.question` and print it."""
    from assistant.commands.common import open_assistant, print_sources, print_stream

    settings, assistant_factory = open_assistant(args)
    # Check the question before loading any model, so bad input fails fast.
    from assistant.pipeline import check_question

    question = check_question(args.question, settings.max_question_chars)
    assistant = assistant_factory()
    if args.json or args.no_stream or not sys.stdout.isatty():
        answer = assistant.ask(question)
        if args.json:
            print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2))
        else:
            print(answer.text)
            print_sources(answer)
        return 0
    answer = print_stream(assistant.stream(question, drafts=True))
    assert answer is not None
    print_sources(answer)
    return 0
