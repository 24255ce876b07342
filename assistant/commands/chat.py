"""`assistant chat`: a terminal chat that streams answers and prints their sources (/reset, /quit)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = "commands: /reset (forget the conversation), /sources (show the last sources again), /quit"


def register(subparsers: Any) -> None:
    """Add the `chat` subcommand."""
    from assistant.settings import add_arguments

    parser = subparsers.add_parser(
        "chat",
        help="chat about your documents in the terminal",
        description="Interactive chat about the documents in --folder (default: the bundled corpus/) or an "
        "existing --index. Answers stream in; sources follow each answer. " + HELP,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, input_fn: Any = input) -> int:
    """The read-answer loop; ends on /quit or end of input (Ctrl-D)."""
    from assistant.commands.common import open_assistant, print_sources, print_stream
    from assistant.answer import Answer
    from model.errors import UserError

    _, factory = open_assistant(args)
    assistant = factory()
    history: list[dict] = []
    last: Answer | None = None
    print(f"Ask about your documents. {HELP}", file=sys.stderr)
    while True:
        try:
            line = input_fn("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        command = line.strip().lower()
        if not command:
            continue
        if command in ("/quit", "/exit", "/q"):
            return 0
        if command == "/reset":
            history, last = [], None
            print("(conversation cleared)", file=sys.stderr)
            continue
        if command == "/sources":
            if last is not None:
                print_sources(last)
            continue
        if command.startswith("/"):
            print(f"unknown command {command}; {HELP}", file=sys.stderr)
            continue
        print("assistant> ", end="", flush=True)
        try:
            last = print_stream(assistant.stream(line, history=history, drafts=True), prefix="assistant> ")
        except UserError as exc:  # bad question: say so and keep chatting
            print(f"\nerror: {exc}", file=sys.stderr)
            continue
        except KeyboardInterrupt:
            print("\n(stopped)", file=sys.stderr)
            continue
        if last is not None:
            print_sources(last)
            history += [{"role": "user", "content": line}, {"role": "assistant", "content": last.text}]
