"""PDF text that reads like the page (retrieval/pdf.py): tiny PDFs written with reportlab in each test.

Text is written to the content stream in an order that is not reading order where that matters (row by
row across two columns), so that a plain content-order extractor fails these tests.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

pytest.importorskip("reportlab")
pytest.importorskip("pypdfium2")

from reportlab.lib.pagesizes import A4  # noqa: E402
from reportlab.pdfgen import canvas  # noqa: E402

from retrieval.chunking import ChunkerSettings, chunk_document  # noqa: E402
from retrieval.loaders import LoadLimits, SkipFile, load_file, parse_bytes  # noqa: E402
from retrieval.pdf import join_hyphenated, normalise_word  # noqa: E402
from retrieval.testing import HashingEncoder  # noqa: E402

IN_PROCESS = LoadLimits(parse_seconds=None)
WIDTH, HEIGHT = A4


def parse(raw: bytes, limits: LoadLimits = IN_PROCESS):
    return parse_bytes("pdf", raw, limits)


def pdf(pages: list[list[tuple[str, float, float, float, str]]], **kwargs) -> bytes:
    """Pages of (font, size, x, y, text) draw calls, made in the order given."""
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4, **kwargs)
    for ops in pages:
        for font, size, x, y, text in ops:
            c.setFont(font, size)
            c.drawString(x, y, text)
        c.showPage()
    c.save()
    return buf.getvalue()


def body(lines: list[str], x: float = 72, top: float = 700, size: float = 10, leading: float = 12,
         font: str = "Times-Roman") -> list[tuple[str, float, float, float, str]]:
    return [(font, size, x, top - k * leading, line) for k, line in enumerate(lines)]


def words_of(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- reading order

LEFT = [f"Left column line {n} about amber lighthouses." for n in range(1, 11)]
RIGHT = [f"Right column line {n} about cobalt windmills." for n in range(1, 11)]


def two_column_page() -> list[tuple[str, float, float, float, str]]:
    ops = [("Helvetica-Bold", 16, 150, 780, "Harbour Lights Across The Wide Bay")]
    for k in range(10):  # row by row: left line k, then right line k, at the same height
        y = 720 - 12 * k
        ops.append(("Times-Roman", 10, 60, y, LEFT[k]))
        ops.append(("Times-Roman", 10, 320, y, RIGHT[k]))
    return ops


def test_two_columns_are_read_left_column_first():
    text, pages, headings, _ = parse(pdf([two_column_page()]))
    flat = words_of(text)
    positions = [flat.index(line) for line in LEFT + RIGHT]
    assert positions == sorted(positions), flat  # all of the left column, then all of the right
    assert flat.index("Harbour Lights") < positions[0]  # the full-width title stays on top
    assert pages == [(0, len(text), 1)]


def test_a_word_hyphenated_across_the_column_break_is_joined():
    left = LEFT[:9] + ["The last left line ends in a mas-"]
    right = ["sive word that goes on here."] + RIGHT[1:]
    ops = []
    for k in range(10):
        ops.append(("Times-Roman", 10, 60, 720 - 12 * k, left[k]))
        ops.append(("Times-Roman", 10, 320, 720 - 12 * k, right[k]))
    flat = words_of(parse(pdf([ops]))[0])
    assert "ends in a massive word that goes on" in flat


def test_a_single_column_page_keeps_its_line_order():
    lines = [f"Plain line {n} of a simple single column memo about teapots and kettles." for n in range(12)]
    text, _, _, _ = parse(pdf([body(lines)]))
    flat = words_of(text)
    positions = [flat.index(line) for line in lines]
    assert positions == sorted(positions)


def test_code_with_aligned_comments_is_not_taken_for_two_columns():
    code = ["x = load(path)", "y = x + 1", "z = compute(y, x)", "w = 2", "total = z * w", "print(total)",
            "done = True", "return done"]
    ops = [("Courier", 9, 72, 700 - 11 * k, line) for k, line in enumerate(code)]
    ops += [("Courier", 9, 330, 700 - 11 * k, f"# step {k} of the listing goes here") for k in range(8)]
    flat = words_of(parse(pdf([ops]))[0])
    assert flat.index("x = load(path)") < flat.index("# step 0") < flat.index("y = x + 1")


def _draw(ops: list[tuple[str, float, float, float, str, float]], pagesize=A4) -> bytes:
    """One page of (font, size, x, y, text, width) draw calls; a width > 0 justifies the text to that width."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=pagesize)
    for font, size, x, y, text, width in ops:
        t = c.beginText(x, y)
        t.setFont(font, size)
        if width > 0 and text.count(" "):
            t.setWordSpace((width - stringWidth(text, font, size)) / text.count(" "))
        t.textOut(text)
        c.drawText(t)
    c.showPage()
    c.save()
    return buf.getvalue()


