"""The RAG pipeline: question (+ history) → search query → passages → packed prompt → streamed, cited answer.

    assistant = Assistant.from_folder("~/notes")
    answer = assistant.ask("What does LoRA train?")
    print(answer.text, [s.path for s in answer.sources if s.cited])

    for item in assistant.stream("and how big is it?", history=[...]):
        if isinstance(item, str): print(item, end="")     # text deltas, citation markers already checked
        else: answer = item                                # the final Answer comes last

The default model is small, so the pipeline carries much of the quality; each job has its own module:
- `assistant.followup`: follow-up questions are rewritten deterministically into a standalone search query
  (`standalone_query`);
- `assistant.packing`: passages are packed into the generator's context budget measured with its own tokenizer
  on the rendered chat template, so the prompt never overflows (`pack_prompt`);
- `assistant.citations`: citation markers are parsed, and numbers that do not name a given passage are dropped
  (`clean_citations`, `CitationFilter` for streams);
- `assistant.answer`: the result types (`Answer`, `Source`, `Timings`) and `QuestionError`;
- here: retrieval, and the refusal when the best passage is not similar enough to the question (a calibrated
  cosine threshold): the assistant then refuses without calling the generator, and shows the nearest passages.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from assistant.answer import Answer, AnswerSentence, Draft, QuestionError, Revision, Timings, _source
from assistant.citations import CitationFilter, clean_citations
from assistant.evidence import (ANSWER_MODES, Evidence, evidence_from_spans, extractive_answer, route, states_evidence,
                               strip_citations, wants_sentence)
from assistant.compose import best_support, cited_numbers, heading_of, score_units
from assistant.followup import is_followup, standalone_query
from assistant.kinds import classify, subject_of
from assistant.open_answers import OPEN_KINDS, compose_for, gather, named_document, reader_unit_scores, units_of
from assistant.packing import PackedPrompt, _text_of, normalize_history, pack_prompt, prompt_label
from assistant.prompts import REFUSAL_TEXT, PromptPassage, build_messages, is_refusal
from assistant.training_data import clip_passage
from assistant.settings import Settings, SettingsError
from model.errors import UserError
from retrieval.chunking import HEADING_SEPARATOR

log = logging.getLogger(__name__)

# A small model sometimes carries on with the prompt's own format ("Question: ...", a new "Passages:"
# block, another chat turn); generation stops there unless the caller passes its own `stop`.
DEFAULT_STOP = ("\nQuestion:", "\nPassages:", "<|im_start|>", "<|im_end|>")

# The model alone (`use_retrieval=False`, `assistant eval --no-retrieval`): no passages, no citations.
NO_RETRIEVAL_SYSTEM_PROMPT = "Answer the question in one or two short sentences."

# Guided mode: the generator sees the evidence's passage cut to about this many words around the evidence
# (the length the adapter was trained on), and writes at most this many tokens.
GUIDED_PASSAGE_WORDS = 100
# Open kinds whose answer is a sentence or two: the reader's verdict counts in their answerability.
SENTENCE_KINDS = ("definition", "explanation", "yesno")
GUIDED_MAX_NEW_TOKENS = 64


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

class _FifoTurn:
    """A first-come, first-served lock: threads get it in the order they asked (a plain Lock promises no order).

    Concurrent questions take turns for their CPU-heavy preparation (retrieval, the reader), each with all the
    cores, instead of running it all at once, every thread slowed by all the others: the first question to
    arrive is ready first and its answer is generated (in the engine's shared batch) while the next one is
    read. So a question asked beside others gets its answer no later than behind them in a queue."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    @contextlib.contextmanager
    def turn(self) -> Iterator[Callable[[], None]]:
        """Wait for this thread's turn; yields `release` (to end the turn early; the block's end ends it too)."""
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._cond.wait()
        held = [True]

        def release() -> None:
            if held[0]:
                held[0] = False
                with self._cond:
                    self._serving += 1
                    self._cond.notify_all()

        try:
            yield release
        finally:
            release()

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
        reader: Any | None = None,
        engine: Any | None = None,
    ) -> None:
        self.retriever = retriever
        self.engine = engine  # optional: generation through a batch scheduler (`stream` with Generator's signature)
        self.generator = generator
        self.reader = reader  # model.reader.Reader beside the encoder, or None (answers as in `generate` mode)
        self.settings = settings or Settings()
        self.encoder = encoder
        self.index_path = Path(index_path) if index_path else None
        self.folder = Path(folder) if folder else None
        self._model_lock = threading.Lock()
        self._index_lock = threading.RLock()
        self._preparing = _FifoTurn()  # retrieval + reader, one question at a time, first come first served
        self.sync_report: Any = None  # what the folder sync at opening did (retrieval.sync.SyncReport)

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
        prepare_index_encoder(encoder, index_path, settings)
        report = sync_folder(folder, index_path, encoder, progress=progress, on_progress=on_progress)
        log.info("index %s in sync with %s: %s", index_path, folder, report)
        assistant = cls._open(index_path, settings, generator, encoder, folder=folder)
        assistant.sync_report = report  # skipped files are listed by `assistant index` / the library, not here
        return assistant

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
        prepare_index_encoder(encoder, index_path, settings)
        return cls._open(index_path, settings, generator, encoder)

    @classmethod
    def from_settings(cls, settings: Settings, progress: bool = False,
                      on_progress: Callable[[int, int], Any] | None = None, **kw: Any) -> "Assistant":
        """Open what the settings name: `index` alone opens that index as is; otherwise the folder
        (default: the repository's corpus/) is synced into its index first."""
        from assistant.settings import DEFAULT_CORPUS

        if settings.index is not None and settings.folder is None:
            return cls.from_index(settings.index, settings=settings, **kw)
        folder = settings.folder or DEFAULT_CORPUS
        return cls.from_folder(folder, settings.index, settings=settings, progress=progress,
                               on_progress=on_progress, **kw)

    @classmethod
    def _open(cls, index_path, settings, generator, encoder, folder=None) -> "Assistant":
        from retrieval.retriever import Retriever

        retriever = Retriever(index_path, encoder, reranker=load_reranker(settings, encoder))
        generator = generator or load_generator(settings)
        reader = load_reader(settings, encoder)
        return cls(retriever, generator, settings, encoder=encoder, index_path=index_path, folder=folder,
                   reader=reader)

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
            self.retriever = Retriever(self.index_path, self.encoder, reranker=self.retriever.reranker)
        return report

    def follow_index(self) -> None:
        """After the index's vectors were switched (`assistant adapt`, --no-adapt elsewhere): load or drop the
        encoder adapter the index now names, and reopen the retriever on it."""
        if self.index_path is None or self.encoder is None:
            return
        from retrieval.retriever import Retriever

        with self._index_lock:
            prepare_index_encoder(self.encoder, self.index_path, self.settings, switch=False)
            reranker = getattr(self.retriever, "reranker", None)
            self.retriever = Retriever(self.index_path, self.encoder, reranker=reranker)

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
        from retrieval.errors import IndexMismatchError

        start = time.perf_counter()
        for attempt in (0, 1):
            try:
                with self._index_lock:
                    hits = list(self.retriever.search(query, k=k or self.settings.k,
                                                      mode=mode or self.settings.retrieval_mode,
                                                      rerank=self.settings.rerank,
                                                      rerank_mode=self.settings.rerank_mode,
                                                      fusion=self.settings.hybrid_fusion))
                break
            except IndexMismatchError:
                if attempt or self.index_path is None:
                    raise
                self.follow_index()  # another process adapted the index (or turned its adaptation off)
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
        answer_mode: str | None = None,
        reader_threshold: float | None = None,
        drafts: bool = False,
        **sampling: Any,
    ) -> Iterator[str | Revision | Answer]:
        """Yield the answer's text deltas as they are generated, then the final Answer.

        `answer_mode`: guided (default) | extract | generate (see assistant/evidence.py); without a reader,
        or for questions the reader cannot answer (summaries, lists, code), the generator answers alone.
        `sampling`: any SamplingParams field (temperature, top_k, top_p, min_p, repetition_penalty,
        max_new_tokens, seed, num_beams, stop, ...); unset ones come from the settings.
        `cancel`: set it to stop generation; the Answer then has finish_reason "cancelled".
        `drafts`: guided answers first yield the reader's evidence as a `Draft` (quoted words + [n], shown within
        a few hundred ms) and, when the generator's fuller sentence passes the check, a `Revision` with it;
        without drafts (the default: append-only streams such as the OpenAI server's) the checked text comes whole.
        """
        start = time.perf_counter()
        question = self.check_question(question)
        params = self._sampling_params(sampling)
        turns = normalize_history(history, self.settings.max_history_turns)
        threshold = self.settings.refusal_threshold if refusal_threshold is None else refusal_threshold
        timings = Timings()
        with self._preparing.turn() as done_preparing:
            yield from self._stream(question, turns, params, threshold, timings, start, cancel, k, retrieval_mode,
                                    use_retrieval, answer_mode, reader_threshold, done_preparing, drafts)

    def _stream(self, question: str, turns: list[dict], params: Any, threshold: float, timings: Timings,
                start: float, cancel: threading.Event | None, k: int | None, retrieval_mode: str | None,
                use_retrieval: bool, answer_mode: str | None, reader_threshold: float | None,
                done_preparing: Callable[[], None], drafts: bool = False) -> Iterator[str | Revision | Answer]:
        """`stream` after its checks, in this question's preparation turn (`done_preparing` ends it)."""
        if use_retrieval:
            if self.retriever is None:
                raise UserError("no index is open; use Assistant.from_folder or from_index")
            query = standalone_query(question, turns)
            hits, timings.retrieval_ms = self.retrieve(query, k=k, mode=retrieval_mode)
            mode = answer_mode or self.settings.answer_mode
            if mode not in ANSWER_MODES:
                raise SettingsError(f"answer_mode must be one of {ANSWER_MODES}, not {mode!r}")
            read_as = query if turns and is_followup(question) else question
            kind = classify(read_as)
            named = self._named_document(read_as, hits) if kind == "summary" else None
            best = max((_dense(h) for h in hits), default=float("-inf"))
            if not named and (not hits or best < threshold):
                done_preparing()
                yield from self._refuse(question, query, hits, timings, start, kind=kind)
                return
            if mode != "generate" and self.reader is not None and self.settings.open_answers and kind in OPEN_KINDS:
                yield from self._answer_open(question, read_as, query, kind, hits, timings, start, mode,
                                             named, retrieval_mode, done_preparing)
                return
            if mode != "generate" and self.settings.open_answers and kind in ("factoid", "count", "yesno"):
                found = self._table_cell(read_as, hits, retrieval_mode)
                if found is not None:
                    cell, passages = found
                    done_preparing()
                    yield from self._yield_composition(question, query, passages, cell, timings, start, mode, kind,
                                                       cell.sentences[0].score)
                    return
            hits = relevant_hits(hits, threshold, self.settings.relative_floor)
            if mode != "generate" and self.reader is not None and route(question, [h.text for h in hits]) == "reader":
                gate = self.settings.reader_threshold if reader_threshold is None else reader_threshold
                yield from self._answer_from_evidence(question, query, hits, turns, params, mode, gate, timings,
                                                      start, cancel, best_cosine=best, done_preparing=done_preparing,
                                                      kind=kind, drafts=drafts)
                return
            packed = pack_prompt(
                self.generator, question, hits, turns, params.max_new_tokens, self.settings.max_context_tokens
            )
        else:
            query = ""
            packed = self._pack_without_passages(question, turns, params.max_new_tokens)

        timings.prompt_tokens = packed.prompt_tokens
        filt = CitationFilter(len(packed.passages))
        done_preparing()
        # With an engine (model.scheduler.BatchScheduler), answers share its running batch; else one at a time.
        with self._model_lock if self.engine is None else contextlib.nullcontext():
            text_stream = (self.engine or self.generator).stream(packed.prompt, params, cancel=cancel)
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
            record_generation(timings, result)
            finish = getattr(result, "finish_reason", "stop") or "stop"
        else:
            finish = "cancelled" if cancel is not None and cancel.is_set() else "stop"
        if finish == "cancelled" and not text:
            refused = False
        yield Answer(text, citations, sources, refused, timings, query, finish, question)

    def support_terms(self, question: str, best_cosine: float) -> dict[str, Any]:
        """The evidence-support terms beside the reader's score (see evidence_from_spans): the question's terms
        weighted by their IDF in this index, and the weighted best retrieval cosine."""
        settings = self.settings
        weights = None
        if settings.reader_coverage_weight and hasattr(self.retriever, "term_weights"):
            weights = self.retriever.term_weights(question)
        return {"coverage_weight": settings.reader_coverage_weight, "term_weights": weights,
                "base": settings.reader_cosine_weight * best_cosine}

    @staticmethod
    def _refuse(question: str, query: str, hits: Sequence[Any], timings: Timings, start: float,
                mode: str = "generate", kind: str = "") -> Iterator[str | Answer]:
        """The refusal, with the nearest passages shown (none cited) and no generator call."""
        sources = [_source(i, h, h.text, cited=False) for i, h in enumerate(hits, start=1)]
        timings.total_ms = timings.time_to_first_token_ms = (time.perf_counter() - start) * 1000
        yield REFUSAL_TEXT
        yield Answer(REFUSAL_TEXT, [], sources, True, timings, query, "refused", question, [], mode, kind=kind)

    def _table_cell(self, question: str, hits: Sequence[Any], mode: str | None = None) -> Any:
        """A question whose answer is one cell of a table in the passages: (the cell, worded with its row and column
        ("Accuracy for TinyLM-2: 91.2 [n].") as a one-sentence composition, the passages it numbers); None when no
        table cell is clearly named (assistant.tables.answer_cell) with confidence >= Settings.table_min_confidence.
        Table passages just below the top k are read too."""
        from assistant.compose import Composition
        from assistant.tables import answer_cell, cell_sentence

        weights = None
        best = None
        # A table can rank just below the top k for a question that names its row and column only: look further.
        look_further = bool(getattr(self.retriever, "has_tables", lambda: False)())
        seen = {getattr(x, "chunk_id", None) for x in hits}
        extra = [h for h in self.retrieve(question, k=2 * max(len(hits), 4), mode=mode)[0]
                 if "|" in h.text and h.chunk_id not in seen] if look_further else []
        hits = [*hits, *extra]
        for number, hit in enumerate(hits, start=1):
            if "|" not in hit.text:
                continue
            if weights is None and hasattr(self.retriever, "term_weights"):
                weights = self.retriever.term_weights(question)
            cell = answer_cell(question, hit.text, weights)
            if cell is not None and cell.confidence >= self.settings.table_min_confidence and (
                    best is None or cell.confidence > best[1].confidence):
                best = (number, cell)
        if best is None:
            return None
        number, cell = best
        sentence = AnswerSentence(cell_sentence(cell), number, cell.start, cell.end, cell.confidence, "cell")
        return Composition(cite(sentence.text, number), [sentence], "cell", [number]), hits

    def _named_document(self, question: str, hits: Sequence[Any] = ()) -> str | None:
        """The indexed document a summary question names, if any (see assistant.open_answers.named_document): by
        its file name, or by the title (top heading) of a retrieved document."""
        paths = getattr(self.retriever, "paths", None)
        if paths is None:
            return None
        titles: dict[str, str] = {}
        for hit in hits:
            titles.setdefault(str(hit.path), heading_of(hit).split(HEADING_SEPARATOR)[0])
        with self._index_lock:
            return named_document(question, paths(), titles)

    def _answer_open(self, question: str, read_as: str, query: str, kind: str, hits: list[Any], timings: Timings,
                     start: float, mode: str, named: str | None, retrieval_mode: str | None,
                     done_preparing: Callable[[], None]) -> Iterator[str | Answer]:
        """An explanation, list, procedure, comparison, definition, yes/no or summary answer composed of cited
        sentences of the passages (assistant.open_answers, assistant.compose), streamed a sentence at a time."""
        settings = self.settings
        tick = time.perf_counter()
        with self._index_lock:
            passages = gather(self.retriever, kind, read_as, query, hits, k=settings.k,
                              mode=retrieval_mode or settings.retrieval_mode, summary_document=named)
            weights = self.retriever.term_weights(read_as) if hasattr(self.retriever, "term_weights") else None
        timings.retrieval_ms += (time.perf_counter() - tick) * 1000
        units = units_of(passages)
        tick = time.perf_counter()
        reader_scores = {} if kind == "summary" else reader_unit_scores(self.reader, read_as, passages, units)
        timings.reader_ms = (time.perf_counter() - tick) * 1000
        done_preparing()
        score_units(read_as, units, passages, subject=subject_of(read_as) if kind in ("definition", "explanation")
                    else "", term_weights=weights, reader_scores=reader_scores)
        numbers = list(range(1, len(passages) + 1))
        support = best_support(units)
        readable = [u.reader for u in units if u.role in ("sentence", "item") and u.reader is not None]
        if kind in SENTENCE_KINDS and readable and max(readable) < settings.open_reader_floor \
                and support < settings.open_strong_support:
            support = float("-inf")  # the reader finds no answer in any sentence and the terms are not decisive
        composition = None
        if named or support >= settings.open_min_support:
            composition = compose_for(kind, read_as, passages, units, numbers, named=named)
        if composition is None or not composition.sentences:
            yield from self._refuse(question, query, passages or hits, timings, start, mode, kind=kind)
            return
        if settings.open_rewrite and mode == "guided" and self.generator is not None:
            composition = self._reword(question, passages, composition, timings)
        yield from self._yield_composition(question, query, passages, composition, timings, start, mode, kind,
                                           support)

    def _reword(self, question: str, passages: Sequence[Any], composition: Any, timings: Timings) -> Any:
        """The generator rewords a composed answer from its own sentences (Settings.open_rewrite); every sentence it
        writes is checked against them (assistant.compose.check_sentences): a supported one is kept and cited to its
        evidence, one that states what no evidence says is replaced by the evidence sentence."""
        from assistant.compose import Composition, check_sentences

        evidence = composition.sentences
        numbered = [PromptPassage(" ".join(s.text for s in evidence if s.passage == n),
                                  prompt_label(passages[n - 1].path, getattr(passages[n - 1], "heading", None)))
                    for n in composition.numbers]
        prompt = self.generator.render_chat(build_messages(question, numbered, []), add_generation_prompt=True)
        params = self._sampling_params({"max_new_tokens": GUIDED_MAX_NEW_TOKENS * 2})
        with self._model_lock if self.engine is None else contextlib.nullcontext():
            written = "".join((self.engine or self.generator).stream(prompt, params))
        timings.prompt_tokens = self.generator.count_tokens(prompt)
        if is_refusal(written):
            return composition
        sentences, replaced = check_sentences(written, evidence, [p.text for p in passages],
                                              list(range(1, len(passages) + 1)))
        log.info("reworded answer: %d sentences, %d replaced by their evidence", len(sentences), replaced)
        text = " ".join(cite(s.text, s.passage) for s in sentences)
        return Composition(text, sentences, "text", cited_numbers(sentences))

    @staticmethod
    def _yield_composition(question: str, query: str, passages: Sequence[Any], composition: Any, timings: Timings,
                           start: float, mode: str, kind: str, support: float) -> Iterator[str | Answer]:
        """A composition streamed a sentence (or bullet) at a time, then its Answer."""
        if composition.layout in ("text", "cell") and len(composition.sentences) == 1:
            composition.text = cite(" ".join(composition.sentences[0].text.split()), composition.sentences[0].passage)
            composition.numbers = [composition.sentences[0].passage]
        for i, piece in enumerate(_stream_pieces(composition.text)):
            if i == 0:
                timings.time_to_first_token_ms = (time.perf_counter() - start) * 1000
            yield piece
        cited = set(composition.numbers)
        sources = [_source(i, h, h.text, cited=i in cited) for i, h in enumerate(passages, start=1)]
        evidence = [_sentence_evidence(s, passages[s.passage - 1].text, support) for s in composition.sentences]
        timings.total_ms = (time.perf_counter() - start) * 1000
        yield Answer(composition.text, composition.numbers, sources, False, timings, query, "stop", question,
                     evidence, mode, False, composition.sentences, kind, composition.layout)

    def _answer_from_evidence(self, question: str, query: str, hits: list[Any], turns: list[dict], params: Any,
                              mode: str, gate: float, timings: Timings, start: float,
                              cancel: threading.Event | None, best_cosine: float = 0.0,
                              done_preparing: Callable[[], None] = lambda: None,
                              kind: str = "factoid", drafts: bool = False) -> Iterator[str | Revision | Answer]:
        """Reader over the passages ─► refuse, or the best evidence ─► extract: say it; guided: the generator
        words it, and a check keeps the words true to the evidence (else the evidence itself is the answer).
        With `drafts`, guided mode shows the evidence at once (a Draft) and the checked wording as a Revision."""
        texts = [h.text for h in hits]
        # A follow-up ("and how big is it?") is read with its standalone form, which names what "it" is.
        read_as = query if turns and is_followup(question) else question
        tick = time.perf_counter()
        spans = self.reader.read(read_as, texts)
        timings.reader_ms = (time.perf_counter() - tick) * 1000
        done_preparing()
        evidence = evidence_from_spans(spans, texts, list(range(1, len(hits) + 1)), read_as,
                                       self.settings.reader_overlap_weight, explain=wants_sentence(question),
                                       **self.support_terms(read_as, best_cosine))
        if not evidence or evidence[0].support < gate:
            fallback_answer = self._sentence_fallback(read_as, query, hits, timings, start, mode, kind)
            if fallback_answer is not None:
                yield from fallback_answer
                return
            yield from self._refuse(question, query, hits, timings, start, mode, kind=kind)
            return
        best = evidence[0]
        text, finish, fallback = extractive_answer(best), "stop", mode == "guided"
        drafted = drafts and mode == "guided"
        if drafted:  # the evidence is an answer already: show it while the generator words it
            timings.time_to_first_token_ms = (time.perf_counter() - start) * 1000
            yield Draft(text)
        if mode == "guided":
            written, result = self._guided_wording(question, hits, best, turns, params, timings, cancel)
            finish = getattr(result, "finish_reason", "stop") or "stop"
            tick = time.perf_counter()
            if finish == "cancelled" or (cancel is not None and cancel.is_set()):
                # A shown draft stays the answer (it is the evidence); nothing shown means nothing to keep.
                text, fallback, finish = (text if drafted else ""), drafted, "cancelled"
            elif not is_refusal(written) and states_evidence(written, best):
                worded = cite(written, best.passage)
                if drafted and worded != text:
                    yield Revision(worded)
                text, fallback = worded, False
            timings.check_ms = (time.perf_counter() - tick) * 1000
        if not drafted:
            timings.time_to_first_token_ms = (time.perf_counter() - start) * 1000
            if text:
                yield text
        sources = [_source(i, h, h.text, cited=(i == best.passage and bool(text)))
                   for i, h in enumerate(hits, start=1)]
        timings.total_ms = (time.perf_counter() - start) * 1000
        bounds = (best.sentence_start, best.sentence_end) if best.kind == "sentence" else (best.start, best.end)
        sentences = [AnswerSentence(strip_citations(text), best.passage, bounds[0], bounds[1], round(best.support, 4),
                                    "sentence" if best.kind == "sentence" else "span")] if text else []
        yield Answer(text, [best.passage] if text else [], sources, False, timings, query, finish, question,
                     [best], mode, fallback, sentences, kind)

    def _guided_wording(self, question: str, hits: list[Any], best: Evidence, turns: list[dict], params: Any,
                        timings: Timings, cancel: threading.Event | None) -> tuple[str, Any]:
        """The generator's short answer around the evidence (its passage clipped around the span), written whole
        (through the engine's batch when there is one): (text, the generation result or None)."""
        hit = hits[best.passage - 1]
        passage = PromptPassage(clip_passage(hit.text, GUIDED_PASSAGE_WORDS, keep=(best.start, best.end)),
                                prompt_label(hit.path, getattr(hit, "heading", None)))
        prompt = self.generator.render_chat(build_messages(question, [passage], turns), add_generation_prompt=True)
        timings.prompt_tokens = self.generator.count_tokens(prompt)
        guided = params.replace(max_new_tokens=min(params.max_new_tokens, GUIDED_MAX_NEW_TOKENS))
        with self._model_lock if self.engine is None else contextlib.nullcontext():
            text_stream = (self.engine or self.generator).stream(prompt, guided, cancel=cancel)
            written = "".join(text_stream)
            result = getattr(text_stream, "result", None)
        record_generation(timings, result)
        return written, result

    def _sentence_fallback(self, read_as: str, query: str, hits: list[Any], timings: Timings, start: float,
                           mode: str, kind: str) -> Iterator[str | Answer] | None:
        """A question the reader finds no span for, over passages with a sentence that clearly is about it (its
        unit score reaches Settings.sentence_fallback): answered with that sentence instead of a refusal. The
        reader was trained on Wikipedia prose; technical docs and reports often answer in a sentence it does not
        read as a span."""
        threshold = self.settings.sentence_fallback
        if not self.settings.open_answers or threshold is None or threshold <= 0:
            return None
        units = units_of(hits)
        weights = self.retriever.term_weights(read_as) if hasattr(self.retriever, "term_weights") else None
        score_units(read_as, units, hits, term_weights=weights)
        support = best_support(units)
        if support < threshold:
            return None
        composition = compose_for("explanation", read_as, hits, units, list(range(1, len(hits) + 1)))
        if composition is None or not composition.sentences:
            return None
        composition.sentences = composition.sentences[:1]
        return self._yield_composition(read_as, query, hits, composition, timings, start, mode, kind, support)

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


