"""OCR (retrieval.ocr) of images and scanned PDF pages, the skip reason without tesseract, and the parser-version
migration: an index written before versions were recorded opens, and its next sync re-reads only the kinds
whose parser changed (PDF, HTML, DOCX), reporting the others unchanged."""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import zlib
from pathlib import Path

import pytest

from retrieval import loaders, ocr
from retrieval.loaders import PARSER_VERSIONS, LoadLimits, ParserWorker, SkipFile, load_file
from retrieval.retriever import Retriever
from retrieval.store import FORMAT_VERSION, IndexStore
from retrieval.sync import sync_folder
from retrieval.testing import HashingEncoder

FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
         "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf")
LINES = ["Emerald flamingos audit the volcanic", "pretzel factory every Tuesday morning.", "",
         "Copper lighthouses guard sleepy harbours."]
WORDS = {w.strip(".").lower() for line in LINES for w in line.split()}
IN_PROCESS = LoadLimits(parse_seconds=None)  # parsed here, so monkeypatches apply

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="tesseract is not installed (apt-get install tesseract-ocr)")


def _font(size: int = 40):
    from PIL import ImageFont

    for path in FONTS:
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    pytest.skip("no TrueType font found (apt-get install fonts-dejavu-core)")


def _text_image(lines=LINES, size=(1500, 320)):
    from PIL import Image, ImageDraw

    font = _font()
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((60, 30 + 65 * i), line, font=font, fill="black")
    return image


def _found(text: str) -> float:
    """Share of the planted words that came back."""
    got = {w.strip(".,").lower() for w in text.split()}
    return len(WORDS & got) / len(WORDS)


def _mixed_pdf(path: Path, image_path: Path) -> None:
    """Page 1 and 3: a text layer; page 2: only a picture of text (a scanned page)."""
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path))
    c.drawString(72, 800, "A text page about cobalt hedgehogs.")
    c.showPage()
    c.drawImage(str(image_path), 36, 500, width=520, height=111)
    c.showPage()
    c.drawString(72, 800, "The last page holds saffron pelicans.")
    c.showPage()
    c.save()


def _no_tesseract(monkeypatch) -> None:
    monkeypatch.setattr(ocr, "find_tesseract", lambda: None)


# ---------------------------------------------------------------- OCR

@needs_tesseract
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tiff"])
def test_image_is_read_by_ocr_as_one_page(tmp_path, suffix):
    path = tmp_path / f"scan{suffix}"
    _text_image().save(path)
    doc = load_file(path)  # in the parser worker, like a sync
    assert doc.kind == "image" and doc.pages == [(0, len(doc.text), 1)]
    assert _found(doc.text) >= 0.8, doc.text
    assert "OCR" in doc.note and doc.incomplete == ""


@needs_tesseract
def test_scanned_pdf_gets_text_with_its_page_number(tmp_path):
    path = tmp_path / "scan.pdf"
    _text_image().save(path, resolution=150)  # Pillow's PDF: one page holding only the image
    doc = load_file(path)
    assert doc.kind == "pdf" and [p[2] for p in doc.pages] == [1]
    assert _found(doc.text) >= 0.8, doc.text
    assert "page 1 read by OCR" in doc.note


@needs_tesseract
def test_pdf_with_text_and_scanned_pages_gets_both_in_page_order(tmp_path):
    _text_image().save(tmp_path / "img.png")
    _mixed_pdf(tmp_path / "mixed.pdf", tmp_path / "img.png")
    doc = load_file(tmp_path / "mixed.pdf")
    assert [p[2] for p in doc.pages] == [1, 2, 3]
    page_text = {number: doc.text[start:end] for start, end, number in doc.pages}
    assert "cobalt hedgehogs" in page_text[1] and "saffron pelicans" in page_text[3]
    assert _found(page_text[2]) >= 0.8, page_text[2]
    assert doc.note == "page 2 read by OCR (no text layer)"


def test_without_tesseract_images_and_scanned_pdfs_are_skipped_with_the_install_command(tmp_path, monkeypatch):
    _text_image().save(tmp_path / "scan.png")
    _text_image().save(tmp_path / "scan.pdf", resolution=150)
    # a fresh worker started with a PATH where there is no tesseract: what a user without it sees
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    worker = ParserWorker()
    try:
        for name in ("scan.png", "scan.pdf"):
            with pytest.raises(SkipFile) as info:
                load_file(tmp_path / name, worker=worker)
            assert "apt-get install tesseract-ocr" in info.value.reason and "re-sync" in info.value.reason
    finally:
        worker.close()


