"""POST /v1/chat/completions: model "assistant" answers from the documents with citations; "generator" is
the plain language model (chat template, no retrieval; n > 1 choices run side by side in the batch)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from assistant.server.context import ASSISTANT_MODEL, GENERATOR_MODEL
from assistant.server.errors import APIError
from assistant.server.generation import assistant_choice, engine_choice
from assistant.server.routes.common import respond, sampling_params, start
from assistant.server.schemas import ChatCompletionRequest

router = APIRouter()


def _piece(index: int, delta: str | None, finish: str | None) -> dict[str, Any]:
    if delta is None:  # the opening chunk of a choice
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    return {"index": index, "delta": {"content": delta} if delta else {}, "finish_reason": finish}


def _whole(index: int, text: str, final: Any) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": final.finish_reason}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    ctx = request.app.state.ctx
    ctx.check_model(body.model, ctx.chat_models())
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    if body.model == ASSISTANT_MODEL:
        if body.n > 1:
            raise APIError(400, "n > 1 is not available for model 'assistant' (one answer per question); "
                           f"use model '{GENERATOR_MODEL}' for several choices", param="n")
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is None:
            raise APIError(400, "messages must contain a user message (the question)", param="messages")
        options = {**body.sampling(), "k": body.k, "retrieval_mode": body.retrieval_mode,
                   "answer_mode": body.answer_mode}
        options = {k: v for k, v in options.items() if v is not None}
        sampling_params(ctx, body)  # bad values answer 400 before anything runs
        factories = [assistant_choice(ctx.assistant, messages[last_user]["content"], messages[:last_user], options)]
    else:
        generator = ctx.generator
        ids = generator.tokenizer.encode(generator.render_chat(messages), add_special_tokens=False)
        factories = [engine_choice(ctx.engine, ids, sampling_params(ctx, body, i)) for i in range(body.n)]
    return await respond(request, start(factories), body, body.model, "chat.completion", _piece, _whole)
