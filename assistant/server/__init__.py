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


class Running:
    """A server started by `start_in_thread`: `url`, and `stop()`."""

    def __init__(self, server: Any, thread: Any, url: str) -> None:
        self.server, self.thread, self.url = server, thread, url

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Running:
    """Run the app with uvicorn in a background thread (tests, benchmarks); port 0 = a free port."""
    import socket
    import threading
    import time

    import uvicorn

    if port == 0:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    return Running(server, thread, f"http://{host}:{port}")


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


__all__ = ["LOOPBACK", "Running", "check_binding", "create_app", "serve", "start_in_thread"]