def test_without_tesseract_a_mixed_pdf_keeps_its_text_pages_and_says_what_is_missing(tmp_path, monkeypatch):
    _text_image().save(tmp_path / "img.png")
    _mixed_pdf(tmp_path / "mixed.pdf", tmp_path / "img.png")
    _no_tesseract(monkeypatch)
    doc = load_file(tmp_path / "mixed.pdf", limits=IN_PROCESS)
    assert [p[2] for p in doc.pages] == [1, 3]
    assert "page 2 without a text layer not read" in doc.note and ocr.MISSING_REASON in doc.note
    assert doc.incomplete == "ocr"


def test_a_huge_image_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    # a 20,000 x 20,000 PNG header with a tiny body: decoding it would need 400 MB or more
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    (tmp_path / "huge.png").write_bytes(png)
    with pytest.raises(SkipFile, match=r"image too large to read \(20,000 x 20,000 pixels"):
        load_file(tmp_path / "huge.png", limits=IN_PROCESS)
    (tmp_path / "broken.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPgarbage")
    with pytest.raises(SkipFile, match="corrupt image"):
        load_file(tmp_path / "broken.webp", limits=IN_PROCESS)


@needs_tesseract
def test_a_large_image_is_downscaled_before_ocr(tmp_path, monkeypatch):
    seen = []
    real = ocr.run_tesseract

    def spy(png, *args, **kw):
        from PIL import Image
        import io

        seen.append(Image.open(io.BytesIO(png)).size)
        return real(png, *args, **kw)

    monkeypatch.setattr(ocr, "run_tesseract", spy)
    monkeypatch.setattr(ocr, "MAX_OCR_PIXELS", 1500 * 320 // 2)
    _text_image().save(tmp_path / "big.png")
    doc = load_file(tmp_path / "big.png", limits=IN_PROCESS)
    assert seen and seen[0][0] * seen[0][1] <= 1500 * 320 // 2
    assert _found(doc.text) >= 0.6, doc.text


@needs_tesseract
def test_ocr_time_counts_against_the_parse_time_limit(tmp_path, monkeypatch):
    _text_image().save(tmp_path / "scan.png")
    assert ocr.Deadline(None).left() is None and 3.5 < ocr.Deadline(5.0).left() <= 4.0  # 1 s margin
    monkeypatch.setattr(ocr.Deadline, "left", lambda self: -1.0)  # the time is up at the first page
    with pytest.raises(SkipFile, match=r"OCR took longer than the parse time limit of 5 s \(read 0 of 1 page\)"):
        loaders.parse_bytes("image", (tmp_path / "scan.png").read_bytes(), LoadLimits(parse_seconds=5.0))


def test_tsv_to_text_rebuilds_paragraphs_and_joins_line_break_hyphens():
    rows = ["level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"]
    for par, line, words in [(1, 1, "The quick exam-"), (1, 2, "ple works."), (2, 1, "Next state-of-the-"),
                             (2, 2, "art one.")]:
        for k, word in enumerate(words.split(), start=1):
            rows.append(f"5\t1\t1\t{par}\t{line}\t{k}\t0\t0\t1\t1\t90\t{word}")
    text = ocr.tsv_to_text("\n".join(rows), vocabulary={"example"})
    assert text == "The quick example works.\n\nNext state-of-the-art one."


def test_merge_pages_keeps_page_numbers_and_moves_headings():
    text, pages, headings = ocr.merge_pages("Title\n\nbody one\n\nlast", [(0, 15, 1), (17, 21, 3)],
                                            [(0, 1, "Title")], {2: "scanned"})
    assert text == "Title\n\nbody one\n\nscanned\n\nlast"
    assert pages == [(0, 15, 1), (17, 24, 2), (26, 30, 3)] and headings == [(0, 1, "Title")]
    assert [text[s:e] for s, e, _ in pages] == ["Title\n\nbody one", "scanned", "last"]


# ---------------------------------------------------------------- sync

def test_a_file_skipped_for_want_of_tesseract_is_picked_up_once_it_is_installed(tmp_path, monkeypatch):
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract is not installed (apt-get install tesseract-ocr)")
    folder = tmp_path / "docs"
    folder.mkdir()
    _text_image().save(folder / "scan.png")
    _mixed_pdf(folder / "mixed.pdf", folder / "scan.png")
    (folder / "notes.md").write_text("# Notes\n\nPlain notes about amber walruses.\n")
    encoder = HashingEncoder()
    index = tmp_path / "index"

    def sync():
        return sync_folder(folder, index, encoder, progress=False, limits=IN_PROCESS)

    with monkeypatch.context() as m:
        _no_tesseract(m)
        report = sync()
        assert dict(report.skipped) == {"scan.png": ocr.MISSING_REASON}
        assert sorted(report.added) == ["mixed.pdf", "notes.md"]
        assert ocr.MISSING_REASON in dict(report.notes)["mixed.pdf"]
        report = sync()  # still no tesseract: nothing read again, nothing embedded
        assert report.chunks_embedded == 0 and report.reparsed == [] and "scan.png" in dict(report.skipped)
    report = sync()  # tesseract is back
    assert report.added == ["scan.png"] and report.updated == ["mixed.pdf"] and report.reparsed == ["mixed.pdf"]
    assert report.unchanged == ["notes.md"] and not report.skipped
    store = IndexStore.open(index)
    try:
        hits = Retriever(store, encoder).search("copper lighthouses sleepy harbours", k=3, mode="lexical")
        assert {h.path for h in hits} >= {"scan.png", "mixed.pdf"}
        assert {h.page for h in hits if h.path == "mixed.pdf"} == {2}
    finally:
        store.close()
    assert sync().changed is False


# ---------------------------------------------------------------- parser versions (index format 3)

OLD_CONTENTS = """CREATE TABLE contents(
    id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL, kind TEXT NOT NULL,
    n_chunks INTEGER NOT NULL, chars INTEGER NOT NULL, UNIQUE(sha256, kind))"""


def _as_previous_release(index: Path) -> None:
    """Turn an index into what the release before parser versions wrote: format 2, contents without the
    parser columns (the same ids, so the chunks and vectors stay as they are)."""
    db = sqlite3.connect(index / "index.sqlite")
    try:
        db.executescript(f"""
            BEGIN;
            CREATE TABLE contents_old AS SELECT id, sha256, kind, n_chunks, chars FROM contents;
            DROP TABLE contents;
            {OLD_CONTENTS};
            INSERT INTO contents SELECT * FROM contents_old;
            DROP TABLE contents_old;
            COMMIT;""")
    finally:
        db.close()
    settings = json.loads((index / "settings.json").read_text())
    settings["format_version"] = 2
    settings["faiss"] = "flat"  # a user's explicit choice must survive the migration
    (index / "settings.json").write_text(json.dumps(settings))


def _versioned_folder(root: Path) -> Path:
    from conftest_retrieval import _pdf

    import docx

    folder = root / "docs"
    folder.mkdir()
    (folder / "guide.md").write_text("# Guide\n\nQuokkas negotiate turquoise mortgages.\n")
    (folder / "notes.txt").write_text("The amber walrus repaired seventeen lanterns.\n")
    (folder / "page.html").write_text("<h1>Poems</h1><p>The obsidian tortoise composes limericks.</p>")
    _pdf(folder / "report.pdf", ["Emerald flamingos audit the volcanic pretzel factory."])
    d = docx.Document()
    d.add_paragraph("Lavender badgers translate sonnets into semaphore flags.")
    d.save(str(folder / "memo.docx"))
    return folder


def test_index_of_the_previous_release_opens_and_re_reads_only_kinds_whose_parser_changed(tmp_path):
    folder = _versioned_folder(tmp_path)
    index = tmp_path / "index"
    encoder = HashingEncoder()
    first = sync_folder(folder, index, encoder, progress=False, faiss_kind="flat")
    assert len(first.added) == 5
    _as_previous_release(index)
    db = sqlite3.connect(index / "index.sqlite")
    chunk_ids_before = {r[0]: r[1] for r in db.execute(
        "SELECT d.path, group_concat(c.id) FROM documents d JOIN chunks c ON c.content_id = d.content_id"
        " GROUP BY d.path")}
    db.close()

    store = IndexStore.open(index)  # migrated in place: format 3, every old content at version 1
    try:
        assert store.settings.format_version == FORMAT_VERSION == 3 and store.settings.faiss == "flat"
        rows = store.documents()
        assert {p: r.parser_version for p, r in rows.items()} == dict.fromkeys(rows, 1)
        assert Retriever(store, encoder).search("obsidian tortoise limericks", k=1)[0].path == "page.html"
    finally:
        store.close()
    assert json.loads((index / "settings.json").read_text())["format_version"] == FORMAT_VERSION

    before = encoder.texts_embedded
    report = sync_folder(folder, index, encoder, progress=False)
    assert sorted(report.reparsed) == sorted(report.updated) == ["memo.docx", "page.html", "report.pdf"]
    assert report.unchanged == ["guide.md", "notes.txt"] and not report.removed and not report.skipped
    assert report.chunks_embedded == encoder.texts_embedded - before == 3  # one chunk per re-read file
    store = IndexStore.open(index)
    try:
        rows = store.documents()
        assert {p: r.parser_version for p, r in rows.items()} == {
            "guide.md": 1, "notes.txt": 1, "memo.docx": PARSER_VERSIONS["docx"], "page.html": PARSER_VERSIONS["html"],
            "report.pdf": PARSER_VERSIONS["pdf"]}
        assert store.stats()["files"] == 5 and store.stats()["chunks"] == 5
        retriever = Retriever(store, encoder)
        for query, path in [("emerald flamingos pretzel", "report.pdf"), ("quokkas turquoise mortgages", "guide.md"),
                            ("lavender badgers semaphore", "memo.docx"), ("amber walrus lanterns", "notes.txt")]:
            for mode in ("dense", "lexical", "hybrid"):
                assert retriever.search(query, k=1, mode=mode)[0].path == path
        # Markdown and text kept their chunks (nothing re-embedded); the old PDF/HTML/DOCX chunks are gone
        db = store._conn
        after = {r[0]: r[1] for r in db.execute(
            "SELECT d.path, group_concat(c.id) FROM documents d JOIN chunks c ON c.content_id = d.content_id"
            " GROUP BY d.path")}
        assert after["guide.md"] == chunk_ids_before["guide.md"] and after["notes.txt"] == chunk_ids_before["notes.txt"]
        assert after["report.pdf"] != chunk_ids_before["report.pdf"]
        assert db.execute("SELECT count(*) FROM contents").fetchone()[0] == 5
    finally:
        store.close()
    again = sync_folder(folder, index, encoder, progress=False)
    assert again.chunks_embedded == 0 and not again.changed and not again.reparsed


def test_a_bumped_parser_version_re_reads_that_kind_only(tmp_path, monkeypatch):
    folder = _versioned_folder(tmp_path)
    index = tmp_path / "index"
    encoder = HashingEncoder()
    sync_folder(folder, index, encoder, progress=False)
    monkeypatch.setitem(PARSER_VERSIONS, "markdown", 2)
    report = sync_folder(folder, index, encoder, progress=False, limits=IN_PROCESS)
    assert report.reparsed == report.updated == ["guide.md"] and report.chunks_embedded == 1
    assert len(report.unchanged) == 4
    assert IndexStore.open(index).documents()["guide.md"].parser_version == 2


def test_migration_is_idempotent_and_keeps_content_ids(tmp_path):
    folder = _versioned_folder(tmp_path)
    index = tmp_path / "index"
    sync_folder(folder, index, HashingEncoder(), progress=False)
    _as_previous_release(index)
    ids = sorted(r[0] for r in sqlite3.connect(index / "index.sqlite").execute("SELECT id FROM contents"))
    for _ in range(2):
        settings = json.loads((index / "settings.json").read_text())
        settings["format_version"] = 2  # as if killed before settings.json was rewritten
        (index / "settings.json").write_text(json.dumps(settings))
        IndexStore.open(index).close()
    db = sqlite3.connect(index / "index.sqlite")
    assert sorted(r[0] for r in db.execute("SELECT id FROM contents")) == ids
    columns = {r[1] for r in db.execute("PRAGMA table_info(contents)")}
    assert {"parser_version", "incomplete"} <= columns