def test_three_columns_of_entries_are_read_column_by_column():
    """A reference card: three columns of section titles and short "description   command" entries. Lines of
    the three columns share baselines and look like rows of one wide table; they are read a column at a time,
    each section's entries as a two-column table of its own."""
    from reportlab.lib.pagesizes import landscape
    from reportlab.pdfbase.pdfmetrics import stringWidth

    width = landscape(A4)[0]
    col_w = (width - 40 - 2 * 20) / 3  # three columns, two 20 pt gutters
    xs = [20 + k * (col_w + 20) for k in range(3)]
    topics = ["amber", "cobalt", "saffron"]
    titles = {(0, 0): "Amber basics", (0, 7): "Amber extras", (1, 3): "Cobalt functions", (2, 1): "Saffron tools",
              (2, 9): "Saffron odds and ends"}
    ops = []
    ys = [540.0, 540.0, 540.0]
    for k in range(16):  # row by row across the three columns; a section title takes more room than a row
        for c, topic in enumerate(topics):
            y = ys[c]
            ys[c] -= 14 if (c, k) in titles else 10
            if (c, k) in titles:
                ops.append(("Times-Bold", 9, xs[c], y - 2, titles[c, k], 0))
                continue
            desc, cmd = f"{topic} entry {k} describes a thing", f"{topic}cmd{k}(x)"
            ops.append(("Times-Roman", 8, xs[c], y, desc, 0))
            ops.append(("Courier", 8, xs[c] + col_w - stringWidth(cmd, "Courier", 8), y, cmd, 0))
    text, _, _, _ = parse(_draw(ops, landscape(A4)))
    positions = [text.index(f"{topic}cmd{n}(x)") for topic in topics for n in range(16) if f"{topic}cmd{n}(x)" in text]
    assert len(positions) == 48 - len(titles) and positions == sorted(positions), text
    assert "| amber entry 3 describes a thing | ambercmd3(x) |" in text, text
    assert "| saffron entry 15 describes a thing | saffroncmd15(x) |" in text
    assert text.index("Cobalt functions") < text.index("cobaltcmd4(x)") < text.index("Saffron tools")


def test_a_column_of_short_code_lines_beside_a_text_column_is_still_a_column():
    """The left column is mostly a code listing (short lines), so most of its lines stop well short of the
    gutter; its justified lines reach it, and the right column's lines start at one margin."""
    prose = ["A paragraph before the listing explains in some detail what the code does",
             "and it is set as justified text that runs all the way up to the gutter",
             "of the page on the right, just as the third line of it does here too.",
             "Bulleted lists using the itemize environment should not be used in",
             "papers for this journal, as it is kept for old documents only. Fine."]
    code = ["\\begin{enumerate}", "\\item First item", "\\item Second", "\\end{enumerate}", "which produces",
            "(i) First item", "(ii) Second", "\\begin{description}", "\\item Only", "\\end{description}"]
    left = [(t, 265.0) for t in prose[:3]] + [(t, 0.0) for t in code] + [(t, 265.0) for t in prose[3:]]
    right = [f"Right column sentence {n} about lapis windmills goes on and on to the end." for n in range(15)]
    ops = []
    for k in range(15):
        ops.append(("Times-Roman", 9, 42, 760 - 11 * k, left[k][0], left[k][1]))
        ops.append(("Times-Roman", 9, 322, 760 - 11 * k, right[k], 0.0))
    flat = words_of(parse(_draw(ops))[0])
    assert flat.index("old documents only. Fine.") < flat.index(right[0]), flat
    positions = [flat.index(line) for line in right]
    assert positions == sorted(positions)


