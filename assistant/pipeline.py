"""The RAG pipeline: question (+ history) → search query → passages → packed prompt → streamed, cited answer.

    assistant = Assistant.from_folder("~/notes")
    answer = assistant.ask("What does LoRA train?")
    print(answer.text, [s.path for s in answer.sources if s.cited])

    for item in assistant.stream("and how big is it?", history=[...]):
        if isinstance(item, str): print(item, end="")     # text deltas, citation markers already checked
        else: answer = item                                # the final Answer comes last

The default model is small, so the pipeline carries much of the quality:
- follow-up questions are rewritten deterministically into a standalone search query (`standalone_query`);
- passages are packed into the generator's context budget measured with its own tokenizer on the rendered
  chat template, so the prompt never overflows (`pack_prompt`);
- citation markers are parsed, and numbers that do not name a given passage are dropped (`clean_citations`);
- when the best passage is not similar enough to the question (a calibrated cosine threshold) the assistant
  refuses without calling the generator, and shows the nearest passages instead.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from assistant.prompts import REFUSAL_TEXT, PromptPassage, build_messages, is_refusal
from assistant.settings import SAMPLING_FIELDS, Settings, SettingsError
from model.errors import ContextOverflowError, UserError

log = logging.getLogger(__name__)

# A small model sometimes carries on with the prompt's own format ("Question: ...", a new "Passages:"
# block, another chat turn); generation stops there unless the caller passes its own `stop`.
DEFAULT_STOP = ("\nQuestion:", "\nPassages:", "<|im_start|>", "<|im_end|>")

# The model alone (`use_retrieval=False`, `assistant eval --no-retrieval`): no passages, no citations.
NO_RETRIEVAL_SYSTEM_PROMPT = "Answer the question in one or two short sentences."


class QuestionError(UserError):
    """The question cannot be asked as given (empty, or longer than the limit)."""


# ---------------------------------------------------------------------- result types
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
        """`file › heading` or `file, page n`, as shown to the user and in the prompt label."""
        return passage_label(self.path, self.heading, self.page)


@dataclass
class Timings:
    """Where the time went, in milliseconds (tokens_per_s: decode speed)."""

    retrieval_ms: float = 0.0
    time_to_first_token_ms: float | None = None
    tokens_per_s: float | None = None
    total_ms: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0


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

    @property
    def cited_sources(self) -> list[Source]:
        """The sources the answer cites, in citation order."""
        by_number = {s.number: s for s in self.sources}
        return [by_number[n] for n in self.citations if n in by_number]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (for `assistant ask --json`)."""
        return asdict(self)


class _Hit(Protocol):  # retrieval.retriever.Hit, structurally
    text: str
    path: str
    heading: str | None
    page: int | None
    score: float
    dense_score: float | None


# ---------------------------------------------------------------------- follow-up rewriting
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-+.']*[A-Za-z0-9+]|[A-Za-z0-9]")
STOPWORDS = frozenset(
    """a an the and or but so of to in on at by for with about from into over under as is are was were be been
    being am do does did doing have has had having what which who whom whose when where why how much many
    more most less least can could would should will shall may might must this that these those it its it's
    they them their theirs he she him her his hers we us our you your i me my one ones there here then than
    also just only very too not no yes if else such some any all each other another same own both either
    neither please tell explain describe give show me something thing things kind sort way ways again
    use used uses using does doesn't don't isn't aren't big small good bad""".split()
)
PRONOUNS = frozenset("it its it's they them their theirs this that these those he she him her his one ones such".split())
FOLLOWUP_OPENERS = (
    "and ", "and,", "but ", "so ", "then ", "also ", "what about", "how about", "what of", "and what",
    "and how", "and why", "why?", "how?", "why not", "what else", "anything else", "more on", "tell me more",
    "same for", "compared to", "in comparison", "what if", "is it", "are they", "does it", "do they",
    "can it", "can they", "was it", "how big is it", "how does it", "how do they",
)


def content_words(text: str) -> list[str]:
    """The words of `text` that carry meaning for search (stopwords dropped), original case, in order."""
    seen: set[str] = set()
    out = []
    for word in _WORD.findall(text):
        low = word.lower().strip(".'")
        if low and low not in STOPWORDS and low not in seen:
            seen.add(low)
            out.append(word.strip(".'"))
    return out


