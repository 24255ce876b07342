"""Retriever: modes, fusion, scores, filters, MMR; and the real encoder finding planted sentences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval.errors import RetrievalError
from retrieval.retriever import DENSE_WEIGHT, RRF_K, Retriever, convex_fusion, path_matcher
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


def test_hybrid_rrf_is_reciprocal_rank_fusion(setup):
    retriever, _ = setup
    query = "red planet rovers and the moon tides"
    dense = [h.chunk_id for h in retriever.search(query, k=50, mode="dense")]
    lexical = [h.chunk_id for h in retriever.search(query, k=50, mode="lexical")]
    hybrid = retriever.search(query, k=3, mode="hybrid", fusion="rrf")
    for h in hybrid:
        expected = sum(1 / (RRF_K + ranks.index(h.chunk_id) + 1) for ranks in (dense, lexical) if h.chunk_id in ranks)
        assert h.score == pytest.approx(expected)
    assert {h.path for h in hybrid[:2]} == {"space/mars.txt", "space/moon.txt"}
    with pytest.raises(RetrievalError, match="fusion"):
        retriever.search(query, fusion="borda")


def _z(values):
    values = np.asarray(values, dtype=np.float64)
    return (values - values.mean()) / values.std() if values.std() > 1e-9 else np.zeros_like(values)


@pytest.mark.parametrize("query, candidates", [("red planet rovers and the moon tides", None),
                                               ("the red dog barks at the moon", 2),
                                               ("red moon dog", 2)])  # the last: a dense-only hit matches "red"
def test_hybrid_default_is_a_convex_fusion_of_both_scores_of_every_candidate(setup, query, candidates):
    """Each candidate (in either list's top `candidates`) is scored by its cosine AND its BM25, even when only one
    list proposed it; the two are standardised over the candidates and mixed DENSE_WEIGHT : 1 - DENSE_WEIGHT."""
    retriever, _ = setup
    n = candidates or 50
    every = {h.chunk_id: h for h in retriever.search(query, k=50, mode="dense")}
    bm25 = {h.chunk_id: h.score for h in retriever.search(query, k=50, mode="lexical")}
    pool = list(dict.fromkeys([h.chunk_id for h in retriever.search(query, k=n, mode="dense")] +
                              [h.chunk_id for h in retriever.search(query, k=n, mode="lexical")]))
    if candidates:  # both lists contribute, some chunks are left out
        assert len(pool) > candidates and any(cid not in pool for cid in every)
    fused = DENSE_WEIGHT * _z([every[c].dense_score for c in pool]) + \
        (1 - DENSE_WEIGHT) * _z([bm25.get(c, 0.0) for c in pool])
    expected = sorted(zip(pool, fused), key=lambda item: (-item[1], item[0]))
    hybrid = retriever.search(query, k=len(pool), mode="hybrid", candidates=candidates)
    assert [h.chunk_id for h in hybrid] == [c for c, _ in expected]
    assert [h.score for h in hybrid] == pytest.approx([v for _, v in expected])
    if not candidates:
        assert {h.path for h in hybrid[:2]} == {"space/mars.txt", "space/moon.txt"}
    for h in hybrid:  # what the hit reports is what was fused
        assert h.lexical_score == pytest.approx(bm25.get(h.chunk_id, 0.0))


def test_convex_fusion_keeps_one_list_order_when_the_other_does_not_vary():
    ids = [7, 3, 5]
    assert [c for c, _ in convex_fusion(ids, [0.2, 0.9, 0.5], [0.0, 0.0, 0.0])] == [3, 5, 7]  # no term matched
    assert [c for c, _ in convex_fusion(ids, [0.4, 0.4, 0.4], [1.0, 3.0, 2.0])] == [3, 5, 7]
    assert [c for c, _ in convex_fusion(ids, [0.2, 0.9, 0.5], [9.0, 0.0, 0.0], dense_weight=1.0)] == [3, 5, 7]
    # a passage far ahead on BM25 overtakes a slightly better cosine; a slight BM25 edge does not
    assert convex_fusion([1, 2, 3], [0.50, 0.49, 0.1], [0.0, 20.0, 0.0], dense_weight=0.5)[0][0] == 2
    assert convex_fusion([1, 2, 3], [0.9, 0.5, 0.1], [1.0, 1.2, 0.0])[0][0] == 1
    assert convex_fusion([4], [0.3], [2.0]) == [(4, 0.0)]
    assert convex_fusion([], [], []) == []


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


# ---------------------------------------------------------------------- a page's whole text
PAGE_ONE = "The harbour opens at six.\nBoats leave for the island."
PAGE_TWO = ("The lighthouse keeper counts seventeen gulls at dawn.\nShe writes every count in a blue ledger.\n"
            "The ledger holds forty years of gulls.\nOn stormy days she counts none at all.\n\n"
            "A second paragraph closes page two.")


def _paged_index(root, chunker=None):
    """A folder with a 2-page PDF and a Markdown file, indexed; (retriever, the PDF's bytes)."""
    from conftest_retrieval import _pdf

    docs = root / "docs"
    docs.mkdir()
    _pdf(docs / "keeper.pdf", [PAGE_ONE, PAGE_TWO])
    (docs / "notes.md").write_text("# Notes\n\nThe keeper's notes have no pages at all.\n")
    encoder = HashingEncoder()
    sync_folder(docs, root / "index", encoder, progress=False, chunker=chunker)
    return Retriever(root / "index", encoder), (docs / "keeper.pdf").read_bytes()


def _loader_page(raw: bytes, page: int) -> str:
    """What the PDF loader reads as page `page` (its text between the page's bounds, trimmed)."""
    from retrieval.loaders import parse_bytes

    text, pages, _, _ = parse_bytes("pdf", raw)
    start, end = next((s, e) for s, e, n in pages if n == page)
    return text[start:end].strip()


def test_page_text_is_the_whole_page_and_places_each_chunk(tmp_path):
    retriever, raw = _paged_index(tmp_path)
    text, spans = retriever.page_text("keeper.pdf", 2)
    assert text == _loader_page(raw, 2) and "seventeen gulls" in text and "harbour" not in text
    chunks = {h.chunk_id: h for h in retriever.document_chunks("keeper.pdf")}
    assert spans and all(chunks[cid].page == 2 and text[a:b] == chunks[cid].text for cid, a, b in spans)
    assert retriever.page_text("keeper.pdf", 1)[0] == _loader_page(raw, 1)
    assert retriever.page_text("keeper.pdf", 3) == ("", [])       # no such page
    assert retriever.page_text("notes.md", 1) == ("", [])         # Markdown has no pages
    assert retriever.page_text("missing.pdf", 1) == ("", [])


def test_page_text_of_a_page_cut_into_overlapping_chunks_gives_the_overlap_once(tmp_path):
    from retrieval.chunking import ChunkerSettings

    retriever, raw = _paged_index(tmp_path, ChunkerSettings(target_tokens=24, overlap_tokens=12))
    chunks = [h for h in retriever.document_chunks("keeper.pdf") if h.page == 2]
    assert len(chunks) >= 3 and any(b.start < a.end for a, b in zip(chunks, chunks[1:]))  # they overlap
    text, spans = retriever.page_text("keeper.pdf", 2)
    assert text == _loader_page(raw, 2)
    by_id = {h.chunk_id: h for h in chunks}
    assert [cid for cid, _, _ in spans] == [h.chunk_id for h in chunks]          # reading order
    assert all(text[a:b] == by_id[cid].text for cid, a, b in spans)


def test_joining_chunk_slices_fills_gaps_and_drops_table_headers():
    from retrieval.retriever import join_chunk_slices

    doc = "Alpha beta gamma. Delta epsilon.\n\nZeta eta theta."
    pieces = [(7, doc[0:17], 0, 17), (8, doc[11:32], 11, 32), (9, doc[34:], 34, len(doc)), (10, doc[6:10], 6, 10)]
    text, spans = join_chunk_slices(reversed(pieces))   # any order in, document order out
    assert text == doc
    assert spans == [(7, 0, 17), (10, 6, 10), (8, 11, 32), (9, 34, len(doc))]
    text, spans = join_chunk_slices([(1, "one two", 0, 7), (2, "three", 8, 13)])   # a one-character gap
    assert text == "one two three" and spans[1] == (2, 8, 13)
    header = "| a | b |\n|---|---|\n"
    text, spans = join_chunk_slices([(1, "| a | b |\n|---|---|\n| 1 | 2 |", 0, 29), (2, header + "| 3 | 4 |", 30, 39)])
    assert text == "| a | b |\n|---|---|\n| 1 | 2 | | 3 | 4 |" and spans[1] == (2, 30, 39)


def test_the_assistant_searches_with_its_hybrid_fusion_setting(setup, tmp_path):
    from assistant.pipeline import Assistant
    from assistant.settings import FUSIONS, Settings, SettingsError
    from retrieval.retriever import FUSIONS as RETRIEVER_FUSIONS
    from tests.assistant_fakes import FakeGenerator

    assert FUSIONS == RETRIEVER_FUSIONS  # the settings' copy stays the retriever's
    retriever, encoder = setup
    docs = tmp_path / "docs"
    for path, text in DOCS.items():
        (docs / path).parent.mkdir(parents=True, exist_ok=True)
        (docs / path).write_text(text)
    query = "red planet rovers and the moon tides"
    common = dict(encoder=encoder, generator=FakeGenerator(reply="Mars [1]."), use_reader=False, k=4)
    for fusion in FUSIONS:
        assistant = Assistant.from_folder(docs, tmp_path / "index", hybrid_fusion=fusion, **common)
        hits, _ = assistant.retrieve(query)
        expected = retriever.search(query, k=4, fusion=fusion)
        assert [(h.path, round(h.score, 6)) for h in hits] == [(h.path, round(h.score, 6)) for h in expected]
    assert Settings().hybrid_fusion == "convex"
    with pytest.raises(SettingsError, match="hybrid_fusion"):
        Settings(hybrid_fusion="borda").validate()
