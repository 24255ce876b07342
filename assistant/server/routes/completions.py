"""POST /v1/completions: plain text continuation by the generator (no chat template, no retrieval)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from assistant.server.context import GENERATOR_MODEL
from assistant.server.errors import APIError
from assistant.server.generation import engine_choice
from assistant.server.routes.common import respond, sampling_params, start
from assistant.server.schemas import CompletionRequest

router = APIRouter()


def _piece(index: int, delta: str | None, finish: str | None) -> dict[str, Any]:
    return {"index": index, "text": delta or "", "logprobs": None, "finish_reason": finish}


def _whole(index: int, text: str, final: Any) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": final.finish_reason}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    ctx = request.app.state.ctx
    ctx.check_model(body.model, [GENERATOR_MODEL])
    if body.echo:
        raise APIError(400, "echo is not supported", param="echo")
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts or len(prompts) * body.n > 8:
        raise APIError(400, "give 1 to 8 prompts (times n)", param="prompt")
    factories = [engine_choice(ctx.engine, prompt, sampling_params(ctx, body, i))
                 for prompt in prompts for i in range(body.n)]
    body.n = len(factories)
    return await respond(request, start(factories), body, body.model, "text_completion", _piece, _whole)
