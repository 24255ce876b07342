"""The app factory: the OpenAI-compatible API, index management and the Gradio chat in one ASGI app.

    create_app(assistant, engine, settings) -> FastAPI
        /v1/chat/completions /v1/completions /v1/embeddings /v1/models /v1/files /health   (routes/)
        /login            the API key page (only when a key is set)
        /                 the Gradio chat UI (assistant.ui.build_app), answering through the same engine
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI

from assistant.server import errors
from assistant.server.access import AccessMiddleware
from assistant.server.context import ServerContext
from assistant.server.routes import chat, completions, embeddings, files, models

MAX_BODY_BYTES = 1 << 20        # JSON requests
MAX_UPLOAD_BYTES = 64 << 20     # file uploads (API and UI)


def create_app(assistant: Any | None, engine: Any, settings: Any, *, encoder: Any | None = None,
               api_key: str | None = None, ui: bool = True, max_body_bytes: int = MAX_BODY_BYTES,
               max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The server's ASGI app.

    assistant: an Assistant (model "assistant", index management, the UI) or None (generator only).
    engine: a model.scheduler.BatchScheduler (many requests decoded together) or a plain Generator.
    The assistant's answers go through `engine` too (its `engine` attribute is set here).
    """
    app = FastAPI(title="Assistant", description="OpenAI-compatible API of the local RAG assistant",
                  docs_url="/docs" if api_key is None else None, redoc_url=None)
    if assistant is not None and engine is not getattr(assistant, "generator", None):
        assistant.engine = engine
    encoder = encoder if encoder is not None else getattr(assistant, "encoder", None)
    app.state.ctx = ServerContext(assistant, engine, settings, encoder, started=time.time())
    errors.install(app)
    for module in (chat, completions, embeddings, models, files):
        app.include_router(module.router)
    if ui and assistant is not None:
        import gradio as gr

        from assistant.ui import build_app
        from assistant.ui_render import CSS

        gr.mount_gradio_app(app, build_app(assistant), path="", css=CSS, ssr_mode=False, show_error=True,
                            max_file_size=max_upload_bytes, footer_links=[])
    app.add_middleware(AccessMiddleware, api_key=api_key, max_body_bytes=max_body_bytes,
                       max_upload_bytes=max_upload_bytes)
    return app
