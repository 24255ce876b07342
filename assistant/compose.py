"""Composed answers: explanations, lists, procedures, comparisons and summaries built from cited sentences.

    question ─► kind (assistant.kinds) ─► passages (wider for lists and summaries, one search per side for
    comparisons) ─► units (sentences, list items) scored for the question ─► the kind's layout:
        definition   the defining sentence(s) of the subject
        explanation  the best sentence and its best neighbours, in reading order
        yesno        the deciding sentence
        list         one bullet per item (list items, the sections of the best document, or the best sentences)
        procedure    the steps as bullets, in reading order
        comparison   a paragraph per side, each from sentences about that side
        summary      the most central sentences of the named document (or of the topic's passages), in order
    ─► Composition(text, sentences, layout): every sentence is a unit of a passage, with its exact offsets,
       so every sentence is cited to words that say it.

Scoring a unit for a question (`score_units`): the IDF-weighted share of the question's terms found in the unit
(and, less, in its heading), the passage's retrieval cosine, the reader's best span inside the unit when the reader
read that passage, and small priors (a definition's subject at the start of a sentence, the first sentence of a
section). The weights are in `UnitWeights` (measured on `benchmarks/open_questions.jsonl`, see docs/benchmarks.md).

A generator may reword the composition (`check_sentences`): each sentence it writes is kept only when one unit of
the evidence supports it (its content words and every number come from that unit); any other sentence is replaced
by the unit it is closest to, so no claim without evidence reaches the user.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from assistant.answer import AnswerSentence
from assistant.kinds import comparison_sides, subject_of
from retrieval.chunking import HEADING_SEPARATOR

# ---------------------------------------------------------------------------------------------------- units

_ITEM = re.compile(r"^[ \t]*(?:[-*+\u2022]|\d{1,2}[.)])[ \t]+(?=\S)")
_HEADING_LINE = re.compile(r"^[ \t]*#{1,6}[ \t]+\S")
_FENCE = re.compile(r"^[ \t]*(?:```|~~~)")
_TABLE_LINE = re.compile(r"^[ \t]*\|.*\|[ \t]*$")
_CODE_LINE = re.compile(r"^[ \t]*(?:>>>|\.\.\.(?:\s|$)|\$ |[\w.]+\(.*\)\s*(?:-->|->)\s*\S)")
_CODE_CHARS = frozenset("()[]{}=<>`*#|\\$")
_ABBREVIATIONS = re.compile(
    r"(?:\b(?:e\.g|i\.e|et al|etc|vs|cf|Mr|Mrs|Ms|Dr|Prof|St|No|Fig|Eq|approx|Sec|Ch|Vol|resp))\.$")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s+(?:[\"'(\[]?[A-Z0-9`*]))")


@dataclass
class Unit:
    """A sentence, list item or line of a passage: the smallest thing an answer cites."""

    passage: int          # index of the passage among those given (0-based)
    start: int            # character offsets in the passage text
    end: int
    text: str
    role: str             # "sentence" | "item" | "heading" | "code" | "table"
    position: int         # order of the unit in its passage
    paragraph_first: bool = False  # first unit of its paragraph
    item_marker: str = ""  # the bullet or number an item had ("-", "2.")
    score: float = 0.0
    base: float = 0.0      # the score without the reader's part: what answerability is judged on
    reader: float | None = None
    coverage: float = 0.0


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentence bounds inside text[start:end] (abbreviations such as "e.g." and "et al." do not end one)."""
    out: list[tuple[int, int]] = []
    begin = start
    for match in _SENTENCE_END.finditer(text, start, end):
        stop = match.end()
        if _ABBREVIATIONS.search(text[max(begin, stop - 8):stop]):
            continue
        out.append((begin, stop))
        begin = stop
        while begin < end and text[begin].isspace():
            begin += 1
    if begin < end and text[begin:end].strip():
        out.append((begin, end))
    return [(a, b) for a, b in out if text[a:b].strip()]


