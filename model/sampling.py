"""Sampling: `SamplingParams` and small pure functions on next-token logits.

Every function takes logits of shape [B, V] (one row per sequence in the batch) and returns a new tensor
of the same shape; none of them moves data to the host, so the whole sampling path runs on the GPU
without a synchronisation. Order of application (the same as Hugging Face's `generate`):

    penalties (repetition, frequency/presence) -> n-gram blocking -> temperature -> top-k -> top-p -> min-p -> draw

Temperature 0 means greedy decoding (argmax); the filters are then irrelevant and skipped.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from model.errors import SamplingParamsError

NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token, and when to stop.

    temperature: 0 = greedy (argmax); > 0 divides the logits before sampling.
    top_k: keep only the k most likely tokens (0 = off).
    top_p: keep the smallest set of tokens whose probabilities sum to >= top_p (1.0 = off).
    min_p: drop tokens whose probability is below min_p x the top token's probability (0 = off).
    repetition_penalty: Hugging Face semantics over prompt and output tokens: a seen token's positive
        logit is divided by it, a negative one multiplied (1.0 = off; > 1 discourages repeats).
    frequency_penalty / presence_penalty: OpenAI semantics over the generated tokens only:
        logit -= frequency_penalty * count + presence_penalty * (count > 0).
    no_repeat_ngram_size: never produce an n-gram (of this many tokens) that already occurs in the
        prompt + output (0 = off).
    max_new_tokens: stop after this many generated tokens.
    seed: seed for the random draw (None = a fresh random seed each call); same seed, same text.
    stop: strings that end the output when generated (they are not part of the returned text).
    num_beams: > 1 runs beam search (deterministic: temperature/top-k/top-p/min-p are ignored).
    length_penalty: beam scores are divided by (generated length ** length_penalty).
    early_stopping: beam search stops as soon as num_beams finished hypotheses exist.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    max_new_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = True

    def __post_init__(self) -> None:
        # Accept a single stop string or any iterable of strings; store a tuple (hashable, immutable).
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif self.stop is None:
            object.__setattr__(self, "stop", ())
        elif not isinstance(self.stop, tuple):
            try:
                object.__setattr__(self, "stop", tuple(self.stop))
            except TypeError:
                pass  # validate() reports it

    def replace(self, **overrides: object) -> "SamplingParams":
        """A copy with some fields changed; unknown field names raise SamplingParamsError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise SamplingParamsError(
                f"unknown sampling option(s) {unknown}; valid options are {sorted(names)}"
            )
        return dataclasses.replace(self, **overrides)

    @property
    def greedy(self) -> bool:
        """True when the next token is always the argmax (temperature 0)."""
        return self.temperature == 0.0

    def validate(self) -> "SamplingParams":
        """Check every field; raise SamplingParamsError saying which value is wrong and what is allowed."""

        def bad(name: str, rule: str) -> SamplingParamsError:
            return SamplingParamsError(f"{name}={getattr(self, name)!r} is invalid: {rule}")

        def is_number(value: object) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not is_number(self.temperature) or self.temperature < 0:
            raise bad("temperature", "use a number >= 0 (0 means greedy)")
        if not is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", "use an integer >= 0 (0 turns it off)")
        if not is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "use a number in (0, 1] (1 turns it off)")
        if not is_number(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", "use a number in [0, 1] (0 turns it off)")
        if not is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "use a number > 0 (1 turns it off)")
        for name in ("frequency_penalty", "presence_penalty"):
            if not is_number(getattr(self, name)) or not -2 <= getattr(self, name) <= 2:
                raise bad(name, "use a number in [-2, 2] (0 turns it off)")
        if not is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            raise bad("no_repeat_ngram_size", "use an integer >= 0 (0 turns it off)")
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise bad("max_new_tokens", "use an integer >= 1")
        if self.seed is not None and not is_int(self.seed):
            raise bad("seed", "use an integer or None")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", "use a non-empty string or a list of non-empty strings")
        if not is_int(self.num_beams) or self.num_beams < 1:
            raise bad("num_beams", "use an integer >= 1 (1 means no beam search)")
        if not is_number(self.length_penalty):
            raise bad("length_penalty", "use a finite number (1.0 = average log-probability per token)")
        if not isinstance(self.early_stopping, bool):
            raise bad("early_stopping", "use True or False")
        return self