def test_a_footnote_mark_on_a_table_label_is_a_word_of_its_own():
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4)
    c.setFont("Times-Roman", 10)
    c.drawString(72, 760, "The table lists the radii of some ions below.")
    rows = [("Ion", "radius"), ("Cs", "1.420"), ("Rb", "1.330"), ("Na", "0.760")]
    for r, (label, value) in enumerate(rows):
        t = c.beginText(72, 730 - 14 * r)
        t.setFont("Times-Roman", 10)
        t.textOut(label)
        if r:
            t.setFont("Times-Roman", 6.5)
            t.setRise(4)
            t.textOut("abc"[r - 1])
            t.setRise(0)
        c.drawText(t)
        c.setFont("Times-Roman", 10)
        c.drawString(200, 730 - 14 * r, value)
    c.showPage()
    c.save()
    text, _, _, _ = parse(buf.getvalue())
    assert "| Cs a | 1.420 |" in text and "| Rb b | 1.330 |" in text, text
    from assistant.tables import answer_cell

    assert answer_cell("What is the radius of Cs?", text).value == "1.420"


def test_a_tex_accent_drawn_before_its_letter_goes_onto_it():
    text, _, _, _ = parse(pdf([body(["The Pad\u00b4e approximant and the M\u00a8obius function."])]))
    assert "Padé approximant" in text and "Möbius function" in text
    assert normalise_word("(\u02da") == "(\u02da" and normalise_word("\u02daA") == "Å"
    assert normalise_word("edu/\u02dcCharlie") == "edu/~Charlie"  # TeX's tilde in a URL is no accent


def test_a_headerless_arrow_table_and_a_row_with_pipes_stay_tables():
    """A mapping "a   =>   b" set as a table without a header line, and an attribute table whose long cell
    holds "|" characters, are pipe tables that answer a cell."""
    from assistant.tables import answer_cell

    ops = body(["The mapping of pointer kinds is as follows:"], top=780)
    for r, (a, b) in enumerate([("[ref] ty *", "[[ty]]"), ("[unique] ty *", "[[ty]] option"),
                                ("[ptr] ty *", "[[ty]] Com.opaque")]):
        ops += [("Times-Roman", 10, 100, 750 - 14 * r, a), ("Times-Roman", 10, 200, 750 - 14 * r, "=>"),
                ("Times-Roman", 10, 240, 750 - 14 * r, b)]
    ops += body(["Attributes and where they may appear:"], top=680)
    rows = [("Attribute", "Context"), ("camlint", "int or long integer type"),
            ("int_default ( camlint | nativeint | int32 | int64 )", "interface"),
            ("int32", "int or long integer type"), ("ptr", "any pointer type")]
    for r, (a, b) in enumerate(rows):
        ops += [("Times-Roman", 10, 72, 650 - 14 * r, a), ("Times-Roman", 10, 330, 650 - 14 * r, b)]
    text, _, _, _ = parse(pdf([ops]))
    assert "| [ptr] ty * | => | [[ty]] Com.opaque |" in text, text
    mapping = text[:text.index("Attributes and where")]
    assert answer_cell("What does a [ptr] pointer map to?", mapping).value == "[[ty]] Com.opaque"
    assert "| int_default ( camlint / nativeint / int32 / int64 ) | interface |\n| int32 |" in text, text
    assert answer_cell("What is the context of ptr?", text).value == "any pointer type"


# ---------------------------------------------------------------- running headers, footers, page numbers

def test_running_header_and_page_numbers_are_dropped_but_pages_stay_numbered():
    pages = []
    for n in range(1, 4):
        ops = [("Helvetica", 8, 72, 810, "ACME Quarterly Report - Confidential"),
               ("Helvetica", 8, 290, 30, f"Page {n}" if n != 2 else "2")]
        ops += body([f"Body text of page {n} talks about turquoise elephants.",
                     f"Second sentence on page {n} about saffron trains."])
        pages.append(ops)
    text, spans, _, _ = parse(pdf(pages))
    assert "ACME" not in text and "Confidential" not in text
    assert "Page" not in text
    assert [number for _, _, number in spans] == [1, 2, 3]
    for start, end, number in spans:
        assert f"page {number} talks about turquoise" in text[start:end]
        assert text[start:end].strip().endswith("saffron trains.")


def test_running_headers_that_alternate_on_odd_and_even_pages_are_dropped():
    pages = []
    for n in range(1, 7):
        head = "Guide for authors" if n % 2 else "K. T. Smith"
        ops = [("Helvetica", 8, 72, 810, f"{n}   {head}" if n > 1 else "Title page heading")]
        ops += body([f"Body of page {n} is about {['cedar', 'birch', 'alder', 'rowan', 'hazel', 'larch'][n - 1]}."])
        pages.append(ops)
    text, _, _, _ = parse(pdf(pages))
    assert "Guide for authors" not in text and "K. T. Smith" not in text
    assert "Title page heading" in text and "about larch" in text


