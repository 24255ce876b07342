"""Per-file limits: a hostile file becomes a skip reason, and the rest of the folder is indexed.

ZIP-bomb DOCX (claimed and real), a PDF with thousands of pages, a 100 MB single-line text, a file that makes
its parser hang (the worker process is killed), almost-UTF-8 text (read, with a note) vs binary (skipped).
"""

from __future__ import annotations

import io
import re
import struct
import time
import zipfile
from pathlib import Path

import pytest

from retrieval.loaders import (HANG_MARKER_ENV, MIB, LoadLimits, ParserWorker, SkipFile, decode_text_with_note,
                               load_file, size_vs_limit)
from retrieval.retriever import Retriever
from retrieval.sync import sync_folder
from retrieval.testing import HashingEncoder

GOOD = "The cinnamon narwhal audits lighthouse budgets every spring."


def _docx_bytes(text: str = "A small memo.") -> bytes:
    import docx

    d = docx.Document()
    d.add_paragraph(text)
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def _claims_gigabytes(raw: bytes, claimed: int = 3_000_000_000) -> bytes:
    """The same DOCX whose central directory says one part unpacks to `claimed` bytes: a few KB on disk."""
    data = bytearray(raw)
    pos = data.rfind(b"PK\x01\x02")  # the last central-directory entry
    struct.pack_into("<I", data, pos + 24, claimed)  # its uncompressed size
    return bytes(data)


