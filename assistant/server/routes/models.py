"""GET /v1/models, GET /v1/models/{id}, GET /health (status and the engine's counters)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from assistant.server.errors import APIError

router = APIRouter()


def _model(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "assistant"}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    ctx = request.app.state.ctx
    names = ctx.chat_models() + ctx.embedding_models()
    return {"object": "list", "data": [_model(n, int(ctx.started)) for n in names]}


@router.get("/v1/models/{name}")
async def get_model(name: str, request: Request) -> dict[str, Any]:
    ctx = request.app.state.ctx
    if name not in ctx.chat_models() + ctx.embedding_models():
        raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
    return _model(name, int(ctx.started))


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    ctx = request.app.state.ctx
    stats = getattr(ctx.engine, "stats", None)
    index = ctx.assistant.stats() if ctx.assistant is not None else {}
    return {"status": "ok", "uptime_s": round(time.time() - ctx.started, 1),
            "generator": getattr(ctx.generator, "identity", ""), "engine": stats().to_dict() if stats else None,
            "index": {k: v for k, v in index.items() if isinstance(v, (int, float, str))}}