def test_a_header_on_only_one_page_is_kept():
    pages = [[("Helvetica", 8, 72, 810, "Draft notice only here")] + body(["First page body about apples."]),
             body(["Second page body about pears."]),
             body(["Third page body about plums."])]
    text, _, _, _ = parse(pdf(pages))
    assert "Draft notice only here" in text


# ---------------------------------------------------------------- hyphens, ligatures, spaces

def test_line_break_hyphen_of_a_real_word_is_joined_and_of_a_compound_kept():
    lines = ["The survey collected a truly mas-",
             "sive amount of data with the newest state-of-the-",
             "art methods of the flam-",
             "boozle team; flamboozle is our name. The zorp-",
             "blat remains unknown."]
    text, _, _, _ = parse(pdf([body(lines)]))
    flat = words_of(text)
    assert "truly massive amount" in flat  # "massive" is a word of the encoder's vocabulary
    assert "state-of-the-art methods" in flat  # "theart" is no word: the compound keeps its hyphen
    assert "the flamboozle team" in flat  # occurs elsewhere in the document
    assert "zorp-blat remains" in flat  # neither: the hyphen stays
    assert "mas-" not in flat


def test_join_hyphenated_rules():
    vocab = {"massive", "theart"}
    assert join_hyphenated("mas-", "sive,", vocab) == "massive,"
    assert join_hyphenated("mas-", "Sive", vocab) is None  # a capital after the break: a name, keep
    assert join_hyphenated("state-of-the-", "art", {"massive"}) is None
    assert join_hyphenated("3-", "4", {"34"}) is None  # numbers are no words


def test_ligatures_and_odd_spacing_are_normalised():
    import reportlab
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    vera = os.path.join(os.path.dirname(reportlab.__file__), "fonts", "Vera.ttf")
    pdfmetrics.registerFont(TTFont("VeraTest", vera))
    text, _, _, _ = parse(pdf([[("VeraTest", 10, 72, 700, "the \ufb01rst   \ufb02ow of water")]]))
    assert "the first flow of water" in text
    assert normalise_word("e\ufb03cient\u00a0") == "efficient"
    assert normalise_word("\uff21\uff22") == "AB"  # full-width letters


# ---------------------------------------------------------------- tables

def test_a_table_becomes_a_markdown_pipe_table():
    rows = [["Model", "Params", "Score"], ["Base", "110M", "81.2"], ["Large", "340M", "84.6"],
            ["Tiny", "14M", "72.0"]]
    ops = body(["Results of the comparison follow in the table below."], top=760)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            ops.append(("Times-Bold" if r == 0 else "Times-Roman", 10, 72 + 120 * c, 720 - 16 * r, cell))
    ops += body(["The large model wins by a clear margin."], top=640)
    text, _, _, _ = parse(pdf([ops]))
    table = "| Model | Params | Score |\n|---|---|---|\n| Base | 110M | 81.2 |\n| Large | 340M | 84.6 |\n" \
            "| Tiny | 14M | 72.0 |"
    assert table in text, text
    before, after = text.split(table)
    assert before.endswith("table below.\n\n") and after.startswith("\n\nThe large model")


def test_a_wrapped_table_cell_stays_in_its_row():
    rows = [["Model", "Description", "Score"], ["Base", "small and fast", "81.2"], ["", "on CPUs", ""],
            ["Large", "big", "84.6"]]
    ops = body(["Intro line of prose here before the table."], top=760)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            if cell:
                ops.append(("Times-Roman", 10, 72 + 120 * c, 720 - 14 * r, cell))
    ops += body(["Closing words."], top=640)
    text, _, _, _ = parse(pdf([ops]))
    assert "| Model | Description | Score |\n|---|---|---|\n| Base | small and fast on CPUs | 81.2 |\n" \
           "| Large | big | 84.6 |\n\nClosing words." in text, text


# ---------------------------------------------------------------- headings

