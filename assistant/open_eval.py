"""Evaluation of open answers (`assistant eval --questions benchmarks/open_questions.jsonl`), reported per kind.

Question file: JSONL, one object per line:
    {"id": "o001", "folder": "corpus", "question": "...", "kind": "explanation",
     "concepts": [["low-rank"], ["two small matrices"], ["stays frozen", "frozen"]],
     "sources": ["peft-lora.md"], "answerable": true, "table": false}
`folder` is relative to the repository (or absolute); each folder gets its own index.

Metrics, per kind and overall:
- coverage: the share of a question's concepts the answer contains (a concept: any of its alternatives, matched on
  normalised text);
- useful: answerable questions whose answer covers at least half of their concepts (and is not a refusal);
- refusals: answerable questions refused (false refusals); refusal accuracy on unanswerable ones;
- words: mean words of answered answers (citation markers left out);
- sentence citation precision: of the answers' sentences, the share whose cited passage supports them
  (assistant.compose.supported_by on the cited words, and those words lie in the cited passage);
- cited sentences: the share of answer sentences that carry a citation;
- time to first sentence and to the whole answer (median, p95).
"""

from __future__ import annotations

import json
import re
import statistics
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from assistant.answer import QUESTION_KINDS
from assistant.evaluation import QuestionSetError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OPEN_QUESTIONS = REPO / "benchmarks" / "open_questions.jsonl"


