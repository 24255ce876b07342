"""What an answer is: the result types the pipeline returns (`Answer`, its `Source`s and `Timings`),
the error for a question that cannot be asked (`QuestionError`), and how a passage's origin is labelled.

These are plain data; nothing here touches models, indexes or prompts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from model.errors import UserError


class QuestionError(UserError):
    """The question cannot be asked as given (empty, or longer than the limit)."""


@dataclass
class Source:
    """One passage shown to the model (or, on a refusal, one of the nearest passages)."""

    number: int                 # the [n] the prompt gave it
    path: str                   # file, relative to the indexed folder
    heading: str | None
    page: int | None
    snippet: str                # the start of the passage, whitespace collapsed
    score: float                # retrieval score (fused rank score in hybrid mode)
    dense_score: float | None   # cosine similarity between question and passage
    cited: bool                 # the answer cites [number]
    text: str = ""              # the passage text exactly as the prompt gave it

    @property
    def location(self) -> str:
        """`file › heading` or `file.pdf, p. 3`, as the UI, the CLI and the HTTP server show a source (the
        generator's prompt labels a passage by `assistant.packing.prompt_label` instead)."""
        return passage_label(self.path, self.heading, self.page)


@dataclass
class Timings:
    """Where the time went, in milliseconds (tokens_per_s: decode speed)."""

    retrieval_ms: float = 0.0
    reader_ms: float = 0.0
    time_to_first_token_ms: float | None = None
    tokens_per_s: float | None = None
    total_ms: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_ms: float = 0.0       # the generator's prompt pass (to its first token)
    decode_ms: float = 0.0        # the generator's other tokens
    check_ms: float = 0.0         # checking written text against the evidence


class Draft(str):
    """A stream item that is appended like any text delta, and that a later `Revision` may reword.

    Guided answers show the reader's evidence (the quoted words and their [n]) as soon as the reader has found
    it, while the generator writes a fuller sentence around it; `Assistant.stream(..., drafts=True)` only."""


@dataclass(frozen=True)
class Revision:
    """A stream item: replace the answer text shown so far (a `Draft`) by `text`.

    Sent only after a draft, and only with the checked wording: it states the same evidence the draft quoted
    (`assistant.evidence.states_evidence`), so a revision rewords a claim and never withdraws one."""

    text: str


QUESTION_KINDS = ("factoid", "definition", "explanation", "list", "comparison", "summary", "procedure", "yesno",
                  "count")
LAYOUTS = ("text", "bullets", "sides", "cell")


@dataclass
class AnswerSentence:
    """One sentence of a composed answer (or one bullet, or one table cell) and the passage words behind it.

    `Answer.sentences` lists them in the order they stand in `Answer.text`; the k-th citation marker in the
    text belongs to the k-th sentence. `start`/`end` are character offsets of the supporting words in the text
    of source `passage` (`Source.text`), so `source.text[start:end]` is exactly what the sentence rests on."""

    text: str                 # as it stands in Answer.text, without its citation marker
    passage: int              # the [n] it cites
    start: int                # offsets of the supporting words in Source.text of passage n
    end: int
    score: float = 0.0        # how relevant the supporting sentence was to the question
    role: str = "sentence"    # "sentence" | "item" (a bullet) | "cell" (a table cell) | "generated" (checked)
    group: str = ""           # comparison: the side it describes ("BPE"); bullets: the section title shown first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Answer:
    """A finished answer: text with valid citation markers only, and its sources."""

    text: str
    citations: list[int]
    sources: list[Source]
    refused: bool
    timings: Timings
    query: str                              # the standalone search query used
    finish_reason: str = "stop"             # stop | eos | length | cancelled | refused
    question: str = ""
    evidence: list[Any] = field(default_factory=list)  # assistant.evidence.Evidence: the words that support it
    mode: str = "generate"                  # how it was written: guided | extract | generate (| refused)
    fallback: bool = False                  # guided mode: the generated text failed the check; built from evidence
    sentences: list[AnswerSentence] = field(default_factory=list)  # each sentence with its cited words
    kind: str = ""                          # the question's kind (QUESTION_KINDS), as the router decided it
    layout: str = "text"                    # text | bullets ("- " lines) | sides (comparison) | cell (table)

    @property
    def cited_sources(self) -> list[Source]:
        """The sources the answer cites, in citation order."""
        by_number = {s.number: s for s in self.sources}
        return [by_number[n] for n in self.citations if n in by_number]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (for `assistant ask --json`)."""
        return asdict(self)


def passage_label(path: str, heading: str | None, page: int | None) -> str:
    """Short label saying where a passage comes from: `file.md › Heading` / `file.pdf, p. 3` (both when a
    paged source has a heading: `file.pdf › Heading, p. 3`)."""
    label = str(path)
    if heading:
        label += f" › {heading}"
    if page:
        label += f", {page_label(page)}"
    return label


def page_label(page: int) -> str:
    """How a citation names a page: `p. 3`."""
    return f"p. {int(page)}"


def _snippet(text: str, limit: int = 280) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rsplit(" ", 1)[0] + "…"


def _source(number: int, hit: Any, text: str, cited: bool) -> Source:
    dense = getattr(hit, "dense_score", None)
    return Source(
        number=number,
        path=str(hit.path),
        heading=getattr(hit, "heading", None) or None,
        page=getattr(hit, "page", None),
        snippet=_snippet(text),
        score=float(hit.score),
        dense_score=None if dense is None else float(dense),
        cited=cited,
        text=text,
    )
