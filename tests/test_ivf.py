"""IVF vector indexes: recall on real embeddings, adding after training, and rebuilds that cannot break search.

The real embeddings are `tests/data/squad_ivf_fixture.npz`: all-MiniLM-L6-v2 vectors (float16) of the first
5,000 SQuAD v1.1 training paragraphs and of 500 questions about them, written by
`benchmarks/embed_squad.py --fixture`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval import segments
from retrieval import store as store_module
from retrieval.retriever import Retriever
from retrieval.segments import VectorSegments, build_vector_index, exact_top_ids, nlist_for, recall_at_k
from retrieval.store import IndexStore
from retrieval.sync import sync_folder
from retrieval.testing import HashingEncoder

FIXTURE = Path(__file__).parent / "data" / "squad_ivf_fixture.npz"
DIM = 384
EMPTY = (np.zeros(0, np.int64), np.zeros((0, DIM), np.float32))


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def real():
    data = np.load(FIXTURE)
    passages, questions = _unit(data["passages"]), _unit(data["questions"])  # [5000, 384], [500, 384]
    ids = np.arange(1000, 1000 + len(passages), dtype=np.int64)  # ids unlike row numbers
    return ids, passages, questions


def _recall(vectors: VectorSegments, ids, passages, queries, k=10) -> float:
    truth = exact_top_ids(passages, ids, queries, k)
    found = np.array([[cid for cid, _ in vectors.search(q, k)] for q in queries])
    return recall_at_k(found, truth)


@pytest.mark.parametrize("kind", ["ivf", "ivfsq"])
def test_ivf_recall_at_default_nprobe_on_real_embeddings(real, kind):
    ids, passages, questions = real
    assert len(passages) >= 5000
    index, info = build_vector_index(kind, DIM, ids, passages)
    assert info.nlist == nlist_for(len(ids)) >= 64 and info.kind == kind
    assert index.parallel_mode == 0
    assert 0 < info.nprobe < info.nlist and info.recall_at_10 >= segments.TUNE_TARGET
    vectors = VectorSegments(index, info, *EMPTY, np.zeros(0, np.int64), DIM)
    assert index.parallel_mode == 1  # a single query's lists are searched on all of faiss's threads
    recall = _recall(vectors, ids, passages, questions)
    assert segments.RECALL_TARGET <= recall < 1.0, recall  # good, and not trivially exact
    fewer = VectorSegments(index, info, *EMPTY, np.zeros(0, np.int64), DIM, nprobe=2)
    assert _recall(fewer, ids, passages, questions) < recall  # nprobe is honoured


def test_ivfpq_is_built_and_its_recall_measured(real):
    ids, passages, _ = real
    index, info = build_vector_index("ivfpq", DIM, ids[:3000], passages[:3000], nlist=64)
    assert info.pq_m == 48 and info.recall_at_10 is not None and 0.3 < info.recall_at_10 <= 1.0
    assert index.ntotal == 3000


@pytest.mark.parametrize("kind", ["ivf", "ivfsq"])
def test_adding_after_training_keeps_search_correct(real, kind):
    ids, passages, questions = real
    first = 3000
    trained, info = build_vector_index(kind, DIM, ids[:first], passages[:first], nlist=64)
    # 1) the rest as delta segments next to the trained base: exact over the delta, IVF over the base
    vectors = VectorSegments(trained, info, ids[first:], passages[first:], np.zeros(0, np.int64), DIM)
    assert vectors.ntotal == len(ids)
    assert _recall(vectors, ids, passages, questions) >= segments.RECALL_TARGET
    # 2) folded into the base without re-training (the collection has not doubled)
    grown, grown_info = build_vector_index(kind, DIM, ids, passages, nlist=64, template=trained, template_info=info)
    assert grown_info.trained_for == info.trained_for == first and grown.ntotal == len(ids)
    np.testing.assert_array_equal(grown.quantizer.reconstruct_n(0, 64), trained.quantizer.reconstruct_n(0, 64))
    folded = VectorSegments(grown, grown_info, *EMPTY, np.zeros(0, np.int64), DIM)
    assert _recall(folded, ids, passages, questions) >= segments.RECALL_TARGET
    for row in range(first, len(ids), 250):  # every added vector finds itself first
        assert folded.search(passages[row], 1)[0][0] == ids[row]
    # 3) removed ids never come back, and their places are filled
    dead = ids[::50]
    pruned = VectorSegments(grown, grown_info, *EMPTY, dead, DIM)
    for q in questions[:50]:
        found = [cid for cid, _ in pruned.search(q, 10)]
        assert len(found) == 10 and not set(found) & set(dead.tolist())
    # 4) past RETRAIN_GROWTH times the trained size, a rebuild trains again
    small, small_info = build_vector_index(kind, DIM, ids[:1000], passages[:1000], nlist=16)
    _, again = build_vector_index(kind, DIM, ids[:2500], passages[:2500], nlist=16, template=small,
                                  template_info=small_info)
    assert small_info.trained_for == 1000 and again.trained_for == 2500


def _folder(root: Path, n: int = 80) -> Path:
    folder = root / "docs"
    folder.mkdir()
    for i in range(n):
        (folder / f"doc{i:03d}.txt").write_text(f"Document {i} tells of gadget{i} and widget{i % 9}.")
    return folder


def _sync(folder, index, encoder, **kw):
    return sync_folder(folder, index, encoder, progress=False, **kw)


def test_store_builds_ivf_above_the_auto_threshold_and_reports_it(tmp_path, monkeypatch):
    monkeypatch.setattr(segments, "IVF_AUTO_MIN", 50)
    folder = _folder(tmp_path)
    index = tmp_path / "index"
    encoder = HashingEncoder()
    _sync(folder, index, encoder, ivf_nlist=4)
    stats = IndexStore.open(index).stats()
    assert stats["faiss"] == "auto" and stats["vectors"]["kind"] == "ivfsq" and stats["vectors"]["nlist"] == 4
    assert stats["vectors"]["recall_at_10"] is not None and stats["vectors"]["nprobe"] >= 1
    retriever = Retriever(index, encoder)
    assert retriever.search("gadget17 widget8", k=1, mode="dense")[0].path == "doc017.txt"
    hits = retriever.search("gadget17", k=3, mode="dense", path_filter="doc02*")
    assert hits and all(h.path.startswith("doc02") for h in hits)
    from assistant.commands.index import status_text

    text = status_text(index)
    assert "ivfsq, 80 vectors, 4 lists, nprobe" in text and "8-bit lists" in text and "recall@10" in text
    _sync(folder, index, encoder, ivf_nprobe=4)  # a new nprobe applies without a rebuild
    assert IndexStore.open(index).stats()["vectors"]["nprobe"] == 4


def test_an_auto_ivf_flat_base_from_an_earlier_release_is_kept_on_upgrade(tmp_path, monkeypatch):
    # Before 8-bit lists, "auto" built IVF-Flat from the threshold on; such an index must not be rebuilt by the
    # first sync after an upgrade (a one-file edit stays a small delta write), and keeps answering.
    monkeypatch.setattr(segments, "IVF_AUTO_MIN", 50)
    monkeypatch.setattr(store_module, "COMPACT_BELOW", 0)
    folder = _folder(tmp_path)
    index = tmp_path / "index"
    encoder = HashingEncoder()
    new_kind = segments.resolve_kind
    monkeypatch.setattr(segments, "resolve_kind", lambda kind, n: "ivf" if kind == "auto" and n >= 50 else kind)
    _sync(folder, index, encoder, ivf_nlist=4)
    monkeypatch.setattr(segments, "resolve_kind", new_kind)
    store = IndexStore.open(index)
    assert store.settings.faiss == "auto" and store.stats()["vectors"]["kind"] == "ivf"
    (folder / "doc005.txt").write_text("Document 5 now tells of the saffron gadget.")
    _sync(folder, index, encoder)
    stats = IndexStore.open(index).stats()
    assert stats["vectors"]["kind"] == "ivf" and stats["segments"]["delta_chunks"] == 1  # no rebuild
    assert Retriever(index, encoder).search("saffron gadget", k=1, mode="dense")[0].path == "doc005.txt"


def test_an_auto_ivfsq_base_does_not_flip_to_flat_just_under_the_threshold(tmp_path, monkeypatch):
    monkeypatch.setattr(segments, "IVF_AUTO_MIN", 50)
    monkeypatch.setattr(store_module, "COMPACT_BELOW", 0)
    folder = _folder(tmp_path)  # 80 chunks: an 8-bit IVF base
    index = tmp_path / "index"
    encoder = HashingEncoder()
    _sync(folder, index, encoder, ivf_nlist=4)
    assert IndexStore.open(index).stats()["vectors"]["kind"] == "ivfsq"
    monkeypatch.setattr(segments, "IVF_AUTO_MIN", 100)  # 80 is now under the threshold but above half of it
    (folder / "doc005.txt").write_text("Document 5 now tells of the saffron gadget.")
    _sync(folder, index, encoder)
    assert IndexStore.open(index).stats()["vectors"]["kind"] == "ivfsq"


def test_killed_ivf_rebuild_leaves_the_old_index_serving(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    index = tmp_path / "index"
    encoder = HashingEncoder()
    _sync(folder, index, encoder, faiss_kind="ivf", ivf_nlist=4)
    generation = IndexStore.open(index).generation
    retriever = Retriever(index, encoder)
    assert retriever.search("gadget33", k=1, mode="dense")[0].path == "doc033.txt"
    original = segments.build_vector_index

    def train_then_die(*args, **kw):
        original(*args, **kw)
        raise KeyboardInterrupt  # stands in for kill -9 in the middle of the rebuild

    monkeypatch.setattr(segments, "build_vector_index", train_then_die)
    with pytest.raises(KeyboardInterrupt):
        _sync(folder, index, encoder, ivf_nlist=8)  # a new list count: the vector index is rebuilt
    monkeypatch.undo()
    store = IndexStore.open(index)
    assert store.generation == generation and store.stats()["vectors"]["nlist"] == 4
    assert retriever.search("gadget33", k=1, mode="dense")[0].path == "doc033.txt"
    # the next sync finishes the rebuild (the new nlist was recorded before the kill)
    report = _sync(folder, index, encoder)
    assert report.chunks_embedded == 0
    assert IndexStore.open(index).stats()["vectors"]["nlist"] == 8
    assert retriever.search("gadget33", k=1, mode="dense")[0].path == "doc033.txt"
    assert not [p for p in index.iterdir() if ".tmp-" in p.name]


def test_segmented_ivf_index_applies_deltas_and_removals(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "COMPACT_BELOW", 0)
    folder = _folder(tmp_path)
    index = tmp_path / "index"
    encoder = HashingEncoder()
    _sync(folder, index, encoder, faiss_kind="ivf", ivf_nlist=4)
    (folder / "doc010.txt").unlink()
    (folder / "fresh.txt").write_text("A fresh note on the mauve pangolin.")
    _sync(folder, index, encoder)
    seg = IndexStore.open(index).stats()["segments"]
    assert seg["delta_chunks"] == 1 and seg["dead_chunks"] == 1
    retriever = Retriever(index, encoder)
    assert retriever.search("mauve pangolin", k=1, mode="dense")[0].path == "fresh.txt"
    assert all(h.path != "doc010.txt" for h in retriever.search("gadget10 widget1", k=80, mode="dense"))