_PIECE_END = re.compile(r"(?<=\])[.!?]?(?= )|\n+")


def record_generation(timings: Timings, result: Any) -> None:
    """Copy what a generation result says about itself (tokens, speed, prefill and decode times) into `timings`;
    `result` may be None (a fake or cancelled stream)."""
    timings.generated_tokens = len(getattr(result, "token_ids", ()) or ())
    timings.tokens_per_s = getattr(result, "decode_tokens_per_s", None)
    timings.prefill_ms = float(getattr(result, "prefill_ms", 0.0) or 0.0)
    timings.decode_ms = float(getattr(result, "decode_ms", 0.0) or 0.0)


def _stream_pieces(text: str) -> list[str]:
    """A composed answer cut after each cited sentence or line, so a stream shows it a sentence at a time."""
    pieces, last = [], 0
    for match in _PIECE_END.finditer(text):
        if match.end() > last:
            pieces.append(text[last:match.end()])
            last = match.end()
    if last < len(text):
        pieces.append(text[last:])
    return [p for p in pieces if p]


def _sentence_evidence(sentence: AnswerSentence, passage_text: str, support: float) -> Evidence:
    """The evidence record of one composed sentence (its supporting words, as `Answer.evidence` lists them)."""
    words = passage_text[sentence.start:sentence.end]
    return Evidence(sentence.passage, words, sentence.start, sentence.end, words, sentence.start, sentence.end,
                    sentence.score, "sentence", support)