@dataclass
class OpenQuestion:
    id: str
    folder: str
    question: str
    kind: str
    concepts: list[list[str]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    answerable: bool = True
    table: bool = False


@dataclass
class OpenRecord:
    id: str
    folder: str
    kind: str
    routed_kind: str
    question: str
    answer: str
    answerable: bool
    table: bool
    refused: bool
    coverage: float
    useful: bool
    words: int
    sentences: int
    supported_sentences: int
    cited_sentences: int
    first_ms: float
    total_ms: float
    missed: list[list[str]] = field(default_factory=list)
    support: float | None = None       # the answerability score the answer passed (None for refusals)
    gold_cited: bool | None = None     # a cited passage comes from one of the question's source files
    roles: list[str] = field(default_factory=list)  # the answer sentences' roles (span, sentence, item, cell)


def is_open_question_file(path: str | Path) -> bool:
    """True when the JSONL file's first question has "concepts" (an open-question set)."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    return "concepts" in json.loads(line)
    except (OSError, ValueError):
        return False
    return False


def load_open_questions(path: str | Path | None = None) -> list[OpenQuestion]:
    """The questions of an open-question file; QuestionSetError on a malformed one."""
    path = Path(path or DEFAULT_OPEN_QUESTIONS)
    if not path.is_file():
        raise QuestionSetError(f"no question file at {path}")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(OpenQuestion(**{k: v for k, v in row.items() if k in OpenQuestion.__dataclass_fields__}))
        except (ValueError, TypeError) as exc:
            raise QuestionSetError(f"{path}:{number}: not a question object ({exc})") from None
    return out


def normalize(text: str) -> str:
    """Lower-cased, accents and punctuation folded, hyphens as spaces, markers and Markdown removed."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"\[\d+\]", " ", text)
    text = text.replace("-", " ").replace("_", " ")
    text = re.sub(r"[^\w.%]+", " ", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)
    return f" {' '.join(text.split())} "


def concept_found(answer: str, alternatives: Sequence[str]) -> bool:
    said = normalize(answer)
    return any(normalize(alt) in said for alt in alternatives if alt.strip())


def score_open(question: OpenQuestion, answer: Any, first_ms: float, total_ms: float) -> OpenRecord:
    """One question's record."""
    from assistant.compose import split_generated, supported_by

    text = answer.text if not answer.refused else ""
    found = [concept_found(text, alts) for alts in question.concepts]
    coverage = sum(found) / len(found) if found else 0.0
    missed = [alts for alts, ok in zip(question.concepts, found) if not ok]
    by_number = {s.number: s for s in answer.sources}
    sentences = list(getattr(answer, "sentences", []) or [])
    supported = cited = 0
    if not answer.refused:
        if sentences:
            for s in sentences:
                source = by_number.get(s.passage)
                if source is None:
                    continue
                cited += 1
                words = source.text[s.start:s.end]
                if words and (supported_by(s.text, words) or _is_cell(s, words)):
                    supported += 1
            n_sentences = len(sentences)
        else:  # an answer without sentence records (generate mode): each sentence against its cited passages
            parts = split_generated(answer.text)
            n_sentences = len(parts)
            cited_texts = [by_number[n].text for n in answer.citations if n in by_number]
            cited = n_sentences if cited_texts else 0
            supported = sum(any(supported_by(p, t) for t in cited_texts) for p in parts)
    else:
        n_sentences = 0
    words = len(re.sub(r"\[\d+\]", "", text).split())
    useful = bool(question.answerable and not answer.refused and coverage >= 0.5)
    evidence = list(getattr(answer, "evidence", None) or [])
    support = float(getattr(evidence[0], "support", 0.0)) if evidence and not answer.refused else None
    gold_cited = None
    if question.sources and not answer.refused:
        cited_paths = [by_number[n].path for n in answer.citations if n in by_number]
        gold_cited = any(Path(p).name in {Path(g).name for g in question.sources} for p in cited_paths)
    return OpenRecord(question.id, question.folder, question.kind, getattr(answer, "kind", "") or "", question.question,
                      answer.text, question.answerable, question.table, bool(answer.refused), coverage, useful, words,
                      n_sentences, supported, cited, first_ms, total_ms, missed, support, gold_cited,
                      [getattr(s, "role", "") for s in sentences])


def _is_cell(sentence: Any, words: str) -> bool:
    """A table-cell sentence ("Accuracy for X: 91.2") is supported when its value is the cited cell."""
    return getattr(sentence, "role", "") == "cell" and words.strip() and words.strip() in sentence.text


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _p95(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)


def summarize_open(records: Sequence[OpenRecord]) -> dict[str, Any]:
    """Metrics overall and per kind (see the module docstring)."""

    def block(rows: Sequence[OpenRecord]) -> dict[str, Any]:
        answerable = [r for r in rows if r.answerable]
        unanswerable = [r for r in rows if not r.answerable]
        answered = [r for r in rows if not r.refused]
        sentences = sum(r.sentences for r in answered)
        return {
            "questions": len(rows),
            "answerable": len(answerable),
            "coverage": round(statistics.mean(r.coverage for r in answerable), 3) if answerable else None,
            "useful": round(sum(r.useful for r in answerable) / len(answerable), 3) if answerable else None,
            "false_refusals": round(sum(r.refused for r in answerable) / len(answerable), 3) if answerable else None,
            "refusal_accuracy": (round(sum(r.refused for r in unanswerable) / len(unanswerable), 3)
                                 if unanswerable else None),
            "mean_words": round(statistics.mean(r.words for r in answered), 1) if answered else None,
            "sentence_citation_precision": (round(sum(r.supported_sentences for r in answered) / sentences, 3)
                                            if sentences else None),
            "cited_sentences": round(sum(r.cited_sentences for r in answered) / sentences, 3) if sentences else None,
            "first_sentence_ms_p50": _median([r.first_ms for r in answered]),
            "first_sentence_ms_p95": _p95([r.first_ms for r in answered]),
            "total_ms_p50": _median([r.total_ms for r in rows]),
            "total_ms_p95": _p95([r.total_ms for r in rows]),
        }

    kinds = {kind: block([r for r in records if r.kind == kind]) for kind in QUESTION_KINDS
             if any(r.kind == kind for r in records)}
    folders = {folder: block([r for r in records if r.folder == folder]) for folder in
               sorted({r.folder for r in records})}
    tables = [r for r in records if r.table]
    return {"overall": block(records), "kinds": kinds, "folders": folders,
            "tables": block(tables) if tables else None,
            "routing_accuracy": round(sum(r.kind == r.routed_kind for r in records if r.routed_kind) /
                                      max(1, sum(1 for r in records if r.routed_kind)), 3)}


def folder_path(folder: str) -> Path:
    path = Path(folder).expanduser()
    return path if path.is_absolute() else REPO / path


def evaluate_open(open_assistant: Callable[[Path], Any], questions: Sequence[OpenQuestion],
                  progress: Callable[[int, int, OpenRecord], Any] | None = None, **options: Any) -> dict[str, Any]:
    """Ask every question of the folder it names (`open_assistant(folder) -> Assistant`, called once a folder) and
    score it. Returns {"metrics": summarize_open(...), "records": [...]}."""
    records: list[OpenRecord] = []
    assistants: dict[str, Any] = {}
    for i, question in enumerate(questions, start=1):
        if question.folder not in assistants:
            assistants[question.folder] = open_assistant(folder_path(question.folder))
        bot = assistants[question.folder]
        start = time.perf_counter()
        first = None
        answer = None
        for item in bot.stream(question.question, **options):
            if isinstance(item, str):
                if first is None and item.strip():
                    first = (time.perf_counter() - start) * 1000
            else:
                answer = item
        total = (time.perf_counter() - start) * 1000
        record = score_open(question, answer, first if first is not None else total, total)
        records.append(record)
        if progress:
            progress(i, len(questions), record)
    return {"metrics": summarize_open(records), "records": [asdict(r) for r in records]}


def format_open_report(result: dict[str, Any], show_failures: bool = True) -> str:
    """A table per kind (and folder), then the answers that were not useful."""
    metrics = result["metrics"]
    header = (f"{'':<13} {'n':>3} {'cover':>6} {'useful':>6} {'refused':>7} {'words':>6} {'cite ok':>7} "
              f"{'first p50':>9} {'total p50':>9}")

    def row(name: str, m: dict[str, Any]) -> str:
        def pct(v: Any) -> str:
            return "-" if v is None else f"{100 * v:.0f}%"

        def ms(v: Any) -> str:
            return "-" if v is None else f"{v / 1000:.2f} s"
        return (f"{name:<13} {m['questions']:>3} {pct(m['coverage']):>6} {pct(m['useful']):>6} "
                f"{pct(m['false_refusals']):>7} {('-' if m['mean_words'] is None else m['mean_words']):>6} "
                f"{pct(m['sentence_citation_precision']):>7} {ms(m['first_sentence_ms_p50']):>9} "
                f"{ms(m['total_ms_p50']):>9}")

    lines = [header, row("overall", metrics["overall"])]
    lines += [row(kind, m) for kind, m in metrics["kinds"].items()]
    lines.append("")
    lines += [row(Path(folder).name[:13], m) for folder, m in metrics["folders"].items()]
    if metrics.get("tables"):
        lines.append(row("table cells", metrics["tables"]))
    refusal = metrics["overall"]["refusal_accuracy"]
    refusal_text = "-" if refusal is None else f"{100 * refusal:.0f}%"
    lines.append(f"\nrefusal accuracy on unanswerable: {refusal_text}; "
                 f"routing agrees with the label: {100 * metrics['routing_accuracy']:.0f}%")
    if show_failures:
        bad = [r for r in result["records"] if r["answerable"] and not r["useful"]]
        if bad:
            lines.append("\nnot useful:")
            for r in bad:
                lines.append(f"  {r['id']} [{r['kind']}->{r['routed_kind']}] {r['question']}")
                lines.append(f"      -> {' '.join(r['answer'].split())[:160]}")
                lines.append(f"      missing: {r['missed']}")
    return "\n".join(lines)


__all__ = ["DEFAULT_OPEN_QUESTIONS", "OpenQuestion", "OpenRecord", "concept_found", "evaluate_open",
           "format_open_report", "is_open_question_file", "load_open_questions", "normalize", "score_open",
           "summarize_open"]
