"""Chunking: structure-aware, token-budgeted by the encoder's own count, exact offsets, overlap."""

from __future__ import annotations

import math

import pytest

from conftest_retrieval import MAX_BYTES, PLANTED, make_mixed_folder
from retrieval.chunking import ChunkerSettings, chunk_document
from retrieval.loaders import Document, load_file, scan_folder
from retrieval.pipe_tables import find_pipe_tables, format_pipe_table
from retrieval.testing import HashingEncoder

ENC = HashingEncoder()


def _doc(text, kind="markdown", path="a.md", **kw):
    return Document(path, text, kind, "0" * 64, len(text), 0.0, **kw)


def _check_offsets(doc, chunks):
    for c in chunks:
        # exact slices, but for the header a split table's continuation chunks repeat in front of their rows
        assert c.repeated_header() + doc.text[c.start:c.end] == c.text
        # no blank edges (code keeps the indentation of its first line)
        assert c.text.strip() and c.text == (c.text.rstrip() if doc.kind == "code" else c.text.strip())
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_markdown_heading_paths_and_clean_text():
    text = ("# Attention\n\nIntro to attention.\n\n## Multi-head attention\n\nHeads run in parallel.\n\n"
            "```python\n# a comment, not a heading\nx = 1\n```\n\nSetext title\n------------\n\nBody of setext.\n")
    doc = _doc(text)
    chunks = chunk_document(doc, ENC.count_tokens)
    _check_offsets(doc, chunks)
    assert [(c.heading, c.text.split("\n")[0]) for c in chunks] == [
        ("Attention", "Intro to attention."),
        ("Attention › Multi-head attention", "Heads run in parallel."),
        ("Attention › Setext title", "Body of setext."),
    ]
    assert "# a comment, not a heading" in chunks[1].text  # fenced code stays with its section
    assert chunks[1].embedding_text().startswith("Attention › Multi-head attention\nHeads run")


def test_rst_heading_levels_follow_adornment_order():
    text = "Title\n=====\n\nIntro.\n\nPart\n----\n\nPart text.\n\nOther\n=====\n\nOther text.\n"
    chunks = chunk_document(_doc(text, "rst", "a.rst"), ENC.count_tokens)
    assert [(c.heading, c.text) for c in chunks] == [
        ("Title", "Intro."), ("Title › Part", "Part text."), ("Other", "Other text.")]


def test_budget_overlap_and_coverage():
    sentences = [f"Sentence {i} mentions topic {i % 7} and nothing else." for i in range(120)]
    text = "# Long\n\n" + " ".join(sentences[:60]) + "\n\n" + " ".join(sentences[60:])
    doc = _doc(text)
    settings = ChunkerSettings(target_tokens=60, overlap_tokens=12, max_tokens=80)
    chunks = chunk_document(doc, ENC.count_tokens, settings)
    _check_offsets(doc, chunks)
    assert len(chunks) > 10
    counts = ENC.count_tokens([c.embedding_text() for c in chunks])
    assert max(counts) <= settings.max_tokens
    assert max(ENC.count_tokens([c.text for c in chunks])) <= settings.target_tokens
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end, "consecutive chunks overlap"
        assert b.start > a.start, "every chunk advances"
        overlap = ENC.count_tokens([doc.text[b.start:a.end]])[0]
        assert overlap <= settings.overlap_tokens
    # every sentence is in some chunk
    joined = [c.text for c in chunks]
    assert all(any(s in t for t in joined) for s in sentences)


def test_no_chunk_exceeds_the_window_even_with_giant_words():
    # A counter that charges one token per 4 characters, like WordPiece on an unknown blob.
    def count(texts):
        return [sum(math.ceil(len(w) / 4) for w in t.split()) for t in texts]

    text = "intro words here. " + "x" * 3000 + " tail words. " + "https://example.com/" + "a/" * 500
    doc = _doc(text, "text", "a.txt")
    settings = ChunkerSettings(target_tokens=100, overlap_tokens=10, max_tokens=120)
    chunks = chunk_document(doc, count, settings)
    _check_offsets(doc, chunks)
    assert max(count([c.embedding_text() for c in chunks])) <= 120
    assert "".join(c.text for c in chunks).replace(" ", "") .startswith("intro")
    assert sum(c.text.count("x") for c in chunks) >= 3000