def is_followup(question: str) -> bool:
    """True when a question leans on an earlier turn: an elliptic opener, a pronoun in a short question,
    or almost no content words ("and how big is it?", "what about BERT?", "why?")."""
    text = " ".join(question.lower().split())
    if text.startswith(FOLLOWUP_OPENERS):
        return True
    words = [w.lower() for w in _WORD.findall(text)]
    n_content = len(content_words(question))
    if n_content <= 1:
        return True
    return n_content <= 3 and any(w in PRONOUNS for w in words)


def standalone_query(question: str, history: Sequence[dict] | None = None, max_terms: int = 8) -> str:
    """The search query for `question`: the question itself, or, for a follow-up, the content words of the
    previous standalone query (resolved the same way, turn by turn) followed by the question.

    Deterministic on purpose: a 135M model rewrites queries unreliably.
    """
    previous = [_text_of(m) for m in history or () if m.get("role") == "user" and _text_of(m).strip()]
    query = ""
    for turn in [*previous, question]:
        if query and is_followup(turn):
            terms = [t for t in content_words(query) if t.lower() not in {w.lower() for w in content_words(turn)}]
            query = " ".join(terms[:max_terms] + [turn.strip()])
        else:
            query = turn.strip()
    return query


# ---------------------------------------------------------------------- citations
_CITATION = re.compile(r"(\s*)\[(\s*\d+\s*(?:[,;]\s*\d+\s*)*)\]")
_PARTIAL_CITATION = re.compile(r"\[[\d\s,;]*$")


def clean_citations(text: str, n_passages: int) -> tuple[str, list[int]]:
    """Keep only citation markers that name a given passage (1..n_passages).

    `[2]`, `[1, 2]`, `[1][2]` are understood. A group with no valid number is removed with the space before
    it; a group with some valid numbers keeps those. Returns (clean text, cited numbers in first-use order).
    """
    cited: list[int] = []

    def fix(match: re.Match) -> str:
        space, body = match.group(1), match.group(2)
        numbers = [int(x) for x in re.findall(r"\d+", body)]
        valid = [x for x in numbers if 1 <= x <= n_passages]
        for x in valid:
            if x not in cited:
                cited.append(x)
        if not valid:
            return ""
        if valid == numbers:
            return match.group(0)
        return f"{space}[{', '.join(str(x) for x in dict.fromkeys(valid))}]"

    return _CITATION.sub(fix, text), cited


class CitationFilter:
    """Streams text deltas with invalid citation markers removed as they arrive.

    Holds back trailing whitespace and a possibly unfinished `[12` until the next delta shows what it is,
    so the concatenated output equals `clean_citations(raw)` (up to trailing whitespace).
    """

    def __init__(self, n_passages: int) -> None:
        self.n_passages = n_passages
        self.raw = ""
        self._emitted = ""

    def feed(self, delta: str) -> str:
        """Add a raw delta; return the clean text that is now safe to show."""
        self.raw += delta
        safe = self.raw.rstrip()
        partial = _PARTIAL_CITATION.search(safe)
        if partial and len(safe) - partial.start() <= 24:
            safe = safe[: partial.start()].rstrip()
        return self._advance(clean_citations(safe, self.n_passages)[0])

    def flush(self) -> str:
        """The rest of the clean text, once the stream has ended."""
        return self._advance(clean_citations(self.raw, self.n_passages)[0].rstrip())

    def _advance(self, clean: str) -> str:
        if not clean.startswith(self._emitted):  # cannot happen with the hold-back rule; stay consistent
            return ""
        out = clean[len(self._emitted):]
        self._emitted = clean
        return out


# ---------------------------------------------------------------------- packing
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


def passage_label(path: str, heading: str | None, page: int | None) -> str:
    """Short label saying where a passage comes from: `file.md › Heading` / `file.pdf, page 3`."""
    label = str(path)
    if heading:
        label += f" › {heading}"
    if page:
        label += f", page {page}"
    return label


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


def check_question(question: str, max_chars: int) -> str:
    """The question stripped, or QuestionError if it is empty or longer than `max_chars`.

    Over-long questions are refused rather than silently truncated: cutting a question changes what it
    asks, and the user should know."""
    if not isinstance(question, str) or not question.strip():
        raise QuestionError("the question is empty; type a question about your documents")
    question = question.strip()
    if len(question) > max_chars:
        raise QuestionError(
            f"the question is {len(question):,} characters long; the limit is {max_chars:,}. "
            "Ask a shorter question (put long text into a file and index it instead)"
        )
    return question


