"""Text generation over the decoder's preallocated KV cache.

    prompt ─► tokens ─► prefill (one forward over the prompt, logits of the last position only)
                     ─► loop: penalties ─► sample ─► one-token decode step (KV cache) ─► ...
                     ─► incremental detokeniser ─► stop-string scanner ─► text deltas

`Generator.stream()` returns a `TextStream`: iterate it for text deltas (never half a character, never a
piece of a stop string); `.result` holds the `GenerationResult` once it is exhausted. `generate()`,
`chat()` and `generate_batch()` are built on the same loop. Beam search is a separate, deterministic loop.

Speed notes. CPU: the decode step attends over the filled part of the cache only (`kv_len`), nothing is
re-encoded per token, and the sampler is vectorised. CUDA: bf16 weights, SDPA, and (by default) the one-token
decode step compiled with `torch.compile(mode="reduce-overhead")` (CUDA graphs) over a static-size cache;
tokens are read back to the host one step late, so the GPU computes step i+1 while the host detokenises step i.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.decoder import PrefillSegment
from model.errors import ContextOverflowError, SamplingParamsError
from model.sampling import PenaltyState, SamplingParams, make_generator, sample

FINISH_REASONS = ("stop", "length", "eos", "cancelled")
REPLACEMENT_CHAR = "\ufffd"


@dataclass
class GenerationResult:
    """What one generation produced.

    text: the generated text (without the prompt, without a stop string or EOS).
    token_ids: generated token ids (without the EOS token).
    finish_reason: "stop" (a stop string), "eos" (the model ended), "length" (max_new_tokens or the context
        window is full) or "cancelled".
    prompt_tokens: prompt length in tokens after any truncation; truncated_tokens: how many were cut off.
    prefill_ms: time to the first generated token; decode_ms: time for the rest;
    decode_tokens_per_s: generated tokens after the first per second of decode time.
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    decode_tokens_per_s: float = 0.0
    truncated_tokens: int = 0

    @property
    def generated_tokens(self) -> int:
        """Number of generated tokens."""
        return len(self.token_ids)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas that never split a multi-byte character.

    It decodes a small window (ids since the last stable point) and emits only the new suffix; while the
    window's text ends in U+FFFD (an incomplete UTF-8 sequence), it waits for more tokens. Decoding the
    previous window alongside keeps decoders that strip a leading space from changing the result.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # window start
        self.read_offset = 0  # ids before this were emitted

    def _window_texts(self) -> tuple[str, str]:
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=self.skip_special_tokens)
        full = decode(self.ids[self.prefix_offset :], skip_special_tokens=self.skip_special_tokens)
        return prefix, full

    def add(self, token_ids: Sequence[int]) -> str:
        """Append ids; return the newly completed text ('' while a character is incomplete)."""
        self.ids.extend(token_ids)
        prefix, full = self._window_texts()
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT_CHAR) and full.startswith(prefix):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Everything not yet emitted, even an incomplete trailing character (end of generation)."""
        prefix, full = self._window_texts()
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :] if full.startswith(prefix) else full


class StopScanner:
    """Finds stop strings in streamed text, holding back any tail that could be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.text = ""  # all text seen
        self.emitted = 0  # chars of self.text already released
        self.stopped = False

    def push(self, delta: str) -> str:
        """Add text; return what can be released now (stops at, and drops, a stop string)."""
        if self.stopped:
            return ""
        self.text += delta
        if not self.stops:
            out, self.emitted = self.text[self.emitted :], len(self.text)
            return out
        hits = [i for i in (self.text.find(s, self.emitted) for s in self.stops) if i >= 0]
        if hits:
            end = min(hits)
            out = self.text[self.emitted : end]
            self.text, self.emitted, self.stopped = self.text[:end], end, True
            return out
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.text) - self.emitted), hold, -1):
                if self.text.endswith(stop[:k]):
                    hold = k
                    break
        end = len(self.text) - hold
        out, self.emitted = self.text[self.emitted : end], end
        return out

    def finish(self) -> str:
        """Release the held-back tail (generation ended without completing a stop string)."""
        if self.stopped:
            return ""
        out, self.emitted = self.text[self.emitted :], len(self.text)
        return out


