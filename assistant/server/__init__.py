"""The HTTP server: an OpenAI-compatible API beside the Gradio chat, on one ASGI app (FastAPI + uvicorn).

`create_app` builds it; `serve` runs it with uvicorn. Generation goes through a `model.scheduler.BatchScheduler`,
so concurrent requests share decode steps instead of waiting for each other.
"""

from __future__ import annotations

from typing import Any

from assistant.server.app import create_app

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_binding(host: str, api_key: str | None) -> None:
    """Refuse to serve beyond this machine without a key."""
    from model.errors import UserError

    if host not in LOOPBACK and not api_key:
        raise UserError(f"refusing to bind {host} without an API key: anyone on the network could use the "
                        "assistant and read your documents; pass --api-key KEY or set ASSISTANT_API_KEY "
                        "(or bind 127.0.0.1)")


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


__all__ = ["LOOPBACK", "check_binding", "create_app", "serve"]
