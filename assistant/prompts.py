"""The prompt the generator sees: one definition, shared by serving and by the fine-tuning data.

Training examples (assistant/training_data.py) and live answers (assistant/pipeline.py) both go through
`build_messages`, so the adapter is trained on exactly the prompt it is served with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SYSTEM_PROMPT = (
    "You answer questions using only the numbered passages the user gives you. "
    "Answer in one or two short sentences and cite the passage you used as [n], for example [2]. "
    "If the passages do not contain the answer, reply exactly: "
    "I could not find the answer in your documents."
)

REFUSAL_TEXT = "I could not find the answer in your documents."


@dataclass(frozen=True)
class PromptPassage:
    """A passage as the prompt shows it: its text and a short label saying where it comes from."""

    text: str
    label: str = ""


def format_passages(passages: Sequence[PromptPassage]) -> str:
    """Number passages from 1 in the given order: `[n] (label)` then the text, blank line between."""
    blocks = []
    for number, passage in enumerate(passages, start=1):
        head = f"[{number}]" + (f" ({passage.label})" if passage.label else "")
        blocks.append(f"{head}\n{passage.text.strip()}")
    return "\n\n".join(blocks)


def user_message(question: str, passages: Sequence[PromptPassage]) -> str:
    """The final user turn: the numbered passages, then the question."""
    return f"Passages:\n\n{format_passages(passages)}\n\nQuestion: {question.strip()}"


def build_messages(
    question: str,
    passages: Sequence[PromptPassage],
    history: Sequence[dict] | None = None,
    system_prompt: str = SYSTEM_PROMPT,
) -> list[dict]:
    """Chat messages for the generator: system prompt, earlier turns (plain text), then passages + question.

    `history` is a list of {"role": "user"|"assistant", "content": str} from earlier turns; only the
    final turn carries passages, so the context budget is spent on the current question.
    """
    messages = [{"role": "system", "content": system_prompt}]
    for turn in history or ():
        if turn.get("role") in ("user", "assistant") and turn.get("content"):
            messages.append({"role": turn["role"], "content": str(turn["content"])})
    messages.append({"role": "user", "content": user_message(question, passages)})
    return messages


def is_refusal(text: str) -> bool:
    """True when an answer says the documents do not contain it (the trained refusal, loosely matched)."""
    lowered = text.lower()
    return "could not find the answer" in lowered or "not in your documents" in lowered