def test_long_heading_path_does_not_break_the_budget():
    heading = "# " + " ".join(["verylongheading"] * 200)
    doc = _doc(heading + "\n\nshort body text.\n")
    settings = ChunkerSettings(target_tokens=50, overlap_tokens=5, max_tokens=60)
    chunks = chunk_document(doc, ENC.count_tokens, settings)
    assert chunks and max(ENC.count_tokens([c.embedding_text() for c in chunks])) <= 60


def test_code_is_split_at_lines():
    lines = [f"    value_{i} = compute({i})  # step {i}" for i in range(200)]
    doc = _doc("def f():\n" + "\n".join(lines) + "\n", "code", "f.py")
    chunks = chunk_document(doc, ENC.count_tokens, ChunkerSettings(target_tokens=80, overlap_tokens=10))
    _check_offsets(doc, chunks)
    for c in chunks:
        assert doc.text[c.end] == "\n", "code chunks end at line ends"


def test_mixed_folder_chunks_keep_path_heading_and_page(tmp_path):
    folder = make_mixed_folder(tmp_path)
    by_path = {}
    for entry in scan_folder(folder, MAX_BYTES).files:
        try:
            doc = load_file(entry, max_bytes=MAX_BYTES)
        except Exception:
            continue
        chunks = chunk_document(doc, ENC.count_tokens)
        _check_offsets(doc, chunks)
        by_path[doc.path] = chunks
    assert set(by_path) == set(PLANTED)
    assert all(c.path == path for path, chunks in by_path.items() for c in chunks)
    [pdf_hit] = [c for c in by_path["report.pdf"] if "Emerald flamingos" in c.text]
    assert pdf_hit.page == 2
    assert {c.page for c in by_path["report.pdf"]} == {1, 2}
    [md_hit] = [c for c in by_path["guide.md"] if "Quokkas" in c.text]
    assert md_hit.heading == "User guide › Finance › Mortgages"
    [docx_hit] = [c for c in by_path["memo.docx"] if "Lavender" in c.text]
    assert docx_hit.heading == "Memo › Semaphore"
    [html_hit] = [c for c in by_path["page.html"] if "obsidian" in c.text]
    assert html_hit.heading == "Poetry › Tortoises"
    [rst_hit] = [c for c in by_path["manual.rst"] if "pelican" in c.text]
    assert rst_hit.heading == "Manual › Calibration"


@pytest.mark.real
def test_real_tokenizer_budget(real_encoder):
    text = "# Doc\n\n" + " ".join(f"Token budget sentence number {i} with unusual words like "
                                   f"pneumonoultramicroscopic{i} and emoji 🙂." for i in range(80))
    doc = _doc(text)
    settings = ChunkerSettings.for_encoder(real_encoder)
    chunks = chunk_document(doc, real_encoder.count_tokens, settings)
    counts = real_encoder.count_tokens([c.embedding_text() for c in chunks])
    assert settings.max_tokens == real_encoder.max_length - 2
    assert max(counts) <= settings.max_tokens
    assert max(counts) > settings.target_tokens * 0.7  # chunks are filled, not tiny


# ---------------------------------------------------------------- tables