def passage_units(text: str, passage: int = 0) -> list[Unit]:
    """Every unit of a passage in reading order, offsets exact: `text[u.start:u.end] == u.text`."""
    units: list[Unit] = []
    lines: list[tuple[int, int]] = []
    pos = 0
    for line in text.split("\n"):
        lines.append((pos, pos + len(line)))
        pos += len(line) + 1
    in_fence = False
    paragraph: list[tuple[int, int]] = []

    def add(role: str, a: int, b: int, first: bool, marker: str = "") -> None:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            units.append(Unit(passage, a, b, text[a:b], role, len(units), first, marker))

    def flush() -> None:
        if paragraph:
            a, b = paragraph[0][0], paragraph[-1][1]
            for j, (s, e) in enumerate(_sentences(text, a, b)):
                add("sentence", s, e, j == 0)
            paragraph.clear()

    item: list[int] | None = None  # [start, end, marker_len] of the item being read
    for a, b in lines:
        line = text[a:b]
        if _FENCE.match(line):
            flush()
            if item:
                add("item", item[0], item[1], True, text[item[0]:item[0] + item[2]].strip())
                item = None
            in_fence = not in_fence
            continue
        if in_fence:
            add("code", a, b, False)
            continue
        if not line.strip():
            flush()
            if item:
                add("item", item[0], item[1], True, text[item[0]:item[0] + item[2]].strip())
                item = None
            continue
        if _HEADING_LINE.match(line):
            flush()
            add("heading", a, b, True)
            continue
        if _TABLE_LINE.match(line):
            flush()
            add("table", a, b, False)
            continue
        if _CODE_LINE.match(line):  # a doctest or shell line inside prose
            flush()
            add("code", a, b, False)
            continue
        marker = _ITEM.match(line)
        if marker:
            flush()
            if item:
                add("item", item[0], item[1], True, text[item[0]:item[0] + item[2]].strip())
            item = [a, b, marker.end()]
            continue
        if item and (line.startswith((" ", "\t"))):
            item[1] = b  # an indented continuation line of the item
            continue
        if item:
            add("item", item[0], item[1], True, text[item[0]:item[0] + item[2]].strip())
            item = None
        paragraph.append((a, b))
    flush()
    if item:
        add("item", item[0], item[1], True, text[item[0]:item[0] + item[2]].strip())
    for i, unit in enumerate(units):
        unit.position = i
    return units


def item_body(unit: Unit) -> tuple[int, int]:
    """Offsets of an item's words without its bullet or number (the unit itself for other roles)."""
    if unit.role != "item":
        return unit.start, unit.end
    match = _ITEM.match(unit.text)
    skip = match.end() if match else 0
    return unit.start + skip, unit.end


# ---------------------------------------------------------------------------------------------------- scoring

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9+#.\-]*[A-Za-z0-9+#]|[A-Za-z0-9]")
_STOP = frozenset("""a an the and or of to in on at for with by from as is are was were be been being it its this that
these those what which who whom whose when where why how does do did done can could should would will may might
must shall about into over than then there their them they you your we our i me my not no yes any all some each
between difference differences compare comparison versus vs list summarize summarise summary describe explain
documents document say says tell give main key different kinds types steps step way ways please""".split())


_PART = re.compile(r"[a-z]+|\d+(?:\.\d+)*")


def content_terms(text: str) -> list[str]:
    """Lower-cased words of `text` that carry meaning (stopwords and question words dropped), lightly stemmed.
    Dotted and hyphenated names are split into their parts ("heapq.merge" -> "heapq", "merg"; numbers such as 2.96
    stay whole), so a question naming `module.function` finds the function's own sentences."""
    out = []
    for word in _WORD.findall(text.lower()):
        word = word.strip(".-")
        parts = [word] if word.replace(".", "").replace(",", "").isdigit() else _PART.findall(word)
        for part in parts:
            if part and part not in _STOP:
                out.append(_stem(part))
    return out


def _stem(word: str) -> str:
    """A light stemmer: "merges", "merged", "merging" and "merge" all become "merg"."""
    for suffix in ("ations", "ation", "ings", "ing", "ies", "es", "s", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)] + ("y" if suffix == "ies" else "")
            break
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]
    return word


def heading_of(hit: Any) -> str:
    """A passage's heading path ("Document › Section"), or ""."""
    return str(getattr(hit, "heading", "") or "")


def section_terms(hit: Any, part: int = -1) -> list[str]:
    """The content terms of one part of a passage's heading path: its own section's title (part -1, the default)
    or its document's title (part 0)."""
    return content_terms(heading_of(hit).split(HEADING_SEPARATOR)[part])


@dataclass
class UnitWeights:
    """How a unit's score is made (see the module docstring)."""

    coverage: float = 2.0        # IDF-weighted share of the question's terms in the unit
    heading: float = 0.6         # ... in the passage's heading path
    cosine: float = 1.0          # the passage's retrieval cosine
    reader: float = 0.25         # the reader's best span logit inside the unit (clipped to [-4, 6])
    rank: float = 0.15           # earlier-ranked passages first: rank_weight / (1 + passage index)
    subject_start: float = 0.5   # a definition's subject opens the unit
    subject_heading: float = 0.3  # ... the unit's heading path names it
    subject_section: float = 1.0  # ... the unit's own section is named after it
    first: float = 0.1           # first sentence of a paragraph
    code_penalty: float = 1.5    # code lines and table lines read badly as answer sentences


def _idf_weights(question: str, term_weights: dict[str, float] | None) -> dict[str, float]:
    terms = content_terms(question)
    if not term_weights:
        return dict.fromkeys(terms, 1.0)
    weights: dict[str, float] = {}
    lowered = {_stem(k.lower()): v for k, v in term_weights.items()}
    for term in terms:
        weights[term] = max(0.2, float(lowered.get(term, max(lowered.values(), default=1.0))))
    return weights


