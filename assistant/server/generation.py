"""The HTTP layer's side of generation: it submits to the engine and streams from it, nothing more.

A choice is a plain iterator run in a worker thread (the engine's streams block on a queue): it yields text
deltas, then one `Final`. `run_choices` merges n of them into one async stream of `(index, item)` and sets
their cancel event when the consumer goes away (a client that disconnects frees its engine slot at once).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from anyio import to_thread

from model.errors import UserError

from assistant.server.errors import APIError, from_user_error


@dataclass
class Final:
    """How a choice ended: OpenAI's finish reason, token counts, and extra fields (sources, citations)."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_END = object()


def _next(iterator: Iterator[Any]) -> Any:
    return next(iterator, _END)


class Choices:
    """n choices running in worker threads, merged; iterate `events()`; `cancel()` stops them all."""

    def __init__(self, factories: list[Callable[[threading.Event], Iterator[Any]]]) -> None:
        self.cancel_event = threading.Event()
        self._iterators = [factory(self.cancel_event) for factory in factories]
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []

    async def _pump(self, index: int, iterator: Iterator[Any]) -> None:
        try:
            while True:
                item = await to_thread.run_sync(_next, iterator, abandon_on_cancel=True)
                if item is _END:
                    break
                await self._queue.put((index, item))
        except Exception as exc:  # noqa: BLE001 - delivered to the consumer
            await self._queue.put((index, exc))
        finally:
            await self._queue.put((index, _END))

    async def events(self) -> AsyncIterator[tuple[int, Any]]:
        """(index, str delta | Final) until every choice has ended; errors are raised as APIError."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._pump(i, it)) for i, it in enumerate(self._iterators)]
        running = len(self._tasks)
        try:
            while running:
                index, item = await self._queue.get()
                if item is _END:
                    running -= 1
                    continue
                if isinstance(item, UserError):
                    raise from_user_error(item)
                if isinstance(item, Exception):
                    raise item
                yield index, item
        finally:
            self.cancel()

    def cancel(self) -> None:
        self.cancel_event.set()
        for task in self._tasks:
            task.cancel()


async def first_then_rest(events: AsyncIterator[tuple[int, Any]]) -> AsyncIterator[tuple[int, Any]]:
    """Pull the first event now (so an error before any text still gets an HTTP error status), then the rest."""
    try:
        first = await events.__anext__()
    except StopAsyncIteration:
        first = None

    async def rest() -> AsyncIterator[tuple[int, Any]]:
        if first is not None:
            yield first
            async for event in events:
                yield event

    return rest()


async def collect(choices: Choices, request: Any, n: int) -> tuple[list[str], list[Final]]:
    """Run every choice to the end (non-streaming), cancelling them if the client disconnects meanwhile."""
    texts = [""] * n
    finals: list[Final | None] = [None] * n

    async def gather() -> None:
        async for index, item in choices.events():
            if isinstance(item, Final):
                finals[index] = item
            else:
                texts[index] += item

    task = asyncio.create_task(gather())
    while not task.done():
        await asyncio.wait([task], timeout=0.25)
        if not task.done() and await request.is_disconnected():
            choices.cancel()
            task.cancel()
            raise APIError(499, "client disconnected")
    task.result()
    return texts, [f for f in finals if f is not None]


def engine_choice(engine: Any, prompt: Any, params: Any) -> Callable[[threading.Event], Iterator[Any]]:
    """A choice that runs `prompt` through the engine (a BatchScheduler or a Generator): deltas, then Final.

    The engine call happens when the factory is called (in the request's coroutine), so a prompt that does not
    fit or a full queue is an HTTP error before any streaming starts."""
    from assistant.server.schemas import finish_reason

    def factory(cancel: threading.Event) -> Iterator[Any]:
        stream = engine.stream(prompt, params, cancel=cancel)

        def run() -> Iterator[Any]:
            try:
                yield from stream
            finally:
                stream.close()
            result = stream.result
            yield Final(finish_reason(result.finish_reason), result.prompt_tokens, len(result.token_ids),
                        result.text)

        return run()

    return factory


def assistant_choice(assistant: Any, question: str, history: list[dict], options: dict[str, Any]
                     ) -> Callable[[threading.Event], Iterator[Any]]:
    """A choice that answers from the documents: deltas, then Final with sources (each with its page, None
    for an unpaged file, and its `location`: "file.pdf, p. 3") and citations, the evidence,
    and for a composed answer its sentences (each with the passage and offsets of its supporting words), the
    question's kind and the layout (extra fields of the response and of its last chunk)."""
    from dataclasses import asdict

    from assistant.answer import Answer
    from assistant.server.schemas import finish_reason

    def factory(cancel: threading.Event) -> Iterator[Any]:
        def run() -> Iterator[Any]:
            for item in assistant.stream(question, history, cancel=cancel, **options):
                if isinstance(item, Answer):
                    sources = [{**asdict(s), "location": s.location} for s in item.sources]  # page: p. N
                    yield Final(finish_reason(item.finish_reason), item.timings.prompt_tokens,
                                item.timings.generated_tokens, item.text,
                                {"sources": sources, "citations": list(item.citations), "refused": item.refused,
                                 "evidence": [asdict(e) for e in item.evidence], "answer_mode": item.mode,
                                 "sentences": [s.to_dict() for s in item.sentences], "kind": item.kind,
                                 "layout": item.layout})
                else:
                    yield item

        return run()

    return factory
