"""`assistant ui` on stand-in models, for the fast browser tests: a HashingEncoder index of a folder and a
scripted generator that answers from the first passage and cites it.

    python tests/ui_fake_server.py FOLDER INDEX PORT [composed]

With `composed`, each answer is replaced by a composed one (tests/assistant_fakes.py `compose`): the second
sentence of passage [1] (its first when it has one), cited, with its supporting words' offsets, as the
composing pipeline gives them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from assistant_fakes import FakeGenerator, composing, passage_sentences  # noqa: E402


def reply(prompt: str) -> str:
    """The first sentence of passage [1] of the last question, cited: "... [1]"."""
    last = prompt.rsplit("Passages:", 1)[-1]
    match = re.search(r"\[1\][^\n]*\n(.+?)(?:\n\[2\]|\nQuestion:|$)", last, re.S)
    text = " ".join(match.group(1).split()) if match else "I could not find that."
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return f"{sentence.rstrip('.')} [1]."


def composed_plan(question: str, answer) -> dict | None:
    """compose() arguments for `composing`: sentence 2 of passage [1] (sentence 1 when it is the only one)."""
    first = next((s for s in answer.sources if s.number == 1), None)
    if first is None or not passage_sentences(first.text):
        return None
    return {"picks": [(1, min(1, len(passage_sentences(first.text)) - 1))]}


def main(folder: str, index: str, port: str, style: str = "") -> None:
    from assistant.pipeline import Assistant
    from assistant.ui import serve
    from retrieval.testing import HashingEncoder

    generator = FakeGenerator(reply, delay=0.01)
    generator.identity = "FakeModel-1B-Instruct.Q4_1.gguf@sha256:0123456789abcdef+adapter:adapter+int4"
    assistant = Assistant.from_folder(folder, index, encoder=HashingEncoder(), generator=generator,
                                      refusal_threshold=-1.0)
    if style == "composed":
        assistant.stream = composing(assistant.stream, composed_plan)
    print("native CPU decode kernels: fake", flush=True)
    serve(assistant, port=int(port))


if __name__ == "__main__":
    main(*sys.argv[1:5])