# --------------------------------------------------------------------------------------------------
# Penalties


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Hugging Face repetition penalty: for tokens with seen[b, v] True, divide a positive logit by
    `penalty` and multiply a negative one by it.

    logits: [B, V] float; seen: [B, V] bool (token occurred in prompt or output).
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)  # [B, V]
    return torch.where(seen, penalised, logits)


def apply_frequency_presence_penalty(
    logits: torch.Tensor, counts: torch.Tensor, frequency_penalty: float, presence_penalty: float
) -> torch.Tensor:
    """OpenAI penalties: logits - frequency_penalty * counts - presence_penalty * (counts > 0).

    logits: [B, V]; counts: [B, V] how often each token was generated so far (any numeric dtype).
    """
    if frequency_penalty == 0.0 and presence_penalty == 0.0:
        return logits
    counts = counts.to(logits.dtype)
    return logits - frequency_penalty * counts - presence_penalty * (counts > 0).to(logits.dtype)


def banned_ngram_mask(history: torch.Tensor, ngram_size: int, vocab_size: int) -> torch.Tensor:
    """Which next tokens would repeat an n-gram already present in `history`.

    history: [B, L] int64 token ids, padding marked by a negative id (never matches, never banned).
    Returns a bool mask [B, V]: True where producing that token would complete an n-gram
    (last n-1 tokens + token) that occurs earlier in the row. Vectorised over positions: O(L * n).
    """
    batch, length = history.shape
    banned = torch.zeros(batch, vocab_size, dtype=torch.bool, device=history.device)
    if ngram_size < 1 or length < ngram_size:
        return banned
    windows = history.unfold(1, ngram_size, 1)  # [B, W, n], W = L - n + 1
    # An earlier n-gram is repeated by the next token when its first n-1 tokens equal the current
    # last n-1 tokens; its last token is then banned.
    prefix = history[:, length - ngram_size + 1 :]  # [B, n-1]
    matches = (windows[:, :, :-1] == prefix.unsqueeze(1)).all(dim=-1)  # [B, W]
    matches &= (windows >= 0).all(dim=-1) & (prefix >= 0).all(dim=-1, keepdim=True)
    next_tokens = windows[:, :, -1].clamp(min=0)  # [B, W]
    hits = torch.zeros(batch, vocab_size, dtype=torch.int32, device=history.device)
    hits.scatter_add_(1, next_tokens, matches.to(torch.int32))  # [B, V]: how many windows ban each token
    return hits > 0


def apply_no_repeat_ngram(logits: torch.Tensor, history: torch.Tensor, ngram_size: int) -> torch.Tensor:
    """Set to -inf every token that would repeat an n-gram of `history` [B, L] (see `banned_ngram_mask`)."""
    if ngram_size < 1:
        return logits
    banned = banned_ngram_mask(history, ngram_size, logits.shape[-1])  # [B, V]
    return logits.masked_fill(banned, NEG_INF)