def _real_bomb(path: Path, unpacked: int) -> None:
    """A DOCX holding a part of `unpacked` zero bytes (deflate packs it about 1000:1)."""
    with zipfile.ZipFile(io.BytesIO(_docx_bytes())) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        with dst.open("word/media/padding.bin", "w", force_zip64=True) as fh:
            block = bytes(MIB)
            for _ in range(unpacked // MIB):
                fh.write(block)


def _good_folder(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text(f"# Good\n\n{GOOD}\n")
    (docs / "memo.docx").write_bytes(_docx_bytes("Lavender badgers translate sonnets into semaphore flags."))
    return docs


def _sync(docs, index, **kw):
    return sync_folder(docs, index, HashingEncoder(), progress=False, **kw)


def _assert_good_ones_indexed(report, index):
    assert {"good.md", "memo.docx"} <= set(report.added) | set(report.unchanged)
    hits = Retriever(index, HashingEncoder()).search(GOOD, k=1)
    assert hits and hits[0].path == "good.md"


def test_size_messages_differ_when_sizes_differ():
    assert size_vs_limit(int(20.04 * MIB), 20 * MIB) == "20.04 MB > limit 20.00 MB"
    assert size_vs_limit(30 * MIB, 20 * MIB) == "30.0 MB > limit 20.0 MB"
    assert size_vs_limit(20 * MIB + 1, 20 * MIB) == "20971521 B > limit 20971520 B".replace(
        "20971521", "20,971,521").replace("20971520", "20,971,520")


def test_docx_zip_bombs_are_stopped_before_unpacking(tmp_path):
    docs = _good_folder(tmp_path)
    (docs / "claims.docx").write_bytes(_claims_gigabytes(_docx_bytes()))
    assert (docs / "claims.docx").stat().st_size < 50_000
    _real_bomb(docs / "real.docx", 70 * MIB)
    assert (docs / "real.docx").stat().st_size < MIB
    started = time.perf_counter()
    report = _sync(docs, tmp_path / "index", limits=LoadLimits(max_unpacked_bytes=64 * MIB))
    skipped = dict(report.skipped)
    assert "unpacks to too much" in skipped["claims.docx"] and "ZIP bomb" in skipped["claims.docx"]
    assert "GB > limit 64.0 MB" in skipped["claims.docx"]
    assert re.match(r"unpacks to too much \(70\.\d MB > limit 64\.0 MB; a ZIP bomb\?\)", skipped["real.docx"])
    assert time.perf_counter() - started < 30
    _assert_good_ones_indexed(report, tmp_path / "index")
    # the ratio check alone catches a bomb under the total limit
    small = tmp_path / "ratio.docx"
    _real_bomb(small, 8 * MIB)
    with pytest.raises(SkipFile, match="suspicious compression"):
        load_file(small, tmp_path)


def test_pdf_with_thousands_of_pages_is_stopped(tmp_path):
    from reportlab.pdfgen import canvas

    docs = _good_folder(tmp_path)
    c = canvas.Canvas(str(docs / "many.pdf"))
    for _ in range(2_001):
        c.drawString(72, 800, "page")
        c.showPage()
    c.save()
    report = _sync(docs, tmp_path / "index")
    assert dict(report.skipped)["many.pdf"] == "too many pages (2,001 > limit 2,000)"
    _assert_good_ones_indexed(report, tmp_path / "index")


def test_100_mb_single_line_text_is_stopped(tmp_path):
    docs = _good_folder(tmp_path)
    with open(docs / "line.txt", "wb") as fh:
        block = b"x" * MIB
        for _ in range(100):
            fh.write(block)
    report = _sync(docs, tmp_path / "index")
    reason = dict(report.skipped)["line.txt"]
    assert reason.startswith("too large (100.0 MB > limit 20.0 MB") and "--max-file-mb" in reason
    _assert_good_ones_indexed(report, tmp_path / "index")
    # with the byte limit raised, the character limit still stops it (before chunking)
    report = _sync(docs, tmp_path / "index", max_file_bytes=200 * MIB)
    assert "too much text (104,857,600 characters > limit 50,000,000)" == dict(report.skipped)["line.txt"]


def test_a_parser_that_hangs_is_killed_and_the_sync_goes_on(tmp_path, monkeypatch):
    from reportlab.pdfgen import canvas

    docs = _good_folder(tmp_path)
    for name in ("a-hangs.pdf", "b-fine.pdf"):
        c = canvas.Canvas(str(docs / name))
        c.drawString(72, 800, f"Saffron pelicans calibrate heliographs ({name}).")
        c.showPage()
        c.save()
    with open(docs / "a-hangs.pdf", "ab") as fh:
        fh.write(b"\n%HANG-THE-PARSER\n")
    monkeypatch.setenv(HANG_MARKER_ENV, "HANG-THE-PARSER")
    worker = ParserWorker()
    limits = LoadLimits(parse_seconds=2.0)
    try:
        started = time.perf_counter()
        with pytest.raises(SkipFile, match=r"parsing took longer than 2 s"):
            load_file(docs / "a-hangs.pdf", docs, limits=limits, worker=worker)
        assert time.perf_counter() - started < 15 and worker.restarts == 1
        doc = load_file(docs / "b-fine.pdf", docs, limits=limits, worker=worker)  # a fresh worker
        assert "Saffron pelicans" in doc.text
    finally:
        worker.close()
    started = time.perf_counter()
    report = _sync(docs, tmp_path / "index", limits=limits)
    assert time.perf_counter() - started < 30
    assert "parsing took longer than 2 s" in dict(report.skipped)["a-hangs.pdf"]
    assert "b-fine.pdf" in report.added
    _assert_good_ones_indexed(report, tmp_path / "index")


def test_almost_utf8_text_is_read_with_a_note_and_binary_is_skipped(tmp_path):
    text, note = decode_text_with_note("Grüße aus Köln. ".encode() * 40 + b"\xff\xfe bad \xc3")
    assert "\ufffd" in text and "Grüße" in text and note == "not valid UTF-8: 3 bad bytes shown as \ufffd"
    assert decode_text_with_note("café au lait".encode("latin-1") * 3)[1] == ""  # a legacy code page, no note
    with pytest.raises(SkipFile, match="binary"):
        decode_text_with_note(b"text\x00" * 100)
    docs = _good_folder(tmp_path)
    (docs / "damaged.txt").write_bytes(b"The quartz heron sings opera. " * 20 + b"\x80\x81" + "Ünïcode.".encode())
    (docs / "blob.txt").write_bytes(bytes(range(256)) * 16)
    report = _sync(docs, tmp_path / "index")
    assert "damaged.txt" in report.added and dict(report.notes)["damaged.txt"].startswith("not valid UTF-8: 2 bad")
    assert "note: damaged.txt: not valid UTF-8" in report.summary()
    assert "binary" in dict(report.skipped)["blob.txt"]
    _assert_good_ones_indexed(report, tmp_path / "index")


def test_cli_indexes_a_file_with_a_few_bad_bytes_and_skips_a_binary_one(tmp_path, monkeypatch, capsys):
    from assistant.cli import main

    monkeypatch.setattr("model.encoder.Encoder.load", lambda *a, **k: HashingEncoder())
    docs = _good_folder(tmp_path)
    (docs / "few-bad-bytes.md").write_bytes("# Notes\n\nThe jade cricket sings. ".encode() * 30 + b"\xfe\xff\x80"
                                             + "Ende, schön.\n".encode())
    (docs / "binary.txt").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 20)
    code = main(["index", str(docs), "--index", str(tmp_path / "index"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "note: few-bad-bytes.md: not valid UTF-8: 3 bad bytes shown as \ufffd" in out
    assert "binary.txt: binary file" in out
    hits = Retriever(tmp_path / "index", HashingEncoder()).search("jade cricket sings", k=1)
    assert hits[0].path == "few-bad-bytes.md" and "\ufffd" in "".join(
        h.text for h in Retriever(tmp_path / "index", HashingEncoder()).search("jade cricket", k=5))


def test_a_parser_process_that_dies_becomes_a_skip_reason(tmp_path, monkeypatch):
    import os
    import signal
    import threading

    docs = _good_folder(tmp_path)
    (docs / "dies.html").write_text("<html><body><p>KILL-THE-PARSER</p></body></html>")
    monkeypatch.setenv(HANG_MARKER_ENV, "KILL-THE-PARSER")
    worker = ParserWorker()
    try:
        assert "Lavender badgers" in load_file(docs / "memo.docx", docs, worker=worker).text  # worker started
        pid = worker._proc.pid

        def kill_soon():
            time.sleep(1.0)
            os.kill(pid, signal.SIGKILL)  # as if the parser crashed in C code or hit the memory limit

        threading.Thread(target=kill_soon, daemon=True).start()
        with pytest.raises(SkipFile, match="the HTML parser crashed on this file"):
            load_file(docs / "dies.html", docs, limits=LoadLimits(parse_seconds=30.0), worker=worker)
        assert "Lavender badgers" in load_file(docs / "memo.docx", docs, worker=worker).text  # a new worker
    finally:
        worker.close()
