"""Packing a prompt: the question, as much chat history as allowed and the best passages, fitted into the
generator's context budget (measured with its own tokenizer on the rendered chat template), so the prompt
never overflows. Also the history helpers: message content as text, user/assistant turns normalised.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from assistant.citations import clean_citations
from assistant.prompts import PromptPassage, build_messages
from model.errors import ContextOverflowError


class _Hit(Protocol):  # retrieval.retriever.Hit, structurally
    text: str
    path: str
    heading: str | None
    page: int | None
    score: float
    dense_score: float | None


@dataclass
class PackedPrompt:
    """What the generator will see."""

    messages: list[dict]
    prompt: str                     # rendered with the generator's chat template
    prompt_tokens: int
    hits: list[Any]                 # hits given, in prompt order (number = index + 1)
    passages: list[PromptPassage]   # their text as given (the last one may be truncated)
    history: list[dict]             # the history turns kept
    budget: int                     # prompt tokens allowed


def prompt_label(path: str, heading: str | None) -> str:
    """The short label the prompt shows for a passage: its most specific heading, else the file's name.
    Short titles, as in the fine-tuning data (article titles); long breadcrumb paths got copied into
    answers by the small model."""
    if heading:
        return heading.split(" › ")[-1].strip()
    return Path(str(path)).stem.replace("_", " ").replace("-", " ")


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def _sentences(text: str) -> list[str]:
    """Split a passage into sentence-sized pieces that concatenate back (with single spaces)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def pack_prompt(
    generator: Any,
    question: str,
    hits: Sequence[_Hit],
    history: Sequence[dict] = (),
    max_new_tokens: int = 160,
    max_context_tokens: int | None = None,
    system_prompt: str | None = None,
    min_truncated_tokens: int = 48,
) -> PackedPrompt:
    """Fit the question, as much history as allowed and the best passages into the context budget.

    budget = min(generator.context_length, max_context_tokens) - max_new_tokens, in generator tokens of the
    prompt rendered with the real chat template. Passages go in rank order while they fit; the first one
    that does not fit is cut at a sentence boundary if at least `min_truncated_tokens` of it fit. History
    turns are dropped oldest first, until the question fits and the top passage fits whole.
    Raises ContextOverflowError when even the bare question does not fit.
    """
    window = int(generator.context_length)
    if max_context_tokens:
        window = min(window, int(max_context_tokens))
    budget = window - int(max_new_tokens)
    if budget <= 0:
        raise ContextOverflowError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a {window}-token context; "
            "lower max_new_tokens"
        )
    extra = {} if system_prompt is None else {"system_prompt": system_prompt}

    def render(passages: list[PromptPassage], turns: list[dict]) -> tuple[list[dict], str, int]:
        messages = build_messages(question, passages, turns, **extra)
        prompt = generator.render_chat(messages, add_generation_prompt=True)
        return messages, prompt, generator.count_tokens(prompt)

    turns = list(history)
    _, _, n = render([], turns)
    while n > budget and turns:
        turns = _drop_oldest_turn(turns)
        _, _, n = render([], turns)
    if n > budget:
        raise ContextOverflowError(
            f"the question needs {n} tokens but only {budget} fit next to a {max_new_tokens}-token answer; "
            "shorten the question or lower max_new_tokens"
        )
    candidates = [PromptPassage(text=h.text, label=prompt_label(h.path, h.heading)) for h in hits]
    # The top passage matters more than old turns: drop history until it fits whole.
    if candidates:
        while turns and render(candidates[:1], turns)[2] > budget:
            turns = _drop_oldest_turn(turns)

    given: list[PromptPassage] = []
    given_hits: list[Any] = []
    for hit, passage in zip(hits, candidates):
        if render([*given, passage], turns)[2] <= budget:
            given.append(passage)
            given_hits.append(hit)
            continue
        cut = _truncate_to_fit(render, given, passage, turns, budget, min_truncated_tokens, generator)
        if cut is not None:
            given.append(cut)
            given_hits.append(hit)
        break
    messages, prompt, n = render(given, turns)
    assert n <= budget, (n, budget)
    return PackedPrompt(messages, prompt, n, given_hits, given, turns, budget)


def _truncate_to_fit(render, given, passage, turns, budget, min_tokens, generator) -> PromptPassage | None:
    """The longest sentence prefix of `passage` that fits, or None if less than `min_tokens` would."""
    sentences = _sentences(passage.text)
    lo, hi = 0, len(sentences) - 1  # find the largest m in [1, len-1] whose prefix fits
    best = None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        text = " ".join(sentences[:mid])
        candidate = PromptPassage(text=text, label=passage.label)
        if render([*given, candidate], turns)[2] <= budget:
            best, lo = candidate, mid
        else:
            hi = mid - 1
    if best is None or generator.count_tokens(best.text) < min_tokens:
        return None
    return best


def _drop_oldest_turn(turns: list[dict]) -> list[dict]:
    """Drop the oldest message, and an assistant reply left without its question."""
    turns = turns[1:]
    while turns and turns[0].get("role") != "user":
        turns = turns[1:]
    return turns


def _text_of(message: dict) -> str:
    """Message content as plain text (also accepts Gradio's list-of-parts content)."""
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return str(content or "")


def normalize_history(history: Sequence[dict] | None, max_turns: int) -> list[dict]:
    """Plain {"role", "content": str} user/assistant turns, the last `max_turns`, citation markers removed
    from assistant turns (their numbers named passages the new prompt does not show)."""
    turns = []
    for message in history or ():
        role = message.get("role")
        text = _text_of(message).strip()
        if role not in ("user", "assistant") or not text:
            continue
        if role == "assistant":
            text = clean_citations(text, 0)[0].strip()
            if not text:
                continue
        turns.append({"role": role, "content": text})
    turns = turns[-max_turns:] if max_turns > 0 else []
    while turns and turns[0]["role"] != "user":
        turns = turns[1:]
    return turns
