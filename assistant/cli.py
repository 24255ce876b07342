"""The `assistant` console script.

Each subcommand lives in its own module under `assistant/commands/` that exposes
`register(subparsers) -> None`; the parser it adds sets `func(args) -> int`. Modules import
heavy dependencies (torch, gradio, ...) inside `func`, so `assistant --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Order here is the order `assistant --help` lists them.
COMMAND_MODULES = (
    "assistant.commands.ui",
    "assistant.commands.serve",
    "assistant.commands.ask",
    "assistant.commands.chat",
    "assistant.commands.index",
    "assistant.commands.adapt",
    "assistant.commands.eval",
    "assistant.commands.eval_retrieval",
    "assistant.commands.finetune",
    "assistant.commands.train_reader",
    "assistant.commands.pretrain",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="assistant",
        description="A local, private assistant that answers questions about your documents and cites them.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command not built yet must not break the others
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run the subcommand, and turn user errors into a one-line message."""
    # Keep OpenMP from spinning against the UI / indexing threads on small machines (see DESIGN.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from model.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