def coverage_of(weights: dict[str, float], text: str) -> float:
    """Weighted share of the question's terms (weights: term -> IDF) found in `text`."""
    total = sum(weights.values())
    if total <= 0:
        return 0.0
    found = set(content_terms(text))
    return sum(w for term, w in weights.items() if term in found) / total


def score_units(question: str, units: Sequence[Unit], hits: Sequence[Any], *, subject: str = "",
                term_weights: dict[str, float] | None = None, reader_scores: dict[tuple[int, int], float] | None = None,
                weights: UnitWeights | None = None) -> None:
    """Set `unit.score` (and its parts) for every unit, in place. `reader_scores[(passage, position)]`: the reader's
    best span logit (minus its "no answer" logit) inside that unit, where the reader read the passage."""
    w = weights or UnitWeights()
    q_weights = _idf_weights(question, term_weights)
    subject_terms = content_terms(subject)
    passage_part: dict[int, float] = {}  # what a unit's passage adds to its score: the same for all its units
    for unit in units:
        if unit.passage not in passage_part:
            hit = hits[unit.passage]
            heading = heading_of(hit)
            cosine = float(getattr(hit, "dense_score", None) or getattr(hit, "score", 0.0) or 0.0)
            part = w.heading * coverage_of(q_weights, heading) + w.cosine * cosine + w.rank / (1 + unit.passage)
            if subject_terms:
                own = section_terms(hit)
                if all(t in own for t in subject_terms) and len(own) <= len(subject_terms) + 1:
                    part += w.subject_section  # the section is named after the subject ("functools.reduce")
                elif all(t in content_terms(heading) for t in subject_terms):
                    part += w.subject_heading
            passage_part[unit.passage] = part
        unit.coverage = coverage_of(q_weights, unit.text)
        score = w.coverage * unit.coverage + passage_part[unit.passage]
        if subject_terms:
            head = content_terms(unit.text)[: len(subject_terms) + 2]
            if all(t in head for t in subject_terms):
                score += w.subject_start
        symbols = sum(c in _CODE_CHARS for c in unit.text) / max(len(unit.text), 1)
        if symbols > 0.06:
            score -= w.code_penalty * min(1.0, (symbols - 0.06) * 10)
        unit.base = score
        if reader_scores:
            value = reader_scores.get((unit.passage, unit.position))
            if value is not None:
                unit.reader = value
                score += w.reader * max(-4.0, min(6.0, value))
        if unit.paragraph_first:
            score += w.first
        if unit.role in ("code", "table", "heading"):
            score -= w.code_penalty
            unit.base -= w.code_penalty
        unit.score = score


# ---------------------------------------------------------------------------------------------------- composing

@dataclass
class Composition:
    """A composed answer: its text (Markdown-light: "- " bullets, "**Label:**" sides) and its cited sentences."""

    text: str
    sentences: list[AnswerSentence]
    layout: str = "text"
    numbers: list[int] = field(default_factory=list)  # the [n] cited, in order of first citation


def _clean(text: str) -> str:
    return " ".join(text.split())


def _with_marker(body: str, number: int) -> str:
    body = _clean(body).rstrip()
    if body.endswith((".", "!", "?")):
        return f"{body[:-1].rstrip()} [{number}]{body[-1]}"
    if body.endswith(":"):
        body = body[:-1]
    return f"{body} [{number}]"


def _sentence(unit: Unit, numbers: Sequence[int], role: str = "sentence", group: str = "",
              text: str | None = None) -> AnswerSentence:
    start, end = item_body(unit) if unit.role == "item" else (unit.start, unit.end)
    return AnswerSentence(_clean(text if text is not None else unit.text[start - unit.start:end - unit.start]),
                          numbers[unit.passage], start, end, round(float(unit.score), 4), role, group)


def _render(sentences: list[AnswerSentence], layout: str, intro: str = "", ordered: bool = False) -> str:
    if layout == "bullets":
        lines = [intro] if intro else []
        number = 0
        for s in sentences:
            if s.role != "item":  # an introducing sentence stands before the bullets
                lines.append(_with_marker(s.text, s.passage))
                continue
            number += 1
            label = f"{s.group}: " if s.group else ""  # a section's title before its sentence (not a claim)
            lines.append((f"{number}. " if ordered else "- ") + label + _with_marker(s.text, s.passage))
        return "\n".join(lines)
    if layout == "sides":
        paragraphs, current, body = [], None, []
        for s in sentences:
            if s.group != current and body:
                paragraphs.append(f"**{current}:** " + " ".join(body))
                body = []
            current = s.group
            body.append(_with_marker(s.text, s.passage))
        if body:
            paragraphs.append(f"**{current}:** " + " ".join(body))
        return "\n\n".join(paragraphs)
    return " ".join(_with_marker(s.text, s.passage) for s in sentences)


