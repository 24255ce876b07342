"""Retriever: modes, fusion, scores, filters, MMR; and the real encoder finding planted sentences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval.errors import RetrievalError
from retrieval.retriever import RRF_K, Retriever, path_matcher
from retrieval.sync import sync_folder
from retrieval.testing import HashingEncoder

DOCS = {
    "animals/cats.md": "# Cats\n\nCats purr when they are content. A cat sleeps sixteen hours a day.\n",
    "animals/dogs.md": "# Dogs\n\nDogs bark at the mailman. A dog wags its tail when happy.\n",
    "space/mars.txt": "Mars is the red planet. Rovers explore the dusty Martian surface.\n",
    "space/moon.txt": "The moon orbits the earth and causes tides in the oceans.\n",
    "cooking/bread.txt": "Knead the dough, let it rise, then bake the bread until golden.\n",
    "dup/a.txt": "Penguins huddle together for warmth during the antarctic winter storms.\n",
    "dup/b.txt": "Penguins huddle together for warmth during the antarctic winter storms!\n",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("retriever")
    for path, text in DOCS.items():
        (root / "docs" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "docs" / path).write_text(text)
    encoder = HashingEncoder()
    sync_folder(root / "docs", root / "index", encoder, progress=False)
    return Retriever(root / "index", encoder), encoder


def test_dense_score_is_the_cosine_for_every_hit_in_every_mode(setup):
    retriever, encoder = setup
    query = "why do cats purr"
    q = encoder.embed([query])[0]
    for mode in ("dense", "lexical", "hybrid"):
        hits = retriever.search(query, k=4, mode=mode)
        assert hits and hits[0].path == "animals/cats.md"
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        for h in hits:
            expected = float(np.dot(q, encoder.embed([f"{h.heading}\n{h.text}" if h.heading else h.text])[0]))
            assert h.dense_score == pytest.approx(expected, abs=1e-5), mode
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
    dense = retriever.search(query, k=3, mode="dense")
    assert all(h.score == pytest.approx(h.dense_score, abs=1e-5) for h in dense)
    assert all(h.lexical_score is None for h in dense)


def test_hybrid_is_reciprocal_rank_fusion(setup):
    retriever, _ = setup
    query = "red planet rovers and the moon tides"
    dense = [h.chunk_id for h in retriever.search(query, k=50, mode="dense")]
    lexical = [h.chunk_id for h in retriever.search(query, k=50, mode="lexical")]
    hybrid = retriever.search(query, k=3, mode="hybrid")
    for h in hybrid:
        expected = sum(1 / (RRF_K + ranks.index(h.chunk_id) + 1) for ranks in (dense, lexical) if h.chunk_id in ranks)
        assert h.score == pytest.approx(expected)
    assert {h.path for h in hybrid[:2]} == {"space/mars.txt", "space/moon.txt"}


def test_path_filters(setup):
    retriever, _ = setup
    query = "animals that bark or purr"
    assert {h.path for h in retriever.search(query, k=10, path_filter="animals")} <= {"animals/cats.md", "animals/dogs.md"}
    assert [h.path for h in retriever.search(query, k=10, path_filter="*.txt", mode="lexical")] == []
    assert {h.path for h in retriever.search("bread moon", k=10, path_filter=["cooking", "space/moon.txt"])} == \
        {"cooking/bread.txt", "space/moon.txt"}
    assert {h.path for h in retriever.search("bread moon", k=10, path_filter=lambda p: p.startswith("space"))} <= \
        {"space/mars.txt", "space/moon.txt"}
    assert retriever.search("bread", path_filter="nowhere/") == []
    assert path_matcher("a/b")("a/b/c.md") and not path_matcher("a/b")("a/bc.md")


def test_mmr_avoids_near_duplicates(setup):
    retriever, _ = setup
    query = "penguins huddle for warmth in antarctic winter"
    plain = retriever.search(query, k=2, mode="dense")
    assert {h.path for h in plain} == {"dup/a.txt", "dup/b.txt"}
    diverse = retriever.search(query, k=2, mode="dense", mmr=True, mmr_lambda=0.5)
    assert diverse[0].path in {"dup/a.txt", "dup/b.txt"}
    assert diverse[1].path not in {"dup/a.txt", "dup/b.txt"}


def test_edge_cases(setup):
    retriever, encoder = setup
    assert retriever.search("") == [] and retriever.search("   ") == [] and retriever.search("x", k=0) == []
    assert retriever.search("the of and", mode="lexical") == []  # only stopwords
    with pytest.raises(RetrievalError, match="unknown search mode"):
        retriever.search("cats", mode="semantic")
    stats = retriever.stats()
    assert stats["files"] == len(DOCS) and stats["chunks"] == len(DOCS)
    assert stats["encoder"] == encoder.name and stats["dim"] == encoder.dim


def test_term_weights_are_the_index_idf_and_follow_a_small_sync(setup, tmp_path):
    retriever, _ = setup
    weights = retriever.term_weights("The penguins purr on Mars.")
    assert set(weights) == {"penguins", "purr", "mars"}  # stopwords out
    n = len(DOCS)
    assert weights["purr"] == pytest.approx(math.log(1 + (n - 1 + 0.5) / (1 + 0.5)))  # in one chunk of seven
    assert weights["purr"] == pytest.approx(weights["mars"])
    assert weights["purr"] > weights["penguins"] > 0  # penguins: in two
    # A small sync adds a delta segment: its chunks count in the statistics at once.
    for path, text in DOCS.items():
        (tmp_path / "docs" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "docs" / path).write_text(text)
    encoder = HashingEncoder()
    sync_folder(tmp_path / "docs", tmp_path / "index", encoder, progress=False)
    (tmp_path / "docs" / "kitten.txt").write_text("Kittens purr loudly.\n")
    sync_folder(tmp_path / "docs", tmp_path / "index", encoder, progress=False)
    after = Retriever(tmp_path / "index", encoder).term_weights("purr")
    assert after["purr"] == pytest.approx(math.log(1 + (n + 1 - 2 + 0.5) / (2 + 0.5)))


@pytest.mark.real
def test_real_encoder_finds_planted_sentences_by_paraphrase(tmp_path, real_encoder):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "garden.md").write_text("# Garden\n\nTomatoes need six hours of direct sunlight every day.\n")
    (docs / "car.txt").write_text("Change the engine oil of your car every ten thousand kilometres.\n")
    (docs / "music.txt").write_text("The violin has four strings tuned in perfect fifths.\n")
    report = sync_folder(docs, tmp_path / "index", real_encoder, progress=False)
    assert report.total_chunks == 3
    retriever = Retriever(tmp_path / "index", real_encoder)
    for query, path in [("how much sun do tomato plants require", "garden.md"),
                        ("motor lubricant replacement interval", "car.txt"),
                        ("how many strings does a fiddle have", "music.txt")]:
        for mode in ("dense", "hybrid"):
            hits = retriever.search(query, k=3, mode=mode)
            assert hits[0].path == path, (query, mode)
            assert hits[0].dense_score > 0.2 and hits[-1].dense_score < hits[0].dense_score
