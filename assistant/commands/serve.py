"""`assistant serve [FOLDER]`: the OpenAI-compatible API and the chat UI in one process (127.0.0.1:8000)."""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `serve` subcommand."""
    from assistant.settings import add_arguments

    parser = subparsers.add_parser(
        "serve",
        help="serve the OpenAI-compatible API and the chat UI",
        description="Serve an OpenAI-compatible HTTP API (/v1/chat/completions with models 'assistant' and "
        "'generator', /v1/completions, /v1/embeddings, /v1/models, /v1/files, /health) and the browser chat at / "
        "about FOLDER (default: the bundled corpus/). Concurrent requests are decoded together in one batch.",
    )
    parser.add_argument("folder_arg", nargs="?", metavar="FOLDER", help="documents folder (default corpus/)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; anything else needs an API key)")
    parser.add_argument("--port", type=int, default=None, help="port (default 8000)")
    parser.add_argument("--api-key", default=None,
                        help="require this key (Bearer token; the UI asks for it once); default $ASSISTANT_API_KEY")
    parser.add_argument("--max-batch", type=int, default=8, help="requests decoded together (default 8)")
    parser.add_argument("--max-waiting", type=int, default=64,
                        help="requests queued beyond those before answering 503 (default 64)")
    parser.add_argument("--low-memory", action="store_true",
                        help="do not keep float copies of the quantised weights for prefill (saves ~0.4 GB with "
                        "the default model; first tokens come ~0.1 s later)")
    parser.add_argument("--no-ui", dest="ui", action="store_false", help="the API only, no chat page at /")
    add_arguments(parser, sampling=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Open the assistant, start the engine and serve until interrupted."""
    from assistant.commands.common import open_assistant
    from assistant.server import check_binding, create_app, serve
    from assistant.settings import DEFAULT_CORPUS

    settings, factory = open_assistant(args, folder=args.folder_arg)
    api_key = args.api_key or os.environ.get("ASSISTANT_API_KEY") or None
    host = args.host or settings.host
    port = args.port or 8000
    check_binding(host, api_key)  # before minutes of loading
    if settings.folder is None and settings.index is not None and not settings.index.exists():
        settings.folder = DEFAULT_CORPUS
    assistant = factory()
    from model.scheduler import BatchScheduler

    generator = assistant.generator
    if generator.device.type == "cpu":
        from model import cpu_kernels

        print(f"generator: {generator.identity}; native CPU decode kernels: {cpu_kernels.status()}", flush=True)
    engine = BatchScheduler(generator, max_batch=args.max_batch, max_waiting=args.max_waiting,
                            context_length=settings.max_context_tokens, keep_float_weights=not args.low_memory)
    app = create_app(assistant, engine, settings, api_key=api_key, ui=args.ui)
    where = f"http://{host}:{port}"
    print(f"serving on {where}  (chat: {where}/ , OpenAI API: {where}/v1"
          f"{', API key required' if api_key else ''})", flush=True)
    try:
        serve(app, host=host, port=port)
    finally:
        engine.close()
    return 0
