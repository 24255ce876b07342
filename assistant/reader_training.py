"""Training data, training and evaluation for the evidence reader (model.reader) on SQuAD v1.1 train.

Splits are by whole article. The held-out articles are exactly those the shipped generator adapter never saw
(`training_data.split_titles(..., 40, seed=0)`, the adapter's own held-out set); they are divided again into a
dev split (thresholds are calibrated there) and a test split (numbers are reported there). The reader trains on
the other 402 articles only.

Each training question gives:
- its gold paragraph, cut into windows; the window holding the answer is labelled with its token span, any
  other window of a long paragraph with the [CLS] "no answer" position;
- with probability `negative_rate`, an answerability negative: the question beside a paragraph that does not
  contain the answer — the nearest one by the project's encoder (a retrieved near-miss, what the assistant
  will really show the reader) for a `retrieved_fraction` of them, else another paragraph of the same article.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from assistant.training_data import QARow, ParagraphPool, answer_in, normalize_answer, split_titles, token_f1

HELD_OUT_ARTICLES = 40  # the generator adapter's held-out articles (seed 0)
DEV_ARTICLES = 15  # of those, used to calibrate thresholds; the rest is the test split


@dataclass
class ReaderSplits:
    train: list[str]
    dev: list[str]
    test: list[str]


def reader_splits(rows: Sequence[QARow], seed: int = 0) -> ReaderSplits:
    """Train / dev / test article titles (dev and test are the generator adapter's held-out articles)."""
    train, held = split_titles((r.title for r in rows), HELD_OUT_ARTICLES, seed)
    shuffled = held[:]
    random.Random(f"reader-dev-{seed}").shuffle(shuffled)
    return ReaderSplits(train, sorted(shuffled[:DEV_ARTICLES]), sorted(shuffled[DEV_ARTICLES:]))


@dataclass
class DataConfig:
    negative_rate: float = 0.6  # questions that also get an answerability negative
    retrieved_fraction: float = 0.5  # of the negatives: the encoder's nearest paragraph without the answer
    neighbours: int = 8
    max_questions: int | None = None  # None = every question of the training articles
    seed: int = 0


@dataclass
class ReaderData:
    examples: list[Any]  # model.reader.SpanExample
    questions: int = 0
    positives: int = 0
    negatives: int = 0
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)


def build_training_examples(rows: Sequence[QARow], titles: Sequence[str], windows: Any,
                            config: DataConfig | None = None,
                            embed: Callable[[Sequence[str]], np.ndarray] | None = None) -> ReaderData:
    """SpanExamples for the reader from the questions of `titles` (see the module docstring).

    `windows`: a model.reader.WindowMaker. `embed` (texts -> unit vectors) finds retrieved near-misses; without
    it every negative comes from the same article.
    """
    from model.reader import SpanExample, span_targets

    started = time.perf_counter()
    config = config or DataConfig()
    rng = random.Random(f"reader-data-{config.seed}")
    wanted = set(titles)
    questions = [r for r in rows if r.title in wanted]
    if config.max_questions is not None and len(questions) > config.max_questions:
        questions = rng.sample(questions, config.max_questions)
    if not questions:
        raise ValueError("no questions in the selected articles")
    pool = ParagraphPool(rows, wanted, max_words=100_000, embed=embed, max_embedded=None, seed=config.seed)
    neighbours: list[list[int]] = [[] for _ in questions]
    if embed is not None:
        vectors = np.asarray(embed([r.question for r in questions]), dtype=np.float32)
        neighbours = pool.nearest(vectors, config.neighbours)

    # Tokenise each paragraph once, when first needed; the questions in one batch (the tokenizer batches in Rust).
    index_of = {context: i for i, (_, context) in enumerate(pool.paragraphs)}
    token_cache: dict[int, Any] = {}

    def tokens_of(i: int) -> Any:
        if i not in token_cache:
            token_cache[i] = windows.passage_tokens([pool.paragraphs[i][1]])[0]
        return token_cache[i]

    q_ids = [e.ids[: windows.config.max_question_tokens]
             for e in windows.hf.encode_batch([r.question for r in questions], add_special_tokens=False)]

    normalized: dict[int, str] = {}  # normalised paragraph text, for answer-containment tests

    def norm(i: int) -> str:
        if i not in normalized:
            normalized[i] = f" {normalize_answer(pool.paragraphs[i][1])} "
        return normalized[i]

    out: list[Any] = []
    positives = negatives = 0
    for row, q, near in zip(questions, q_ids, neighbours):
        gold = index_of[row.context]
        answer_end = row.answer_start + len(row.answer)
        for window in windows.windows(q, None, tokens=[tokens_of(gold)]):
            start, end = span_targets(window, row.answer_start, answer_end)
            out.append(SpanExample(window.input_ids, window.token_type_ids, start, end))
            positives += start > 0
            negatives += start == 0
        if rng.random() >= config.negative_rate:
            continue

        answer = f" {normalize_answer(row.answer)} "

        def usable(i: int) -> bool:
            return i != gold and answer not in norm(i)

        choice = None
        if near and rng.random() < config.retrieved_fraction:
            choice = next((i for i in near if usable(i)), None)
        if choice is None:
            same = [i for i in pool.by_title.get(row.title, []) if usable(i)]
            choice = rng.choice(same) if same else None
        if choice is None:
            continue
        for window in windows.windows(q, None, tokens=[tokens_of(choice)]):
            out.append(SpanExample(window.input_ids, window.token_type_ids, 0, 0))
            negatives += 1
    return ReaderData(out, len(questions), positives, negatives, time.perf_counter() - started,
                      {"paragraphs": len(pool.paragraphs), "articles": len(wanted)})