def cited_numbers(sentences: Sequence[AnswerSentence]) -> list[int]:
    """The [n] the sentences cite, each once, in order of first citation."""
    numbers: list[int] = []
    for s in sentences:
        if s.passage not in numbers:
            numbers.append(s.passage)
    return numbers


def best_support(units: Sequence[Unit]) -> float:
    """The answerability of a set of scored units: the best base score (without the reader's share) of a sentence
    or list item; -inf when there is none."""
    return max((u.base for u in units if u.role in ("sentence", "item")), default=float("-inf"))


def _finish(sentences: list[AnswerSentence], layout: str, intro: str = "", ordered: bool = False) -> Composition:
    return Composition(_render(sentences, layout, intro, ordered), sentences, layout, cited_numbers(sentences))


def _readable(unit: Unit) -> bool:
    """A unit that reads as a sentence of an answer: prose or a list item, 3-80 words, not code-like."""
    words = unit.text.split()
    if unit.role not in ("sentence", "item") or not 3 <= len(words) <= 80:
        return False
    symbols = sum(c in _CODE_CHARS for c in unit.text) / max(len(unit.text), 1)
    return symbols <= 0.12 and sum(w.isalpha() for w in words) >= 3


def _dedupe(units: Sequence[Unit], hits: Sequence[Any]) -> list[Unit]:
    """Drop units whose words another chosen unit already says (overlapping chunks repeat sentences)."""
    seen: set[str] = set()
    out = []
    for unit in units:
        key = " ".join(content_terms(unit.text))
        if key in seen:
            continue
        seen.add(key)
        out.append(unit)
    return out


def _reading_order(units: Sequence[Unit], hits: Sequence[Any]) -> list[Unit]:
    """Units in the order they stand in their documents (documents by first appearance)."""
    doc_rank: dict[str, int] = {}
    for unit in units:
        doc_rank.setdefault(str(getattr(hits[unit.passage], "path", "")), len(doc_rank))

    def key(unit: Unit) -> tuple:
        hit = hits[unit.passage]
        return (doc_rank[str(getattr(hit, "path", ""))], int(getattr(hit, "start", 0) or 0) + unit.start,
                unit.passage, unit.position)
    return sorted(units, key=key)


def compose_definition(units: list[Unit], numbers: Sequence[int], hits: Sequence[Any], subject: str,
                       max_sentences: int = 2) -> Composition | None:
    """The defining sentence of `subject` (its best unit that names it), and the next one if it goes on."""
    readable = [u for u in units if _readable(u)]
    if not readable:
        return None
    terms = content_terms(subject)
    naming = [u for u in readable if terms and all(t in content_terms(u.text) for t in terms)]
    # Documentation defines a name in the first sentence of its own section ("## deque: A list-like sequence..."),
    # often without repeating the name.
    first_of_section: dict[int, Unit] = {}
    for unit in readable:
        heading = section_terms(hits[unit.passage])
        if terms and all(t in heading for t in terms) and len(heading) <= len(terms) + 1 and (
                unit.passage not in first_of_section or unit.position < first_of_section[unit.passage].position):
            first_of_section[unit.passage] = unit
    section_firsts = [u for u in first_of_section.values() if u.role == "sentence"]
    pool = naming + [u for u in section_firsts if u not in naming]
    bonus = {id(u): 2.0 for u in section_firsts}  # the section named after the subject opens with its definition
    best = max(pool or readable, key=lambda u: u.score + bonus.get(id(u), 0.0))
    chosen = [best]
    following = [u for u in readable if u.passage == best.passage and u.position == best.position + 1]
    if max_sentences > 1 and following and following[0].score >= 0.6 * best.score and following[0].role == best.role:
        chosen.append(following[0])
    return _finish([_sentence(u, numbers) for u in chosen], "text")


def compose_explanation(units: list[Unit], numbers: Sequence[int], hits: Sequence[Any],
                        max_sentences: int = 4) -> Composition | None:
    """The best unit, plus the best-scoring units near it in the same passage, in reading order."""
    readable = [u for u in units if _readable(u)]
    if not readable:
        return None
    best = max(readable, key=lambda u: u.score)
    own = {u.position: u for u in readable if u.passage == best.passage}
    chosen = [best]
    # An explanation goes on in the sentences after its best one (same paragraph), while they stay on topic.
    # The next two sentences of the paragraph go with it ("BM25 improves on TF-IDF in two ways." is followed by
    # the two ways); further ones while they stay on topic or carry on a sequence ("Third, ...").
    position = best.position + 1
    while len(chosen) < max_sentences and position in own and not own[position].paragraph_first and (
            position <= best.position + 2 or own[position].score >= best.score - 1.2
            or _SEQUENCE.match(own[position].text.strip())):
        chosen.append(own[position])
        position += 1
    before = own.get(best.position - 1)
    if len(chosen) < max_sentences and before is not None and not best.paragraph_first \
            and before.score >= 0.8 * best.score:
        chosen.insert(0, before)
    if max_sentences > 1:  # a second reason elsewhere (another paragraph or passage) that scores nearly as well
        others = [u for u in readable if u not in chosen and not (u.passage == best.passage
                  and abs(u.position - best.position) <= len(chosen))]
        second = max(others, key=lambda u: u.score, default=None)
        if second is not None and second.score >= 0.85 * best.score:
            chosen.append(second)
    return _finish([_sentence(u, numbers) for u in _dedupe(chosen, hits)], "text")


