"""The open-answer path of the pipeline: gathers the passages a question's kind needs, scores their units and
composes the answer (assistant.compose). Knows the retriever and the reader; knows nothing of prompts or the UI.

    passages for the kind:
        list, summary   the question's hits, then the rest of the best document's sections (neighbouring chunks)
        summary of a named document   that document's chunks, in order (never refused)
        comparison      one search per side, merged with the question's hits
        others          the question's hits
    ─► units (sentences, list items) of every passage, scored (reader span scores where the reader reads them)
    ─► answerable?  the best unit's score against `Settings.open_min_support` (else a refusal)
    ─► Composition
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from assistant import compose
from assistant.compose import Composition, Unit, content_terms, heading_of, section_terms
from assistant.kinds import comparison_sides, count_in, list_object, subject_of
from retrieval.chunking import HEADING_SEPARATOR

OPEN_KINDS = ("definition", "explanation", "yesno", "list", "procedure", "comparison", "summary")
WIDE_KINDS = ("list", "procedure", "summary")
# At most this many passages are read by the reader for unit scores (it costs ~50 ms a passage on 2 cores).
READER_PASSAGES = 4


@dataclass
class OpenResult:
    """What the open path found: the passages it used (numbered 1..n in this order), and the composition."""

    hits: list[Any]
    composition: Composition | None
    support: float = 0.0
    named_document: str | None = None
    reader_ms: float = 0.0
    units: list[Unit] = field(default_factory=list)


def _doc_words(path: str) -> set[str]:
    stem = PurePosixPath(path).stem
    return set(content_terms(re.sub(r"[-_.]+", " ", stem)))


_GENERIC = frozenset(content_terms("document file report paper manual page text notes doc docs documentation "
                                   "study guide article chapter module"))


def named_document(question: str, paths: Sequence[str], titles: dict[str, str] | None = None) -> str | None:
    """The indexed document a question names ("the document about positional encoding", "summarize
    peft-lora.md", "the quarterly operations report"), or None. Matches the file name; then a file whose stem
    words are all in the question; then a document title (`titles`: path -> title) holding every word the
    question uses to name it (at least two, words such as "document" or "report" aside)."""
    lowered = question.lower()
    for path in paths:
        name = PurePosixPath(path).name.lower()
        if name and name in lowered:
            return path
    q_terms = set(content_terms(question))
    best, best_share = None, 0.0
    for path in paths:
        words = _doc_words(path)
        if not words:
            continue
        share = len(words & q_terms) / len(words)
        if share > best_share:
            best, best_share = path, share
    if best_share >= 0.99:
        return best
    naming = q_terms - _GENERIC
    for path, title in (titles or {}).items():
        title_terms = set(content_terms(title))
        if len(naming) >= 1 and len(naming | (q_terms & _GENERIC)) >= 2 and naming <= title_terms:
            return path
    return None


def _merge(*groups: Sequence[Any]) -> list[Any]:
    """Hits from several searches, each chunk once, in first-seen order."""
    seen: set[Any] = set()
    out = []
    for group in groups:
        for hit in group:
            key = getattr(hit, "chunk_id", id(hit))
            if key in seen:
                continue
            seen.add(key)
            out.append(hit)
    return out


def gather(retriever: Any, kind: str, question: str, query: str, hits: list[Any], *, k: int,
           mode: str | None = None, summary_document: str | None = None, max_passages: int = 10) -> list[Any]:
    """The passages a question of `kind` reads (see the module docstring)."""
    if kind == "summary" and summary_document and hasattr(retriever, "document_chunks"):
        return retriever.document_chunks(summary_document, query)[: max(max_passages, 12)]
    if kind == "comparison":
        sides = comparison_sides(question)
        if sides:
            rest = " ".join(w for w in query.split() if w.lower() not in " ".join(sides).lower())
            per_side = [retriever.search(f"{side} {rest}".strip(), k=3, mode=mode or "hybrid") for side in sides]
            merged = _merge(*[[h for h in group[:2]] for group in per_side], hits)
            return merged[:max_passages]
    if kind in WIDE_KINDS and hits and hasattr(retriever, "document_chunks"):
        best_path = hits[0].path
        chunks = retriever.document_chunks(best_path, query)
        if chunks:
            # The best document's chunks: those whose section heading the question names first, then those nearest
            # its best hit; read in document order.
            hit_ids = {h.chunk_id for h in hits if h.path == best_path}
            first = min((i for i, c in enumerate(chunks) if c.chunk_id in hit_ids), default=0)
            q_terms = set(content_terms(question)) - _GENERIC

            def rank(item: tuple[int, Any]) -> tuple:
                i, chunk = item
                heading = set(section_terms(chunk))
                return (-sum(_names(t, heading) for t in q_terms), chunk.chunk_id not in hit_ids, abs(i - first))
            keep = sorted(i for i, _ in sorted(enumerate(chunks), key=rank)[:max_passages])
            window = [chunks[i] for i in keep]
            lead = [h for h in hits if window and h.chunk_id == window[0].chunk_id]
            return _merge(lead, window, hits)[:max_passages]
    if kind == "explanation" and len(hits) >= k:  # an explanation may sit just below the top k: read two more
        more = retriever.search(query, k=k + 2, mode=mode or "hybrid")
        return _merge(hits, more)[:max_passages]
    return list(hits[:max_passages])


def units_of(hits: Sequence[Any]) -> list[Unit]:
    """Every unit of every passage (passage index = position in `hits`)."""
    out: list[Unit] = []
    for i, hit in enumerate(hits):
        out.extend(compose.passage_units(hit.text, i))
    return out


def reader_unit_scores(reader: Any, question: str, hits: Sequence[Any], units: Sequence[Unit],
                       limit: int = READER_PASSAGES) -> dict[tuple[int, int], float]:
    """{(passage, unit position): reader score} for the first `limit` passages (readers without `read_units`:
    nothing)."""
    if reader is None or not hasattr(reader, "read_units") or not hits:
        return {}
    n = min(limit, len(hits))
    bounds: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    keys: list[list[int]] = [[] for _ in range(n)]
    for unit in units:
        if unit.passage < n:
            bounds[unit.passage].append((unit.start, unit.end))
            keys[unit.passage].append(unit.position)
    _, scores = reader.read_units(question, [h.text for h in hits[:n]], bounds)
    out: dict[tuple[int, int], float] = {}
    for p, values in enumerate(scores):
        for position, value in zip(keys[p], values):
            if value is not None:
                out[(p, position)] = float(value)
    return out


def compose_for(kind: str, question: str, hits: list[Any], units: list[Unit], numbers: Sequence[int], *,
                named: str | None = None, retriever: Any = None) -> Composition | None:
    """The composition of `kind` over scored units."""
    if kind == "definition":
        return compose.compose_definition(units, numbers, hits, subject_of(question))
    if kind in ("explanation",):
        return compose.compose_explanation(units, numbers, hits)
    if kind == "yesno":
        return compose.compose_yesno(units, numbers, hits)
    if kind == "procedure":
        q_terms = content_terms(question)
        headings = {}
        for i, hit in enumerate(hits):
            path = heading_of(hit).split(HEADING_SEPARATOR)
            if len(path) < 2:  # the document's title alone names no section
                headings[i] = 0.0
                continue
            words = set(content_terms(path[-1]))
            # The words the question shares with the document's title say which document, not which section.
            terms = [t for t in q_terms if t not in set(content_terms(path[0]))] or q_terms
            headings[i] = sum(_names(t, words) for t in terms) / len(terms)
        return compose.compose_procedure(units, numbers, hits, headings=headings, heading_weight=2.0)
    if kind == "list":
        count = count_in(question)
        object_terms = content_terms(list_object(question))
        enumeration = compose.compose_enumeration(units, numbers, hits, count, object_terms)
        if enumeration is not None:
            return enumeration
        best_path = str(getattr(hits[0], "path", "")) if hits else ""
        sections = compose.section_leads(units, hits, best_path)
        if sections and not _sections_are_items(object_terms, hits, best_path):
            sections = None
        if not sections:
            named_section = compose.compose_section_items(units, numbers, hits, object_terms)
            if named_section is not None:  # "the limitations of ..." and a section titled "Limitations"
                return named_section
        return compose.compose_list(units, numbers, hits, sections=sections, count=count)
    if kind == "comparison":
        sides = comparison_sides(question) or ()
        if len(sides) == 2:
            return compose.compose_comparison([(side, units) for side in sides], numbers, hits)
        return compose.compose_explanation(units, numbers, hits)
    if kind == "summary":
        if named:
            return compose.compose_document_summary(units, numbers, hits, named)
        return compose.compose_summary(units, numbers, hits, topic_weight=0.6)
    return compose.compose_explanation(units, numbers, hits)


def _names(term: str, words: set[str]) -> bool:
    """A question term names a heading word: the same stem, or, for long words, the same first five letters
    ("maintained" and "Maintenance", "installing" and "Installation")."""
    return term in words or (len(term) >= 6 and any(len(w) >= 6 and w[:5] == term[:5] for w in words))


def _sections_are_items(object_terms: Sequence[str], hits: Sequence[Any], path: str) -> bool:
    """A list question whose object ("decoding strategies") is what the document's title or top heading names:
    then the document's sections are the list's items."""
    if not object_terms:
        return False
    words = set(_doc_words(path))
    for hit in hits:
        if str(getattr(hit, "path", "")) == path:
            words |= set(section_terms(hit, 0))
    return all(t in words for t in object_terms)


__all__ = ["OPEN_KINDS", "OpenResult", "WIDE_KINDS", "compose_for", "gather", "named_document",
           "reader_unit_scores", "units_of"]