def _pinned_markdown():
    """A Markdown document without tables (but with pipes in prose, lists and code, and a pipe line without a
    separator): its chunks were computed by the chunker before tables were recognised, and are pinned below."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    parts = ["# Pinned guide\n\nThis guide has no tables. It uses a | b pipes in prose, though.\n"]
    for s in range(4):
        parts.append(f"\n## Section {s}\n\n")
        for p in range(3):
            sent = [f"Sentence {s}.{p}.{i} talks about {words[(s + p + i) % 8]} and {words[i % 8]} today."
                    for i in range(7)]
            parts.append(" ".join(sent) + "\n\n")
        parts.append("- item one | not a table\n- item two\n\n```sh\ncat a | grep b\n# no heading\n```\n")
    parts.append("\n" + "word " * 150 + "\n\n| lonely | pipe line without separator |\n")
    return "".join(parts)


# (section number or "" for the top heading, start, end) of each chunk, from the chunker before tables.
PINNED = {
    "default": [('', 16, 79), ('0', 95, 838), ('0', 740, 1211), ('1', 1227, 1971), ('1', 1873, 2343),
                ('2', 2359, 3105), ('2', 3006, 3475), ('3', 3491, 4233), ('3', 4136, 4604), ('3', 4530, 5398)],
    "small": [('', 16, 79), ('0', 95, 242), ('0', 243, 394), ('0', 395, 539), ('0', 540, 692), ('0', 693, 838),
              ('0', 839, 988), ('0', 989, 1135), ('0', 1137, 1211), ('1', 1227, 1374), ('1', 1375, 1524),
              ('1', 1525, 1672), ('1', 1673, 1823), ('1', 1824, 1971), ('1', 1972, 2119), ('1', 2120, 2267),
              ('1', 2269, 2343), ('2', 2359, 2509), ('2', 2510, 2657), ('2', 2658, 2807), ('2', 2808, 2956),
              ('2', 2957, 3105), ('2', 3106, 3251), ('2', 3252, 3399), ('2', 3401, 3475), ('3', 3491, 3640),
              ('3', 3641, 3789), ('3', 3790, 3937), ('3', 3938, 4087), ('3', 4088, 4233), ('3', 4234, 4380),
              ('3', 4381, 4528), ('3', 4530, 4604), ('3', 4606, 4805), ('3', 4806, 5005), ('3', 5006, 5205),
              ('3', 5206, 5398)],
    "text_small": [(0, 144), (145, 292), (293, 440), (442, 589), (590, 739), (740, 887), (888, 1038),
                   (1039, 1172), (1174, 1275), (1276, 1426), (1427, 1572), (1574, 1724), (1725, 1872),
                   (1873, 2022), (2023, 2171), (2172, 2304), (2306, 2408), (2409, 2558), (2559, 2705),
                   (2707, 2856), (2857, 3005), (3006, 3153), (3154, 3303), (3304, 3436), (3438, 3540),
                   (3541, 3688), (3689, 3836), (3838, 3985), (3986, 4135), (4136, 4280), (4281, 4431),
                   (4432, 4565), (4567, 4604), (4606, 4805), (4806, 5005), (5006, 5205), (5206, 5398)],
}
SMALL = ChunkerSettings(target_tokens=40, overlap_tokens=8, max_tokens=60)


def test_documents_without_tables_chunk_exactly_as_before():
    text = _pinned_markdown()
    assert len(text) == 5399 and find_pipe_tables(text) == []

    def heading(code):
        return "Pinned guide" + (f" › Section {code}" if code else "")

    for name, settings in (("default", ChunkerSettings()), ("small", SMALL)):
        doc = _doc(text)
        chunks = chunk_document(doc, ENC.count_tokens, settings)
        _check_offsets(doc, chunks)
        assert [(c.heading, c.start, c.end) for c in chunks] == [(heading(h), a, b) for h, a, b in PINNED[name]]
        assert all(c.repeated_header() == "" for c in chunks)
    chunks = chunk_document(_doc(text, "text", "p.txt"), ENC.count_tokens, SMALL)
    assert [(c.heading, c.start, c.end) for c in chunks] == [("", a, b) for a, b in PINNED["text_small"]]


def _table(n_rows, cols=("Model", "Top-1 accuracy (%)", "Notes")):
    rows = [[f"Model-{i}", f"{50 + i / 10:.1f}", f"run {i} of the sweep"] for i in range(n_rows)]
    return format_pipe_table(list(cols), rows), rows


def test_a_table_that_fits_is_one_chunk_with_its_prose():
    table, _ = _table(4)
    text = f"# Results\n\nThe scores follow.\n\n{table}\n\nThat is all.\n"
    doc = _doc(text)
    chunks = chunk_document(doc, ENC.count_tokens)
    _check_offsets(doc, chunks)
    assert len(chunks) == 1 and table in chunks[0].text and chunks[0].repeated_header() == ""


def _table_lines(chunk):
    return chunk.text.split("\n")


def test_a_long_table_is_split_into_row_groups_that_all_start_with_the_header():
    table, rows = _table(60)
    header, separator = table.split("\n")[:2]
    text = f"# Results\n\nBefore the table. Another sentence here.\n\n{table}\n\nAfter the table.\n"
    doc = _doc(text)
    settings = ChunkerSettings(target_tokens=80, overlap_tokens=10, max_tokens=100)
    chunks = chunk_document(doc, ENC.count_tokens, settings)
    _check_offsets(doc, chunks)
    table_chunks = [c for c in chunks if header in c.text]
    assert len(table_chunks) >= 5
    row_lines = table.split("\n")[2:]
    seen = []
    for i, c in enumerate(table_chunks):
        lines = _table_lines(c)
        assert lines[:2] == [header, separator], "every chunk of a split table starts with its header"
        assert all(line in row_lines for line in lines[2:]), "rows are whole"
        seen += lines[2:]
        assert (c.repeated_header() == "") == (i == 0), "the first group is a plain slice, the others repeat"
        if i:
            assert c.repeated_header() == header + "\n" + separator + "\n"
            assert doc.text[c.start:c.end] == "\n".join(lines[2:])
    assert seen == row_lines, "each row exactly once, in order"
    assert max(ENC.count_tokens([c.embedding_text() for c in chunks])) <= settings.max_tokens
    assert "Before the table." in chunks[0].text and "After the table." in chunks[-1].text
    assert header not in chunks[-1].text


def test_a_table_cut_by_the_window_check_keeps_its_header():
    # A counter under which joined lines cost more than their parts (each newline is three tokens): packing
    # under-counts, and the last-line-of-defence window check must cut tables at rows and repeat the header.
    def count(texts):
        return [ENC.count_tokens([t])[0] + 3 * t.count("\n") for t in texts]

    table, _ = _table(40)
    header, separator = table.split("\n")[:2]
    doc = _doc(f"# T\n\n{table}\n")
    settings = ChunkerSettings(target_tokens=100, overlap_tokens=0, max_tokens=100)
    chunks = chunk_document(doc, count, settings)
    _check_offsets(doc, chunks)
    assert max(count([c.embedding_text() for c in chunks])) <= 100
    assert len(chunks) > len(chunk_document(doc, ENC.count_tokens, settings)), "the window check did cut"
    for c in chunks:
        assert _table_lines(c)[:2] == [header, separator]
        assert all(line.startswith("| Model-") for line in _table_lines(c)[2:])


def test_a_row_longer_than_the_budget_is_cut_but_keeps_the_header():
    long_row = ["Model-X", "1.0", " ".join(f"word{i}" for i in range(200))]
    table = format_pipe_table(["Model", "Score", "Notes"], [["Model-A", "2.0", "short"], long_row])
    doc = _doc(table, "text", "t.txt")
    settings = ChunkerSettings(target_tokens=60, overlap_tokens=0, max_tokens=60)
    chunks = chunk_document(doc, ENC.count_tokens, settings)
    _check_offsets(doc, chunks)
    assert len(chunks) > 3 and all(c.text.startswith("| Model | Score | Notes |\n|---|---|---|\n")
                                   for c in chunks)
    assert max(ENC.count_tokens([c.embedding_text() for c in chunks])) <= 60


def test_pipe_tables_in_code_are_not_tables():
    table, _ = _table(60)
    doc = _doc(table + "\n", "code", "t.py")
    chunks = chunk_document(doc, ENC.count_tokens, ChunkerSettings(target_tokens=80, overlap_tokens=10))
    _check_offsets(doc, chunks)
    assert all(c.repeated_header() == "" for c in chunks)
    assert sum(1 for c in chunks if c.text.startswith("| Model |")) == 1


def test_loaded_csv_is_split_with_its_header_and_fits_the_window(tmp_path):
    lines = ["city;population;country"] + [f"City {i};{1000 + i};Country {i % 5}" for i in range(300)]
    (tmp_path / "cities.csv").write_text("\n".join(lines) + "\n")
    doc = load_file(tmp_path / "cities.csv", tmp_path)
    assert doc.kind == "table"
    settings = ChunkerSettings.for_encoder(ENC)
    chunks = chunk_document(doc, ENC.count_tokens, settings)
    _check_offsets(doc, chunks)
    assert len(chunks) > 5
    assert all(c.text.startswith("| city | population | country |\n|---|---|---|\n| City ") for c in chunks)
    assert max(ENC.count_tokens([c.embedding_text() for c in chunks])) <= settings.max_tokens
    assert sum(c.text.count("| City ") for c in chunks) == 300
