"""PPTX, XLSX, EPUB, ODT, EML and MBOX: text, headings, pages and tables, bad files, and a full sync.

Every file is built here (python-pptx / openpyxl / zipfile / email / mailbox) and loaded both in this
process and through the parser worker, as indexing does.
"""

from __future__ import annotations

import mailbox
import math
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from retrieval.chunking import ChunkerSettings, chunk_document
from retrieval.formats import OLE_MAGIC, cell_display
from retrieval.loaders import MIB, Document, LoadLimits, ParserWorker, SkipFile, kind_for, load_file, scan_folder
from retrieval.pipe_tables import find_pipe_tables

IN_PROCESS = LoadLimits(parse_seconds=None)

PLANTED = {
    "deck.pptx": "Magenta armadillos rehearse opera inside the abandoned lighthouse.",
    "budget.xlsx": "Tangerine axolotls invoice the lunar bakery every Thursday.",
    "novel.epub": "Periwinkle narwhals barter riddles for antique compasses.",
    "report.odt": "Chartreuse wombats laminate the municipal crossword archive.",
    "letter.eml": "Burgundy capybaras moderate the underwater chess tournament.",
    "archive.mbox": "Sepia pangolins catalogue thunderstorms in alphabetical order.",
}


def _count(texts: list[str]) -> list[int]:
    """A whitespace token counter (about one token per four characters of a word), as in test_chunking."""
    return [sum(math.ceil(len(w) / 4) for w in t.split()) for t in texts]


@pytest.fixture(scope="module")
def worker():
    w = ParserWorker()
    yield w
    w.close()


@pytest.fixture(params=["in-process", "worker"])
def load(request, worker):
    """load_file(path) in this process, or through the parser worker with the default limits."""
    def _load(path: Path) -> Document:
        if request.param == "in-process":
            return load_file(path, path.parent, limits=IN_PROCESS)
        return load_file(path, path.parent, limits=LoadLimits(parse_seconds=60), worker=worker)
    return _load


def _heading_titles(doc: Document) -> list[tuple[int, str]]:
    return [(level, title) for _, level, title in doc.headings or []]


def _assert_headings_point_into_text(doc: Document) -> None:
    for offset, _, title in doc.headings or []:
        assert doc.text[offset:offset + len(title)] == title


# ---------------------------------------------------------------- builders