def test_larger_and_bold_headings_are_in_document_headings_and_chunks():
    ops = [("Helvetica-Bold", 18, 72, 780, "Gardening Manual")]
    ops += [("Times-Bold", 12, 72, 740, "1 Introduction")]
    ops += body(["Tomatoes like warm soil and a lot of sun.", "Water them in the morning."], top=720)
    ops += [("Times-Bold", 12, 72, 670, "2 Pests")]
    ops += body(["Aphids are the most common visitor.", "Ladybirds eat them."], top=650)
    ops += [("Times-Roman", 10, 72, 600, "References")]
    ops += body(["[1] A. Gardener. Soil. 2020."], top=585)
    raw = pdf([ops])
    text, pages, headings, _ = parse(raw)
    titles = {title: level for _, level, title in headings}
    assert titles["Gardening Manual"] == 1
    assert titles["1 Introduction"] == titles["2 Pests"] == 2
    assert titles["References"] == 2  # set in body type, but a section like "2 Pests"
    for offset, _, title in headings:
        assert text[offset:offset + len(title)] == title
    from retrieval.loaders import Document

    doc = Document("g.pdf", text, "pdf", "0" * 64, len(raw), 0.0, pages, headings)
    encoder = HashingEncoder()
    chunks = chunk_document(doc, encoder.count_tokens, ChunkerSettings.for_encoder(encoder))
    [aphids] = [c for c in chunks if "Aphids" in c.text]
    assert "2 Pests" in aphids.heading and aphids.page == 1
    [ref] = [c for c in chunks if "A. Gardener" in c.text]
    assert "References" in ref.heading


def test_a_footnote_at_the_foot_of_the_left_column_moves_after_the_right_column():
    note = "1 A footnote about string and paper."
    ops = two_column_page() + [("Times-Roman", 7, 60, 110, note)]
    text, _, _, _ = parse(pdf([ops]))
    flat = words_of(text)
    assert flat.index(RIGHT[-1]) < flat.index(note)  # not between the columns
    assert flat.index(LEFT[-1]) < flat.index(RIGHT[0])


# ---------------------------------------------------------------- bad input keeps its reasons

def test_encrypted_corrupt_and_oversized_pdfs_give_reasons():
    from reportlab.lib import pdfencrypt

    secret = pdf([body(["Top secret sentence."])],
                 encrypt=pdfencrypt.StandardEncryption("user-pass", "owner-pass"))
    with pytest.raises(SkipFile, match="encrypted PDF"):
        parse(secret)
    with pytest.raises(SkipFile, match="corrupt PDF"):
        parse(b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\nthis is not a pdf\x00\x01")
    three = pdf([body([f"Page {n} text."]) for n in range(3)])
    with pytest.raises(SkipFile, match=r"too many pages \(3 > limit 2\)"):
        parse(three, LoadLimits(parse_seconds=None, max_pdf_pages=2))
    with pytest.raises(SkipFile, match="no text layer"):
        parse(pdf([[]]))
    with pytest.raises(SkipFile, match="too much text"):
        parse(three, LoadLimits(parse_seconds=None, max_chars=5))


def test_an_empty_password_pdf_is_read():
    from reportlab.lib import pdfencrypt

    raw = pdf([body(["Openly encrypted sentence about otters."])],
              encrypt=pdfencrypt.StandardEncryption("", "owner-pass"))
    text, _, _, _ = parse(raw)
    assert "otters" in text


def test_headings_come_back_through_the_parser_worker(tmp_path: Path):
    ops = [("Helvetica-Bold", 18, 72, 780, "Worker Title")] + body(["Body about marmots."], top=740)
    (tmp_path / "w.pdf").write_bytes(pdf([ops]))
    doc = load_file(tmp_path / "w.pdf", tmp_path)  # default limits: parsed in the worker process
    assert doc.headings and doc.headings[0][2] == "Worker Title"
    assert doc.pages == [(0, len(doc.text), 1)]


def test_bold_by_weight_is_relative_to_the_body_font():
    """Viewers estimate font weights; some estimate a whole document high (a roman body at 744): bold is a
    weight well above the body's, not above a fixed number."""
    from retrieval.pdf import Word, _weights_to_bold

    def words(weights: list[float]) -> list[Word]:
        return [Word("word", 0, 10, 0, 10, 10, False, wt) for wt in weights]

    high = words([744.0] * 20 + [856.0] * 3)
    _weights_to_bold([high])
    assert [w.bold for w in high] == [False] * 20 + [True] * 3
    usual = words([400.0] * 20 + [700.0, 500.0])
    _weights_to_bold([usual])
    assert [w.bold for w in usual][-2:] == [True, False] and not any(w.bold for w in usual[:20])
    unknown = words([0.0] * 5)
    _weights_to_bold([unknown])
    assert not any(w.bold for w in unknown)