# ---------------------------------------------------------------------- the assistant
class Assistant:
    """Answers questions about an indexed folder with a generator, citing passages.

    Thread-safe: a lock serialises the generator (one answer at a time, each caller gets its own) and
    another guards the index while uploads are added.
    """

    def __init__(
        self,
        retriever: Any | None,
        generator: Any,
        settings: Settings | None = None,
        *,
        encoder: Any | None = None,
        index_path: Path | None = None,
        folder: Path | None = None,
    ) -> None:
        self.retriever = retriever
        self.generator = generator
        self.settings = settings or Settings()
        self.encoder = encoder
        self.index_path = Path(index_path) if index_path else None
        self.folder = Path(folder) if folder else None
        self._model_lock = threading.Lock()
        self._index_lock = threading.RLock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        index: str | Path | None = None,
        *,
        settings: Settings | None = None,
        generator: Any | None = None,
        encoder: Any | None = None,
        progress: bool = False,
        on_progress: Callable[[int, int], Any] | None = None,
        **overrides: Any,
    ) -> "Assistant":
        """Sync the folder's index (only new or changed files are embedded), then open it.

        `progress=True` shows a terminal progress bar; `on_progress(done, total)` gets chunk counts.

        `overrides` are Settings fields (k=6, temperature=0.3, ...). `generator`/`encoder` may be given
        as ready objects (tests, or sharing one model between assistants).
        """
        settings = (settings or Settings.load()).replace(**overrides)
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise UserError(
                f"folder {folder} does not exist or is not a folder; pass the folder holding your documents"
            )
        from retrieval.store import default_index_path
        from retrieval.sync import sync_folder

        index_path = Path(index).expanduser() if index else (settings.index or default_index_path(folder))
        encoder = encoder or _load_encoder(settings)
        report = sync_folder(folder, index_path, encoder, progress=progress, on_progress=on_progress)
        for path, reason in report.skipped:
            log.warning("skipped %s: %s", path, reason)
        log.info("index %s in sync with %s: %s", index_path, folder, report)
        return cls._open(index_path, settings, generator, encoder, folder=folder)

    @classmethod
    def from_index(
        cls,
        path: str | Path,
        *,
        settings: Settings | None = None,
        generator: Any | None = None,
        encoder: Any | None = None,
        **overrides: Any,
    ) -> "Assistant":
        """Open an existing index as it is (no syncing)."""
        settings = (settings or Settings.load()).replace(**overrides)
        index_path = Path(path).expanduser()
        if not index_path.exists():
            raise UserError(
                f"no index at {index_path}; build one with `assistant index FOLDER` or pass --folder"
            )
        encoder = encoder or _load_encoder(settings)
        return cls._open(index_path, settings, generator, encoder)

    @classmethod
    def from_settings(cls, settings: Settings, progress: bool = False, **kw: Any) -> "Assistant":
        """Open what the settings name: `index` alone opens that index as is; otherwise the folder
        (default: the repository's corpus/) is synced into its index first."""
        from assistant.settings import DEFAULT_CORPUS

        if settings.index is not None and settings.folder is None:
            return cls.from_index(settings.index, settings=settings, **kw)
        folder = settings.folder or DEFAULT_CORPUS
        return cls.from_folder(folder, settings.index, settings=settings, progress=progress, **kw)

    @classmethod
    def _open(cls, index_path, settings, generator, encoder, folder=None) -> "Assistant":
        from retrieval.retriever import Retriever

        retriever = Retriever(index_path, encoder)
        generator = generator or load_generator(settings)
        return cls(retriever, generator, settings, encoder=encoder, index_path=index_path, folder=folder)

    # ------------------------------------------------------------------ index
    def add_files(self, paths: Sequence[str | Path], on_progress: Callable[[int, int], Any] | None = None) -> Any:
        """Index extra files (uploads) into the current index; returns retrieval's SyncReport.

        The files are copied into `<index>/uploads/` and show up as `@uploads/<name>`; a file that cannot be
        read is listed in `report.skipped` and leaves the index as it was."""
        if self.index_path is None or self.encoder is None:
            raise UserError("this assistant has no on-disk index to add files to")
        from retrieval.retriever import Retriever
        from retrieval.sync import add_files

        with self._index_lock:
            report = add_files([Path(p) for p in paths], self.index_path, self.encoder, on_progress=on_progress)
            self.retriever = Retriever(self.index_path, self.encoder)
        return report

    def stats(self) -> dict[str, Any]:
        """Index status: files, chunks, encoder, ... (retrieval's Retriever.stats)."""
        with self._index_lock:
            return dict(self.retriever.stats()) if self.retriever is not None else {}

    # ------------------------------------------------------------------ asking
    def ask(self, question: str, history: Sequence[dict] | None = None, **options: Any) -> Answer:
        """Answer one question (history: earlier {"role", "content"} turns). Options: Settings sampling
        fields (temperature, top_k, ..., max_new_tokens, seed, num_beams), k, retrieval_mode,
        use_retrieval, cancel."""
        answer = None
        for item in self.stream(question, history, **options):
            if isinstance(item, Answer):
                answer = item
        assert answer is not None
        return answer

    def chat(self, messages: Sequence[dict], **options: Any) -> Answer:
        """OpenAI-style messages: the last user message is the question, earlier turns the history."""
        messages = list(messages)
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last_user is None:
            raise QuestionError("the messages contain no user message; add {'role': 'user', 'content': ...}")
        return self.ask(_text_of(messages[last_user]), history=messages[:last_user], **options)

    def check_question(self, question: str) -> str:
        """The question stripped, or QuestionError if it is empty or too long."""
        return check_question(question, self.settings.max_question_chars)

    def retrieve(self, query: str, k: int | None = None, mode: str | None = None) -> tuple[list[Any], float]:
        """Top-k hits for a search query and the milliseconds it took."""
        start = time.perf_counter()
        with self._index_lock:
            hits = list(self.retriever.search(query, k=k or self.settings.k, mode=mode or self.settings.retrieval_mode))
        return hits, (time.perf_counter() - start) * 1000

    def stream(
        self,
        question: str,
        history: Sequence[dict] | None = None,
        *,
        cancel: threading.Event | None = None,
        k: int | None = None,
        retrieval_mode: str | None = None,
        use_retrieval: bool = True,
        refusal_threshold: float | None = None,
        **sampling: Any,
    ) -> Iterator[str | Answer]:
        """Yield the answer's text deltas as they are generated, then the final Answer.

        `sampling`: any SamplingParams field (temperature, top_k, top_p, min_p, repetition_penalty,
        max_new_tokens, seed, num_beams, stop, ...); unset ones come from the settings.
        `cancel`: set it to stop generation; the Answer then has finish_reason "cancelled".
        """
        start = time.perf_counter()
        question = self.check_question(question)
        params = self._sampling_params(sampling)
        turns = normalize_history(history, self.settings.max_history_turns)
        threshold = self.settings.refusal_threshold if refusal_threshold is None else refusal_threshold
        timings = Timings()

        if use_retrieval:
            if self.retriever is None:
                raise UserError("no index is open; use Assistant.from_folder or from_index")
            query = standalone_query(question, turns)
            hits, timings.retrieval_ms = self.retrieve(query, k=k, mode=retrieval_mode)
            best = max((_dense(h) for h in hits), default=float("-inf"))
            if not hits or best < threshold:
                sources = [_source(i, h, h.text, cited=False) for i, h in enumerate(hits, start=1)]
                timings.total_ms = timings.time_to_first_token_ms = (time.perf_counter() - start) * 1000
                yield REFUSAL_TEXT
                yield Answer(REFUSAL_TEXT, [], sources, True, timings, query, "refused", question)
                return
            hits = relevant_hits(hits, threshold, self.settings.relative_floor)
            packed = pack_prompt(
                self.generator, question, hits, turns, params.max_new_tokens, self.settings.max_context_tokens
            )
        else:
            query = ""
            packed = self._pack_without_passages(question, turns, params.max_new_tokens)

        timings.prompt_tokens = packed.prompt_tokens
        filt = CitationFilter(len(packed.passages))
        with self._model_lock:
            text_stream = self.generator.stream(packed.prompt, params, cancel=cancel)
            try:
                for delta in text_stream:
                    if timings.time_to_first_token_ms is None and delta:
                        timings.time_to_first_token_ms = (time.perf_counter() - start) * 1000
                    out = filt.feed(delta)
                    if out:
                        yield out
            finally:  # a caller that stops iterating early also stops the generation
                close = getattr(text_stream, "close", None)
                if close is not None:
                    close()
            result = getattr(text_stream, "result", None)
        tail = filt.flush()
        if tail:
            yield tail

        text, citations = clean_citations(filt.raw, len(packed.passages))
        text = text.strip()
        refused = is_refusal(text) or not text
        if refused:
            citations = []
        sources = [
            _source(i, hit, passage.text, cited=i in citations)
            for i, (hit, passage) in enumerate(zip(packed.hits, packed.passages), start=1)
        ]
        timings.total_ms = (time.perf_counter() - start) * 1000
        if result is not None:
            timings.generated_tokens = len(getattr(result, "token_ids", ()) or ())
            timings.tokens_per_s = getattr(result, "decode_tokens_per_s", None)
            finish = getattr(result, "finish_reason", "stop") or "stop"
        else:
            finish = "cancelled" if cancel is not None and cancel.is_set() else "stop"
        if finish == "cancelled" and not text:
            refused = False
        yield Answer(text, citations, sources, refused, timings, query, finish, question)

    def conversation(self) -> Conversation:
        """A new chat that keeps its own history (see Conversation)."""
        return Conversation(self)

    # ------------------------------------------------------------------ helpers
    def _sampling_params(self, overrides: dict[str, Any]) -> Any:
        """SamplingParams from the settings' defaults and per-call overrides (unknown names are errors)."""
        from model.sampling import SamplingParams

        values = self.settings.sampling()
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in SamplingParams.__dataclass_fields__:
                raise SettingsError(
                    f"unknown option {name!r}; sampling options are {sorted(SamplingParams.__dataclass_fields__)}"
                )
            values[name] = value
        values.setdefault("stop", DEFAULT_STOP)
        values = {k: v for k, v in values.items() if k in SamplingParams.__dataclass_fields__}
        params = SamplingParams(**values)
        params.validate()
        return params

    def _pack_without_passages(self, question: str, turns: list[dict], max_new_tokens: int) -> PackedPrompt:
        packed = pack_prompt(
            self.generator, question, [], turns, max_new_tokens, self.settings.max_context_tokens,
            system_prompt=NO_RETRIEVAL_SYSTEM_PROMPT,
        )
        # The model alone sees the bare question, not the "Passages:" frame.
        messages = [{"role": "system", "content": NO_RETRIEVAL_SYSTEM_PROMPT}, *packed.history,
                    {"role": "user", "content": question}]
        prompt = self.generator.render_chat(messages, add_generation_prompt=True)
        packed.messages, packed.prompt, packed.prompt_tokens = messages, prompt, self.generator.count_tokens(prompt)
        return packed


