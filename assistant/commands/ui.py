"""`assistant ui [FOLDER]`: the browser chat, on 127.0.0.1:7860 unless told otherwise."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `ui` subcommand."""
    from assistant.settings import add_arguments

    parser = subparsers.add_parser(
        "ui",
        help="open the chat in the browser",
        description="Serve the browser chat about FOLDER (default: the bundled corpus/). The folder's index is "
        "built on the first run and only new or changed files are embedded afterwards.",
    )
    parser.add_argument("folder_arg", nargs="?", metavar="FOLDER", help="documents folder (default corpus/)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, help="port (default 7860)")
    add_arguments(parser, sampling=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Open the assistant and serve until interrupted."""
    from assistant.commands.common import open_assistant
    from assistant.settings import DEFAULT_CORPUS

    settings, factory = open_assistant(args, folder=args.folder_arg)
    if settings.folder is None and settings.index is not None and not settings.index.exists():
        settings.folder = DEFAULT_CORPUS  # a new index and no folder: build it from the bundled corpus
    assistant = factory()
    from assistant.ui import serve

    generator = getattr(assistant, "generator", None)
    if getattr(generator, "device", None) is not None and generator.device.type == "cpu":
        from model import cpu_kernels

        print(f"generator: {generator.identity}; native CPU decode kernels: {cpu_kernels.status()}", flush=True)

    serve(assistant, host=settings.host, port=settings.port)
    return 0