# --------------------------------------------------------------------------------------------------
# Warpers: temperature and truncation filters


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits [B, V] by temperature (> 0). Temperature 0 (greedy) is handled by `sample`."""
    if temperature in (0.0, 1.0):
        return logits
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits per row (ties broken by index), set the rest to -inf."""
    vocab = logits.shape[-1]
    if k <= 0 or k >= vocab:
        return logits
    kept = torch.topk(logits, k, dim=-1).indices  # [B, k]
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, kept, True)  # [B, V]
    return logits.masked_fill(~keep, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probabilities sum to >= p.

    The most likely token is always kept.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
    sorted_probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # [B, V] mass of strictly better tokens
    drop_sorted = mass_before >= p  # already reached p without this token
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's probability."""
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)  # [B, V]
    threshold = min_p * probs.amax(dim=-1, keepdim=True)  # [B, 1]
    return logits.masked_fill(probs < threshold, NEG_INF)


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p, as configured."""
    logits = apply_temperature(logits, params.temperature)
    logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    return min_p_filter(logits, params.min_p)


# --------------------------------------------------------------------------------------------------
# Drawing


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on `device`, seeded with `seed` (or from fresh OS entropy when None)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def sample_from_logits(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token per row from softmax(logits) without a host sync (the exponential-race trick):
    argmax(p / E) with E ~ Exp(1) picks index i with probability p_i.

    logits: [B, V] -> token ids [B] int64.
    """
    probs = torch.softmax(logits.float(), dim=-1)  # [B, V]
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)  # [B, V]
    return torch.argmax(probs / noise, dim=-1)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token of every row: argmax when temperature is 0, else temperature/top-k/top-p/min-p
    then a seeded random draw. Penalties are applied before (see `LogitsProcessorState.process`).

    logits: [B, V] -> token ids [B] int64.
    """
    if params.greedy:
        return torch.argmax(logits, dim=-1)
    return sample_from_logits(warp(logits, params), generator)


class PenaltyState:
    """Per-row token statistics that the penalties need, kept on the logits' device.

    seen: [B, V] bool, tokens present in the prompt or the output (repetition penalty).
    counts: [B, V] int32, how often each token was generated (frequency / presence penalties).
    history: [B, L] int64, prompt + output ids with -1 for padding (n-gram blocking).
    Only the pieces the params need are maintained, so plain greedy decoding pays nothing.
    """

    def __init__(
        self, params: SamplingParams, prompts: list[list[int]], vocab_size: int, device: torch.device
    ) -> None:
        self.params = params
        self.vocab_size = vocab_size
        batch = len(prompts)
        longest = max((len(p) for p in prompts), default=0)
        self.track_seen = params.repetition_penalty != 1.0
        self.track_counts = params.frequency_penalty != 0.0 or params.presence_penalty != 0.0
        self.track_history = params.no_repeat_ngram_size > 0
        self.seen: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        self.history: torch.Tensor | None = None
        if self.track_seen or self.track_history:
            padded = torch.full((batch, max(longest, 1)), -1, dtype=torch.long)
            for row, ids in enumerate(prompts):
                if ids:
                    padded[row, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            padded = padded.to(device)  # [B, L] left-padded with -1
            if self.track_seen:
                self.seen = torch.zeros(batch, vocab_size, dtype=torch.bool, device=device)
                self.seen.scatter_(1, padded.clamp(min=0), padded >= 0)
            if self.track_history:
                self.history = padded
        if self.track_counts:
            self.counts = torch.zeros(batch, vocab_size, dtype=torch.int32, device=device)

    @property
    def active(self) -> bool:
        """True when any penalty or n-gram blocking is on."""
        return self.track_seen or self.track_counts or self.track_history

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply the configured penalties and n-gram blocking to logits [B, V]."""
        params = self.params
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen, params.repetition_penalty)
        if self.counts is not None:
            logits = apply_frequency_presence_penalty(
                logits, self.counts, params.frequency_penalty, params.presence_penalty
            )
        if self.history is not None:
            logits = apply_no_repeat_ngram(logits, self.history, params.no_repeat_ngram_size)
        return logits

    def update(self, tokens: torch.Tensor) -> None:
        """Record the tokens [B] just generated (on device, no host sync)."""
        tokens = tokens.view(-1, 1)  # [B, 1]
        if self.seen is not None:
            self.seen.scatter_(1, tokens, True)
        if self.counts is not None:
            self.counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=torch.int32))
        if self.history is not None:
            self.history = torch.cat([self.history, tokens], dim=1)  # [B, L+1]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep only/duplicate rows (beam search): rows [B'] indexes the current rows."""
        if self.seen is not None:
            self.seen = self.seen.index_select(0, rows)
        if self.counts is not None:
            self.counts = self.counts.index_select(0, rows)
        if self.history is not None:
            self.history = self.history.index_select(0, rows)
