"""`assistant ui` on stand-in models, for the fast browser tests: a HashingEncoder index of a folder and a
scripted generator that answers from the first passage and cites it.

    python tests/ui_fake_server.py FOLDER INDEX PORT
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from assistant_fakes import FakeGenerator  # noqa: E402


def reply(prompt: str) -> str:
    """The first sentence of passage [1] of the last question, cited: "... [1]"."""
    last = prompt.rsplit("Passages:", 1)[-1]
    match = re.search(r"\[1\][^\n]*\n(.+?)(?:\n\[2\]|\nQuestion:|$)", last, re.S)
    text = " ".join(match.group(1).split()) if match else "I could not find that."
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return f"{sentence.rstrip('.')} [1]."


def main(folder: str, index: str, port: str) -> None:
    from assistant.pipeline import Assistant
    from assistant.ui import serve
    from retrieval.testing import HashingEncoder

    generator = FakeGenerator(reply, delay=0.01)
    generator.identity = "FakeModel-1B-Instruct.Q4_1.gguf@sha256:0123456789abcdef+adapter:adapter+int4"
    assistant = Assistant.from_folder(folder, index, encoder=HashingEncoder(), generator=generator,
                                      refusal_threshold=-1.0)
    print("native CPU decode kernels: fake", flush=True)
    serve(assistant, port=int(port))


if __name__ == "__main__":
    main(*sys.argv[1:4])