def compose_yesno(units: list[Unit], numbers: Sequence[int], hits: Sequence[Any]) -> Composition | None:
    """The sentence that decides a yes/no question (the user reads the verdict from the evidence itself)."""
    return compose_explanation(units, numbers, hits, max_sentences=1)


def _list_items(units: list[Unit], min_items: int = 2, hits: Sequence[Any] | None = None) -> list[list[Unit]]:
    """Runs of consecutive list items inside each passage; with `hits`, a run that ends its passage continues in
    the next chunk of the same section (a long list split over chunks), repeated items said once."""
    runs: list[list[Unit]] = []
    for unit in units:
        if unit.role != "item":
            continue
        if runs and runs[-1][-1].passage == unit.passage and runs[-1][-1].position == unit.position - 1:
            runs[-1].append(unit)
        else:
            runs.append([unit])
    if hits is not None:
        last_position = {}
        for unit in units:
            last_position[unit.passage] = max(last_position.get(unit.passage, 0), unit.position)

        def section(run: list[Unit]) -> tuple[str, str]:
            hit = hits[run[0].passage]
            return str(getattr(hit, "path", "")), heading_of(hit)
        merged: list[list[Unit]] = []
        for run in sorted(runs, key=lambda r: (section(r), int(getattr(hits[r[0].passage], "start", 0) or 0))):
            prev = merged[-1] if merged else None
            if prev and section(prev) == section(run) and prev[-1].position == last_position[prev[-1].passage] \
                    and run[0].position == 0 and prev[-1].passage != run[0].passage:
                seen = {" ".join(u.text.split()) for u in prev}
                prev.extend(u for u in run if " ".join(u.text.split()) not in seen)
            else:
                merged.append(list(run))
        runs = merged
    return [r for r in runs if len(r) >= min_items]


def compose_list(units: list[Unit], numbers: Sequence[int], hits: Sequence[Any], *, ordered: bool = False,
                 sections: list[tuple[str, Unit]] | None = None, max_items: int = 10,
                 count: int | None = None) -> Composition | None:
    """Bullets: the best run of list items; else one bullet per section of the best document (its heading and
    first sentence); else the best sentences from different passages."""
    readable = [u for u in units if _readable(u)]
    if not readable:
        return None
    best_unit = max(readable, key=lambda u: u.score)
    runs = _list_items(units, hits=hits)
    if runs:
        run = max(runs, key=lambda r: (sum(u.score for u in r) / len(r)) + 0.1 * min(len(r), 6))
        run_score = sum(u.score for u in run) / len(run)
        intro_units = [u for u in readable if u.passage == run[0].passage and u.position == run[0].position - 1
                       and u.text.rstrip().endswith(":")]
        if run_score >= 0.55 * best_unit.score or intro_units:
            chosen = [_sentence(u, numbers, "item") for u in run[:max_items]]
            return _finish(chosen, "bullets", ordered=ordered)
    if sections and len(sections) >= 2:
        chosen = []
        if count and len(sections) > count:  # "the three families": the count best sections, in reading order
            keep = sorted(sorted(range(len(sections)), key=lambda i: -sections[i][1].score)[:count])
            sections = [sections[i] for i in keep]
        for title, unit in sections[:max_items]:
            label = title.strip()
            group = "" if label.lower() in _clean(unit.text).lower()[: len(label) + 20] else label
            chosen.append(_sentence(unit, numbers, "item", group=group))
        return _finish(chosen, "bullets", ordered=ordered)
    # No list in the text: the best sentences of the best document, one point each, in reading order.
    ranked = sorted(readable, key=lambda u: -u.score)
    top = ranked[0]
    same_doc = [u for u in ranked if str(getattr(hits[u.passage], "path", "")) == str(getattr(hits[top.passage], "path", ""))]
    chosen_units = [u for u in _dedupe(same_doc, hits) if u.score >= 0.55 * top.score][: min(max_items, 6)]
    chosen_units = _reading_order(chosen_units, hits)
    return _finish([_sentence(u, numbers, "item") for u in chosen_units], "bullets", ordered=ordered)


