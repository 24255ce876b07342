"""Incremental sync and the on-disk store: only changed files are embedded, crashes lose nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest_retrieval import BROKEN, MAX_BYTES, PLANTED, make_mixed_folder
from retrieval.errors import IndexLockedError, IndexMismatchError, RetrievalError
from retrieval.retriever import Retriever
from retrieval.store import IndexStore, WriterLock, default_index_path
from retrieval.sync import add_files, sync_folder
from retrieval.testing import HashingEncoder


def _sync(folder, index, encoder, **kw):
    return sync_folder(folder, index, encoder, progress=False, max_file_bytes=MAX_BYTES, **kw)


def _chunk_ids_by_path(index) -> dict[str, set[int]]:
    store = IndexStore.open(index)
    try:
        out = {}
        for path, row in store.documents().items():
            ids = store._conn.execute("SELECT id FROM chunks WHERE content_id=?", (row.content_id,)).fetchall()
            out[path] = {r[0] for r in ids}
        return out
    finally:
        store.close()


@pytest.fixture()
def indexed(tmp_path):
    folder = make_mixed_folder(tmp_path)
    encoder = HashingEncoder()
    index = tmp_path / "index"
    report = _sync(folder, index, encoder)
    return folder, index, encoder, report


def test_first_sync_summary_and_search_finds_every_planted_sentence(indexed):
    folder, index, encoder, report = indexed
    assert sorted(report.added) == sorted(PLANTED)
    assert dict(report.skipped).keys() == BROKEN.keys()
    for path, expected in BROKEN.items():
        assert expected in dict(report.skipped)[path]
    assert report.total_files == len(PLANTED) and report.chunks_embedded == report.total_chunks > 0
    text = report.summary()
    assert "11 added" in text and "corrupt.pdf: corrupt PDF" in text
    retriever = Retriever(index, encoder)
    for mode in ("lexical", "dense", "hybrid"):
        for path, (sentence, _) in PLANTED.items():
            hits = retriever.search(sentence, k=3, mode=mode)
            assert hits and hits[0].path == path, (mode, path, [h.path for h in hits])
            assert sentence.split()[1] in hits[0].text


def test_second_run_with_no_change_embeds_nothing(indexed):
    folder, index, encoder, _ = indexed
    before = encoder.texts_embedded
    generation = IndexStore.open(index).generation
    report = _sync(folder, index, encoder)
    assert encoder.texts_embedded == before and report.chunks_embedded == 0
    assert sorted(report.unchanged) == sorted(PLANTED) and not report.changed
    assert IndexStore.open(index).generation == generation  # nothing rewritten
    # touching a file (new mtime, same bytes) costs a hash, not an embedding
    os.utime(folder / "notes.txt", (time.time() + 10, time.time() + 10))
    report = _sync(folder, index, encoder)
    assert encoder.texts_embedded == before and "notes.txt" in report.unchanged


def test_edit_one_file_changes_only_its_chunks(indexed):
    folder, index, encoder, _ = indexed
    before = _chunk_ids_by_path(index)
    (folder / "notes.txt").write_text("Completely new notes about a purple narwhal choir.\n")
    calls = encoder.texts_embedded
    report = _sync(folder, index, encoder)
    after = _chunk_ids_by_path(index)
    assert report.updated == ["notes.txt"] and not report.added and not report.removed
    assert report.chunks_embedded == encoder.texts_embedded - calls == len(after["notes.txt"])
    for path in PLANTED:
        if path != "notes.txt":
            assert after[path] == before[path], path
    assert not after["notes.txt"] & before["notes.txt"]
    hits = Retriever(index, encoder).search("purple narwhal choir", k=1)
    assert hits[0].path == "notes.txt"
    assert not Retriever(index, encoder).search("amber walrus lanterns", k=5, mode="lexical")


def test_delete_removes_from_search(indexed):
    folder, index, encoder, _ = indexed
    retriever = Retriever(index, encoder)  # opened before the change: must reload by itself
    (folder / "guide.md").unlink()
    report = _sync(folder, index, encoder)
    assert report.removed == ["guide.md"] and report.chunks_embedded == 0
    sentence = PLANTED["guide.md"][0]
    for mode in ("lexical", "dense", "hybrid"):
        assert all(h.path != "guide.md" for h in retriever.search(sentence, k=20, mode=mode))
    assert retriever.stats()["files"] == len(PLANTED) - 1


def test_rename_and_duplicate_reuse_vectors(indexed):
    folder, index, encoder, _ = indexed
    before = _chunk_ids_by_path(index)
    calls = encoder.texts_embedded
    (folder / "src" / "tool.py").rename(folder / "src" / "renamed_tool.py")
    shutil.copy(folder / "manual.rst", folder / "manual_copy.rst")
    report = _sync(folder, index, encoder)
    assert encoder.texts_embedded == calls and report.chunks_embedded == 0
    assert report.renamed == [("src/renamed_tool.py", "src/tool.py")]
    assert report.duplicates == [("manual_copy.rst", "manual.rst")]
    assert not report.removed and not report.added
    after = _chunk_ids_by_path(index)
    assert after["src/renamed_tool.py"] == before["src/tool.py"]
    hits = Retriever(index, encoder).search(PLANTED["src/tool.py"][0], k=1)
    assert hits[0].path == "src/renamed_tool.py"
    hits = Retriever(index, encoder).search(PLANTED["manual.rst"][0], k=1)
    assert {hits[0].path, *hits[0].also_in} == {"manual.rst", "manual_copy.rst"}


def test_file_that_becomes_unreadable_leaves_the_index(indexed):
    folder, index, encoder, _ = indexed
    (folder / "legacy.htm").write_bytes(b"")
    report = _sync(folder, index, encoder)
    assert report.removed == ["legacy.htm"] and ("legacy.htm", "empty file") in report.skipped


def test_lock_keeps_writers_apart_and_dead_lock_is_taken_over(indexed):
    folder, index, encoder, _ = indexed
    with WriterLock(index):
        # flock is per open file description, so this is a real second writer even in one process
        with pytest.raises(IndexLockedError, match="another process"):
            _sync(folder, index, encoder)
    (index / "lock").write_text("999999\n")  # left behind by a dead process
    assert _sync(folder, index, encoder).chunks_embedded == 0


def test_other_encoder_or_chunker_needs_a_rebuild(indexed):
    folder, index, encoder, _ = indexed
    other = HashingEncoder(dim=32)
    with pytest.raises(IndexMismatchError, match="--rebuild"):
        _sync(folder, index, other)
    with pytest.raises(IndexMismatchError, match="--rebuild"):
        Retriever(index, other)
    report = _sync(folder, index, other, rebuild=True)
    assert sorted(report.added) == sorted(PLANTED)
    assert IndexStore.open(index).settings.dim == 32
    assert Retriever(index, other).search(PLANTED["notes.txt"][0], k=1)[0].path == "notes.txt"
    assert not (index.parent / "index.rebuild").exists() and not (index.parent / "index.old").exists()


def test_uploads_are_indexed_kept_by_folder_sync_and_rebuild(indexed, tmp_path):
    folder, index, encoder, _ = indexed
    upload = tmp_path / "upload.md"
    upload.write_text("# Upload\n\nThe magenta yak sells holographic umbrellas.\n")
    retriever = Retriever(index, encoder)
    progress = []
    report = add_files([upload, tmp_path / "nope.exe"], index, encoder, on_progress=lambda d, t: progress.append((d, t)))
    assert report.added == ["@uploads/upload.md"] and report.skipped[0][0] == "@uploads/nope.exe"
    assert progress[-1][0] == progress[-1][1] > 0
    assert retriever.search("magenta yak umbrellas", k=1)[0].path == "@uploads/upload.md"
    assert _sync(folder, index, encoder).removed == []
    _sync(folder, index, HashingEncoder(dim=48), rebuild=True)
    hits = Retriever(index, HashingEncoder(dim=48)).search("magenta yak umbrellas", k=1, path_filter="@uploads")
    assert hits[0].path == "@uploads/upload.md"


def test_hnsw_option_and_switching_back(indexed):
    folder, index, encoder, _ = indexed
    calls = encoder.texts_embedded
    _sync(folder, index, encoder, faiss_kind="hnsw")
    assert encoder.texts_embedded == calls  # vectors reused
    assert IndexStore.open(index).settings.faiss == "hnsw"
    retriever = Retriever(index, encoder)
    assert retriever.search(PLANTED["memo.docx"][0], k=1, mode="dense")[0].path == "memo.docx"
    assert retriever.search(PLANTED["memo.docx"][0], k=1, mode="dense", path_filter="*.docx")[0].path == "memo.docx"
    _sync(folder, index, encoder, faiss_kind="flat")
    assert retriever.search(PLANTED["memo.docx"][0], k=1, mode="dense")[0].path == "memo.docx"


def test_empty_folder_and_damaged_parts(tmp_path):
    (tmp_path / "empty").mkdir()
    encoder = HashingEncoder()
    report = _sync(tmp_path / "empty", tmp_path / "idx", encoder)
    assert report.total_chunks == 0
    assert Retriever(tmp_path / "idx", encoder).search("anything") == []
    # A lost FAISS file or BM25 folder is rebuilt from SQLite, the source of truth.
    (tmp_path / "empty" / "a.txt").write_text("The tangerine gecko plays the oboe.")
    _sync(tmp_path / "empty", tmp_path / "idx", encoder)
    for part in (tmp_path / "idx").glob("vectors-*.faiss"):
        part.unlink()
    for part in (tmp_path / "idx").glob("bm25-*"):
        shutil.rmtree(part)
    for mode in ("dense", "lexical"):
        assert Retriever(tmp_path / "idx", encoder).search("tangerine gecko", k=1, mode=mode)[0].path == "a.txt"
    with pytest.raises(RetrievalError, match="no index"):
        Retriever(tmp_path / "nothing", encoder)
    (tmp_path / "notindex").mkdir()
    (tmp_path / "notindex" / "mine.txt").write_text("x")
    with pytest.raises(RetrievalError, match="not an index"):
        _sync(tmp_path / "empty", tmp_path / "notindex", encoder)


def test_default_index_path_is_stable_and_under_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ASSISTANT_CACHE", str(tmp_path / "cache"))
    a = default_index_path(tmp_path / "My Docs")
    assert a == default_index_path(str(tmp_path / "My Docs") + "/")
    assert a.parent == tmp_path / "cache" / "indexes" and a.name.startswith("My_Docs-")
    assert a != default_index_path(tmp_path / "other" / "My Docs")


_KILLED_RUN = textwrap.dedent("""
    import sys, time
    import retrieval.store, retrieval.sync
    from retrieval.sync import sync_folder
    from retrieval.testing import HashingEncoder
    retrieval.store.FLUSH_SECONDS = 0.0   # make staged vectors durable at once
    retrieval.sync.EMBED_GROUP = 4

    class Slow(HashingEncoder):
        def embed(self, texts, **kw):
            time.sleep(0.01)
            return super().embed(texts, **kw)

    def tell(done, total):
        print(f"{done} {total}", flush=True)
        if done >= 40:
            time.sleep(60)  # mid-run, with work staged: wait here to be killed

    sync_folder(sys.argv[1], sys.argv[2], Slow(), progress=False, on_progress=tell)
    print("finished", flush=True)
