"""Stand-ins for the assistant tests: a scripted generator with a real (tiny) tokenizer and chat template,
and a word-overlap retriever returning given passages. They implement exactly the surface the pipeline
uses (docs/architecture.md), so the tests exercise the pipeline's own logic fast and deterministically.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from model.tokenizer import train_bpe_tokenizer

_WORDS = re.compile(r"[a-z0-9]+")


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A 400-token byte-level BPE with the ChatML template (trained once per test session, ~0.1 s)."""
    text = (
        "LoRA trains two small low-rank matrices next to a frozen weight. Attention compares queries with keys. "
        "The passages are numbered and the answer cites them. Tokenizers split text into tokens. " * 20
    )
    return train_bpe_tokenizer([text], vocab_size=400)


@dataclass
class FakeStream:
    """Iterates text deltas; `.result` is set after exhaustion, like model.generate.TextStream."""

    deltas: list[str]
    cancel: threading.Event | None
    delay: float = 0.0
    on_delta: Callable[[], None] | None = None
    result: Any = None

    def __iter__(self):
        emitted = []
        reason = "eos"
        for delta in self.deltas:
            if self.cancel is not None and self.cancel.is_set():
                reason = "cancelled"
                break
            if self.delay:
                time.sleep(self.delay)
            if self.on_delta:
                self.on_delta()
            emitted.append(delta)
            yield delta
        text = "".join(emitted)
        self.result = SimpleNamespace(
            text=text, token_ids=list(range(len(emitted))), finish_reason=reason,
            prompt_tokens=0, prefill_ms=1.0, decode_tokens_per_s=123.0,
        )