class TextStream:
    """Iterate for text deltas; after exhaustion `.result` is the GenerationResult.

    `text` is everything yielded so far. Closing the stream (or dropping it) stops the generation.
    """

    def __init__(self, steps: Iterator[str]) -> None:
        self._steps = steps
        self.result: GenerationResult | None = None
        self.text = ""

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        try:
            delta = next(self._steps)
        except StopIteration as stop:
            if self.result is None:
                self.result = stop.value
            raise
        self.text += delta
        return delta

    def finish(self) -> GenerationResult:
        """Run to the end and return the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    def close(self) -> None:
        """Stop generating (frees the generator for the next request)."""
        self._steps.close()


def resolve_quantize(quantize: str | None, path: Path, device: torch.device) -> str | None:
    """The quantisation `Generator.load` applies: None (off), "int8" or "int4" (see its docstring for "auto")."""
    if quantize is None:
        return None
    mode = str(quantize).strip().lower()
    if mode in ("", "none", "off", "false", "fp32", "float"):
        return None
    if mode == "auto":
        four_bit_gguf = path.suffix.lower() == ".gguf" and "q4" in path.name.lower()
        return "int4" if device.type == "cpu" and four_bit_gguf else None
    from model.quant import SUPPORTED

    if mode not in SUPPORTED:
        raise SamplingParamsError(f"quantize={quantize!r} is not supported; use 'auto', 'none', 'int8' or 'int4'")
    return mode


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class Generator:
    """Owns a decoder, its tokenizer and chat template; generates text (see module docstring).

    One generation runs at a time per Generator (a lock serialises concurrent callers).
    """

    def __init__(
        self,
        decoder: nn.Module,
        tokenizer: Any,
        identity: str = "",
        device: torch.device | str | None = None,
        compile: bool | None = None,
        prefix_cache_mb: float = 32,
    ) -> None:
        self.decoder = decoder.eval()
        self.tokenizer = tokenizer
        self.identity = identity
        param = next(decoder.parameters())
        self.device = torch.device(device) if device is not None else param.device
        self.context_length: int = decoder.config.max_seq_len
        self.eos_token_ids: tuple[int, ...] = tuple(tokenizer.eos_token_ids)
        self.pad_token_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # CUDA: compiled one-token decode over a static cache (CUDA graphs). Off on CPU.
        self.compile = (self.device.type == "cuda") if compile is None else bool(compile)
        self._compiled_decode = None
        self._lock = threading.Lock()
        # One-sequence CPU prefills reuse the keys/values of the prompt beginnings they share (the chat
        # template's system message): model.prefix_cache, exact where the decoder's rows are independent.
        self.prefix_cache = None
        if prefix_cache_mb > 0 and self.device.type == "cpu":
            from model.prefix_cache import PrefixCache

            self.prefix_cache = PrefixCache(int(prefix_cache_mb * (1 << 20)))
        # The KV cache's dtype: float16 when decoding runs on the native CPU kernels (half the bytes to read
        # per step at long contexts, where attention rivals the weights), else the model's.
        self.kv_cache_dtype: torch.dtype | None = None
        if self.device.type == "cpu" and not self.compile and getattr(decoder, "native_decode", False):
            from model import cpu_kernels

            if cpu_kernels.has_f16c() and decoder.native_decode_plan() is not None:  # (the plan is kept)
                self.kv_cache_dtype = torch.float16
        if self.compile:
            decoder.static_cache_attention = True
            self._compiled_decode = torch.compile(self._decode_forward, mode="reduce-overhead", fullgraph=True)

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        spec: str | Path | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        adapter: str | Path | None = None,
        quantize: str | None = "auto",
        compile: bool | None = None,
    ) -> "Generator":
        """Load the generator model (None = the default SmolLM2-135M-Instruct GGUF, fetched on first use).

        adapter: a LoRA adapter folder (model.lora): merged into float weights, or kept as an exact low-rank
            side path beside quantised ones (model.quant.LowRankUpdate).
        quantize: weight-only quantisation of the linear layers (model.quant): "int8", "int4", None / "none"
            (off), or "auto" (the default): int4 on CPU when the weights come from a 4-bit GGUF file (a name
            with Q4, like the default model: int4 re-creates its Q4_1 blocks, so the cost is tiny and decode is
            much faster), otherwise off (CUDA, float checkpoints).
        compile: compile the decode step (default: on for CUDA, off for CPU).
        """
        from model.runtime import resolve_device, resolve_dtype
        from model.sources import resolve_generator
        from model.weights import load_decoder

        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        path = resolve_generator(spec)
        quantize = resolve_quantize(quantize, path, device)
        loaded = load_decoder(path, device=device, dtype=dtype)
        model, identity = loaded.model, loaded.identity
        if adapter is not None:
            from model.lora import load_adapter

            # Merged into float weights; kept as a low-rank side path beside quantised ones (merged into int4
            # weights, the update is smaller than a 4-bit step and would be rounded away).
            load_adapter(model, adapter, loaded.identity, merge=not quantize)
            identity = f"{identity}+adapter:{Path(adapter).name}"
        if quantize:
            from model.quant import quantize_decoder

            quantize_decoder(model, quantize)
            identity = f"{identity}+{quantize}"
        return cls(model, loaded.tokenizer, identity=identity, device=device, compile=compile)

    # ---- text helpers -------------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` (no special tokens added)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text the checkpoint's chat template makes of `messages`."""
        return self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt)

    def _encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        return [int(t) for t in prompt]

    def _fit_prompt(self, ids: list[int], max_new_tokens: int, truncate_left: bool,
                    limit: int | None = None) -> tuple[list[int], int, int]:
        """(prompt ids, tokens cut from the left, how many new tokens fit in `limit` (default: the context))."""
        limit = limit or self.context_length
        cut = 0
        if len(ids) + max_new_tokens > limit and truncate_left:
            keep = max(limit - max_new_tokens, 1)
            if len(ids) > keep:
                cut = len(ids) - keep
                ids = ids[cut:]
        if not ids:
            raise SamplingParamsError("the prompt is empty: give at least one token of text")
        if len(ids) >= limit:
            raise ContextOverflowError(
                f"the prompt is {len(ids)} tokens long but the model's context window is {limit} tokens "
                "(and the answer needs room too); shorten the prompt (fewer or shorter passages, less history) "
                "or pass truncate_left=True to drop its beginning"
            )
        return ids, cut, min(max_new_tokens, limit - len(ids))

    # ---- model calls --------------------------------------------------------------------------------------
    def _ensure_cache(self, batch_size: int, needed: int) -> None:
        """A KV cache for `batch_size` rows with at least `needed` slots (reused when it fits)."""
        decoder = self.decoder
        # Compiled (CUDA graphs): one static size, the whole context, so the captured graph is reused.
        # Eager: just what this request needs (rounded up), since attention only reads the filled part.
        size = self.context_length if self.compile else min(_round_up(needed, 256), self.context_length)
        current = getattr(decoder, "cache_len", 0)
        fits = decoder.cache_batch_size == batch_size and needed <= current and (
            self.kv_cache_dtype is None or decoder.layers[0].attention.kv_cache.k.dtype == self.kv_cache_dtype)
        too_big = not self.compile and current > 4 * size and current > 2048
        if not fits or too_big:
            decoder.setup_cache(batch_size, size, device=self.device, dtype=self.kv_cache_dtype)

    @torch.inference_mode()
    def _prefill(self, tokens: torch.Tensor, pad_mask: torch.Tensor | None, soft_prompt: Any = None) -> torch.Tensor:
        """tokens [B, T] at cache slots 0..T-1 -> logits of the last position [B, V] (float32).

        With a soft prompt (model.prompt_tuning) of P vectors, [soft prompt; tokens] fill slots 0..P+T-1 instead.

        One sequence on CPU goes through `Decoder.prefill_segments`, the batch scheduler's prefill, so a request
        gets the same tokens from `generate` as from the server (alone or beside others), from the cached keys
        and values of the prompt's beginning when an earlier prompt started the same way (bit-identical)."""
        decoder = self.decoder
        if soft_prompt is not None:
            return self._prefill_soft_prompt(tokens, pad_mask, soft_prompt)
        if tokens.shape[0] == 1 and pad_mask is None and tokens.device.type == "cpu":
            ids = tokens[0].tolist()
            cache = self.prefix_cache if self.prefix_cache is not None and decoder.rows_independent() else None
            start = cache.load(decoder, 0, cache.match(decoder, ids)) if cache is not None else 0
            logits = decoder.prefill_segments([PrefillSegment(0, ids[start:], start)])  # [1, V]
            if cache is not None:
                cache.store(decoder, 0, ids)
            return logits
        positions = torch.arange(tokens.shape[1], device=self.device)  # [T]
        logits = decoder(tokens, positions, pad_mask, kv_len=tokens.shape[1], last_only=True)  # [B, 1, V]
        return logits[:, -1].float()

    def _prefill_soft_prompt(self, tokens: torch.Tensor, pad_mask: torch.Tensor | None,
                             soft_prompt: Any) -> torch.Tensor:
        """[soft prompt; tokens] at cache slots 0..P+T-1 -> logits of the last position [B, V] (float32).

        A left-padded row (pad_mask False on its first slots) gets its soft prompt right after its padding, just
        before its first token: the relative positions it was trained with. One plain forward over the inputs'
        vectors (no prefix cache: the cached blocks are keyed by token ids)."""
        from model.prompt_tuning import insert_soft_prompt

        embeds = self.decoder.tok_embeddings(tokens)  # [B, T, D]
        width = tokens.shape[1] + soft_prompt.n_virtual_tokens
        pads = None if pad_mask is None else (~pad_mask[:, :width]).sum(dim=1).tolist()  # padding slots per row
        inputs = insert_soft_prompt(embeds, soft_prompt.vectors(embeds.dtype, embeds.device), pads)  # [B, P+T, D]
        positions = torch.arange(width, device=self.device)  # [P+T]
        logits = self.decoder(None, positions, pad_mask, kv_len=width, last_only=True, inputs_embeds=inputs)
        return logits[:, -1].float()  # [B, V]

    def _virtual_tokens(self, soft_prompt: Any) -> int:
        """The soft prompt's length P (0 for none); refuses one of another width than the decoder's."""
        if soft_prompt is None:
            return 0
        if soft_prompt.dim != self.decoder.config.dim:
            from model.errors import CheckpointError

            raise CheckpointError(f"the soft prompt is {soft_prompt.dim} wide but the generator's embeddings are "
                                  f"{self.decoder.config.dim}: it was trained for another model")
        return soft_prompt.n_virtual_tokens

    def load_soft_prompt(self, folder: str | Path) -> Any:
        """The soft prompt saved in `folder` (model.prompt_tuning), checked against this generator's base weights
        (CheckpointError when it was trained on another model); pass it as `soft_prompt=` to generate."""
        from model.prompt_tuning import load_soft_prompt

        return load_soft_prompt(folder, self.identity, self.decoder)

    def _decode_forward(
        self, tokens: torch.Tensor, input_pos: torch.Tensor, pad_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """One decode step: tokens [B, 1] at slot input_pos [1] -> logits [B, V] float32."""
        return self.decoder(tokens, input_pos, pad_mask)[:, -1].float()

    @torch.inference_mode()
    def _decode(
        self, tokens: torch.Tensor, input_pos: torch.Tensor, pad_mask: torch.Tensor | None, kv_len: int,
        compiled: bool = True,
    ) -> torch.Tensor:
        """One decode step -> logits [B, V] float32 (compiled on CUDA unless `compiled` is False)."""
        if compiled and self._compiled_decode is not None:
            logits = self._compiled_decode(tokens, input_pos, pad_mask)
            return logits.clone()  # the CUDA graph's output buffer is reused by the next replay
        return self.decoder(tokens, input_pos, pad_mask, kv_len=kv_len)[:, -1].float()

    @torch.inference_mode()
    def _token_steps(
        self, prompts: list[list[int]], params: SamplingParams, max_new: int, soft_prompt: Any = None
    ) -> Iterator[torch.Tensor]:
        """Prefill the (left-padded) prompts, each after the soft prompt when one is given, then yield the next
        token of every row, [B] on device, `max_new` times. Rows that have finished keep going; the caller
        ignores them."""
        batch = len(prompts)
        virtual = self._virtual_tokens(soft_prompt)
        longest = max(len(p) for p in prompts)
        device = self.device
        self._ensure_cache(batch, virtual + longest + max_new)
        tokens = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        for row, ids in enumerate(prompts):
            tokens[row, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        tokens = tokens.to(device)  # [B, T]
        pad_mask = None
        if any(len(p) != longest for p in prompts):
            pad_mask = torch.ones(batch, self.decoder.cache_len, dtype=torch.bool)
            for row, ids in enumerate(prompts):
                pad_mask[row, : longest - len(ids)] = False
            pad_mask = pad_mask.to(device)  # [B, S]: False on left padding
        generator = make_generator(params.seed, device) if not params.greedy else None
        penalties = PenaltyState(params, prompts, self.decoder.config.vocab_size, device)
        logits = self._prefill(tokens, pad_mask, soft_prompt)  # [B, V]
        filled = virtual + longest  # slots the prefill wrote
        input_pos = torch.tensor([filled], device=device)  # [1] slot of the next token, advanced in place
        for step in range(max_new):
            if penalties.active:
                logits = penalties.process(logits)
            next_tokens = sample(logits, params, generator)  # [B]
            yield next_tokens
            if step == max_new - 1:
                break
            penalties.update(next_tokens)
            logits = self._decode(next_tokens.view(batch, 1), input_pos, pad_mask, kv_len=filled + step + 1)
            input_pos += 1

    def _host_tokens(self, steps: Iterator[torch.Tensor]) -> Iterator[list[int]]:
        """Device token tensors -> host lists. On CUDA one step late, so the GPU never waits for the host."""
        if self.device.type != "cuda":
            for tokens in steps:
                yield tokens.tolist()
            return
        previous = None
        for tokens in steps:
            if previous is not None:
                yield previous.tolist()
            previous = tokens
        if previous is not None:
            yield previous.tolist()

    # ---- public API ---------------------------------------------------------------------------------------
    def _params(self, params: SamplingParams | None, overrides: dict) -> SamplingParams:
        params = params or SamplingParams()
        if overrides:
            params = params.replace(**overrides)
        return params.validate()

    def stream(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        cancel: threading.Event | None = None,
        truncate_left: bool = False,
        soft_prompt: Any = None,
        **overrides: Any,
    ) -> TextStream:
        """Generate from `prompt` (text or token ids); iterate the returned stream for text deltas.

        Stops on EOS, a stop string (not included), max_new_tokens, a full context window, or when
        `cancel` is set (finish_reason "cancelled"). Raises ContextOverflowError (before generating) when
        the prompt does not fit and `truncate_left` is False. `soft_prompt` (from `load_soft_prompt`) is put
        in front of the prompt (model.prompt_tuning); its vectors take context slots too.
        """
        params = self._params(params, overrides)
        limit = self.context_length - self._virtual_tokens(soft_prompt)
        ids, cut, max_new = self._fit_prompt(self._encode_prompt(prompt), params.max_new_tokens, truncate_left,
                                             limit)
        if params.num_beams > 1:
            return TextStream(self._stream_beam(ids, cut, max_new, params, cancel, soft_prompt))
        return TextStream(self._stream_sample(ids, cut, max_new, params, cancel, soft_prompt))

    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None, **kw: Any) -> GenerationResult:
        """Generate and return the whole result (see `stream` for the arguments)."""
        return self.stream(prompt, params, **kw).finish()

    def chat(self, messages: Sequence[dict], params: SamplingParams | None = None, **kw: Any) -> GenerationResult:
        """Generate the assistant's reply to chat `messages` ([{"role": ..., "content": ...}])."""
        return self.stream_chat(messages, params, **kw).finish()

    def stream_chat(self, messages: Sequence[dict], params: SamplingParams | None = None, **kw: Any) -> TextStream:
        """Stream the assistant's reply to chat `messages`, rendered with the checkpoint's chat template."""
        ids = self.tokenizer.encode(self.render_chat(messages), add_special_tokens=False)
        return self.stream(ids, params, **kw)

    def _stream_sample(
        self, ids: list[int], cut: int, max_new: int, params: SamplingParams, cancel: threading.Event | None,
        soft_prompt: Any = None,
    ) -> Iterator[str]:
        with self._lock:
            detok = IncrementalDetokenizer(self.tokenizer)
            scanner = StopScanner(params.stop)
            generated: list[int] = []
            finish = "length"
            start = time.perf_counter()
            first_at = None
            steps = self._host_tokens(self._token_steps([ids], params, max_new, soft_prompt))
            try:
                for (token,) in steps:
                    if first_at is None:
                        first_at = time.perf_counter()
                    if cancel is not None and cancel.is_set():
                        finish = "cancelled"
                        break
                    if token in self.eos_token_ids:
                        finish = "eos"
                        break
                    generated.append(token)
                    out = scanner.push(detok.add([token]))
                    if out:
                        yield out
                    if scanner.stopped:
                        finish = "stop"
                        break
            finally:
                steps.close()
            end = time.perf_counter()
            tail = scanner.push(detok.flush())
            if scanner.stopped:
                finish = "stop"
            tail += scanner.finish()
            if tail:
                yield tail
            return self._result(scanner.text, generated, finish, len(ids), cut, start, first_at, end)

    def _result(self, text: str, generated: list[int], finish: str, prompt_len: int, cut: int,
                start: float, first_at: float | None, end: float) -> GenerationResult:
        first_at = first_at if first_at is not None else end
        decode_s = end - first_at
        steps = max(len(generated) - 1, 0)
        return GenerationResult(
            text=text, token_ids=generated, finish_reason=finish, prompt_tokens=prompt_len,
            prefill_ms=(first_at - start) * 1e3, decode_ms=decode_s * 1e3,
            decode_tokens_per_s=steps / decode_s if decode_s > 0 and steps else 0.0, truncated_tokens=cut,
        )

    def generate_batch(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | None = None,
        *,
        truncate_left: bool = False,
        cancel: threading.Event | None = None,
        soft_prompt: Any = None,
        **overrides: Any,
    ) -> list[GenerationResult]:
        """Generate for several prompts of different lengths in one batch (left padding + pad mask), each after
        `soft_prompt` when one is given (see `stream`).

        Results come back in input order; timings are those of the whole batch. Beam search runs the
        prompts one after another.
        """
        params = self._params(params, overrides)
        if not prompts:
            return []
        limit = self.context_length - self._virtual_tokens(soft_prompt)
        fitted = [self._fit_prompt(self._encode_prompt(p), params.max_new_tokens, truncate_left, limit)
                  for p in prompts]
        if params.num_beams > 1:
            return [TextStream(self._stream_beam(ids, cut, n, params, cancel, soft_prompt)).finish()
                    for ids, cut, n in fitted]
        max_new = min(n for _, _, n in fitted)
        batch = len(fitted)
        with self._lock:
            detoks = [IncrementalDetokenizer(self.tokenizer) for _ in range(batch)]
            scanners = [StopScanner(params.stop) for _ in range(batch)]
            generated: list[list[int]] = [[] for _ in range(batch)]
            finish: list[str | None] = [None] * batch
            start, first_at = time.perf_counter(), None
            steps = self._host_tokens(self._token_steps([f[0] for f in fitted], params, max_new, soft_prompt))
            try:
                for row_tokens in steps:
                    if first_at is None:
                        first_at = time.perf_counter()
                    if cancel is not None and cancel.is_set():
                        finish = [f or "cancelled" for f in finish]
                        break
                    for row, token in enumerate(row_tokens):
                        if finish[row] is not None:
                            continue
                        if token in self.eos_token_ids:
                            finish[row] = "eos"
                            continue
                        generated[row].append(token)
                        scanners[row].push(detoks[row].add([token]))
                        if scanners[row].stopped:
                            finish[row] = "stop"
                    if all(f is not None for f in finish):
                        break
            finally:
                steps.close()
            end = time.perf_counter()
        results = []
        for row, (ids, cut, _) in enumerate(fitted):
            scanners[row].push(detoks[row].flush())
            reason = finish[row] or ("stop" if scanners[row].stopped else "length")
            scanners[row].finish()
            results.append(self._result(scanners[row].text, generated[row], reason, len(ids), cut,
                                        start, first_at, end))
        return results

    # ---- beam search --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _beam_search(
        self, ids: list[int], max_new: int, params: SamplingParams, cancel: threading.Event | None,
        soft_prompt: Any = None,
    ) -> tuple[list[int], str, float | None]:
        """Classic beam search. Returns (best generated ids, finish reason, time of the first step)."""
        num_beams, vocab = params.num_beams, self.decoder.config.vocab_size
        device = self.device
        eos = set(self.eos_token_ids)
        prompt_len = len(ids) + self._virtual_tokens(soft_prompt)  # cache slots of the prompt (and soft prompt)
        self.decoder.setup_cache(1, min(self.context_length, _round_up(prompt_len + max_new, 256)), device=device,
                                 dtype=self.kv_cache_dtype)
        logits = self._prefill(torch.tensor([ids], device=device), None, soft_prompt)  # [1, V]
        self.decoder.reorder_cache(torch.zeros(num_beams, dtype=torch.long, device=device))
        logits = logits.expand(num_beams, vocab)  # [K, V]
        penalties = PenaltyState(params, [ids] * num_beams, vocab, device)
        beam_scores = torch.full((num_beams,), float("-inf"), device=device)
        beam_scores[0] = 0.0  # all beams start identical: expand from the first only
        sequences: list[list[int]] = [[] for _ in range(num_beams)]
        finished: list[tuple[float, list[int], bool]] = []  # (normalised score, ids, ended with EOS)
        input_pos = torch.tensor([prompt_len], device=device)
        first_at = None
        lp = params.length_penalty

        def normalise(score: float, length: int) -> float:
            return score / (max(length, 1) ** lp)

        reason = "length"
        for step in range(max_new):
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            if penalties.active:
                logits = penalties.process(logits)
            logprobs = torch.log_softmax(logits.float(), dim=-1)  # [K, V]
            scores = (beam_scores[:, None] + logprobs).view(-1)  # [K*V]
            top_scores, top_index = torch.topk(scores, 2 * num_beams)
            top_scores, top_index = top_scores.tolist(), top_index.tolist()
            if first_at is None:
                first_at = time.perf_counter()
            next_rows, next_tokens, next_scores = [], [], []
            for rank, (score, flat) in enumerate(zip(top_scores, top_index)):
                row, token = divmod(flat, vocab)
                if score == float("-inf"):
                    break
                if token in eos:
                    if rank < num_beams:  # only an EOS among the top K candidates ends a hypothesis
                        finished.append((normalise(score, len(sequences[row]) + 1), list(sequences[row]), True))
                    continue
                next_rows.append(row)
                next_tokens.append(token)
                next_scores.append(score)
                if len(next_rows) == num_beams:
                    break
            if len(finished) >= num_beams:
                best_running = normalise(max(next_scores), step + 1) if next_scores else float("-inf")
                worst_done = sorted(item[0] for item in finished)[-num_beams]
                if params.early_stopping or best_running <= worst_done or not next_rows:
                    reason = "eos"
                    break
            if not next_rows:
                reason = "eos"
                break
            while len(next_rows) < num_beams:  # fewer live candidates than beams: pad with dead copies
                next_rows.append(next_rows[0])
                next_tokens.append(next_tokens[0])
                next_scores.append(float("-inf"))
            sequences = [sequences[r] + [t] for r, t in zip(next_rows, next_tokens)]
            rows = torch.tensor(next_rows, device=device)
            tokens = torch.tensor(next_tokens, device=device)  # [K]
            beam_scores = torch.tensor(next_scores, device=device)
            if step == max_new - 1:
                break
            self.decoder.reorder_cache(rows)
            penalties.reorder(rows)
            penalties.update(tokens)
            logits = self._decode(tokens.view(num_beams, 1), input_pos, None, kv_len=prompt_len + step + 1,
                                  compiled=False)
            input_pos += 1
        if reason != "eos":  # out of steps or cancelled: the running beams compete too
            scores = beam_scores.tolist()
            for row, seq in enumerate(sequences):
                if scores[row] > float("-inf") and seq:
                    finished.append((normalise(scores[row], len(seq)), seq, False))
        if not finished:
            return [], reason, first_at
        _, best, ended_with_eos = max(finished, key=lambda item: item[0])
        if reason != "cancelled":
            reason = "eos" if ended_with_eos else "length"
        return best, reason, first_at

    def _stream_beam(
        self, ids: list[int], cut: int, max_new: int, params: SamplingParams, cancel: threading.Event | None,
        soft_prompt: Any = None,
    ) -> Iterator[str]:
        """Beam search as a stream: the whole text arrives as one delta at the end."""
        with self._lock:
            start = time.perf_counter()
            try:
                best, reason, first_at = self._beam_search(ids, max_new, params, cancel, soft_prompt)
            finally:
                # the beam cache has num_beams rows; the next request sets up its own
                self.decoder.reset_cache()
            end = time.perf_counter()
            scanner = StopScanner(params.stop)
            scanner.push(self.tokenizer.decode(best, skip_special_tokens=True))
            if scanner.stopped:
                reason = "stop"
            scanner.finish()
            if scanner.text:
                yield scanner.text
            return self._result(scanner.text, best, reason, len(ids), cut, start, first_at, end)
