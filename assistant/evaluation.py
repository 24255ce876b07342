"""Answer evaluation (`assistant eval`): run a question set through the assistant and score it.

Question file: JSONL, one object per line:
    {"id": "lora-1", "question": "...", "sources": ["lora.md"], "keywords": [["low-rank", "low rank"], ["frozen"]],
     "unanswerable": false, "ci": true}
An answer is correct when, for every keyword group, one of its alternatives appears (case-insensitive) and
the answer is not a refusal. An unanswerable question is answered correctly by a refusal.

Metrics:
- hit_rate: answerable questions where a passage from a gold source is among the passages given (@k);
- answer_accuracy: answerable questions answered correctly (keywords);
- citation_precision: of the passages the answers cite, the share from a gold source or containing a keyword;
- citation_rate: answered (not refused) answerable questions that cite at least one passage;
- refusal_accuracy: unanswerable questions refused;  false_refusal_rate: answerable questions refused;
- accuracy: all questions scored together.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.errors import UserError

DEFAULT_QUESTIONS = Path(__file__).resolve().parents[1] / "benchmarks" / "questions.jsonl"


class QuestionSetError(UserError):
    """The question file is missing or malformed."""


@dataclass
class Question:
    """One evaluation question."""

    id: str
    question: str
    sources: list[str] = field(default_factory=list)
    keywords: list[list[str]] = field(default_factory=list)
    unanswerable: bool = False
    ci: bool = False
    history: list[dict] = field(default_factory=list)   # optional earlier turns (follow-up questions)


@dataclass
class Record:
    """The outcome for one question."""

    id: str
    question: str
    answer: str
    unanswerable: bool
    correct: bool
    refused: bool
    hit: bool | None                  # gold source among the passages given (None: no retrieval / unanswerable)
    cited: list[str]                  # paths of cited passages
    cited_good: int                   # cited passages from a gold source or containing a keyword
    missing_keywords: list[list[str]]
    best_dense: float | None
    query: str
    ttft_ms: float | None
    total_ms: float


def load_questions(path: str | Path | None = None, ci_subset: bool = False) -> list[Question]:
    """Read and check a JSONL question file (default benchmarks/questions.jsonl)."""
    path = Path(path) if path else DEFAULT_QUESTIONS
    if not path.is_file():
        raise QuestionSetError(f"question file {path} does not exist; pass --questions PATH")
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            q = Question(
                id=str(raw.get("id", number)), question=str(raw["question"]),
                sources=[str(s) for s in raw.get("sources", [])],
                keywords=[[str(a) for a in group] if isinstance(group, list) else [str(group)]
                          for group in raw.get("keywords", [])],
                unanswerable=bool(raw.get("unanswerable", False)), ci=bool(raw.get("ci", False)),
                history=list(raw.get("history", [])),
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise QuestionSetError(f"{path}, line {number}: not a valid question ({exc})") from None
        questions.append(q)
    if ci_subset:
        questions = [q for q in questions if q.ci]
    if not questions:
        raise QuestionSetError(f"{path} holds no questions" + (" marked \"ci\": true" if ci_subset else ""))
    return questions


def keyword_misses(text: str, groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """The keyword groups none of whose alternatives occur in `text` (case-insensitive)."""
    low = text.lower()
    return [list(group) for group in groups if not any(alt.lower() in low for alt in group)]


def same_file(path: str, gold: str) -> bool:
    """True when an index path names the gold file (gold may be a bare name or a relative path)."""
    a, b = Path(str(path)).as_posix().lower(), Path(str(gold)).as_posix().lower()
    return a == b or a.endswith("/" + b) or Path(a).name == Path(b).name


def score(question: Question, answer: Any, use_retrieval: bool = True) -> Record:
    """Score one Answer against its question."""
    sources = list(answer.sources)
    cited = [s for s in sources if s.cited]
    misses = keyword_misses(answer.text, question.keywords)
    if question.unanswerable:
        correct = bool(answer.refused)
    else:
        correct = not answer.refused and not misses
    hit = None
    if use_retrieval and not question.unanswerable and question.sources:
        hit = any(same_file(s.path, g) for s in sources for g in question.sources)
    good = sum(
        1 for s in cited
        if any(same_file(s.path, g) for g in question.sources)
        or any(alt.lower() in s.text.lower() for group in question.keywords for alt in group)
    )
    dense = [s.dense_score for s in sources if s.dense_score is not None]
    return Record(
        id=question.id, question=question.question, answer=answer.text, unanswerable=question.unanswerable,
        correct=correct, refused=bool(answer.refused), hit=hit, cited=[s.path for s in cited], cited_good=good,
        missing_keywords=misses, best_dense=max(dense) if dense else None, query=answer.query,
        ttft_ms=answer.timings.time_to_first_token_ms, total_ms=answer.timings.total_ms,
    )


def summarize(records: Sequence[Record]) -> dict[str, Any]:
    """Aggregate metrics over records (None where a metric has no denominator)."""
    def ratio(num: int, den: int) -> float | None:
        return num / den if den else None

    answerable = [r for r in records if not r.unanswerable]
    unanswerable = [r for r in records if r.unanswerable]
    hits = [r.hit for r in answerable if r.hit is not None]
    answered = [r for r in answerable if not r.refused]
    n_cited = sum(len(r.cited) for r in answerable)
    ttfts = [r.ttft_ms for r in records if r.ttft_ms is not None]
    return {
        "questions": len(records),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "accuracy": ratio(sum(r.correct for r in records), len(records)),
        "hit_rate": ratio(sum(hits), len(hits)),
        "answer_accuracy": ratio(sum(r.correct for r in answerable), len(answerable)),
        "citation_precision": ratio(sum(r.cited_good for r in answerable), n_cited),
        "citation_rate": ratio(sum(bool(r.cited) for r in answered), len(answered)),
        "refusal_accuracy": ratio(sum(r.refused for r in unanswerable), len(unanswerable)),
        "false_refusal_rate": ratio(sum(r.refused for r in answerable), len(answerable)),
        "median_ttft_ms": statistics.median(ttfts) if ttfts else None,
        "median_total_ms": statistics.median([r.total_ms for r in records]) if records else None,
    }


def evaluate(
    assistant: Any,
    questions: Sequence[Question],
    use_retrieval: bool = True,
    progress: Callable[[int, int, Record], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Ask every question; returns {"metrics": ..., "records": [...], "use_retrieval": ...}."""
    records = []
    for i, question in enumerate(questions, start=1):
        answer = assistant.ask(question.question, history=question.history or None,
                               use_retrieval=use_retrieval, **options)
        record = score(question, answer, use_retrieval)
        records.append(record)
        if progress:
            progress(i, len(questions), record)
    return {"use_retrieval": use_retrieval, "metrics": summarize(records), "records": [asdict(r) for r in records]}


