"""Index integrity: derived files rebuilt from SQLite with a warning; a damaged SQLite database found on open
with a clear error naming it; `assistant index --repair` reusing readable vectors; a full disk during a sync
leaving the previous index intact and saying so."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from retrieval.errors import DiskFullError, IndexCorruptError
from retrieval.integrity import CHECK_STAMP
from retrieval.retriever import Retriever
from retrieval.store import SQLITE_NAME, IndexStore
from retrieval.sync import add_files, sync_folder
from retrieval.testing import HashingEncoder

PLANTED = {
    "a.md": "The tangerine gecko plays the oboe at dawn.",
    "b.txt": "Seven copper moles polish the observatory dome.",
    "c.md": "A violet heron files the lighthouse tax returns.",
}


@pytest.fixture()
def indexed(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in PLANTED.items():
        (docs / name).write_text(f"# {name}\n\n{text}\n")
    encoder = HashingEncoder()
    index = tmp_path / "index"
    sync_folder(docs, index, encoder, progress=False)
    upload = tmp_path / "up.md"
    upload.write_text("# Upload\n\nThe uploaded memo mentions saffron otters.\n")
    add_files([upload], index, encoder)
    return docs, index, encoder


def _all_found(index, encoder, modes=("dense", "lexical", "hybrid")):
    retriever = Retriever(index, encoder)
    for mode in modes:
        for path, text in PLANTED.items():
            assert retriever.search(text, k=1, mode=mode)[0].path == path, (mode, path)
    assert retriever.search("saffron otters", k=1)[0].path == "@uploads/up.md"


def _documents(index):
    store = IndexStore.open(index)
    try:
        return {p: (r.sha256, r.content_id) for p, r in store.documents().items()}
    finally:
        store.close()


# ---------------------------------------------------------------- derived files

@pytest.mark.parametrize("damage", ["lost", "garbage"])
def test_faiss_file_lost_or_damaged_is_rebuilt_with_a_warning(indexed, caplog, damage):
    _, index, encoder = indexed
    for file in index.glob("vectors-*.faiss"):
        file.unlink() if damage == "lost" else file.write_bytes(b"not a faiss index" * 10)
    with caplog.at_level(logging.WARNING, logger="retrieval.integrity"):
        _all_found(index, encoder, modes=("dense",))
    text = caplog.text
    assert "FAISS file" in text and ("is missing" if damage == "lost" else "is unreadable") in text
    assert "rebuilt it from the SQLite database" in text


@pytest.mark.parametrize("damage", ["lost", "ids", "params"])
def test_bm25_folder_lost_or_damaged_is_rebuilt_with_a_warning(indexed, caplog, damage):
    _, index, encoder = indexed
    for folder in index.glob("bm25-*"):
        if damage == "lost":
            shutil.rmtree(folder)
        elif damage == "ids":
            (folder / "chunk_ids.npy").write_bytes(b"\x93NUMPY garbage")
        else:
            for file in folder.iterdir():
                if file.name != "chunk_ids.npy":
                    file.write_bytes(b"{broken")
    with caplog.at_level(logging.WARNING, logger="retrieval.integrity"):
        _all_found(index, encoder, modes=("lexical",))
    assert "BM25 folder" in caplog.text and "rebuilt it from the SQLite database" in caplog.text


# ---------------------------------------------------------------- damaged SQLite

def _corrupt_header(index: Path) -> None:
    db = index / SQLITE_NAME
    data = bytearray(db.read_bytes())
    data[:16] = b"garbage garbage!"
    db.write_bytes(bytes(data))


def _corrupt_documents_table(index: Path) -> None:
    """Overwrite the page holding the documents table (the chunks and vectors stay readable)."""
    db = index / SQLITE_NAME
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='documents'").fetchone()[0]
    conn.close()
    with open(db, "r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(os.urandom(page_size))


@pytest.mark.parametrize("corrupt", [_corrupt_header, _corrupt_documents_table])
def test_damaged_sqlite_is_found_on_open_with_an_error_naming_the_file(indexed, corrupt):
    docs, index, encoder = indexed
    IndexStore.open(index).close()
    assert (index / CHECK_STAMP).exists()  # a sound database is not checked again until it changes
    corrupt(index)
    db = index / SQLITE_NAME
    for attempt in (lambda: IndexStore.open(index), lambda: Retriever(index, encoder),
                    lambda: sync_folder(docs, index, encoder, progress=False)):
        with pytest.raises(IndexCorruptError) as info:
            attempt()
        message = str(info.value)
        assert f"the index database {db} is damaged" in message and "--repair" in message


def _cli_with_hashing_encoder(monkeypatch, *argv):
    from assistant.cli import main

    monkeypatch.setattr("model.encoder.Encoder.load", lambda *a, **k: HashingEncoder())
    return main(list(argv))


def test_cli_names_the_damaged_file_and_repair_reuses_every_readable_vector(indexed, monkeypatch, capsys):
    docs, index, encoder = indexed
    before = _documents(index)
    _corrupt_documents_table(index)
    code = _cli_with_hashing_encoder(monkeypatch, "index", str(docs), "--index", str(index), "--quiet")
    err = capsys.readouterr().err
    assert code == 1 and f"error: the index database {index / SQLITE_NAME} is damaged" in err
    assert "Traceback" not in err
    code = _cli_with_hashing_encoder(monkeypatch, "index", str(docs), "--index", str(index), "--repair", "--quiet")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "the old database was damaged" in out
    assert "embedded 0 chunks from 0 files" in out  # every vector came back from the damaged database
    assert "4 files reused them" in out
    assert set(_documents(index)) == set(before)
    _all_found(index, encoder)
    assert not index.with_name("index.repair").exists() and not index.with_name("index.damaged").exists()


def test_repair_of_an_unreadable_database_embeds_everything_again(indexed, monkeypatch, capsys):
    docs, index, encoder = indexed
    _corrupt_header(index)
    code = _cli_with_hashing_encoder(monkeypatch, "index", str(docs), "--index", str(index), "--repair", "--quiet")
    out = capsys.readouterr().out
    assert code == 0 and "not an SQLite database" in out and "0 files reused them" in out
    _all_found(index, encoder)


# ---------------------------------------------------------------- full disk

def _assert_previous_index_intact(index, encoder, before):
    assert _documents(index) == before
    _all_found(index, encoder)


@pytest.mark.parametrize("where", ["bm25", "faiss", "sqlite", "upload-copy"])
def test_injected_enospc_keeps_the_previous_index_and_says_what_happened(indexed, monkeypatch, where):
    import retrieval.store as store_module

    docs, index, encoder = indexed
    before = _documents(index)

    def full(*args, **kwargs):
        if where == "sqlite":
            raise sqlite3.OperationalError("database or disk is full")
        if where == "faiss":
            raise RuntimeError("Error in faiss::FileIOWriter: write error: No space left on device")
        raise OSError(errno.ENOSPC, "No space left on device")

    # The segmented store writes a new base (vector index + BM25) or a delta per commit (_write_parts); a small
    # index is always compacted into a new base (_write_base).
    target = {"bm25": "_write_base", "faiss": "_write_parts", "sqlite": "stage_content"}.get(where)
    if target:
        monkeypatch.setattr(store_module.IndexWriter, target, full)
    else:
        monkeypatch.setattr("retrieval.sync.shutil.copyfile", full)
    (docs / "new.md").write_text("# New\n\nA brand-new file about indigo walruses.\n")
    new_upload = docs.parent / "up2.md"
    new_upload.write_text("# Up2\n\nAnother upload about jade crickets.\n")
    with pytest.raises(DiskFullError) as info:
        if where == "upload-copy":
            add_files([new_upload], index, encoder)
        else:
            sync_folder(docs, index, encoder, progress=False)
    message = str(info.value)
    assert f"the disk holding the index {index} is full" in message
    assert "as it was before" in message and "Free some disk space" in message
    monkeypatch.undo()
    _assert_previous_index_intact(index, encoder, before)
    assert not [p for p in index.rglob("*") if ".tmp-" in p.name]
    report = sync_folder(docs, index, encoder, progress=False)  # with space again, the next run finishes
    assert "new.md" in report.added


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True)
    return result.returncode == 0


def test_a_really_full_disk_keeps_the_previous_index(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "3m"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission); "
                    "test_injected_enospc_* covers the same paths")
    try:
        docs = tmp_path / "docs"
        docs.mkdir()
        for name, text in PLANTED.items():
            (docs / name).write_text(f"# {name}\n\n{text}\n")
        encoder = HashingEncoder(dim=384)
        index = disk / "index"
        sync_folder(docs, index, encoder, progress=False)
        upload = tmp_path / "up.md"
        upload.write_text("# Upload\n\nThe uploaded memo mentions saffron otters.\n")
        add_files([upload], index, encoder)
        before = _documents(index)
        words = " ".join(f"word{i} lorem ipsum dolor." for i in range(60_000))
        (docs / "big.txt").write_text(words)  # ~1.7 MB of text + ~3 MB of vectors: more than the disk holds
        with pytest.raises(DiskFullError, match="is full"):
            sync_folder(docs, index, encoder, progress=False)
        _assert_previous_index_intact(index, encoder, before)
        (docs / "big.txt").unlink()
        report = sync_folder(docs, index, encoder, progress=False)
        assert not report.changed
        _assert_previous_index_intact(index, encoder, before)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