_COUNT_WORD = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}
_SEQUENCE = re.compile(r"^(?:first(?:ly)?|second(?:ly)?|third(?:ly)?|fourth|fifth|then|next|after (?:that|this)|"
                       r"afterwards|finally|lastly|last|step \d+|\d+\.)\b", re.IGNORECASE)


def compose_enumeration(units: list[Unit], numbers: Sequence[int], hits: Sequence[Any], count: int | None,
                        object_terms: Sequence[str]) -> Composition | None:
    """"Transformer models come in three families." followed by one sentence per family: that sentence, then the
    next `count` sentences of its passage as bullets."""
    best = None
    for unit in units:
        if unit.role != "sentence":
            continue
        lowered = [w.strip(".,;:()") for w in unit.text.lower().split()]
        said = count
        if said is None:  # "The Aurora H2 has three operating modes": the sentence says how many
            said = next((n for n, word in _COUNT_WORD.items() if word in lowered), None)
            if said is None or not object_terms:
                continue
        elif not (_COUNT_WORD.get(said, "") in lowered or str(said) in lowered):
            continue
        terms = content_terms(unit.text)
        if object_terms and not all(t in terms for t in object_terms):
            continue
        if best is None or unit.score > best[0].score:
            best = (unit, said)
    if best is None:
        return None
    best, count = best
    following = [u for u in units if u.passage == best.passage and best.position < u.position <= best.position + count
                 and _readable(u)]
    if len(following) < count:
        return None
    chosen = [_sentence(best, numbers)] + [_sentence(u, numbers, "item") for u in following]
    return _finish(chosen, "bullets")


def compose_procedure(units: list[Unit], numbers: Sequence[int], hits: Sequence[Any],
                      max_steps: int = 8, headings: dict[int, float] | None = None,
                      heading_weight: float = 1.0) -> Composition | None:
    """The steps of the passage that best answers the question, in reading order: its sentences that open with a
    sequence word (First, Then, Finally, ...) or its list items; else its sentences from the best paragraph on."""
    readable = [u for u in units if _readable(u)]
    if not readable:
        return None
    headings = headings or {}
    by_passage: dict[int, list[Unit]] = {}
    for unit in readable:
        by_passage.setdefault(unit.passage, []).append(unit)
    def steps_of(units_: list[Unit]) -> list[Unit]:
        return [u for u in sorted(units_, key=lambda u: u.position) if _SEQUENCE.match(u.text.strip())
                or u.role == "item"]

    # The passage that best answers, favouring one that holds steps (a numbered list, "First, ... Then, ...").
    def top2(p: int) -> float:  # a passage that describes the process in several good sentences beats one line
        best = sorted((u.score for u in by_passage[p]), reverse=True)[:2]
        return sum(best) / 2 if len(best) == 2 else best[0] - 0.3

    passage = max(by_passage, key=lambda p: top2(p) + heading_weight * headings.get(p, 0.0)
                  + (0.6 if len(steps_of(by_passage[p])) >= 2 else 0.0))
    own = sorted(by_passage[passage], key=lambda u: u.position)
    steps = steps_of(own)
    if len(steps) >= 2:
        first = steps[0]
        intro = [u for u in own if u.position == first.position - 1 and u.role == "sentence"]
        chosen = [_sentence(u, numbers) for u in intro] + [_sentence(u, numbers, "item") for u in steps[:max_steps]]
        return _finish(chosen, "bullets", ordered=True)
    # No marked steps: the paragraph that best describes the process (its units' mean score; the passage's first
    # paragraph, where a section says what it is about, is favoured), its sentences in order.
    paragraphs: list[list[Unit]] = []
    for unit in own:
        if unit.paragraph_first or not paragraphs:
            paragraphs.append([])
        paragraphs[-1].append(unit)
    chosen_units = max(paragraphs, key=lambda p: sum(u.score for u in p) / len(p)
                       + (0.5 if p is paragraphs[0] else 0.0))[:5]
    return _finish([_sentence(u, numbers, "item") for u in chosen_units], "bullets", ordered=True)


def compose_section_items(units: list[Unit], numbers: Sequence[int], hits: Sequence[Any],
                          object_terms: Sequence[str], max_items: int = 6) -> Composition | None:
    """A list whose object names a section ("What are the limitations of ..." and a section "Limitations"): that
    section's list items, or its sentences, as bullets in reading order."""
    if not object_terms:
        return None
    matching = [i for i, hit in enumerate(hits)
                if all(t in section_terms(hit) for t in object_terms)]
    if not matching:
        return None
    heading = str(getattr(hits[matching[0]], "heading", ""))
    members = [u for u in units if _readable(u) and str(getattr(hits[u.passage], "heading", "")) == heading
               and str(getattr(hits[u.passage], "path", "")) == str(getattr(hits[matching[0]], "path", ""))]
    members = _reading_order(_dedupe(members, hits), hits)
    items = [u for u in members if u.role == "item"]
    chosen = (items if len(items) >= 2 else members)[:max_items]
    if len(chosen) < 2:
        return None
    return _finish([_sentence(u, numbers, "item") for u in chosen], "bullets")