def make_pptx(path: Path, planted: str = PLANTED["deck.pptx"]) -> Path:
    from pptx import Presentation
    from pptx.util import Inches

    prs = Presentation()
    prs.core_properties.title = "Quarterly Review"
    s1 = prs.slides.add_slide(prs.slide_layouts[0])  # title slide
    s1.shapes.title.text = "Welcome"
    s1.placeholders[1].text = "An opening subtitle"
    s2 = prs.slides.add_slide(prs.slide_layouts[5])  # title only
    s2.shapes.title.text = "Revenue by region"
    # added lower box first: reading order must still put the upper one first
    s2.shapes.add_textbox(Inches(1), Inches(5), Inches(6), Inches(1)).text_frame.text = "Lower box text."
    s2.shapes.add_textbox(Inches(1), Inches(1.5), Inches(6), Inches(1)).text_frame.text = "Upper box."
    table = s2.shapes.add_table(3, 2, Inches(1), Inches(3), Inches(6), Inches(1.5)).table
    for r, row in enumerate([["Region", "Revenue"], ["North", "120"], ["South", "95"]]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    s2.notes_slide.notes_text_frame.text = "Mention the southern dip."
    s3 = prs.slides.add_slide(prs.slide_layouts[6])  # blank: no title
    s3.shapes.add_textbox(Inches(1), Inches(1), Inches(6), Inches(1)).text_frame.text = f"Closing thoughts. {planted}"
    prs.save(str(path))
    return path


def make_xlsx(path: Path, planted: str = PLANTED["budget.xlsx"], rows: int = 3) -> Path:
    import datetime

    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "Budget"
    # row 1 and column A empty: the used range starts at B2
    ws["B2"], ws["C2"], ws["D2"], ws["E2"], ws["F2"] = "Item", "Cost", "Share", "Due", "Double"
    for i in range(rows):
        r = 3 + i
        ws.cell(r, 2, f"Item-{i}")
        ws.cell(r, 3, 1234.5 + i).number_format = "#,##0.00"
        ws.cell(r, 4, 0.125).number_format = "0.0%"
        ws.cell(r, 5, datetime.datetime(2024, 3, 1 + i % 28))
        ws.cell(r, 6, f"=C{r}*2")
    wb.create_sheet("Empty")
    notes = wb.create_sheet("Notes")
    notes["A1"] = planted
    wb.save(str(path))
    # openpyxl writes no cached value for a formula; add one, as Excel would have saved it
    return _rewrite_zip(path, "xl/worksheets/sheet1.xml",
                        lambda xml: xml.replace(b"<f>C3*2</f><v></v>", b"<f>C3*2</f><v>2469</v>")
                        .replace(b"<f>C3*2</f><v />", b"<f>C3*2</f><v>2469</v>")
                        .replace(b"<f>C3*2</f></c>", b"<f>C3*2</f><v>2469</v></c>"))


def _rewrite_zip(path: Path, member: str, change) -> Path:
    with zipfile.ZipFile(path) as src:
        items = [(info, src.read(info.filename)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info, data in items:
            dst.writestr(info.filename, change(data) if info.filename == member else data)
    return path


_CHAPTER = """<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>{title}</title></head><body>{body}</body></html>"""


def make_epub(path: Path, planted: str = PLANTED["novel.epub"]) -> Path:
    opf = """<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/">
    <dc:title>The Compass Book</dc:title><dc:creator>Ada Quill</dc:creator><dc:identifier id="id">x</dc:identifier>
  </metadata>
  <manifest>
    <item id="a" href="text/chap%20a.xhtml" media-type="application/xhtml+xml"/>
    <item id="b" href="text/chap_b.xhtml" media-type="application/xhtml+xml"/>
    <item id="css" href="style.css" media-type="text/css"/>
  </manifest>
  <spine><itemref idref="b"/><itemref idref="a"/></spine>
</package>"""
    chap_b = _CHAPTER.format(title="The Compass Book", body=(
        "<h1>Chapter One: Departure</h1><p>The ship left at dawn.</p><h2>The Harbour</h2>"
        f"<p>{planted}</p><h2>Ports</h2><table><tr><th>Port</th><th>Day</th></tr><tr><td>Oslo</td><td>1</td></tr>"
        "<tr><td>Bergen</td><td>3</td></tr></table>"))
    chap_a = _CHAPTER.format(title="Epilogue", body="<p>They never returned the compasses.</p>")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        z.writestr("META-INF/container.xml", """<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>""")
        z.writestr("OEBPS/content.opf", opf)
        z.writestr("OEBPS/text/chap a.xhtml", chap_a)
        z.writestr("OEBPS/text/chap_b.xhtml", chap_b)
        z.writestr("OEBPS/style.css", "p { margin: 0 }")
    return path


_ODT_NS = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
           'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
           'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"')


def make_odt(path: Path, planted: str = PLANTED["report.odt"]) -> Path:
    content = f"""<?xml version="1.0" encoding="UTF-8"?>
<office:document-content {_ODT_NS} office:version="1.3"><office:body><office:text>
<text:h text:outline-level="1">Annual Report</text:h>
<text:p>Opening <text:span>words</text:span> with<text:s text:c="2"/>spaces.</text:p>
<text:h text:outline-level="2">Archive Work</text:h>
<text:p>{planted}</text:p>
<text:list><text:list-item><text:p>First bullet</text:p></text:list-item>
<text:list-item><text:p>Second bullet</text:p></text:list-item></text:list>
<text:h text:outline-level="2">Page counts</text:h>
<table:table table:name="T1"><table:table-column table:number-columns-repeated="2"/>
<table:table-header-rows><table:table-row><table:table-cell><text:p>Year</text:p></table:table-cell>
<table:table-cell><text:p>Pages</text:p></table:table-cell></table:table-row></table:table-header-rows>
<table:table-row><table:table-cell><text:p>2022</text:p></table:table-cell>
<table:table-cell><text:p>410</text:p></table:table-cell><table:table-cell table:number-columns-repeated="1000"/>
</table:table-row>
<table:table-row><table:table-cell><text:p>2023</text:p></table:table-cell>
<table:table-cell><text:p>388</text:p></table:table-cell></table:table-row>
<table:table-row table:number-rows-repeated="1048000"><table:table-cell table:number-columns-repeated="2"/>
</table:table-row>
</table:table>
</office:text></office:body></office:document-content>"""
    manifest = """<?xml version="1.0" encoding="UTF-8"?>
<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0">
 <manifest:file-entry manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.text"/>
 <manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>
</manifest:manifest>"""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.text", compress_type=zipfile.ZIP_STORED)
        z.writestr("META-INF/manifest.xml", manifest)
        z.writestr("content.xml", content)
    return path


def _message(subject: str, body: str, html: str | None = None, attach: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = "Ada Quill <ada@example.org>"
    msg["To"] = "team@example.org"
    msg["Date"] = "Tue, 05 Mar 2024 10:00:00 +0000"
    if body:
        msg.set_content(body)
    if html is not None:
        if body:
            msg.add_alternative(html, subtype="html")
        else:
            msg.set_content(html, subtype="html")
    if attach:
        msg.add_attachment(b"%PDF-1.4 not really", maintype="application", subtype="pdf", filename=attach)
    return msg


def make_eml(path: Path, planted: str = PLANTED["letter.eml"]) -> Path:
    msg = _message("Tournament logistics", f"Hello team,\n\n{planted}\n\nRegards, Ada",
                   html="<p>HTML version that must not be used</p>", attach="schedule.pdf")
    path.write_bytes(bytes(msg))
    return path


def make_mbox(path: Path, planted: str = PLANTED["archive.mbox"]) -> Path:
    box = mailbox.mbox(str(path))
    box.add(_message("Weather log", f"Entry one.\n\n{planted}"))
    box.add(_message("HTML only", "", html="<h1>Big news</h1><p>The storms were catalogued.</p>"))
    box.add(_message("", "A message without a subject."))
    box.flush()
    box.close()
    return path


BUILDERS = {"deck.pptx": make_pptx, "budget.xlsx": make_xlsx, "novel.epub": make_epub, "report.odt": make_odt,
            "letter.eml": make_eml, "archive.mbox": make_mbox}


# ---------------------------------------------------------------- kinds

def test_kind_for_the_new_extensions():
    assert [kind_for(n) for n in ("a.pptx", "b.XLSX", "b.xlsm", "c.epub", "d.odt", "e.eml", "f.mbox")] == \
        ["pptx", "xlsx", "xlsx", "epub", "odt", "email", "email"]
    assert kind_for("old.ppt") is None and kind_for("old.xls") is None


# ---------------------------------------------------------------- PPTX

def test_pptx_slides_are_pages_with_titles_tables_and_notes(tmp_path, load):
    doc = load(make_pptx(tmp_path / "deck.pptx"))
    assert doc.kind == "pptx"
    assert _heading_titles(doc) == [(1, "Quarterly Review"), (2, "Welcome"), (2, "Revenue by region"),
                                    (2, "Slide 3")]
    _assert_headings_point_into_text(doc)
    assert [p[2] for p in doc.pages] == [1, 2, 3]
    pages = {n: doc.text[a:b] for a, b, n in doc.pages}
    assert pages[1].startswith("Welcome") and "An opening subtitle" in pages[1]
    slide2 = pages[2]
    assert slide2.index("Upper box") < slide2.index("| Region | Revenue |") < slide2.index("Lower box text.")
    assert "| Region | Revenue |\n|---|---|\n| North | 120 |\n| South | 95 |" in slide2
    assert slide2.rstrip().endswith("Notes\nMention the southern dip.")
    assert pages[3] == f"Slide 3\n\nClosing thoughts. {PLANTED['deck.pptx']}"
    chunks = chunk_document(doc, _count, ChunkerSettings(target_tokens=200, overlap_tokens=0, max_tokens=256))
    table_chunk = next(c for c in chunks if "| North | 120 |" in c.text)
    assert "| Region | Revenue |" in table_chunk.text and "Mention the southern dip." in table_chunk.text
    assert table_chunk.page == 2 and table_chunk.heading == "Quarterly Review › Revenue by region"
    planted_chunk = next(c for c in chunks if "Magenta armadillos" in c.text)
    assert planted_chunk.page == 3 and planted_chunk.heading == "Quarterly Review › Slide 3"


# ---------------------------------------------------------------- XLSX

def test_xlsx_sheets_are_headings_and_used_ranges_are_tables(tmp_path, load):
    doc = load(make_xlsx(tmp_path / "budget.xlsx"))
    assert doc.kind == "xlsx"
    assert _heading_titles(doc) == [(1, "Budget"), (1, "Notes")]  # the empty sheet is skipped
    _assert_headings_point_into_text(doc)
    assert "| Item | Cost | Share | Due | Double |\n|---|---|---|---|---|\n" in doc.text
    assert "| Item-0 | 1,234.50 | 12.5% | 2024-03-01 | 2469 |" in doc.text  # formats; the cached formula value
    assert "| Item-1 | 1,235.50 | 12.5% | 2024-03-02 |  |" in doc.text  # no cached value saved: empty
    assert doc.text.rstrip().endswith(PLANTED["budget.xlsx"])  # one cell: a line of text, not a table


def test_xlsx_table_header_stays_with_its_rows_in_every_chunk(tmp_path):
    doc = load_file(make_xlsx(tmp_path / "big.xlsx", rows=80), tmp_path, limits=IN_PROCESS)
    chunks = chunk_document(doc, _count, ChunkerSettings(target_tokens=80, overlap_tokens=10, max_tokens=100))
    table_chunks = [c for c in chunks if "| Item-" in c.text]
    assert len(table_chunks) > 2
    for chunk in table_chunks:
        assert chunk.heading == "Budget"
        assert chunk.text.lstrip().startswith("| Item | Cost | Share | Due | Double |\n|---|---|---|---|---|")
        assert find_pipe_tables(chunk.text)


def test_xlsx_rows_are_capped_by_the_text_limit(tmp_path):
    path = make_xlsx(tmp_path / "big.xlsx", rows=500)
    doc = load_file(path, tmp_path, limits=LoadLimits(parse_seconds=None, max_chars=5_000))
    assert len(doc.text) <= 5_000 and "cut after" in doc.note and "'Budget'" in doc.note


def test_cell_display_formats():
    import datetime

    assert cell_display(3.0) == "3" and cell_display(0.1 + 0.2) == "0.3" and cell_display(None) == ""
    assert cell_display(1234567.891, "#,##0") == "1,234,568"
    assert cell_display(-1234.5, '"$"#,##0.00') == "-$1,234.50"
    assert cell_display(0.5, "0%") == "50%" and cell_display(True) == "TRUE"
    assert cell_display(datetime.datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02 03:04:05"
    assert cell_display("#DIV/0!") == "#DIV/0!"


# ---------------------------------------------------------------- EPUB

def test_epub_chapters_in_spine_order_with_headings_and_metadata(tmp_path, load):
    doc = load(make_epub(tmp_path / "novel.epub"))
    assert doc.kind == "epub"
    assert _heading_titles(doc) == [(1, "The Compass Book"), (2, "Chapter One: Departure"), (3, "The Harbour"),
                                    (3, "Ports"), (2, "Epilogue")]  # a chapter without headings: its <title>
    _assert_headings_point_into_text(doc)
    assert doc.text.startswith("The Compass Book\n\nAuthor: Ada Quill\n\n")
    assert doc.text.index("The ship left") < doc.text.index("They never returned")  # spine, not manifest order
    assert "| Port | Day |\n|---|---|\n| Oslo | 1 |\n| Bergen | 3 |" in doc.text
    assert doc.text.count("The Compass Book") == 1  # the chapter's <title> repeats it: not a heading again
    assert "xml version" not in doc.text and "DOCTYPE" not in doc.text
    chunks = chunk_document(doc, _count, ChunkerSettings(target_tokens=200, overlap_tokens=0, max_tokens=256))
    planted = next(c for c in chunks if "Periwinkle narwhals" in c.text)
    assert planted.heading == "The Compass Book › Chapter One: Departure › The Harbour"


# ---------------------------------------------------------------- ODT

def test_odt_headings_paragraphs_lists_and_tables(tmp_path, load):
    doc = load(make_odt(tmp_path / "report.odt"))
    assert doc.kind == "odt"
    assert _heading_titles(doc) == [(1, "Annual Report"), (2, "Archive Work"), (2, "Page counts")]
    _assert_headings_point_into_text(doc)
    assert "Opening words with  spaces." in doc.text
    assert "First bullet\n\nSecond bullet" in doc.text
    # repeated empty columns / rows (a styled sheet-sized range) add nothing
    assert "| Year | Pages |\n|---|---|\n| 2022 | 410 |\n| 2023 | 388 |" in doc.text
    assert len(doc.text) < 1_000
    chunks = chunk_document(doc, _count, ChunkerSettings(target_tokens=200, overlap_tokens=0, max_tokens=256))
    table_chunk = next(c for c in chunks if "| 2023 | 388 |" in c.text)
    assert "| Year | Pages |" in table_chunk.text and table_chunk.heading == "Annual Report › Page counts"


# ---------------------------------------------------------------- EML / MBOX

def test_eml_subject_metadata_plain_body_and_attachment_names(tmp_path, load):
    doc = load(make_eml(tmp_path / "letter.eml"))
    assert doc.kind == "email"
    assert _heading_titles(doc) == [(1, "Tournament logistics")]
    lines = doc.text.split("\n\n")
    assert lines[0] == "Tournament logistics"
    assert lines[1] == ("From: Ada Quill <ada@example.org>  Date: Tue, 05 Mar 2024 10:00:00 +0000  "
                        "To: team@example.org")
    assert PLANTED["letter.eml"] in doc.text and "must not be used" not in doc.text  # text/plain preferred
    assert doc.text.rstrip().endswith("Attachments: schedule.pdf") and "%PDF" not in doc.text


def test_mbox_gives_one_section_per_message(tmp_path, load):
    doc = load(make_mbox(tmp_path / "archive.mbox"))
    assert doc.kind == "email"
    assert _heading_titles(doc) == [(1, "Weather log"), (1, "HTML only"), (2, "Big news"), (1, "(no subject)")]
    _assert_headings_point_into_text(doc)
    assert doc.text.count("From: Ada Quill <ada@example.org>  Date: ") == 3
    assert "The storms were catalogued." in doc.text and "<p>" not in doc.text
    chunks = chunk_document(doc, _count, ChunkerSettings(target_tokens=200, overlap_tokens=0, max_tokens=256))
    assert next(c for c in chunks if "Sepia pangolins" in c.text).heading == "Weather log"
    assert next(c for c in chunks if "without a subject" in c.text).heading == "(no subject)"


# ---------------------------------------------------------------- bad files

def _bomb(path: Path, unpacked: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("content.xml", b"\0" * unpacked)
    return path


def _zip_with(path: Path, members: dict[str, str | bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


BAD_FILES = {
    # name -> (bytes or a builder, expected substring of the skip reason)
    "garbage.pptx": (b"PK\x03\x04 this is not a zip", "corrupt PPTX (not a ZIP archive"),
    "no-parts.pptx": (lambda p: _zip_with(p, {"hello.txt": "hi"}), "corrupt PPTX"),
    "locked.pptx": (OLE_MAGIC + b"\0" * 600, "password-protected"),
    "bomb.pptx": (lambda p: _bomb(p, 8 * MIB), "suspicious compression"),
    "garbage.xlsx": (b"not a spreadsheet at all", "corrupt XLSX (not a ZIP archive"),
    "no-parts.xlsx": (lambda p: _zip_with(p, {"hello.txt": "hi"}), "corrupt XLSX"),
    "locked.xlsx": (OLE_MAGIC + b"\0" * 600, "password-protected"),
    "empty-sheets.xlsx": (lambda p: _empty_workbook(p), "no text content"),
    "future-zip.xlsx": (lambda p: _future_zip(p), "corrupt XLSX (not a ZIP archive: zip file version"),
    "garbage.epub": (b"\x00\x01\x02 binary", "corrupt EPUB (not a ZIP archive"),
    "no-container.epub": (lambda p: _zip_with(p, {"mimetype": "application/epub+zip"}),
                          "corrupt EPUB (META-INF/container.xml is missing)"),
    "bad-xml.epub": (lambda p: _zip_with(p, {"META-INF/container.xml": "<container><rootfiles"}),
                     "not well-formed XML"),
    "entities.epub": (lambda p: _zip_with(p, {"META-INF/container.xml": '<!DOCTYPE x [<!ENTITY a "aaaa">]><x/>'}),
                      "entity expansion"),
    "drm.epub": (lambda p: _drm_epub(p), "DRM-protected"),
    "garbage.odt": (b"PK\x05\x06" + b"\0" * 10, "corrupt ODT"),
    "no-content.odt": (lambda p: _zip_with(p, {"mimetype": "application/vnd.oasis.opendocument.text"}),
                       "corrupt ODT (content.xml is missing)"),
    "locked.odt": (lambda p: _zip_with(p, {"META-INF/manifest.xml": "<m><manifest:encryption-data/></m>",
                                           "content.xml": "\x93\x11 encrypted bytes"}), "password-protected ODT"),
    "bomb.odt": (lambda p: _bomb(p, 8 * MIB), "suspicious compression"),
    "binary.eml": (b"\x00\x01\x02\x03" * 100, "binary"),
    "noheaders.eml": (b"\x89PNG just some bytes without headers\n\nmore", "corrupt e-mail"),
    "empty.mbox": (b"From nobody\n\nFrom nobody\n", "corrupt MBOX (no readable messages)"),
}


def _future_zip(path: Path) -> Path:
    """A ZIP whose central directory asks for a zip version Python cannot extract (NotImplementedError)."""
    _zip_with(path, {"a.xml": "<a/>"})
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 6:central + 8] = (119).to_bytes(2, "little")  # "version needed to extract": 11.9
    path.write_bytes(bytes(data))
    return path


def _empty_workbook(path: Path) -> Path:
    from openpyxl import Workbook

    wb = Workbook()
    wb.create_sheet("Also empty")
    wb.save(str(path))
    return path


def _drm_epub(path: Path) -> Path:
    make_epub(path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("META-INF/encryption.xml", """<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container"
 xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData><enc:CipherData>
 <enc:CipherReference URI="OEBPS/text/chap_b.xhtml"/></enc:CipherData></enc:EncryptedData></encryption>""")
    return path


def _write_bad(folder: Path, name: str) -> Path:
    content, _ = BAD_FILES[name]
    path = folder / name
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_file_is_a_skip_reason_not_an_exception(tmp_path, name):
    path = _write_bad(tmp_path, name)
    with pytest.raises(SkipFile) as info:
        load_file(path, tmp_path, limits=IN_PROCESS)
    assert BAD_FILES[name][1] in info.value.reason, info.value.reason


def test_bad_files_through_the_worker_give_the_same_reasons(tmp_path, worker):
    limits = LoadLimits(parse_seconds=60)
    for name, (_, expected) in sorted(BAD_FILES.items()):
        path = _write_bad(tmp_path, name)
        with pytest.raises(SkipFile) as info:
            load_file(path, tmp_path, limits=limits, worker=worker)
        assert expected in info.value.reason, (name, info.value.reason)
    # and the worker still parses good files afterwards
    assert "Welcome" in load_file(make_pptx(tmp_path / "ok.pptx"), tmp_path, limits=limits, worker=worker).text


def test_a_zip_bomb_over_the_unpacked_limit_is_refused_before_parsing(tmp_path):
    path = make_pptx(tmp_path / "deck.pptx")
    with pytest.raises(SkipFile, match=r"unpacks to too much .*ZIP bomb"):
        load_file(path, tmp_path, limits=LoadLimits(parse_seconds=None, max_unpacked_bytes=1_000))
    with pytest.raises(SkipFile, match="too many parts in the EPUB archive"):
        load_file(make_epub(tmp_path / "n.epub"), tmp_path, limits=LoadLimits(parse_seconds=None, max_zip_parts=3))


def test_a_huge_text_is_stopped_by_the_character_limit(tmp_path):
    box = mailbox.mbox(str(tmp_path / "big.mbox"))
    for i in range(50):
        box.add(_message(f"Message {i}", "word " * 200))
    box.flush()
    box.close()
    with pytest.raises(SkipFile, match="too much text"):
        load_file(tmp_path / "big.mbox", tmp_path, limits=LoadLimits(parse_seconds=None, max_chars=10_000))


# ---------------------------------------------------------------- sync

def test_sync_indexes_every_format_and_search_finds_each_planted_sentence(tmp_path):
    from retrieval.retriever import Retriever
    from retrieval.sync import sync_folder
    from retrieval.testing import HashingEncoder

    docs = tmp_path / "docs"
    docs.mkdir()
    for name, build in BUILDERS.items():
        build(docs / name)
    _write_bad(docs, "garbage.pptx")
    _write_bad(docs, "binary.eml")
    assert {f.kind for f in scan_folder(docs).files} == {"pptx", "xlsx", "epub", "odt", "email"}
    encoder = HashingEncoder()
    report = sync_folder(docs, tmp_path / "index", encoder, progress=False)
    assert sorted(report.added) == sorted(PLANTED)
    skipped = dict(report.skipped)
    assert "corrupt PPTX" in skipped["garbage.pptx"] and "binary" in skipped["binary.eml"]
    retriever = Retriever(tmp_path / "index", encoder)
    for mode in ("lexical", "dense", "hybrid"):
        for name, sentence in PLANTED.items():
            hits = retriever.search(sentence, k=3, mode=mode)
            assert hits and hits[0].path == name, (mode, name, [h.path for h in hits])
            assert sentence.split()[1] in hits[0].text


def test_the_new_formats_are_parsed_under_the_worker_time_limit(tmp_path, monkeypatch):
    from retrieval.loaders import HANG_MARKER_ENV

    path = tmp_path / "hangs.eml"
    path.write_bytes(bytes(_message("Stuck", "HANG-THE-FORMAT-PARSER")))
    monkeypatch.setenv(HANG_MARKER_ENV, "HANG-THE-FORMAT-PARSER")
    worker = ParserWorker()
    try:
        with pytest.raises(SkipFile, match=r"parsing took longer than 1 s"):
            load_file(path, tmp_path, limits=LoadLimits(parse_seconds=1.0), worker=worker)
        assert worker.restarts == 1
    finally:
        worker.close()