def calibrate_threshold(assistant: Any, questions: Sequence[Question]) -> dict[str, Any]:
    """Best-hit dense cosines of answerable vs unanswerable questions, and the threshold that separates
    them best (most questions on the right side; ties broken towards the middle of the widest gap).

    Only retrieval runs (no generation), so this is quick.
    """
    from assistant.followup import standalone_query

    scores: list[tuple[float, bool]] = []  # (best cosine, answerable)
    for q in questions:
        hits, _ = assistant.retrieve(standalone_query(q.question, q.history), k=assistant.settings.k)
        best = max((float(h.dense_score) for h in hits if h.dense_score is not None), default=0.0)
        scores.append((best, not q.unanswerable))
    values = sorted({s for s, _ in scores})
    candidates = [values[0] - 1e-3] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1e-3]

    def right(t: float) -> int:
        return sum((s >= t) == answerable for s, answerable in scores)

    best_right = max(right(t) for t in candidates)
    tied = [t for t in candidates if right(t) == best_right]
    threshold = tied[len(tied) // 2]
    answerable = sorted(s for s, a in scores if a)
    unanswerable = sorted(s for s, a in scores if not a)
    return {
        "threshold": round(threshold, 3),
        "correct": best_right,
        "questions": len(scores),
        "answerable_min": answerable[0] if answerable else None,
        "answerable_median": statistics.median(answerable) if answerable else None,
        "unanswerable_max": unanswerable[-1] if unanswerable else None,
        "unanswerable_median": statistics.median(unanswerable) if unanswerable else None,
        "answerable_lowest": [round(s, 3) for s in answerable[:5]],
        "unanswerable_scores": [round(s, 3) for s in unanswerable],
        "answerable_below": sum(s < threshold for s in answerable),
        "unanswerable_above": sum(s >= threshold for s in unanswerable),
    }


def format_report(result: dict[str, Any], show_failures: bool = True) -> str:
    """A plain-text table of the metrics, then the questions answered wrongly."""
    m = result["metrics"]
    label = "with retrieval" if result["use_retrieval"] else "model alone (no retrieval)"

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:5.1f}%"

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value / 1000:.1f} s"

    rows = [
        ("questions", f"{m['questions']} ({m['answerable']} answerable, {m['unanswerable']} unanswerable)"),
        ("accuracy (all)", pct(m["accuracy"])),
        ("hit rate@k", pct(m["hit_rate"])),
        ("answer accuracy", pct(m["answer_accuracy"])),
        ("citation precision", pct(m["citation_precision"])),
        ("citation rate", pct(m["citation_rate"])),
        ("refusal accuracy", pct(m["refusal_accuracy"])),
        ("false refusal rate", pct(m["false_refusal_rate"])),
        ("median time to first token", ms(m["median_ttft_ms"])),
        ("median total time", ms(m["median_total_ms"])),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"Answer evaluation, {label}", "-" * (width + 24)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    failures = [r for r in result["records"] if not r["correct"]]
    if show_failures and failures:
        lines += ["", f"Wrong ({len(failures)}):"]
        for r in failures:
            why = "refused" if r["refused"] else (
                "did not refuse" if r["unanswerable"] else f"missing {r['missing_keywords']}")
            answer = " ".join(r["answer"].split())[:100]
            lines.append(f"  {r['id']}: {why}; hit={r['hit']}; answer: {answer}")
    return "\n".join(lines)
