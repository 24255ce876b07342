"""Evidence: the exact words in a retrieved passage that answer the question, found by the reader.

    question, passages ─► route: reader or generator? ─► model.reader.Reader.read ─► Evidence per passage
        ─► answerable?  best support >= threshold  (else the assistant refuses, showing the nearest passages)
           support = the reader's score + weighted signals calibrated on held-out data (Settings.reader_*)
        ─► the answer is written from the best Evidence (guided: by the generator, then checked; extract: as is)

How the pipeline decides where the reader cannot help (`route`):
- questions that ask for a summary, a list, an overview or a comparison across passages go to the generator,
  which sees all passages (a span from one passage cannot answer them);
- so do questions whose best passage is text the reader was not trained for: mostly code or table syntax, or
  mostly non-Latin script (the reader learned English Wikipedia prose from SQuAD).

Questions that want an explanation ("why ...", "how does ...", "explain ...") get the whole sentence around the
span as their evidence, not a two-word fragment.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from assistant.citations import clean_citations
from assistant.followup import content_words
from assistant.training_data import normalize_answer

ANSWER_MODES = ("guided", "generate", "extract")

_SUMMARY = re.compile(
    r"^\s*(please\s+)?(summari[sz]e|sum up|list|enumerate|outline|compare|contrast|give (me )?(a |an )?"
    r"(summary|list|overview|outline)|what are (all|the main|the key|the different|some)|which (are|files|documents)"
    r"|overview)\b|\b(summary of|differences? between|pros and cons|all the ways|in (the|these|my) documents)\b",
    re.IGNORECASE,
)
_EXPLAIN = re.compile(
    r"^\s*(why|how (does|do|did|is|are|can|could|would|should)|explain|describe|what (happens|is the (purpose|reason|"
    r"role|idea|point))|in what way)\b",
    re.IGNORECASE,
)
_ABBREVIATION = re.compile(r"(?:\b(?:e\.g|i\.e|et al|etc|vs|cf|Mr|Mrs|Ms|Dr|Prof|St|No|Fig|approx))\.$")
_CODE_CHARS = set("{}[]();=<>|_$#\\/*&^%`~")
_SENTENCE = re.compile(r"(?:[^.!?\n]|[.!?](?![\s\"')\]]|$))*(?:[.!?]+[\"')\]]*|\n|$)")


@dataclass
class Evidence:
    """The words that support an answer, inside one of the answer's sources."""

    passage: int  # the [n] of the source they are in
    text: str  # the exact span, as it stands in the source text
    start: int  # character offsets of the span in Source.text
    end: int
    sentence: str  # the sentence holding the span
    sentence_start: int
    sentence_end: int
    score: float  # the reader's score: span minus "no answer" logit
    kind: str = "span"  # "span", or "sentence" for questions that want an explanation
    support: float = 0.0  # score + weighted overlap / term coverage / cosine: the answerability decision

    @property
    def answer_text(self) -> str:
        """What an extractive answer says: the span, or its sentence for explanation questions."""
        return self.sentence if self.kind == "sentence" else self.text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wants_sentence(question: str) -> bool:
    """True for questions that want an explanation rather than a name or number."""
    return bool(_EXPLAIN.search(question))


def wants_generator(question: str) -> bool:
    """True for summary / list / comparison questions, which no single span answers."""
    return bool(_SUMMARY.search(question))


def reader_can_read(text: str) -> bool:
    """False for text the reader was not trained for: mostly code/table syntax, or mostly non-Latin letters."""
    sample = text[:2000]
    letters = [c for c in sample if c.isalpha()]
    if not letters:
        return False
    latin = sum(1 for c in letters if c < "\u0250")
    if latin / len(letters) < 0.6:
        return False
    code = sum(1 for c in sample if c in _CODE_CHARS)
    return code / max(len(sample), 1) < 0.06


def route(question: str, passages: Sequence[str]) -> str:
    """"reader" or "generator" (see the module docstring)."""
    if wants_generator(question):
        return "generator"
    if passages and not reader_can_read(passages[0]):
        return "generator"
    return "reader"


def sentence_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    """Character bounds of the sentence(s) of `text` that hold [start, end), whitespace trimmed."""
    sentences: list[tuple[int, int]] = []
    for match in _SENTENCE.finditer(text):
        if match.end() <= match.start():
            continue
        if sentences and _ABBREVIATION.search(text[sentences[-1][0]:sentences[-1][1]].rstrip()):
            sentences[-1] = (sentences[-1][0], match.end())  # "Hu et al. in 2021": not a sentence end
        else:
            sentences.append(match.span())
    begin = next((s for s, e in sentences if s <= start < e), 0)
    finish = next((e for s, e in sentences if s < end <= e), len(text))
    while begin < start and text[begin].isspace():
        begin += 1
    while finish > end and text[finish - 1].isspace():
        finish -= 1
    return begin, max(finish, end)