def compose_comparison(side_units: list[tuple[str, list[Unit]]], numbers: Sequence[int], hits: Sequence[Any],
                       per_side: int = 2) -> Composition | None:
    """A paragraph per side: the side's best units that name it (a unit naming both sides goes to the first)."""
    sentences: list[AnswerSentence] = []
    used: set[tuple[int, int]] = set()
    labels = [label for label, _ in side_units]
    for label, units in side_units:
        terms = content_terms(label)
        others = [content_terms(other) for other in labels if other != label]
        readable = [u for u in units if _readable(u) and (u.passage, u.position) not in used]
        naming = [u for u in readable if terms and sum(t in content_terms(u.text) for t in terms) >= max(1, len(terms) - 1)]

        def side_score(unit: Unit) -> float:
            words = content_terms(unit.text)
            value = unit.score
            if terms and all(t in words[: len(terms) + 2] for t in terms):
                value += 0.8  # the sentence is about this side: it opens with it
            if any(o and all(t in words for t in o) for o in others):
                value -= 0.4  # it is (also) about the other side
            return value
        pool = sorted(naming or readable, key=lambda u: -side_score(u))
        chosen = _dedupe(pool, hits)[:per_side]
        for unit in sorted(chosen, key=lambda u: (u.passage, u.position)):
            used.add((unit.passage, unit.position))
            sentences.append(_sentence(unit, numbers, group=label))
    if not sentences:
        return None
    return _finish(sentences, "sides")


def centrality(units: Sequence[Unit]) -> list[float]:
    """How central each unit is among `units`: cosine of its term counts (IDF-weighted inside the set) with the
    centroid of all of them. A summary keeps the units that say what the whole text is about."""
    docs = [content_terms(u.text) for u in units]
    df: dict[str, int] = {}
    for terms in docs:
        for term in set(terms):
            df[term] = df.get(term, 0) + 1
    n = max(len(docs), 1)
    vectors = []
    for terms in docs:
        vec: dict[str, float] = {}
        for term in terms:
            vec[term] = vec.get(term, 0.0) + math.log(1 + n / df[term])
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        vectors.append({t: v / norm for t, v in vec.items()})
    centroid: dict[str, float] = {}
    for vec in vectors:
        for t, v in vec.items():
            centroid[t] = centroid.get(t, 0.0) + v / n
    c_norm = math.sqrt(sum(v * v for v in centroid.values())) or 1.0
    return [sum(v * centroid.get(t, 0.0) for t, v in vec.items()) / c_norm for vec in vectors]


def compose_summary(units: list[Unit], numbers: Sequence[int], hits: Sequence[Any], *, topic_weight: float = 0.0,
                    max_sentences: int = 5) -> Composition | None:
    """The most central readable units (one per passage section first), in reading order. `topic_weight` mixes in
    the units' question score (a topic summary) beside centrality (a document summary)."""
    readable = [u for u in units if _readable(u) and u.role == "sentence"] or [u for u in units if _readable(u)]
    readable = _dedupe(readable, hits)
    if not readable:
        return None
    central = centrality(readable)
    top_score = max(u.score for u in readable) or 1.0
    value = {id(u): c + 0.15 * u.paragraph_first + topic_weight * (u.score / top_score)
             for u, c in zip(readable, central)}
    ranked = sorted(readable, key=lambda u: -value[id(u)])
    chosen: list[Unit] = []
    sections_used: set[str] = set()
    for unit in ranked:  # spread over sections first
        section = str(getattr(hits[unit.passage], "heading", "") or unit.passage)
        if section in sections_used:
            continue
        sections_used.add(section)
        chosen.append(unit)
        if len(chosen) >= max_sentences:
            break
    for unit in ranked:
        if len(chosen) >= max_sentences:
            break
        if unit not in chosen:
            chosen.append(unit)
    return _finish([_sentence(u, numbers) for u in _reading_order(chosen, hits)], "text")