class FakeGenerator:
    """Scripted replies; counts and renders with a real tiny tokenizer; records every call."""

    def __init__(self, reply: str | Callable[[str], str] = "An answer [1].", context_length: int = 4096,
                 chunk: int = 3, delay: float = 0.0) -> None:
        self.tokenizer = tiny_tokenizer()
        self.context_length = context_length
        self.reply = reply
        self.chunk = chunk
        self.delay = delay
        self.calls: list[dict] = []
        self.active = 0
        self.max_active = 0
        self._count_lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def render_chat(self, messages, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    def stream(self, prompt, params=None, *, cancel=None, truncate_left=False, **overrides):
        self.calls.append({"prompt": prompt, "params": params, "cancel": cancel})
        text = self.reply(prompt) if callable(self.reply) else self.reply
        deltas = [text[i:i + self.chunk] for i in range(0, len(text), self.chunk)]
        with self._count_lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        stream = FakeStream(deltas, cancel, self.delay)
        outer = self

        class _Counted:
            result = None

            def __iter__(self_inner):
                try:
                    yield from stream
                finally:
                    self_inner.result = stream.result
                    with outer._count_lock:
                        outer.active -= 1

        return _Counted()


@dataclass
class FakeHit:
    """Same fields as retrieval.retriever.Hit."""

    chunk_id: int
    text: str
    path: str
    heading: str | None
    page: int | None
    start: int
    end: int
    score: float
    dense_score: float
    lexical_score: float | None = None
    rank: int = 0


@dataclass
class FakeRetriever:
    """Ranks given passages by word overlap with the query; dense_score = overlap / query words."""

    passages: list[tuple[str, str, str]]  # (path, heading, text)
    dense_floor: float = 0.0
    queries: list[tuple[str, int, str]] = field(default_factory=list)

    def search(self, query: str, k: int = 5, mode: str = "hybrid", **_: Any) -> list[FakeHit]:
        self.queries.append((query, k, mode))
        words = set(_WORDS.findall(query.lower()))
        scored = []
        for i, (path, heading, text) in enumerate(self.passages):
            overlap = len(words & set(_WORDS.findall(text.lower())))
            cos = self.dense_floor + overlap / max(len(words), 1)
            scored.append((cos, i, path, heading, text))
        scored.sort(key=lambda row: (-row[0], row[1]))
        return [
            FakeHit(i, text, path, heading, None, 0, len(text), score=cos, dense_score=cos, rank=rank)
            for rank, (cos, i, path, heading, text) in enumerate(scored[:k])
        ]

    def stats(self) -> dict:
        return {"files": len({p for p, _, _ in self.passages}), "chunks": len(self.passages), "encoder": "fake"}


CORPUS = [
    ("lora.md", "LoRA", "LoRA freezes the pretrained weights and trains two small low-rank matrices A and B. "
     "The rank r is usually between 4 and 64, so the adapter holds well under one percent of the parameters."),
    ("attention.md", "Attention", "Attention compares each query with every key and mixes the values by "
     "the softmax of the scores. Multi-head attention runs several heads in parallel."),
    ("tokenization.md", "Tokenization", "A tokenizer splits text into tokens. Byte-pair encoding merges "
     "frequent pairs of symbols until the vocabulary reaches its target size."),
    ("rag.md", "Retrieval", "Retrieval-augmented generation retrieves passages from an index and gives them "
     "to the model, which answers from them and cites them."),
]


class FakeReader:
    """Stands in for model.reader.Reader: finds `answers` (substrings) in passages with score 4.0; in a passage
    holding none of them, its 'best span' is the first word with score -3.0 (no answer). Records questions."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.questions: list[str] = []

    def read(self, question: str, passages: list[str]) -> list[Any]:
        from model.reader import Span

        self.questions.append(question)
        spans = []
        for i, text in enumerate(passages):
            found = next((a for a in self.answers if a in text), None)
            if found is not None:
                start = text.index(found)
                spans.append(Span(i, start, start + len(found), found, 4.0, -1.0, 0.9))
            elif text.strip():
                word = text.split()[0]
                spans.append(Span(i, text.index(word), text.index(word) + len(word), word, -3.0, 2.0, 0.1))
        return sorted(spans, key=lambda s: -s.score)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def passage_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the sentences of `text` (split after . ! ? and whitespace), trailing full stop
    left out, so `text[start:end]` is the sentence's words."""
    out, pos = [], 0
    for piece in _SENTENCE_END.split(text):
        start = text.index(piece, pos)
        end = start + len(piece.rstrip().rstrip(".!?"))
        if end > start:
            out.append((start, end))
        pos = start + len(piece)
    return out


def compose(answer: Any, picks: list[tuple[int, int]], layout: str = "text", kind: str = "explanation",
            intro: str = "", groups: list[str] | None = None) -> Any:
    """A composed version of a pipeline `Answer`, the shape the composing pipeline returns: for each
    (n, i) in `picks`, sentence i of source n's text, cited [n], with its offsets in that source's text.

    layout "text": `Sentence [n].` joined by spaces; "bullets": the intro line, then `- sentence [n]` lines;
    "sides": one `**Group:** sentence [n].` paragraph per pick (`groups` names them)."""
    from dataclasses import replace

    from assistant.answer import AnswerSentence

    by_number = {s.number: s for s in answer.sources}
    sentences = []
    for k, (n, i) in enumerate(picks):
        start, end = passage_sentences(by_number[n].text)[i]
        role = "item" if layout == "bullets" else "sentence"
        group = groups[k] if groups else ""
        sentences.append(AnswerSentence(by_number[n].text[start:end], n, start, end, 1.0, role, group))
    if layout == "bullets":
        text = "\n".join([*([intro] if intro else []), *(f"- {s.text} [{s.passage}]" for s in sentences)])
    elif layout == "sides":
        text = "\n\n".join(f"**{s.group}:** {s.text} [{s.passage}]." for s in sentences)
    else:
        text = " ".join(f"{s.text} [{s.passage}]." for s in sentences)
    cited = [n for n, _ in picks]
    citations = list(dict.fromkeys(cited))
    sources = [replace(s, cited=s.number in citations) for s in answer.sources]
    return replace(answer, text=text, citations=citations, sources=sources, sentences=sentences, kind=kind,
                   layout=layout, mode="guided")


def composing(stream: Callable[..., Any], plan: Callable[[str, Any], dict | None],
              record: list | None = None) -> Callable[..., Any]:
    """Wraps `Assistant.stream`: when `plan(question, answer)` gives compose() arguments, the answer is replaced
    by that composed one and streamed as its whole text in one delta (deltas and final text agree). Each
    composed answer is appended to `record` when given."""

    def stream_composed(question: str, *args: Any, **kwargs: Any):
        from assistant.answer import Answer

        deltas = []
        for item in stream(question, *args, **kwargs):
            if not isinstance(item, Answer):
                deltas.append(item)
                continue
            options = plan(question, item)
            if options is None:
                yield from deltas
                yield item
            else:
                composed = compose(item, **options)
                if record is not None:
                    record.append(composed)
                yield composed.text
                yield composed
            return

    return stream_composed