class Conversation:
    """A chat that remembers its turns: `ask`/`stream` pass the earlier turns as history, so follow-ups
    ("and how big is it?") work without the caller keeping the messages.

        chat = assistant.conversation()
        chat.ask("What is LoRA?"); chat.ask("and how big is it?"); chat.reset()
    """

    def __init__(self, assistant: "Assistant") -> None:
        self.assistant = assistant
        self.messages: list[dict] = []

    def stream(self, question: str, **options: Any) -> Iterator[str | Answer]:
        """Like Assistant.stream, with this conversation's history; the turn is recorded at the end."""
        for item in self.assistant.stream(question, history=self.messages, **options):
            if isinstance(item, Answer):
                self.messages += [{"role": "user", "content": item.question},
                                  {"role": "assistant", "content": item.text}]
            yield item

    def ask(self, question: str, **options: Any) -> Answer:
        """Like Assistant.ask, with this conversation's history."""
        answer = None
        for item in self.stream(question, **options):
            if isinstance(item, Answer):
                answer = item
        assert answer is not None
        return answer

    def reset(self) -> None:
        """Forget the turns."""
        self.messages = []


def relevant_hits(hits: Sequence[Any], threshold: float, relative_floor: float) -> list[Any]:
    """The hits worth showing the model: cosine at least `threshold` and at least `relative_floor` x the
    best hit's. Hybrid ranking fuses ranks, so an unrelated passage can rank 2nd behind a clear match;
    a small model is easily distracted by it (measured: answers got worse with such passages in)."""
    best = max((_dense(h) for h in hits), default=0.0)
    floor = max(threshold, relative_floor * best)
    return [h for h in hits if _dense(h) >= floor] or list(hits[:1])


def _dense(hit: Any) -> float:
    value = getattr(hit, "dense_score", None)
    return float(hit.score if value is None else value)


def _load_encoder(settings: Settings) -> Any:
    from model.encoder import Encoder

    return Encoder.load(settings.encoder, device=settings.device)


def load_generator(settings: Settings) -> Any:
    """The generator the settings ask for, with the adapter when one is enabled and present."""
    from model.generate import Generator

    adapter = settings.adapter_path()
    return Generator.load(settings.generator, device=settings.device, dtype=settings.dtype, adapter=adapter,
                          quantize=settings.quantize)


__all__ = [
    "Answer", "Assistant", "CitationFilter", "Conversation", "PackedPrompt", "QuestionError", "Source", "Timings",
    "clean_citations", "is_followup", "pack_prompt", "standalone_query", "SAMPLING_FIELDS",
]