def compose_document_summary(units: list[Unit], numbers: Sequence[int], hits: Sequence[Any], path: str,
                             max_sections: int = 7) -> Composition | None:
    """A summary of one document: a bullet per section (its title and its most central sentence), in reading
    order; the most central sections when there are more than `max_sections`. A document without sections gets
    its most central sentences (compose_summary)."""
    readable = [u for u in _dedupe([u for u in units if _readable(u) and u.role == "sentence"], hits)]
    if not readable:
        return None
    central = dict(zip(map(id, readable), centrality(readable)))
    sections: dict[str, list[Unit]] = {}
    for unit in _reading_order(readable, hits):
        heading = heading_of(hits[unit.passage])
        if HEADING_SEPARATOR in heading:
            sections.setdefault(heading, []).append(unit)
    if len(sections) < 3:
        return compose_summary(units, numbers, hits)
    picks = []
    for heading, members in sections.items():
        lead = max(members[:3], key=lambda u: central[id(u)] + (0.1 if u is members[0] else 0.0))
        picks.append((heading, lead, central[id(lead)]))
    if len(picks) > max_sections:
        keep = {id(lead) for _, lead, _ in sorted(picks, key=lambda p: -p[2])[:max_sections]}
        picks = [p for p in picks if id(p[1]) in keep]
    chosen = []
    for heading, lead, _ in picks:
        title = heading.split(HEADING_SEPARATOR)[-1].strip()
        body = _clean(lead.text)
        group = "" if title.lower() in body.lower()[: len(title) + 20] else title
        chosen.append(_sentence(lead, numbers, "item", group=group))
    return _finish(chosen, "bullets")


def section_leads(units: list[Unit], hits: Sequence[Any], path: str) -> list[tuple[str, Unit]]:
    """(section title, its first readable unit) for each section of document `path` among the passages, in reading
    order: a list question about a document whose sections are the items ("the decoding strategies")."""
    out: list[tuple[str, Unit]] = []
    seen: set[str] = set()
    for unit in _reading_order([u for u in units if str(getattr(hits[u.passage], "path", "")) == path], hits):
        heading = heading_of(hits[unit.passage])
        if not heading or not _readable(unit) or unit.role != "sentence":
            continue
        title = heading.split(HEADING_SEPARATOR)[-1]
        if HEADING_SEPARATOR not in heading or title in seen:
            continue
        seen.add(title)
        out.append((title, unit))
    return out


# ---------------------------------------------------------------------------------------------------- the check

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def supported_by(sentence: str, unit_text: str, min_share: float = 0.6) -> bool:
    """True when `unit_text` says what `sentence` says: at least `min_share` of the sentence's content words occur in
    it, and every number of the sentence does too."""
    words = content_terms(sentence)
    if not words:
        return False
    source = set(content_terms(unit_text))
    if sum(w in source for w in words) / len(words) < min_share:
        return False
    source_numbers = set(_NUMBER.findall(unit_text))
    return all(n in source_numbers for n in _NUMBER.findall(sentence))


def split_generated(text: str) -> list[str]:
    """A generated answer cut into sentences (markers and bullets removed)."""
    from assistant.evidence import strip_citations

    body = strip_citations(re.sub(r"^[ \t]*(?:[-*+\u2022]|\d{1,2}[.)])[ \t]+", "", text, flags=re.M))
    return [body[a:b].strip() for a, b in _sentences(body, 0, len(body)) if body[a:b].strip()]


def check_sentences(generated: str, evidence: Sequence[AnswerSentence], passages: Sequence[str],
                    numbers: Sequence[int]) -> tuple[list[AnswerSentence], int]:
    """Each generated sentence checked against the evidence sentences (`evidence`, with offsets into
    `passages[numbers.index(s.passage)]`): a supported sentence is kept (role "generated", cited to the evidence
    that supports it); an unsupported one is replaced by the evidence sentence it is closest to. Returns the
    sentences and how many were replaced. Evidence never used by a kept sentence is appended, so nothing the
    evidence says is lost."""
    out: list[AnswerSentence] = []
    replaced = 0
    used: set[int] = set()
    for sentence in split_generated(generated):
        support = None
        for i, ev in enumerate(evidence):
            words = passages[numbers.index(ev.passage)][ev.start:ev.end]
            if supported_by(sentence, words):
                support = i
                break
        if support is not None:
            ev = evidence[support]
            used.add(support)
            out.append(AnswerSentence(sentence, ev.passage, ev.start, ev.end, ev.score, "generated", ev.group))
            continue
        replaced += 1
        words = set(content_terms(sentence))
        closest = max(range(len(evidence)), key=lambda i: len(words & set(content_terms(evidence[i].text))),
                      default=None)
        if closest is not None and closest not in used:
            used.add(closest)
            out.append(evidence[closest])
    for i, ev in enumerate(evidence):
        if i not in used:
            out.append(ev)
    return out, replaced


__all__ = ["Composition", "Unit", "UnitWeights", "best_support", "centrality", "check_sentences", "cited_numbers", "compose_comparison",
           "compose_definition", "compose_document_summary", "compose_enumeration", "compose_explanation", "compose_list", "compose_procedure", "compose_section_items", "compose_summary", "compose_yesno",
           "content_terms", "coverage_of", "item_body", "passage_units", "score_units", "section_leads",
           "split_generated", "supported_by", "comparison_sides", "subject_of"]
