"""Continuous batching: many requests decoded together over one Generator's KV cache.

    submit ─► waiting queue ─► (free cache rows) prefill every admitted prompt in one pass ─► first tokens
                                       │
    running batch: one decode step for every running row at once (each row at its own position) ─► sample
        each row with its own SamplingParams ─► detokenise, stop strings ─► that request's queue of text deltas
                                       │
    EOS / stop string / max tokens / cancel / a client that closed its stream ─► the row is freed at once
    (the last running row moves into the hole, so rows 0..n-1 are always the batch)

`BatchScheduler` owns one `Generator` and a background thread. `submit()` (or the Generator-compatible
`stream()`) returns a `RequestStream`: iterate it for text deltas; `.result` is the GenerationResult.
Requests join the running batch between two decode steps (no waiting for the batch to drain) and leave it
the step they finish.

Each row is an independent sequence at its own cache slots (`Decoder.forward` with input_pos [B, 1]), and
every kernel on the decode path computes a row the same way whatever the other rows are (the native kernels
are batch-invariant; see model/csrc/qmatmul.c), so a greedy answer is the same token for token whether its
request ran alone or beside others.

Prefill: the prompts admitted in one round are prefilled together (`Decoder.prefill_segments`: one pass whose
matrix products cover every prompt's rows; attention per prompt), and each prompt starts from the longest
prefix whose keys/values are already cached (model.prefix_cache: the chat template's system message, shared
instructions, earlier turns). Both are exact — a prompt's first token and cache entries are bit-identical alone,
packed with others, or after a cached prefix — where the decoder's matrix products treat rows independently
(`Decoder.rows_independent()`, checked once); otherwise prompts are prefilled one at a time, from their start.

Counters (`stats()`): decode steps, rows decoded, the largest batch and the mean batch per step, prefill passes
and the prompt tokens computed or copied from the prefix cache; the tests use them to prove that requests
really shared decode steps and prefill passes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from model.decoder import PrefillSegment
from model.errors import SamplingParamsError, UserError
from model.generate import GenerationResult, Generator, IncrementalDetokenizer, StopScanner, TextStream
from model.prefix_cache import PrefixCache
from model.sampling import PenaltyState, SamplingParams, make_generator, sample


class SchedulerBusyError(UserError):
    """Too many requests are waiting; try again in `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SchedulerClosedError(UserError):
    """The scheduler was closed (the server is shutting down)."""


@dataclass
class SchedulerStats:
    """What the engine did: steps is the number of batched decode steps, rows_decoded the rows they computed."""

    steps: int = 0
    rows_decoded: int = 0
    max_batch: int = 0
    prefills: int = 0  # requests prefilled
    prefill_passes: int = 0  # forward passes that prefilled them (fewer: several prompts per pass)
    prefill_tokens: int = 0  # prompt tokens computed
    prefix_hit_tokens: int = 0  # prompt tokens copied from the prefix cache instead
    prefill_s: float = 0.0  # seconds spent in prefill passes
    submitted: int = 0
    finished: int = 0
    cancelled: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def mean_batch(self) -> float:
        """Mean number of rows per decode step."""
        return self.rows_decoded / self.steps if self.steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean_batch": round(self.mean_batch, 3), "prefill_s": round(self.prefill_s, 3)}


_DONE = object()


class RequestStream(TextStream):
    """A submitted request: iterate for text deltas; `.result` (GenerationResult) once exhausted.

    Consume it from any one thread. `close()` (or dropping the stream mid-way) cancels the request: the
    scheduler frees its row before the next decode step, and a reader still gets the "cancelled" result.
    """

    def __init__(self, request: "_Request") -> None:
        super().__init__(self._deltas(request))
        self._request = request
        self.prompt_tokens = len(request.ids)

    @staticmethod
    def _deltas(request: "_Request") -> Iterator[str]:
        while True:
            item = request.out.get()
            if item is _DONE:
                return request.result
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Cancel the request (its row is freed at once)."""
        self._request.cancel.set()
        self._request.wake()

    def __del__(self) -> None:  # a client that went away without closing: free the row
        if self.result is None:
            self._request.cancel.set()


class _Request:
    """One request's state, owned by the scheduler thread once admitted."""

    def __init__(self, ids: list[int], cut: int, max_new: int, params: SamplingParams,
                 cancel: threading.Event | None, scheduler: "BatchScheduler") -> None:
        self.ids, self.cut, self.max_new, self.params = ids, cut, max_new, params
        self.cancel = cancel if cancel is not None else threading.Event()
        self.scheduler = scheduler
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.result: GenerationResult | None = None
        self.start = time.perf_counter()
        self.first_at: float | None = None
        self.sampled = 0  # tokens drawn (EOS included)
        self.generated: list[int] = []
        self.pos = len(ids)  # cache slot of the next token fed to the model
        self.last: int | None = None
        self.detok: IncrementalDetokenizer | None = None
        self.scanner = StopScanner(params.stop)
        self.penalties: PenaltyState | None = None
        self.rng: torch.Generator | None = None
        self.finish_reason: str | None = None

    def wake(self) -> None:
        with self.scheduler._cond:
            self.scheduler._cond.notify_all()


class BatchScheduler:
    """Continuous batching over one Generator (see the module docstring).

    max_batch: rows of the KV cache (requests decoded at once); max_waiting: requests queued beyond those
    before `submit` raises SchedulerBusyError; context_length: slots per row (prompt + answer), at most the
    model's window (memory: rows x slots x layers x 2 x kv heads x head dim x 2 bytes); prefill_budget: prompt
    tokens prefilled between two decode steps (at least one request), so running answers keep flowing while
    new ones are admitted; decode_between: decode steps run after each admission round before the next one,
    so a request admitted while others wait still streams its first words before the next prefill (with long
    prompts, prefill dominates: without it the first requests would stall behind every later prefill); after an
    admission from idle, requests that arrived during it are admitted at once (several clients that start
    together share the next prefill pass instead of waiting for decode steps); prefix_cache_mb: memory for
    the keys/values of shared prompt beginnings (model.prefix_cache; 0 = off); keep_float_weights: keep float
    copies of quantised weights for prefill (model.quant.keep_float_weights: faster first tokens, 4 bytes per
    weight more memory); admit_gap_s, admit_wait_s: a request that finds the engine idle waits for others that
    arrive within admit_gap_s of each other (at most admit_wait_s in all), so clients that start together share
    one prefill pass instead of the first one's pass and then the rest's; a lone request waits admit_gap_s.
    """

    def __init__(self, generator: Generator, max_batch: int = 8, max_waiting: int = 64,
                 context_length: int | None = 2048, prefill_budget: int = 1024, decode_between: int = 4,
                 prefix_cache_mb: float = 64, keep_float_weights: bool = False, admit_gap_s: float = 0.03,
                 admit_wait_s: float = 0.1) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.generator = generator
        self.tokenizer = generator.tokenizer
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.context_length = min(context_length or generator.context_length, generator.context_length)
        self.prefill_budget = prefill_budget
        self.decode_between = decode_between
        self.admit_gap_s, self.admit_wait_s = admit_gap_s, admit_wait_s
        self._decode_credit = 0  # decode steps owed before the next admission round
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * (1 << 20))) if prefix_cache_mb > 0 else None
        self._exact_packing: bool | None = None  # Decoder.rows_independent(), checked at the first prefill
        if keep_float_weights:
            from model.quant import keep_float_weights as keep

            keep(generator.decoder)
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._stats = SchedulerStats()
        self._cache_version: int | None = None
        self._holds_lock = False
        self._thread = threading.Thread(target=self._loop, name="batch-scheduler", daemon=True)
        self._thread.start()

    # ---- Generator-compatible surface ---------------------------------------------------------------------
    @property
    def identity(self) -> str:
        return self.generator.identity

    def count_tokens(self, text: str) -> int:
        return self.generator.count_tokens(text)

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        return self.generator.render_chat(messages, add_generation_prompt)

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
               cancel: threading.Event | None = None, truncate_left: bool = False,
               **overrides: Any) -> RequestStream:
        """Like Generator.stream, through the running batch. Raises ContextOverflowError /
        SamplingParamsError at once, SchedulerBusyError when the queue is full."""
        return self.submit(prompt, self.generator._params(params, overrides), cancel=cancel,
                           truncate_left=truncate_left)

    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                 **kw: Any) -> GenerationResult:
        return self.stream(prompt, params, **kw).finish()

    def stream_chat(self, messages: Sequence[dict], params: SamplingParams | None = None, **kw: Any) -> RequestStream:
        ids = self.tokenizer.encode(self.render_chat(messages), add_special_tokens=False)
        return self.stream(ids, params, **kw)

    # ---- submitting -----------------------------------------------------------------------------------------
    def submit(self, prompt: str | Sequence[int], params: SamplingParams, *,
               cancel: threading.Event | None = None, truncate_left: bool = False) -> RequestStream:
        """Queue a request; returns its stream (text deltas, then `.result`)."""
        params = params.validate()
        if params.num_beams > 1:
            raise SamplingParamsError("num_beams > 1 (beam search) is not served by the batch scheduler; "
                                      "use num_beams=1 or Generator.generate directly")
        generator = self.generator
        ids, cut, max_new = generator._fit_prompt(generator._encode_prompt(prompt), params.max_new_tokens,
                                                  truncate_left, limit=self.context_length)
        request = _Request(ids, cut, max_new, params, cancel, self)
        with self._cond:
            if self._closed:
                raise SchedulerClosedError("the generation engine is shut down")
            if len(self._waiting) >= self.max_waiting:
                raise SchedulerBusyError(f"the server is busy: {len(self._waiting)} requests are already waiting "
                                         f"for one of {self.max_batch} slots; retry shortly", retry_after=1.0)
            self._waiting.append(request)
            self._stats.submitted += 1
            self._cond.notify_all()
        return RequestStream(request)

    def stats(self) -> SchedulerStats:
        """A snapshot of the counters."""
        with self._cond:
            stats = SchedulerStats(**{k: v for k, v in asdict(self._stats).items()})
            stats.running, stats.waiting = len(self._running), len(self._waiting)
        return stats

    def reset_stats(self) -> None:
        with self._cond:
            self._stats = SchedulerStats()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread; unfinished requests end with finish_reason "cancelled"."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ---- the engine thread ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and not self._waiting and not self._running:
                        self._release_generator()
                        self._cond.wait()
                    if self._closed:
                        break
                    if not self._running:  # from idle: let a burst of arrivals share the first prefill pass
                        self._gather_burst()
                    admitted = self._take_waiting() if not self._running or self._decode_credit <= 0 else []
                    if admitted:  # from idle, no stream is running yet: requests that arrive during this
                        # prefill are admitted right after it (not decode_between steps later)
                        self._decode_credit = self.decode_between if self._running else 0
                self._acquire_generator()
                with torch.inference_mode():
                    if admitted:
                        self._prefill(admitted)
                    self._drop_finished()
                    if self._running:
                        self._decode_step()
                        self._decode_credit -= 1
                        self._drop_finished()
        except BaseException as exc:  # never leave a client waiting forever; later submits are refused
            with self._cond:
                self._closed = True
            self._fail_all(exc)
            raise
        finally:
            self._fail_all(None)
            self._release_generator()

    def _gather_burst(self) -> None:
        """With the engine idle and a request waiting (under self._cond): wait while more keep arriving, each
        within admit_gap_s of the one before, for at most admit_wait_s after the first, or until the batch is
        full. Clients that start together then share one prefill pass; a lone request waits admit_gap_s."""
        cap = self._waiting[0].start + self.admit_wait_s
        while not self._closed and 0 < len(self._waiting) < self.max_batch:
            left = min(cap, self._waiting[-1].start + self.admit_gap_s) - time.perf_counter()
            if left <= 0:
                return
            self._cond.wait(left)

    def _take_waiting(self) -> list[_Request]:
        """Requests to admit now: free rows, up to the prefill budget (at least one). Cancelled ones end here."""
        admitted: list[_Request] = []
        budget = self.prefill_budget
        while self._waiting and len(self._running) + len(admitted) < self.max_batch:
            request = self._waiting[0]
            if request.cancel.is_set():
                self._waiting.popleft()
                self._end(request, "cancelled")
                continue
            if admitted and len(request.ids) > budget:
                break
            self._waiting.popleft()
            admitted.append(request)
            budget -= len(request.ids)
        return admitted

    def _acquire_generator(self) -> None:
        """Hold the Generator's lock while there is work (direct Generator calls wait), and (re)build the
        batch cache when someone else replaced it while we were idle."""
        if not self._holds_lock:
            self.generator._lock.acquire()
            self._holds_lock = True
        decoder = self.generator.decoder
        if self._cache_version != decoder.cache_version or decoder.cache_batch_size != self.max_batch:
            decoder.setup_cache(self.max_batch, self.context_length, device=self.generator.device,
                                dtype=self.generator.kv_cache_dtype)
            self._cache_version = decoder.cache_version

    def _release_generator(self) -> None:
        if self._holds_lock and not self._running:
            self._holds_lock = False
            self.generator._lock.release()

    def _prefill(self, requests: list[_Request]) -> None:
        """Prefill the admitted prompts into the next free rows (together, from their cached prefixes, when that
        is exact; see the module docstring) and draw each one's first token."""
        decoder = self.generator.decoder
        if self._exact_packing is None:
            self._exact_packing = decoder.rows_independent()
        cache = self.prefix_cache if self._exact_packing else None
        segments = []
        for i, request in enumerate(requests):
            row = len(self._running) + i
            start = cache.load(decoder, row, cache.match(decoder, request.ids)) if cache is not None else 0
            segments.append(PrefillSegment(row, request.ids[start:], start))
        began = time.perf_counter()
        if self._exact_packing:
            logits = decoder.prefill_segments(segments)  # [n, V]
            passes = 1
        else:
            logits = torch.cat([decoder.prefill_segments([segment]) for segment in segments])
            passes = len(segments)
        took = time.perf_counter() - began
        if cache is not None:
            for segment, request in zip(segments, requests):
                cache.store(decoder, segment.row, request.ids)
        device = self.generator.device
        for i, (segment, request) in enumerate(zip(segments, requests)):
            params = request.params
            request.rng = make_generator(params.seed, device) if not params.greedy else None
            request.penalties = PenaltyState(params, [request.ids], decoder.config.vocab_size, device)
            request.detok = IncrementalDetokenizer(self.tokenizer)
            with self._cond:
                self._running.append(request)
                self._stats.prefills += 1
                self._stats.prefill_tokens += len(segment.tokens)
                self._stats.prefix_hit_tokens += segment.start
            self._take_token(request, self._sample(request, logits[i : i + 1]))
        with self._cond:
            self._stats.prefill_passes += passes
            self._stats.prefill_s += took

    def _sample(self, request: _Request, logits: torch.Tensor) -> int:
        """Draw the request's next token from its logits [1, V] (its own penalties and random stream)."""
        penalties = request.penalties
        if penalties.active:
            logits = penalties.process(logits)
        token = sample(logits, request.params, request.rng)  # [1]
        if penalties.active:
            penalties.update(token)
        return int(token[0])

    def _decode_step(self) -> None:
        """One decode step for every running row, each at its own slot."""
        running = self._running
        device = self.generator.device
        tokens = torch.tensor([[r.last] for r in running], dtype=torch.long, device=device)  # [n, 1]
        positions = torch.tensor([[r.pos] for r in running], dtype=torch.long, device=device)  # [n, 1]
        logits = self.generator._decode(tokens, positions, None, kv_len=max(r.pos for r in running) + 1,
                                        compiled=False)  # [n, V]
        with self._cond:
            self._stats.steps += 1
            self._stats.rows_decoded += len(running)
            self._stats.max_batch = max(self._stats.max_batch, len(running))
        plain = [i for i, r in enumerate(running) if r.params.greedy and not r.penalties.active]
        greedy = torch.argmax(logits, dim=-1).tolist() if plain else []  # [n]: one call for the plain rows
        for i, request in enumerate(running):
            request.pos += 1
            token = greedy[i] if request.params.greedy and not request.penalties.active else \
                self._sample(request, logits[i : i + 1])
            self._take_token(request, token)

    def _take_token(self, request: _Request, token: int) -> None:
        """Stream the new token's text (what Generator.stream does per token) and decide whether it ends."""
        now = time.perf_counter()
        if request.first_at is None:
            request.first_at = now
        request.sampled += 1
        request.last = token
        if request.cancel.is_set():
            request.finish_reason = "cancelled"
            return
        if token in self.generator.eos_token_ids:
            request.finish_reason = "eos"
            return
        request.generated.append(token)
        out = request.scanner.push(request.detok.add([token]))
        if out:
            request.out.put(out)
        if request.scanner.stopped:
            request.finish_reason = "stop"
        elif request.sampled >= request.max_new:
            request.finish_reason = "length"

    def _drop_finished(self) -> None:
        """Free the rows of finished or cancelled requests; the last running row moves into each hole."""
        running = self._running
        i = 0
        while i < len(running):
            request = running[i]
            if request.finish_reason is None and request.cancel.is_set():
                request.finish_reason = "cancelled"
            if request.finish_reason is None:
                i += 1
                continue
            last = len(running) - 1
            if i != last:
                moved = running[last]
                self.generator.decoder.copy_cache_row(last, i, moved.pos)
                running[i] = moved
            with self._cond:
                running.pop()
            self._end(request, request.finish_reason)

    def _end(self, request: _Request, reason: str) -> None:
        """Flush the request's text, deliver its result and close its stream."""
        end = time.perf_counter()
        if request.detok is not None:
            tail = request.scanner.push(request.detok.flush())
            if request.scanner.stopped and reason != "cancelled":
                reason = "stop"
            tail += request.scanner.finish()
            if tail:
                request.out.put(tail)
        request.result = self.generator._result(request.scanner.text, request.generated, reason, len(request.ids),
                                                request.cut, request.start, request.first_at, end)
        with self._cond:
            self._stats.finished += 1
            self._stats.cancelled += reason == "cancelled"
        request.out.put(_DONE)

    def _fail_all(self, exc: BaseException | None) -> None:
        with self._cond:
            pending = list(self._waiting) + list(self._running)
            self._waiting.clear()
            self._running.clear()
        for request in pending:
            if exc is None:
                self._end(request, "cancelled")
            else:
                request.out.put(RuntimeError(f"the generation engine failed: {exc!r}"))