# ---------------------------------------------------------------------------------------------------------------
# evaluation: the reader alone on gold paragraphs (SQuAD's official EM / F1)
# ---------------------------------------------------------------------------------------------------------------
def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def evaluate_reader(reader: Any, rows: Sequence[QARow], limit: int | None = 1000, seed: int = 0) -> dict[str, Any]:
    """EM / F1 (official SQuAD normalisation, in %) of the reader's best span on each question's gold paragraph,
    and how often the span beats "no answer" (answered rate). `rows`: held-out questions."""
    rows = list(rows)
    if limit is not None and len(rows) > limit:
        rows = random.Random(f"reader-eval-{seed}").sample(rows, limit)
    em = f1 = answered = 0.0
    started = time.perf_counter()
    for row in rows:
        spans = reader.read(row.question, [row.context])
        text = spans[0].text if spans else ""
        em += exact_match(text, row.answer)
        f1 += token_f1(text, row.answer)
        answered += bool(spans) and spans[0].score > 0
    n = max(len(rows), 1)
    return {"exact": 100 * em / n, "f1": 100 * f1 / n, "answered": 100 * answered / n, "questions": len(rows),
            "seconds": time.perf_counter() - started}


def evaluate_answerability(reader: Any, rows: Sequence[QARow], all_rows: Sequence[QARow], limit: int = 400,
                           seed: int = 0) -> dict[str, Any]:
    """Scores of the best span on the gold paragraph vs on another same-article paragraph without the answer:
    the separation a refusal threshold works with (AUC, and accuracy at the best threshold)."""
    rng = random.Random(f"reader-answerability-{seed}")
    by_title: dict[str, list[str]] = defaultdict(list)
    for r in all_rows:
        if r.context not in by_title[r.title]:
            by_title[r.title].append(r.context)
    rows = rng.sample(list(rows), min(limit, len(rows)))
    pos, neg = [], []
    for row in rows:
        spans = reader.read(row.question, [row.context])
        pos.append(spans[0].score if spans else -1e9)
        others = [c for c in by_title[row.title] if c != row.context and not answer_in(row.answer, c)]
        if others:
            spans = reader.read(row.question, [rng.choice(others)])
            neg.append(spans[0].score if spans else -1e9)
    pos_a, neg_a = np.array(pos), np.array(neg)
    auc = float((pos_a[:, None] > neg_a[None, :]).mean()) if len(neg_a) and len(pos_a) else float("nan")
    best_acc, best_t = 0.0, 0.0
    for t in np.unique(np.concatenate([pos_a, neg_a])):
        acc = ((pos_a > t).sum() + (neg_a <= t).sum()) / (len(pos_a) + len(neg_a))
        if acc > best_acc:
            best_acc, best_t = float(acc), float(t)
    return {"auc": auc, "best_accuracy": 100 * best_acc, "best_threshold": best_t, "positives": len(pos_a),
            "negatives": len(neg_a)}


__all__ = ["DataConfig", "ReaderData", "ReaderSplits", "build_training_examples", "evaluate_answerability",
           "evaluate_reader", "exact_match", "reader_splits"]