""")


def test_killed_run_leaves_previous_index_usable_and_next_run_finishes(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "first.txt").write_text("The original index knows the silver heron.")
    index = tmp_path / "index"
    encoder = HashingEncoder()
    _sync(folder, index, encoder)
    for i in range(200):
        (folder / f"file{i:03d}.txt").write_text(f"Document {i} describes gadget{i} and widget{i}.")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(folder), str(index)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        while True:
            line = proc.stdout.readline()
            assert line and line.strip() != "finished", "the run ended before it could be killed"
            done, total = map(int, line.split())
            if done >= 40:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert total == 200 and proc.returncode == -signal.SIGKILL
    # The previous index still opens and searches, and shows none of the unfinished run.
    retriever = Retriever(index, encoder)
    assert retriever.search("silver heron", k=1)[0].path == "first.txt"
    assert retriever.stats()["files"] == 1
    # The next run completes, reusing what the killed run had embedded.
    report = _sync(folder, index, encoder)
    assert len(report.added) == 200 and report.total_files == 201
    assert 0 < report.chunks_embedded <= 200 - 40
    assert retriever.search("gadget150 widget150", k=1)[0].path == "file150.txt"
    leftovers = [p.name for p in index.iterdir() if ".tmp-" in p.name]
    assert not leftovers
    settings = json.loads((index / "settings.json").read_text())
    assert settings["encoder"] == encoder.name


def test_crash_between_new_files_and_commit_keeps_the_old_generation(indexed, monkeypatch):
    """Killed after the next generation's FAISS/BM25 files are written but before SQLite switched to them."""
    from retrieval import store as store_module

    folder, index, encoder, _ = indexed
    (folder / "extra.txt").write_text("A brand new pistachio submarine.")
    original = store_module.IndexWriter._write_parts

    def write_then_die(self, *args):
        original(self, *args)
        raise KeyboardInterrupt  # stands in for kill -9 at the worst moment

    monkeypatch.setattr(store_module.IndexWriter, "_write_parts", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        _sync(folder, index, encoder)
    monkeypatch.undo()
    old = IndexStore.open(index)
    assert (index / f"vectors-{old.generation + 1}.faiss").exists()  # the stray next generation
    retriever = Retriever(old, encoder)
    assert retriever.stats()["files"] == len(PLANTED)
    assert all(h.path != "extra.txt" for h in retriever.search("pistachio submarine", k=3))
    calls = encoder.texts_embedded
    report = _sync(folder, index, encoder)
    assert report.added == ["extra.txt"] and encoder.texts_embedded == calls  # staged vectors reused
    assert retriever.search("pistachio submarine", k=1)[0].path == "extra.txt"


def _index_contents(index) -> dict[str, list[str]]:
    store = IndexStore.open(index)
    try:
        out = {}
        for path, row in store.documents().items():
            rows = store._conn.execute("SELECT text FROM chunks WHERE content_id=? ORDER BY id",
                                       (row.content_id,)).fetchall()
            out[path] = [r[0] for r in rows]
        return out
    finally:
        store.close()


def test_read_ahead_builds_the_same_index_as_reading_first(tmp_path, monkeypatch):
    """Files parsed by the read-ahead thread while the encoder embeds give the very index (and report) that
    reading every file first gave; progress reaches done == total at the end and only there."""
    import retrieval.sync

    folder = make_mixed_folder(tmp_path)
    for i in range(30):  # enough files for several embedding groups
        (folder / f"note{i:02d}.txt").write_text(f"Note {i} is about the quokka number {i}. " * (1 + i % 5))
    shutil.copy(folder / "note03.txt", folder / "note03_copy.txt")
    monkeypatch.setattr(retrieval.sync, "EMBED_GROUP", 8)
    reports, seen = {}, {}
    for ahead in (0, 3):
        monkeypatch.setattr(retrieval.sync, "READ_AHEAD", ahead)
        seen[ahead] = []
        reports[ahead] = _sync(folder, tmp_path / f"index{ahead}", HashingEncoder(),
                               on_progress=lambda d, t, a=ahead: seen[a].append((d, t)))
    summary = [(r.added, r.duplicates, r.skipped, r.chunks_embedded, r.total_chunks) for r in reports.values()]
    assert summary[0] == summary[1] and reports[3].duplicates
    assert _index_contents(tmp_path / "index0") == _index_contents(tmp_path / "index3")
    for calls in seen.values():
        assert all(done < total for done, total in calls[1:-1])  # "all done" is only ever said at the end
        assert calls[-1][0] == calls[-1][1] >= reports[3].chunks_embedded  # (a duplicate's chunks count)
    assert seen[0][-1] == seen[3][-1]


def test_read_ahead_thread_stops_when_embedding_fails(tmp_path, monkeypatch):
    """An encoder error mid-run reaches the caller, leaves no thread loading the rest of the folder, and the
    index stays as it was."""
    import threading

    import retrieval.sync

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "first.txt").write_text("The original index knows the silver heron.")
    index = tmp_path / "index"
    _sync(folder, index, HashingEncoder())
    for i in range(60):
        (folder / f"file{i:03d}.txt").write_text(f"Document {i} describes gadget{i}.")
    monkeypatch.setattr(retrieval.sync, "EMBED_GROUP", 4)

    class Failing(HashingEncoder):
        def embed(self, texts, **kw):
            raise RuntimeError("the encoder ran out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        _sync(folder, index, Failing())
    deadline = time.monotonic() + 10
    while any(t.name == "assistant-read-ahead" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "assistant-read-ahead" for t in threading.enumerate())
    assert Retriever(index, HashingEncoder()).stats()["files"] == 1


def test_read_ahead_thread_dying_of_a_base_exception_is_an_error_not_a_hang():
    """A BaseException that escapes the reading thread (it catches only Exception) ends the consumer's wait with
    a clear error instead of blocking forever on the next file."""
    import threading

    from retrieval.sync import _read_ahead

    class Fatal(BaseException):
        pass

    def prepare(entry):
        if entry == "second":
            raise Fatal("gone")
        return entry

    seen = []
    hook, threading.excepthook = threading.excepthook, lambda args: None  # the thread's traceback is expected
    try:
        with pytest.raises(RuntimeError, match="stopped early"):
            for item, _ in _read_ahead(["first", "second", "third"], prepare, threading.Event(), ahead=2):
                seen.append(item)
    finally:
        threading.excepthook = hook
    assert seen == ["first"]


def test_touched_files_are_not_chunked_again(indexed, monkeypatch):
    """A file whose mtime changed but whose bytes did not is read (to learn that) but not chunked or embedded:
    the read-ahead thread knows the stored contents from a snapshot."""
    import retrieval.sync

    folder, index, encoder, _ = indexed
    touched = sorted(p for p in folder.rglob("*.md"))[:3]
    for path in touched:
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    chunked = []
    real = retrieval.sync.chunk_document
    monkeypatch.setattr(retrieval.sync, "chunk_document",
                        lambda doc, *a, **k: chunked.append(doc) or real(doc, *a, **k))
    report = _sync(folder, index, encoder)
    assert report.chunks_embedded == 0 and chunked == []
    assert {str(p.relative_to(folder)) for p in touched} <= set(report.unchanged)


def test_each_chunk_is_tokenized_once_and_embedded_as_from_its_text(tmp_path, monkeypatch):
    """With the project's encoder the indexer embeds the token ids the chunker counted: no chunk's embedding
    text goes through the tokenizer twice, and every stored vector equals `embed` of that text."""
    from collections import Counter

    import numpy as np
    import torch

    from model.bert import BertModel
    from model.config import EncoderConfig
    from model.encoder import Encoder
    from model.sources import resolve_encoder
    from model.tokenizer import Tokenizer
    from retrieval.chunking import embedding_text

    tokenizer = Tokenizer.from_file(resolve_encoder(None) / "tokenizer.json")
    torch.manual_seed(0)
    encoder = Encoder(BertModel(EncoderConfig.tiny(vocab_size=tokenizer.vocab_size)).eval(), tokenizer,
                      name="tiny-encoder", embed_dtype="float32")
    folder = make_mixed_folder(tmp_path)
    tokenized: Counter = Counter()
    real = encoder.token_ids
    monkeypatch.setattr(encoder, "token_ids", lambda texts: tokenized.update(texts) or real(texts))
    report = _sync(folder, tmp_path / "index", encoder)
    assert report.chunks_embedded > 10
    store = IndexStore.open(tmp_path / "index")
    try:
        rows = store._conn.execute("SELECT text, heading, vector FROM chunks").fetchall()
    finally:
        store.close()
    texts = [embedding_text(heading, text) for text, heading, _ in rows]
    assert all(tokenized[t] == 1 for t in texts), [t[:40] for t in texts if tokenized[t] != 1]
    stored = np.stack([np.frombuffer(v, dtype=np.float32) for *_, v in rows])  # [n, dim]
    monkeypatch.setattr(encoder, "token_ids", real)
    np.testing.assert_allclose(stored, encoder.embed(texts, batch_size=7), atol=1e-5)
