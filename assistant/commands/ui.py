"""`assistant ui [FOLDER]`: the browser chat, on 127.0.0.1:7860 unless told otherwise."""

from __future__ import annotations

import argparse
from typing import Any

from model.errors import UserError


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
    """Check the port, open the assistant and serve until interrupted."""
    from assistant.commands.common import open_assistant, progress_options, report_sync
    from assistant.settings import DEFAULT_CORPUS

    settings, _ = open_assistant(args, folder=args.folder_arg)
    check_port(settings.host, settings.port)  # before minutes of model loading, not after
    if settings.folder is None and settings.index is not None and not settings.index.exists():
        settings.folder = DEFAULT_CORPUS  # a new index and no folder: build it from the bundled corpus
    from assistant.pipeline import Assistant

    assistant = Assistant.from_settings(settings, **progress_options())
    report_sync(getattr(assistant, "sync_report", None), where="the Library tab or `assistant index --status`")
    from assistant.ui import serve

    generator = getattr(assistant, "generator", None)
    if getattr(generator, "device", None) is not None and generator.device.type == "cpu":
        from model import cpu_kernels

        print(f"generator: {generator.identity}; native CPU decode kernels: {cpu_kernels.status()}", flush=True)
    try:
        serve(assistant, host=settings.host, port=settings.port)
    except OSError as exc:  # taken between the check and now
        raise UserError(port_message(settings.host, settings.port, exc)) from None
    return 0


def port_message(host: str, port: int, exc: Exception | None = None) -> str:
    why = f" ({exc.strerror or exc})" if isinstance(exc, OSError) and (exc.strerror or str(exc)) else ""
    return (f"port {port} on {host} is already in use{why}; pass another one with --port N "
            "(or stop the program using it)")


def check_port(host: str, port: int) -> None:
    """UserError naming --port if nothing can listen on host:port now."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(port_message(host, port, exc)) from None
