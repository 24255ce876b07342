"""POST /v1/embeddings: the project's own sentence encoder (the one the index uses), unit-length vectors."""

from __future__ import annotations

import base64
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request

from assistant.server.errors import APIError
from assistant.server.schemas import EmbeddingRequest, usage

router = APIRouter()
MAX_INPUTS = 256


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> Any:
    ctx = request.app.state.ctx
    ctx.check_model(body.model, ctx.embedding_models())
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts or len(texts) > MAX_INPUTS:
        raise APIError(400, f"input must hold 1 to {MAX_INPUTS} strings", param="input")
    if any(not t for t in texts):
        raise APIError(400, "input strings must not be empty", param="input")
    encoder = ctx.encoder
    if body.dimensions is not None and body.dimensions != encoder.dim:
        raise APIError(400, f"this encoder's vectors have {encoder.dim} dimensions", param="dimensions")

    def run() -> Any:
        with ctx.encoder_lock:
            return encoder.embed(texts), sum(encoder.count_tokens(texts))

    vectors, tokens = await to_thread.run_sync(run)
    data = []
    for i, vector in enumerate(vectors):
        value: Any = (base64.b64encode(vector.astype("<f4").tobytes()).decode()
                      if body.encoding_format == "base64" else vector.tolist())
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": body.model, "usage": usage(tokens, 0)}