def question_overlap(question: str, sentence: str) -> float:
    """Share of the question's content words (stopwords dropped, lower-cased) that occur in `sentence`.

    An answerability signal beside the reader's score: a question asked about a passage shares its words
    with the sentence that answers it; a near-miss passage on the same topic shares fewer."""
    words = {w.lower() for w in content_words(question)}
    if not words:
        return 0.0
    found = {w.lower().strip(".,;:!?()\"'") for w in sentence.split()}
    found |= {w.lower() for w in content_words(sentence)}
    return sum(w in found for w in words) / len(words)


def term_coverage(term_weights: dict[str, float], passage: str) -> float:
    """Weighted share of the question's terms (BM25 tokens, with their IDF as weights) found in `passage`.

    The strongest answerability signal beside the reader's score: a passage that answers a question holds its
    rare words (names, numbers, the specific noun); a near-miss passage on the same topic holds the common
    ones and misses the rare one that the question is about."""
    total = sum(term_weights.values())
    if total <= 0:
        return 0.0
    from retrieval.store import lexical_tokens

    found = set(lexical_tokens([passage])[0])
    return sum(w for term, w in term_weights.items() if term in found) / total


def evidence_from_spans(spans: Sequence[Any], passages: Sequence[str], numbers: Sequence[int],
                        question: str, overlap_weight: float = 0.0, explain: bool | None = None, *,
                        coverage_weight: float = 0.0, term_weights: dict[str, float] | None = None,
                        base: float = 0.0) -> list[Evidence]:
    """Evidence for each reader span (model.reader.Span), best supported first. `numbers[i]` is the [n] of
    passages[i]. support = span score + overlap_weight x question_overlap(question, sentence)
    + coverage_weight x term_coverage(term_weights, passage) + base (a question-level term, e.g. the weighted
    retrieval cosine). `explain`: the question wants an explanation, so the evidence is the sentence (None:
    decided from `question`)."""
    kind = "sentence" if (wants_sentence(question) if explain is None else explain) else "span"
    if coverage_weight and term_weights is None:
        from retrieval.store import lexical_tokens

        term_weights = dict.fromkeys(lexical_tokens([question])[0], 1.0)
    out = []
    for span in spans:
        text = passages[span.passage]
        s, e = sentence_bounds(text, span.start, span.end)
        support = float(span.score) + base + overlap_weight * question_overlap(question, text[s:e])
        if coverage_weight:
            support += coverage_weight * term_coverage(term_weights or {}, text)
        words = text[span.start:span.end].strip()
        # A lone letter ("k" of "d by k") says nothing on its own: answer with its sentence.
        own_kind = "sentence" if len(words) <= 1 and not words.isdigit() else kind
        out.append(Evidence(numbers[span.passage], text[span.start:span.end], span.start, span.end, text[s:e], s, e,
                            float(span.score), own_kind, support))
    return sorted(out, key=lambda ev: -ev.support)


def strip_citations(text: str) -> str:
    """The text without any citation marker (no number names a passage when there are none)."""
    return clean_citations(text, 0)[0].strip()


def extractive_answer(evidence: Evidence) -> str:
    """The answer built from the evidence itself: its span (or sentence) and the citation."""
    body = " ".join(evidence.answer_text.split()).rstrip()
    if evidence.kind == "sentence":
        return f"{body} [{evidence.passage}]"
    return f"{body.rstrip('.')} [{evidence.passage}]."


def states_evidence(answer: str, evidence: Evidence, max_words: int = 40) -> bool:
    """The final check on a generated answer: it states what the evidence says.

    For a span: the normalised span occurs in the answer. For an explanation: at least 60% of the answer's
    content words come from the evidence sentence, and the span's words are there. Over-long answers fail."""
    body = strip_citations(answer)
    words = body.split()
    if not words or len(words) > max_words:
        return False
    span = normalize_answer(evidence.text)
    said = f" {normalize_answer(body)} "
    if span and f" {span} " not in said:
        return False
    if evidence.kind == "sentence":
        source = set(normalize_answer(evidence.sentence).split())
        content = [w for w in normalize_answer(body).split() if len(w) > 3]
        if content and sum(w in source for w in content) / len(content) < 0.6:
            return False
    return True


__all__ = ["ANSWER_MODES", "Evidence", "evidence_from_spans", "extractive_answer", "reader_can_read", "route",
           "sentence_bounds", "states_evidence", "strip_citations", "term_coverage", "wants_generator",
           "wants_sentence"]
