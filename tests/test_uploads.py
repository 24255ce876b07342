"""Uploads through every door: hostile names never read or write outside <index>/uploads/, a same-name
upload replaces that upload only, and size/type limits give a clear message."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from retrieval.loaders import SkipFile
from retrieval.retriever import Retriever
from retrieval.store import IndexStore
from retrieval.sync import add_files, sync_folder
from retrieval.testing import HashingEncoder
from retrieval.uploads import safe_upload_name

HOSTILE = {
    "../../escape.md": "escape.md",
    "/etc/absolute.md": "absolute.md",
    "..\\..\\windows.md": "windows.md",
    "C:\\Users\\me\\drive.md": "drive.md",
    "C:relative.md": "relative.md",
    "sub/dir/../nested.md": "nested.md",
    "<img src=x onerror=alert(1)>.md": "<img src=x onerror=alert(1)>.md",  # a legal name; shown escaped
}
REFUSED = {
    "": "no file name",
    ".": "no file name",
    "..": "no file name",
    "../..": "no file name",
    "dir/": "no file name",
    "a\x00b.md": "NUL byte",
    "bell\x07.md": "control characters",
    ".hidden.md": "hidden",
    "CON": "reserved",
    "nul.txt": "reserved",
    "Com1.md": "reserved",
    "LPT9.txt": "reserved",
    "trailing.md.": "ends with",
    "x" * 300 + ".md": "too long",
    "program.exe": "unsupported file type .exe",
    "noext": "unsupported file type (no extension)",
}


@pytest.mark.parametrize("name,expected", list(HOSTILE.items()))
def test_hostile_names_become_one_plain_name(name, expected):
    assert safe_upload_name(name) == expected


@pytest.mark.parametrize("name,reason", list(REFUSED.items()))
def test_names_that_cannot_be_a_file_are_refused_with_a_reason(name, reason):
    with pytest.raises(SkipFile, match=re.escape(reason)):
        safe_upload_name(name)


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_add_files_never_writes_outside_uploads_and_same_name_replaces_only_that_upload(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "escape.md").write_text("# Folder file\n\nThe folder's own escape file talks about granite owls.\n")
    index = tmp_path / "deep" / "index"
    encoder = HashingEncoder()
    sync_folder(docs, index, encoder, progress=False)
    source = tmp_path / "src.md"
    source.write_text("# Upload\n\nThe uploaded note says marigold foxes juggle.\n")
    before = _tree(tmp_path)
    names = [*HOSTILE, *REFUSED]
    report = add_files([source] * len(names), index, encoder, names=names)
    after = _tree(tmp_path)
    created = after - before
    assert created and all(p.startswith("deep/index/") for p in created), created  # nothing outside the index
    uploads = {p.name for p in (index / "uploads").iterdir()}
    assert uploads == set(HOSTILE.values())
    assert (docs / "escape.md").read_text().startswith("# Folder file")  # the folder file is untouched
    skipped = dict(report.skipped)
    assert len(report.skipped) == len(REFUSED)
    assert skipped["@uploads/a\\x00b.md"] == "invalid file name (contains a NUL byte)"
    assert "reserved device name" in skipped["@uploads/CON"]
    # the same name again replaces that upload, and nothing else
    store = IndexStore.open(index)
    docs_before = store.documents()
    store.close()
    newer = tmp_path / "newer.md"
    newer.write_text("# Upload v2\n\nThe replacement says cobalt herons knit.\n")
    report = add_files([newer], index, encoder, names=["../../escape.md"])
    assert report.updated == ["@uploads/escape.md"]
    store = IndexStore.open(index)
    docs_after = store.documents()
    store.close()
    assert set(docs_after) == set(docs_before)
    changed = {p for p in docs_after if docs_after[p].sha256 != docs_before[p].sha256}
    assert changed == {"@uploads/escape.md"}
    retriever = Retriever(index, encoder)
    assert retriever.search("cobalt herons knit", k=1)[0].path == "@uploads/escape.md"
    assert all("marigold" not in h.text for h in retriever.search("marigold foxes juggle", k=10)
               if h.path == "@uploads/escape.md")
    assert retriever.search("granite owls", k=1)[0].path == "escape.md"


def _index_with_one_upload(tmp_path):
    """An index holding one upload, note.md; returns (encoder, index, the uploaded file)."""
    encoder = HashingEncoder()
    index = tmp_path / "index"
    note = tmp_path / "note.md"
    note.write_text("# Note\n\nA short note about amber walruses.\n")
    add_files([note], index, encoder)
    return encoder, index, note


def test_size_and_type_limits_are_clear_and_keep_earlier_uploads(tmp_path):
    encoder, index, _ = _index_with_one_upload(tmp_path)
    big = tmp_path / "big" / "note.md"
    big.parent.mkdir()
    big.write_bytes(b"a few words. " * 90_000)  # ~1.1 MB
    exe = tmp_path / "tool.exe"
    exe.write_bytes(b"MZ" + bytes(100))
    report = add_files([big, exe], index, encoder, max_file_bytes=1024 * 1024)
    skipped = dict(report.skipped)
    assert skipped["@uploads/note.md"] == "too large (1.1 MB > limit 1.0 MB)"
    assert skipped["@uploads/tool.exe"] == "unsupported file type .exe"
    # the refused same-name upload did not replace the earlier one
    assert "amber walruses" in (index / "uploads" / "note.md").read_text()
    assert Retriever(index, encoder).search("amber walruses", k=1)[0].path == "@uploads/note.md"


def test_the_gradio_upload_handler_reports_hostile_and_refused_names(tmp_path):
    from assistant.pipeline import Assistant
    from assistant.ui import ChatApp

    from assistant_fakes import FakeGenerator

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "base.md").write_text("# Base\n\nAttention mixes values.\n")
    assistant = Assistant.from_folder(docs, tmp_path / "index", encoder=HashingEncoder(),
                                      generator=FakeGenerator("ok [1]."), refusal_threshold=0.0)
    app = ChatApp(assistant)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    files = []
    for name in ("..\\..\\evil.md", "CON.md", ".hidden.md", "script.exe", "fine.md"):
        path = incoming / name
        path.write_text("# Upload\n\nSome uploaded text about violet moths.\n")
        files.append(str(path))
    before = _tree(tmp_path)
    message, status = app.upload(files)
    assert "✓ @uploads/evil.md: indexed" in message and "✓ @uploads/fine.md: indexed" in message
    assert message.count(": rejected, ") == 3  # CON.md, .hidden.md, script.exe: each shown as rejected
    assert "reserved device name" in message and "hidden names" in message
    assert "unsupported file type .exe" in message
    created = _tree(tmp_path) - before
    assert created and all(p.startswith("index/") for p in created), created
    assert {p.name for p in (tmp_path / "index" / "uploads").iterdir()} == {"evil.md", "fine.md"}
    assert "3 files" in status
    assert os.listdir(incoming)  # the sources are only read
    damaged = incoming / "damaged.md"
    damaged.write_bytes("# Damaged\n\nMostly fine text about schöne amber moths. ".encode() * 20 + b"\xff\xfe")
    message, _ = app.upload([str(damaged)])
    assert "✓ @uploads/damaged.md: indexed" in message
    assert "(not valid UTF-8: 2 bad bytes shown as \ufffd)" in message


def test_an_upload_waits_for_a_running_sync_instead_of_failing(tmp_path):
    import threading
    import time

    from retrieval.errors import IndexLockedError
    from retrieval.store import WriterLock

    encoder, index, note = _index_with_one_upload(tmp_path)
    lock = WriterLock(index).acquire()  # as a sync would hold it (flock: per open file, so in-process works)
    try:
        with pytest.raises(IndexLockedError, match="another process"):
            add_files([note], index, encoder, lock_wait=0.3)
        threading.Timer(1.0, lock.release).start()
        started = time.monotonic()
        report = add_files([note], index, encoder)
        assert report.unchanged == ["@uploads/note.md"] and 0.8 < time.monotonic() - started < 20
    finally:
        lock.release()
