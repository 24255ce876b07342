"""Shared by the chat and completions routers: sampling params, and the response in one piece or as
server-sent events (OpenAI's chunk format, then `data: [DONE]`)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from assistant.server.errors import from_user_error
from assistant.server.generation import Choices, Final, collect, first_then_rest
from assistant.server.schemas import SamplingFields, usage
from model.errors import UserError


def sampling_params(ctx: Any, body: SamplingFields, index: int = 0) -> Any:
    """SamplingParams: the server's settings, overridden by the request (choice `index` gets seed + index)."""
    from model.sampling import SamplingParams

    values = {**ctx.settings.sampling(), **body.sampling()}
    values["num_beams"] = 1
    if values.get("seed") is not None:
        values["seed"] += index
    try:
        return SamplingParams(**values).validate()
    except UserError as exc:
        raise from_user_error(exc) from None


def start(factories: list[Callable]) -> Choices:
    try:
        return Choices(factories)
    except UserError as exc:  # prompt too long, queue full, bad parameter: before any response is sent
        raise from_user_error(exc) from None


def sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def respond(request: Request, choices: Choices, body: SamplingFields, model: str, kind: str,
                  piece: Callable[[int, str | None, str | None], dict], whole: Callable[[int, str, Final], dict]
                  ) -> Any:
    """Run the choices and answer: JSON (`whole` builds each choice) or SSE (`piece` builds each chunk's choice).

    kind: "chat.completion" or "text_completion". Extra fields of a Final (sources, citations) go to the top
    level of the response, and of the last chunk."""
    ident = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    head = {"id": ident, "created": created, "model": model}
    n = body.n
    if not body.stream:
        texts, finals = await collect(choices, request, n)
        response = {**head, "object": kind, "choices": [whole(i, texts[i], f) for i, f in enumerate(finals)],
                    "usage": _usage(finals)}
        for final in finals:
            response.update(final.extra)
        return JSONResponse(response)

    chunk_kind = kind + ".chunk" if kind == "chat.completion" else kind
    events = await first_then_rest(choices.events())

    async def stream() -> AsyncIterator[bytes]:
        finals: list[Final] = []
        try:
            if kind == "chat.completion":
                for i in range(n):
                    yield sse({**head, "object": chunk_kind, "choices": [piece(i, None, None)]})
            async for index, item in events:
                if isinstance(item, Final):
                    finals.append(item)
                    chunk = {**head, "object": chunk_kind, "choices": [piece(index, "", item.finish_reason)]}
                    chunk.update(item.extra)
                    if body.include_usage:
                        chunk["usage"] = None
                    yield sse(chunk)
                elif item:
                    chunk = {**head, "object": chunk_kind, "choices": [piece(index, item, None)]}
                    if body.include_usage:
                        chunk["usage"] = None
                    yield sse(chunk)
            if body.include_usage:
                yield sse({**head, "object": chunk_kind, "choices": [], "usage": _usage(finals)})
        except Exception as exc:  # noqa: BLE001 - mid-stream: the status is sent already, say it in the stream
            message = getattr(exc, "message", None) or str(exc)
            yield sse({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
        finally:
            choices.cancel()
        yield sse("[DONE]")

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _usage(finals: list[Final]) -> dict[str, int]:
    prompt = finals[0].prompt_tokens if finals else 0
    return usage(prompt, sum(f.completion_tokens for f in finals))
