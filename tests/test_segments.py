"""Segmented index (format 2): small syncs write deltas, compaction folds them in, format 1 is migrated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval import store as store_module
from retrieval.retriever import Retriever
from retrieval.store import FORMAT_VERSION, IndexStore, build_bm25
from retrieval.sync import sync_folder
from retrieval.testing import HashingEncoder

DATA = Path(__file__).parent / "data"


def _sync(folder, index, encoder, **kw):
    return sync_folder(folder, index, encoder, progress=False, **kw)


def _make_folder(root: Path, n: int = 60) -> Path:
    folder = root / "docs"
    folder.mkdir()
    for i in range(n):
        (folder / f"doc{i:03d}.txt").write_text(
            f"Document {i} is about gadget{i} and widget{i % 7}. " + " ".join(f"word{(i * 13 + j) % 97}"
                                                                             for j in range(30)))
    return folder


@pytest.fixture()
def segmented(monkeypatch):
    """Make small indexes use deltas (normally they are rewritten whole: it is cheap)."""
    monkeypatch.setattr(store_module, "COMPACT_BELOW", 0)
    monkeypatch.setattr(store_module, "DELTA_MIN", 10_000)


def _part_files(index: Path) -> set[str]:
    return {p.name for p in index.iterdir() if p.name.startswith(("vectors-", "bm25-", "delta-"))}


def test_format_1_index_is_migrated_in_place_without_embedding(tmp_path):
    source = DATA / "v1_index"
    shutil.copytree(source, tmp_path / "v1")
    folder, index = tmp_path / "v1" / "docs", tmp_path / "v1" / "index"
    assert json.loads((index / "settings.json").read_text())["format_version"] == 1
    encoder = HashingEncoder()
    store = IndexStore.open(index)
    assert store.settings.format_version == FORMAT_VERSION
    assert json.loads((index / "settings.json").read_text())["format_version"] == FORMAT_VERSION
    assert store.stats()["chunks"] == 3 and store.manifest()["base"]["vectors"] == "vectors-1.faiss"
    retriever = Retriever(store, encoder)
    for mode in ("dense", "lexical", "hybrid"):
        assert retriever.search("turquoise mortgages quokkas", k=1, mode=mode)[0].path == "guide.md"
    # a sync of the same folder embeds nothing (git checkouts change mtimes, not bytes)
    calls = encoder.texts_embedded  # the searches' queries
    report = _sync(folder, index, encoder)
    assert encoder.texts_embedded == calls and report.chunks_embedded == 0 and not report.changed
    # an edit embeds only the edited file, and the first commit after the migration writes a full base
    (folder / "notes.txt").write_text("The violet heron counts pebbles at dawn.\n")
    report = _sync(folder, index, encoder)
    assert report.updated == ["notes.txt"] and report.chunks_embedded == encoder.texts_embedded - calls == 1
    assert retriever.search("violet heron pebbles", k=1)[0].path == "notes.txt"
    lexical = IndexStore.open(index).manifest()["base"]["lexical"]
    assert lexical != "bm25-1" and (index / lexical / "stats.json").exists()
    assert IndexStore.open(index).stats()["format"] == FORMAT_VERSION


def test_small_edit_writes_a_delta_and_search_sees_it(tmp_path, segmented):
    folder = _make_folder(tmp_path)
    index = tmp_path / "index"
    encoder = HashingEncoder()
    _sync(folder, index, encoder)
    base_files = _part_files(index)
    base_vectors = next(index.glob("vectors-*.faiss"))
    base_mtime = base_vectors.stat().st_mtime_ns
    retriever = Retriever(index, encoder)
    assert retriever.search("gadget5", k=1, mode="lexical")[0].path == "doc005.txt"

    (folder / "doc005.txt").write_text("A lilac anteater plays chess with gadget5.")
    (folder / "doc009.txt").unlink()
    (folder / "new.txt").write_text("The brand new saffron lemur.")
    report = _sync(folder, index, encoder)
    assert report.updated == ["doc005.txt"] and report.removed == ["doc009.txt"] and report.added == ["new.txt"]
    files = _part_files(index)
    deltas = [f for f in files if f.startswith("delta-")]
    assert len(deltas) == 1 and base_files <= files  # base untouched, one delta beside it
    assert base_vectors.stat().st_mtime_ns == base_mtime
    stats = IndexStore.open(index).stats()["segments"]
    assert stats == {"base_chunks": 60, "delta_files": 1, "delta_chunks": 2, "dead_chunks": 2}
    for mode in ("dense", "lexical", "hybrid"):
        assert retriever.search("lilac anteater chess", k=1, mode=mode)[0].path == "doc005.txt", mode
        assert retriever.search("saffron lemur", k=1, mode=mode)[0].path == "new.txt", mode
        assert all(h.path != "doc009.txt" for h in retriever.search("gadget9 widget2", k=60, mode=mode)), mode
    assert retriever.stats()["chunks"] == 60
    hits = retriever.search("gadget12", k=3, mode="dense", path_filter="doc01*")
    assert hits and all(h.path.startswith("doc01") for h in hits)


def test_segmented_search_equals_a_compacted_index(tmp_path, segmented, monkeypatch):
    monkeypatch.setattr(store_module, "DEAD_FRACTION", 1.0)
    folder = _make_folder(tmp_path)
    index = tmp_path / "index"
    encoder = HashingEncoder()
    _sync(folder, index, encoder)
    for i in range(0, 60, 6):  # edits over several syncs: several delta files
        (folder / f"doc{i:03d}.txt").write_text(f"Edited document {i} mentions gadget{i} twice: gadget{i}.")
        _sync(folder, index, encoder)
    assert IndexStore.open(index).stats()["segments"]["delta_files"] == 10
    queries = ["gadget12 edited", "word5 word18", "widget3 document", "twice mentions", "gadget30"]
    retriever = Retriever(index, encoder)
    dense = {q: [(h.chunk_id, round(h.score, 5)) for h in retriever.search(q, k=8, mode="dense")] for q in queries}
    # lexical scores differ a little: the replaced chunks still count in the BM25 statistics until compaction
    distinct = ["gadget12 edited", "gadget30", "gadget13 widget6"]
    lexical = {q: retriever.search(q, k=1, mode="lexical")[0].chunk_id for q in distinct}
    store = IndexStore.open(index)
    with store.writer() as writer:
        writer.commit(force_rebuild=True)
    assert store.stats()["segments"] == {"base_chunks": 60, "delta_files": 0, "delta_chunks": 0, "dead_chunks": 0}
    compacted = Retriever(index, encoder)
    for q in queries:
        assert [(h.chunk_id, round(h.score, 5)) for h in compacted.search(q, k=8, mode="dense")] == dense[q], q
    for q in distinct:
        assert compacted.search(q, k=1, mode="lexical")[0].chunk_id == lexical[q], q


def test_lexical_rescoring_matches_one_bm25_index(tmp_path, segmented):
    folder = _make_folder(tmp_path, n=30)
    index = tmp_path / "index"
    encoder = HashingEncoder()
    _sync(folder, index, encoder)
    for i in range(3):  # additions only: no dead chunks, so the statistics are exact
        (folder / f"added{i}.txt").write_text(f"Added file {i} about widget{i} and word{i * 11} word{i}.")
        _sync(folder, index, encoder)
    store = IndexStore.open(index)
    ids, texts = store.live_texts()
    one = build_bm25(texts)
    lexical = store.parts().lexical
    assert lexical.segmented
    for query in (["widget1"], ["word11", "widget2"], ["added", "file", "word0"], ["gadget4"]):
        expected = np.asarray(one.get_scores(query))
        found, score_of = lexical.search(query, 10, None)
        by_id = dict(zip(ids, expected))
        for cid, score in found:
            assert score == pytest.approx(by_id[cid], rel=1e-5, abs=1e-6)
        best = sorted(by_id.items(), key=lambda kv: (-kv[1], kv[0]))[:len(found)]
        assert [cid for cid, _ in found] == [cid for cid, s in best if s > 0]


def test_deltas_fold_into_the_base_when_they_grow(tmp_path, segmented, monkeypatch):
    monkeypatch.setattr(store_module, "DELTA_MIN", 5)
    monkeypatch.setattr(store_module, "MAX_DELTA_FILES", 3)
    folder = _make_folder(tmp_path, n=20)
    index = tmp_path / "index"
    encoder = HashingEncoder()
    _sync(folder, index, encoder)
    seen = []
    for i in range(8):
        (folder / f"extra{i}.txt").write_text(f"Extra file number {i} about sprocket{i}.")
        _sync(folder, index, encoder)
        seg = IndexStore.open(index).stats()["segments"]
        seen.append((seg["delta_files"], seg["delta_chunks"]))
        assert seg["delta_files"] <= 3 and seg["delta_chunks"] <= 5
        assert len([f for f in _part_files(index) if f.startswith("vectors-")]) <= 2  # old bases are deleted
    assert any(n == 0 for _, n in seen[1:])  # a compaction happened
    retriever = Retriever(index, encoder)
    for i in range(8):
        assert retriever.search(f"sprocket{i}", k=1)[0].path == f"extra{i}.txt"


def test_lost_delta_file_is_rebuilt_from_sqlite(tmp_path, segmented):
    folder = _make_folder(tmp_path, n=10)
    index = tmp_path / "index"
    encoder = HashingEncoder()
    _sync(folder, index, encoder)
    (folder / "late.txt").write_text("A late arrival: the cinnamon ibis.")
    _sync(folder, index, encoder)
    for delta in index.glob("delta-*"):
        delta.unlink()
    for mode in ("dense", "lexical"):
        assert Retriever(index, encoder).search("cinnamon ibis", k=1, mode=mode)[0].path == "late.txt"
