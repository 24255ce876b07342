"""RAG-style fine-tuning examples built from SQuAD v1.1 train (../shared/data, see its README).

Each example is what the assistant sees when it answers: 3-5 numbered passages and a question, rendered with
`assistant.prompts.build_messages` and the generator's chat template, so training matches serving.

    answerable (~75%):   gold paragraph + distractors (other paragraphs of the same article, and the
                         paragraphs the project's encoder ranks nearest to the question), in random order;
                         target = "<gold answer span> [n]." where [n] numbers the gold passage
    unanswerable (~25%): the gold paragraph removed, and no remaining passage contains the answer text;
                         target = REFUSAL_TEXT

Whole articles (by title) are held out for evaluation, chosen deterministically from the seed; training
examples never show a held-out article's text, not even as a distractor. Long paragraphs are cut to a
word budget around the answer, so examples stay short enough to train on a CPU.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from assistant.prompts import REFUSAL_TEXT, PromptPassage, build_messages

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SQUAD_PATH = REPO_ROOT / ".." / "shared" / "data" / "squad_v1.1_train" / "train-v1.1.flat.jsonl.gz"

EmbedFn = Callable[[Sequence[str]], np.ndarray]  # texts -> [n, dim] unit vectors


# ---- answers: normalisation and scores (SQuAD's official definitions) -----------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CITATION = re.compile(r"\[\d+\]")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop citations [n], punctuation and articles, squeeze whitespace (SQuAD's normalisation)."""
    text = _CITATION.sub(" ", text.lower())
    text = "".join(ch for ch in text if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_in(answer: str, text: str) -> bool:
    """True when the normalised answer occurs in the normalised text (on word boundaries)."""
    gold = normalize_answer(answer)
    return bool(gold) and f" {gold} " in f" {normalize_answer(text)} "


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token-overlap F1 between a prediction and the gold answer (after normalisation)."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if not pred_tokens or not gold_tokens or overlap == 0:
        return float(pred_tokens == gold_tokens)
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def cited_numbers(text: str) -> list[int]:
    """The passage numbers an answer cites, in order: "... [2] and [3]." -> [2, 3]."""
    return [int(m) for m in re.findall(r"\[(\d+)\]", text)]


# ---- the raw data ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QARow:
    """One SQuAD question with its paragraph."""

    id: str
    title: str
    context: str
    question: str
    answer: str
    answer_start: int


def load_squad(path: str | Path = DEFAULT_SQUAD_PATH, limit: int | None = None) -> list[QARow]:
    """Read the flat SQuAD v1.1 train JSONL (gzip). Raises FileNotFoundError with a hint when missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"SQuAD training data not found at {path}; pass --squad PATH to train-v1.1.flat.jsonl.gz "
            "(see shared/data/README.md)"
        )
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            rows.append(QARow(row["id"], row["title"], row["context"], row["question"].strip(), row["answer"],
                              int(row["answer_start"])))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def split_titles(titles: Iterable[str], eval_articles: int, seed: int) -> tuple[list[str], list[str]]:
    """Deterministically hold out `eval_articles` whole articles: (train titles, eval titles), both sorted."""
    ordered = sorted(set(titles))
    if eval_articles >= len(ordered):
        raise ValueError(f"cannot hold out {eval_articles} of {len(ordered)} articles")
    shuffled = ordered[:]
    random.Random(f"split-{seed}").shuffle(shuffled)
    held_out = set(shuffled[:eval_articles])
    return [t for t in ordered if t not in held_out], sorted(held_out)


def title_label(title: str) -> str:
    """The passage label the prompt shows: the article title, readable."""
    return title.replace("_", " ")


# ---- passages: cut to a word budget around the answer -----------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def sentences_with_offsets(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of `text` (a simple punctuation-based split)."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def clip_passage(text: str, max_words: int, keep: tuple[int, int] | None = None) -> str:
    """At most ~max_words words of `text`, in whole sentences where possible, always keeping the span `keep`.

    Sentences are added around the one holding `keep` (or from the start) while they fit; a single sentence
    over budget is cut to a word window around the kept span.
    """
    if len(text.split()) <= max_words:
        return text.strip()
    spans = sentences_with_offsets(text)
    anchor = 0
    if keep is not None:
        anchor = next((i for i, (s, e) in enumerate(spans) if s <= keep[0] < e), 0)
    lo = hi = anchor
    words = len(text[spans[anchor][0]:spans[anchor][1]].split())
    if words > max_words:  # one long sentence: a word window around the kept span
        s, e = spans[anchor]
        sentence = text[s:e]
        tokens = sentence.split()
        if keep is None:
            return " ".join(tokens[:max_words])
        answer_word = len(text[s:keep[0]].split())
        start = max(0, min(answer_word - max_words // 3, len(tokens) - max_words))
        return " ".join(tokens[start:start + max_words])
    while True:
        grew = False
        for cand in (hi + 1, lo - 1):  # prefer the following sentence, then the preceding one
            if 0 <= cand < len(spans):
                n = len(text[spans[cand][0]:spans[cand][1]].split())
                if words + n <= max_words:
                    words += n
                    lo, hi = min(lo, cand), max(hi, cand)
                    grew = True
                    break
        if not grew:
            break
    return text[spans[lo][0]:spans[hi][1]].strip()


# ---- examples -------------------------------------------------------------------------------------------------
@dataclass
class RagExample:
    """A question with numbered passages and the answer the assistant should give."""

    id: str
    title: str
    question: str
    passages: list[PromptPassage]
    gold_answer: str  # the SQuAD answer (also kept for unanswerable copies, to check refusals)
    gold_index: int | None  # 1-based number of the gold passage; None = unanswerable
    target: str  # what the model is trained to reply

    @property
    def answerable(self) -> bool:
        return self.gold_index is not None

    def messages(self) -> list[dict]:
        """The chat messages the assistant would send for this question (system prompt + passages + question)."""
        return build_messages(self.question, self.passages)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passages"] = [{"text": p.text, "label": p.label} for p in self.passages]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RagExample":
        data = dict(data)
        data["passages"] = [PromptPassage(p["text"], p.get("label", "")) for p in data["passages"]]
        return cls(**data)


@dataclass
class BuildConfig:
    """How examples are built; every field is a flag of `assistant finetune`."""

    min_passages: int = 3
    max_passages: int = 5
    max_passage_words: int = 120
    unanswerable_fraction: float = 0.25
    retrieved_fraction: float = 0.5  # share of distractors taken from the encoder's nearest neighbours
    answer_style: str = "span"  # "span": "<answer> [n]." ; "sentence": the gold sentence + " [n]"
    neighbours: int = 12  # candidates fetched per question from the encoder index


def _target(row: QARow, gold_text: str, number: int, style: str) -> str:
    if style == "sentence":
        for s, e in sentences_with_offsets(row.context):
            if s <= row.answer_start < e and answer_in(row.answer, row.context[s:e]):
                sentence = row.context[s:e].strip().rstrip(".")
                if answer_in(row.answer, gold_text) and len(sentence.split()) <= 40:
                    return f"{sentence} [{number}]."
        # fall back to the span when the sentence is too long or was cut
    answer = row.answer.strip().rstrip(".")
    return f"{answer[:1].upper()}{answer[1:]} [{number}]."


class ParagraphPool:
    """The paragraphs of some articles, optionally embedded so questions can retrieve near (hard) distractors."""

    def __init__(self, rows: Sequence[QARow], titles: Iterable[str], max_words: int,
                 embed: EmbedFn | None = None, max_embedded: int | None = 3000, seed: int = 0) -> None:
        wanted = set(titles)
        seen: dict[str, tuple[str, str]] = {}
        for row in rows:
            if row.title in wanted and row.context not in seen:
                seen[row.context] = (row.title, row.context)
        self.paragraphs = list(seen.values())  # [(title, context)]
        self.by_title: dict[str, list[int]] = defaultdict(list)
        for i, (title, _) in enumerate(self.paragraphs):
            self.by_title[title].append(i)
        self.max_words = max_words
        self.embed = embed
        self.embedded_ids: list[int] = []
        self.vectors: np.ndarray | None = None
        if embed is not None and self.paragraphs:
            ids = list(range(len(self.paragraphs)))
            if max_embedded is not None and len(ids) > max_embedded:
                ids = sorted(random.Random(f"pool-{seed}").sample(ids, max_embedded))
            self.embedded_ids = ids
            texts = [clip_passage(self.paragraphs[i][1], max_words) for i in ids]
            self.vectors = np.asarray(embed(texts), dtype=np.float32)  # [n, dim]

    def nearest(self, question_vectors: np.ndarray, k: int) -> list[list[int]]:
        """For each question vector [q, dim], the pool indices of the k most similar embedded paragraphs."""
        if self.vectors is None or not len(self.embedded_ids):
            return [[] for _ in range(len(question_vectors))]
        scores = question_vectors @ self.vectors.T  # [q, n]
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # [q, k] unordered
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, axis=1)
        return [[self.embedded_ids[j] for j in row] for row in top]


def build_examples(
    rows: Sequence[QARow],
    titles: Iterable[str],
    n_examples: int,
    seed: int = 0,
    config: BuildConfig | None = None,
    embed: EmbedFn | None = None,
    pool_size: int | None = 3000,
    unanswerable_fraction: float | None = None,
) -> list[RagExample]:
    """Sample `n_examples` RAG examples whose questions and passages all come from the articles `titles`.

    `embed` (e.g. `model.encoder.Encoder.load().embed`) ranks a pool of up to `pool_size` paragraphs of these
    articles for each question, giving retrieved distractors; without it, distractors from other articles are
    drawn at random. Deterministic for a given seed.
    """
    if n_examples <= 0:
        return []
    config = config or BuildConfig()
    frac = config.unanswerable_fraction if unanswerable_fraction is None else unanswerable_fraction
    rng = random.Random(f"examples-{seed}")
    titles = set(titles)
    candidates = [row for row in rows if row.title in titles]
    if not candidates:
        raise ValueError("no questions in the selected articles")
    picked = rng.sample(candidates, min(n_examples, len(candidates)))
    pool = ParagraphPool(rows, titles, config.max_passage_words, embed=embed, max_embedded=pool_size, seed=seed)
    neighbours = [[] for _ in picked]
    if embed is not None:
        question_vectors = np.asarray(embed([row.question for row in picked]), dtype=np.float32)
        neighbours = pool.nearest(question_vectors, config.neighbours)

    out = []
    for row, near in zip(picked, neighbours):
        unanswerable = rng.random() < frac
        n_passages = rng.randint(config.min_passages, config.max_passages)
        n_distractors = n_passages if unanswerable else n_passages - 1

        def usable(index: int) -> bool:
            title, context = pool.paragraphs[index]
            return context != row.context and not answer_in(row.answer, context)

        same_article = [i for i in pool.by_title.get(row.title, []) if usable(i)]
        rng.shuffle(same_article)
        retrieved = [i for i in near if usable(i)]
        n_retrieved = round(n_distractors * config.retrieved_fraction) if retrieved else 0
        chosen: list[int] = []
        for source in (retrieved[:n_retrieved], same_article, retrieved[n_retrieved:]):
            for i in source:
                if len(chosen) < n_distractors and i not in chosen:
                    chosen.append(i)
        while len(chosen) < n_distractors:  # small articles: random paragraphs from elsewhere in the split
            i = rng.randrange(len(pool.paragraphs))
            if usable(i) and i not in chosen:
                chosen.append(i)

        rng.shuffle(chosen)  # distractor order carries no signal
        passages = [PromptPassage(clip_passage(pool.paragraphs[i][1], config.max_passage_words),
                                  title_label(pool.paragraphs[i][0])) for i in chosen]
        gold_index = None
        if unanswerable:
            target = REFUSAL_TEXT
        else:
            answer_end = row.answer_start + len(row.answer)
            gold_text = clip_passage(row.context, config.max_passage_words, keep=(row.answer_start, answer_end))
            position = rng.randint(0, len(passages))
            passages.insert(position, PromptPassage(gold_text, title_label(row.title)))
            gold_index = position + 1
            target = _target(row, gold_text, gold_index, config.answer_style)
        out.append(RagExample(id=row.id, title=row.title, question=row.question, passages=passages,
                              gold_answer=row.answer, gold_index=gold_index, target=target))
    return out


# ---- rendering ------------------------------------------------------------------------------------------------
def render_prompt(example: RagExample, tokenizer) -> str:
    """The prompt text exactly as serving renders it (chat template, generation prompt added)."""
    return tokenizer.apply_chat_template(example.messages(), add_generation_prompt=True)


def to_training_example(example: RagExample, tokenizer):
    """Token ids for training: the rendered prompt (no loss) then the target and the end-of-turn token (loss)."""
    from model.train import Example

    prompt_ids = tokenizer.encode(render_prompt(example, tokenizer))
    answer_ids = tokenizer.encode(example.target)
    eos = tokenizer.eos_token_ids[:1]
    return Example.prompt_answer(prompt_ids, answer_ids + list(eos))


def save_examples(path: str | Path, examples: Sequence[RagExample]) -> None:
    """Write examples as JSON lines (temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(path)


def load_examples(path: str | Path) -> list[RagExample]:
    """Read examples written by `save_examples`."""
    with open(path, encoding="utf-8") as fh:
        return [RagExample.from_dict(json.loads(line)) for line in fh if line.strip()]


@dataclass
class Dataset:
    """Train and held-out examples, and which articles each came from."""

    train: list[RagExample]
    eval: list[RagExample]
    train_titles: list[str] = field(default_factory=list)
    eval_titles: list[str] = field(default_factory=list)


def build_dataset(
    squad_path: str | Path = DEFAULT_SQUAD_PATH,
    n_train: int = 2000,
    n_eval: int = 600,
    eval_articles: int = 40,
    seed: int = 0,
    config: BuildConfig | None = None,
    embed: EmbedFn | None = None,
    pool_size: int | None = 3000,
    eval_unanswerable_fraction: float = 1 / 3,
    rows: Sequence[QARow] | None = None,
) -> Dataset:
    """Split SQuAD by article and build training and held-out examples (a third of held-out ones unanswerable)."""
    rows = rows if rows is not None else load_squad(squad_path)
    train_titles, eval_titles = split_titles((r.title for r in rows), eval_articles, seed)
    train = build_examples(rows, train_titles, n_train, seed=seed, config=config, embed=embed, pool_size=pool_size)
    held_out = build_examples(rows, eval_titles, n_eval, seed=seed + 1, config=config, embed=embed,
                              pool_size=pool_size, unanswerable_fraction=eval_unanswerable_fraction)
    return Dataset(train, held_out, train_titles, eval_titles)