def _dense(hit: Any) -> float:
    value = getattr(hit, "dense_score", None)
    return float(hit.score if value is None else value)


def _load_encoder(settings: Settings) -> Any:
    from model.encoder import Encoder

    return Encoder.load(settings.encoder, device=settings.device)


def prepare_index_encoder(encoder: Any, index_path: Path, settings: Settings, switch: bool = True) -> Any:
    """Load the encoder adapter of an adapted index into `encoder` (assistant/adapt.py), or with `--no-adapt`
    (settings.use_adapt False) switch the index back to the bundled encoder's kept vectors. `switch=False` only
    follows what the index records (a running assistant whose index another process changed)."""
    from assistant.adapt import prepare_encoder

    return prepare_encoder(encoder, index_path, use_adapt=settings.use_adapt or not switch,
                           emit=lambda line: log.warning("%s", line))


def load_reader(settings: Settings, encoder: Any) -> Any:
    """The evidence reader beside `encoder` (sharing its weights), or None when disabled or not shipped."""
    path = settings.reader_path()
    if path is None or encoder is None or not hasattr(encoder, "model"):
        return None
    from model.reader import Reader

    return Reader.load(encoder, path)


def load_reranker(settings: Settings, encoder: Any) -> Any:
    """The cross-encoder reranker beside `encoder` when `settings.rerank` > 0 (and one is given or shipped).

    A folder given with --reranker that does not fit the encoder is a CheckpointError; the shipped one, trained on
    the bundled encoder, is skipped with a warning beside another encoder (--encoder): hits are then not reranked."""
    path = settings.reranker_path()
    if path is None or encoder is None or not hasattr(encoder, "model"):
        return None
    from model.cross_encoder import CrossEncoder

    if settings.reranker is None and not CrossEncoder.fits(encoder, path):
        log.warning("the bundled reranker was trained on another encoder than %s; hits are not reranked (train one "
                    "for it with `python -m assistant.rerank_training`, or pass --rerank 0)",
                    getattr(encoder, "name", "this one"))
        return None
    return CrossEncoder.load(encoder, path)


def cite(text: str, number: int) -> str:
    """A generated answer with its own markers replaced by [number], before its final full stop."""
    body = strip_citations(text).rstrip()
    if body.endswith((".", "!", "?")):
        return f"{body[:-1].rstrip()} [{number}]{body[-1]}"
    return f"{body} [{number}]"


def load_generator(settings: Settings) -> Any:
    """The generator the settings ask for, with the adapter when one is enabled and present."""
    from model.generate import Generator

    adapter = settings.adapter_path()
    return Generator.load(settings.generator, device=settings.device, dtype=settings.dtype, adapter=adapter,
                          quantize=settings.quantize)


__all__ = ["Assistant", "Conversation", "check_question", "cite", "load_generator", "load_reader", "load_reranker",
           "relevant_hits"]
