"""RAG training examples from SQuAD-style rows: passages, targets, refusals, held-out articles, rendering."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from assistant.prompts import REFUSAL_TEXT, build_messages
from assistant.training_data import (
    DEFAULT_SQUAD_PATH,
    BuildConfig,
    QARow,
    answer_in,
    build_dataset,
    build_examples,
    cited_numbers,
    clip_passage,
    load_squad,
    normalize_answer,
    split_titles,
    to_training_example,
    token_f1,
)

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


def synthetic_rows(n_articles: int = 8, n_paragraphs: int = 4) -> list[QARow]:
    """Articles whose paragraphs each hold a unique code word that two questions ask for."""
    rows = []
    for a in range(n_articles):
        title = f"Article_{a}"
        for p in range(n_paragraphs):
            code = f"zq{a}x{p}"
            filler = " ".join(WORDS[(a + p + i) % len(WORDS)] for i in range(30))
            context = f"{filler.capitalize()}. The secret code of part {p} is {code}. More text {filler}."
            for q in range(2):
                rows.append(QARow(f"{a}-{p}-{q}", title, context, f"What is the code of part {p} ({q})?", code,
                                  context.index(code)))
    return rows


def fake_embed(texts):
    """A deterministic bag-of-words hashing embedder (stands in for the MiniLM encoder)."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, zlib.crc32(word.encode()) % 64] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_answer_normalisation_and_scores():
    assert normalize_answer("The  Eiffel Tower! [2]") == "eiffel tower"
    assert answer_in("Eiffel Tower", "It is the eiffel tower [1].")
    assert not answer_in("tower", "towering heights")
    assert token_f1("the Eiffel Tower [3].", "Eiffel Tower") == 1.0
    assert 0 < token_f1("a tall Eiffel Tower", "Eiffel Tower") < 1
    assert token_f1("Paris", "Eiffel Tower") == 0.0
    assert cited_numbers("x [2] and [13].") == [2, 13]


def test_clip_passage_keeps_the_answer_within_budget():
    text = " ".join(f"Sentence {i} has some words in it." for i in range(40))
    start = text.index("Sentence 31")
    clipped = clip_passage(text, 30, keep=(start, start + 11))
    assert "Sentence 31" in clipped and len(clipped.split()) <= 30
    assert clipped.startswith("Sentence") and clipped.endswith(".")  # whole sentences
    long_sentence = " ".join(f"w{i}" for i in range(300))
    cut = clip_passage(long_sentence, 50, keep=(long_sentence.index("w250"), long_sentence.index("w250") + 4))
    assert "w250" in cut.split() and len(cut.split()) == 50


def test_split_holds_out_whole_articles_deterministically():
    titles = [f"T{i}" for i in range(20)]
    train, held = split_titles(titles, 5, seed=3)
    assert len(held) == 5 and not set(train) & set(held) and set(train) | set(held) == set(titles)
    assert split_titles(reversed(titles), 5, seed=3) == (train, held)
    assert split_titles(titles, 5, seed=4)[1] != held


@pytest.mark.parametrize("embed", [None, fake_embed])
def test_examples_have_gold_passage_citation_and_refusals(embed):
    rows = synthetic_rows()
    config = BuildConfig(min_passages=3, max_passages=5, max_passage_words=40)
    examples = build_examples(rows, {r.title for r in rows}, 64, seed=0, config=config, embed=embed,
                              unanswerable_fraction=0.3)
    assert len(examples) == 64
    refusals = [ex for ex in examples if not ex.answerable]
    assert 8 <= len(refusals) <= 32
    for ex in examples:
        assert 3 <= len(ex.passages) <= 5
        holding = [i + 1 for i, p in enumerate(ex.passages) if answer_in(ex.gold_answer, p.text)]
        assert all(p.label.startswith("Article ") for p in ex.passages)  # label = readable article title
        if ex.answerable:
            assert holding == [ex.gold_index]  # only the gold passage holds the answer
            assert answer_in(ex.gold_answer, ex.target) and cited_numbers(ex.target) == [ex.gold_index]
        else:
            assert holding == [] and ex.target == REFUSAL_TEXT
    # the gold passage is not always in the same slot
    assert len({ex.gold_index for ex in examples if ex.answerable}) >= 3
    again = build_examples(rows, {r.title for r in rows}, 64, seed=0, config=config, embed=embed,
                           unanswerable_fraction=0.3)
    assert [ex.to_dict() for ex in again] == [ex.to_dict() for ex in examples]


def test_training_never_sees_held_out_articles():
    rows = synthetic_rows(n_articles=10)
    data = build_dataset(n_train=60, n_eval=30, eval_articles=3, seed=1, embed=fake_embed, rows=rows,
                         config=BuildConfig(max_passage_words=40))
    held = set(data.eval_titles)
    held_texts = {r.context for r in rows if r.title in held}
    assert len(held) == 3 and {ex.title for ex in data.eval} <= held
    for ex in data.train:
        assert ex.title not in held
        assert all(p.label.replace(" ", "_") not in held for p in ex.passages)
        assert not any(p.text in held_texts for p in ex.passages)
    assert 5 <= sum(not ex.answerable for ex in data.eval) <= 16  # about a third unanswerable


def test_rendering_matches_serving_and_labels_only_the_answer():
    from model.tokenizer import train_bpe_tokenizer

    rows = synthetic_rows(n_articles=3)
    tokenizer = train_bpe_tokenizer([r.context for r in rows] + [REFUSAL_TEXT], vocab_size=400)
    ex = build_examples(rows, {r.title for r in rows}, 4, seed=2, unanswerable_fraction=0.0,
                        config=BuildConfig(max_passage_words=40))[0]
    train_ex = to_training_example(ex, tokenizer)
    prompt = tokenizer.apply_chat_template(build_messages(ex.question, ex.passages), add_generation_prompt=True)
    prompt_ids = tokenizer.encode(prompt)
    assert train_ex.input_ids[: len(prompt_ids)] == prompt_ids
    assert set(train_ex.labels[: len(prompt_ids)]) == {-100}
    answer_ids = train_ex.labels[len(prompt_ids):]
    assert answer_ids[-1] in tokenizer.eos_token_ids
    assert tokenizer.decode(answer_ids[:-1]) == ex.target


@pytest.mark.skipif(not DEFAULT_SQUAD_PATH.is_file(), reason="shared SQuAD data not present")
def test_real_squad_file_loads():
    rows = load_squad(limit=50)
    assert len(rows) == 50 and all(r.context[r.answer_start:].startswith(r.answer) for r in rows)
