"""Loaders: every supported type is read to clean text; every unreadable file gets a reason, never a crash."""

from __future__ import annotations

import os
import random

import pytest

from conftest_retrieval import BROKEN, MAX_BYTES, PLANTED, make_mixed_folder
from retrieval.errors import RetrievalError
from retrieval.loaders import (LoadLimits, SkipFile, decode_text, html_to_text, kind_for, load_file, parse_bytes,
                               scan_folder)
from retrieval.pipe_tables import find_pipe_tables, split_row


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return make_mixed_folder(tmp_path_factory.mktemp("loaders"))


def _load_all(folder):
    scan = scan_folder(folder, MAX_BYTES)
    docs, reasons = {}, {s.path: s.reason for s in scan.skipped}
    for entry in scan.files:
        try:
            docs[entry.path] = load_file(entry, max_bytes=MAX_BYTES)
        except SkipFile as exc:
            reasons[entry.path] = exc.reason
    return docs, reasons


def test_every_supported_type_loads_with_its_planted_sentence(mixed):
    docs, _ = _load_all(mixed)
    assert set(docs) == set(PLANTED)
    for path, (sentence, kind) in PLANTED.items():
        doc = docs[path]
        assert doc.kind == kind, path
        assert sentence in " ".join(doc.text.split()), path  # PDF text may re-flow whitespace
        assert len(doc.sha256) == 64 and doc.size == (mixed / path).stat().st_size


def test_broken_files_are_skipped_with_reasons_and_hidden_files_silently(mixed):
    _, reasons = _load_all(mixed)
    for path, expected in BROKEN.items():
        assert path in reasons, f"{path} not reported"
        assert expected in reasons[path], (path, reasons[path])
    assert not any(p.startswith(".") or "/." in p for p in reasons), "hidden files must be ignored silently"
    assert set(reasons) == set(BROKEN)


def test_latin1_text_is_decoded(mixed):
    docs, _ = _load_all(mixed)
    assert "À bientôt, garçon. Ça coûte très cher à Genève." in docs["latin1.txt"].text
    assert "crème" in docs["latin1.txt"].text


def test_pdf_keeps_page_numbers(mixed):
    docs, _ = _load_all(mixed)
    doc = docs["report.pdf"]
    assert [p[2] for p in doc.pages] == [1, 2]
    start, end, _ = doc.pages[1]
    assert "Emerald flamingos" in doc.text[start:end]
    assert "Emerald" not in doc.text[doc.pages[0][0]:doc.pages[0][1]]


def test_html_is_text_without_markup_scripts_or_styles(mixed):
    docs, _ = _load_all(mixed)
    text = docs["page.html"].text
    assert "<" not in text and "jsword" not in text and "color:red" not in text
    assert [(level, title) for _, level, title in docs["page.html"].headings] == [(1, "Poetry"), (2, "Tortoises")]
    text, headings = html_to_text("<div>a<b>bold</b>c</div><ul><li>one</li><li>two</li></ul>")
    assert text == "aboldc\n\none\n\ntwo" and headings == []


def test_docx_headings_and_tables(mixed):
    docs, _ = _load_all(mixed)
    doc = docs["memo.docx"]
    assert [(level, title) for _, level, title in doc.headings] == [(1, "Memo"), (2, "Semaphore")]
    for pos, _, title in doc.headings:
        assert doc.text[pos:pos + len(title)] == title
    assert "cell one | cell two" in doc.text


def test_symlinks_outside_and_inside_are_reported_not_followed(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text("alpha")
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    os.symlink(outside, root / "out.txt")
    os.symlink(root / "a.txt", root / "alias.txt")
    os.symlink(tmp_path / "missing.txt", root / "broken.txt")
    scan = scan_folder(root)
    reasons = {s.path: s.reason for s in scan.skipped}
    assert [f.path for f in scan.files] == ["a.txt"]
    assert "outside" in reasons["out.txt"]
    assert "indexed there" in reasons["alias.txt"]
    assert "broken" in reasons["broken.txt"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions are not enforced for root")
def test_unreadable_file_is_skipped(tmp_path):
    (tmp_path / "secret.txt").write_text("nope")
    os.chmod(tmp_path / "secret.txt", 0)
    scan = scan_folder(tmp_path)
    assert scan.skipped[0].path == "secret.txt" and "unreadable" in scan.skipped[0].reason


def test_garbage_never_crashes_a_loader(tmp_path):
    rng = random.Random(0)
    for ext in (".pdf", ".docx", ".html", ".txt", ".md", ".py", ".rst"):
        for i in range(3):
            path = tmp_path / f"junk{i}{ext}"
            path.write_bytes(bytes(rng.randrange(256) for _ in range(2000)))
            try:
                doc = load_file(path, tmp_path)
                assert isinstance(doc.text, str)
            except SkipFile as exc:
                assert exc.reason


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(RetrievalError, match="cannot read the folder"):
        scan_folder(tmp_path / "nope")


def test_kinds_and_encodings():
    assert kind_for("a/B.MD") == "markdown" and kind_for("x.go") == "code" and kind_for("Makefile") == "code"
    assert kind_for("README") == "text" and kind_for("photo.jpg") == "image" and kind_for("song.mp3") is None
    assert decode_text("żółw".encode("utf-16")) == "żółw"
    assert decode_text("\ufeffbom".encode("utf-8")) == "bom"
    with pytest.raises(SkipFile, match="binary"):
        decode_text(b"abc\x00def")


# ---------------------------------------------------------------- tables

def _cells(text):
    """[[header cells], [row cells], ...] of every pipe table in `text`."""
    return [[[text[a:b] for a, b in split_row(text, *span)] for span in (block.header, *block.rows)]
            for block in find_pipe_tables(text)]


def test_html_tables_become_pipe_tables_with_the_text_around_them():
    html = """<html><body><h1>Results</h1><p>Before the tables.</p>
    <table><caption>Table 1: scores</caption>
      <thead><tr><th>Model</th><th colspan="2">Accuracy</th></tr><tr><th></th><th>Top-1</th><th>Top-5</th></tr></thead>
      <tbody><tr><td rowspan="2">TinyLM-2</td><td>91.2</td><td>98<br>.1</td></tr>
             <tr><td>90.0</td><td>97.0</td></tr></tbody>
    </table>
    <p>Between.</p>
    <table><tr><th>City</th><th>Note</th></tr><tr><td>Oslo</td><td>cold | dark</td></tr></table>
    <table><tr><td>name</td><td>size</td></tr><tr><td>a.txt</td><td>3 KB</td></tr></table>
    <table><tr><td><h2>Layout</h2><p>One column of page layout.</p></td></tr></table>
    <p>After.</p></body></html>"""
    text, headings = html_to_text(html)
    assert [(level, title) for _, level, title in headings] == [(1, "Results"), (2, "Layout")]
    assert _cells(text) == [
        [["Model", "Accuracy Top-1", "Accuracy Top-5"], ["TinyLM-2", "91.2", "98 .1"], ["TinyLM-2", "90.0", "97.0"]],
        [["City", "Note"], ["Oslo", "cold / dark"]],
        [["name", "size"], ["a.txt", "3 KB"]],
    ]
    assert "Before the tables.\n\nTable 1: scores\n\n| Model |" in text
    assert "|\n\nBetween.\n\n| City |" in text
    assert "One column of page layout.\n\nAfter." in text and "| One column" not in text
    for block in find_pipe_tables(text):  # a blank line before and after each table
        assert text[block.start - 2:block.start] == "\n\n" and text[block.end:block.end + 2] == "\n\n"


def test_docx_tables_become_pipe_tables(tmp_path):
    import docx

    d = docx.Document()
    d.add_heading("Report", level=1)
    d.add_paragraph("The table below lists the runs.")
    table = d.add_table(rows=3, cols=3)
    for r, row in enumerate([["Model", "Score", "Notes"], ["TinyLM-2", "91.2", "line one\nline two"],
                             ["TinyLM-2 Large", "93.0", "a | b"]]):
        for c, value in enumerate(row):
            table.rows[r].cells[c].text = value
    merged = d.add_table(rows=2, cols=2)
    merged.cell(0, 0).merge(merged.cell(0, 1)).text = "Both columns"
    merged.cell(1, 0).text = "0"
    merged.cell(1, 1).text = "0"
    single = d.add_table(rows=2, cols=1)
    single.cell(0, 0).text = "a lone note"
    single.cell(1, 0).text = "another note"
    d.add_paragraph("Closing words.")
    d.save(str(tmp_path / "r.docx"))
    doc = load_file(tmp_path / "r.docx", tmp_path, limits=LoadLimits(parse_seconds=None))
    assert [(level, title) for _, level, title in doc.headings] == [(1, "Report")]
    assert _cells(doc.text) == [
        [["Model", "Score", "Notes"], ["TinyLM-2", "91.2", "line one line two"], ["TinyLM-2 Large", "93.0", "a / b"]],
        [["Both columns", "Both columns"], ["0", "0"]],  # merged cells repeat; equal cells are both kept
    ]
    assert "runs.\n\n| Model | Score | Notes |\n|---|---|---|\n| TinyLM-2 | 91.2 |" in doc.text
    assert "a lone note\n\nanother note\n\nClosing words." in doc.text  # one column: lines of text


def test_csv_and_tsv_files_are_tables(tmp_path):
    assert kind_for("a.csv") == "table" and kind_for("B.TSV") == "table" and kind_for("a.txt") == "text"
    (tmp_path / "scores.csv").write_text(
        'model;score;note\nTinyLM-2;91.2;"quoted; with\nnewline"\n\nTinyLM-2 Large;93.0;x|y\nshort;1\n')
    doc = load_file(tmp_path / "scores.csv", tmp_path)
    assert doc.kind == "table"
    assert _cells(doc.text) == [[["model", "score", "note"], ["TinyLM-2", "91.2", "quoted; with newline"],
                                 ["TinyLM-2 Large", "93.0", "x/y"], ["short", "1", ""]]]
    assert doc.text.startswith("| model | score | note |\n|---|---|---|\n")
    (tmp_path / "t.tsv").write_text("a b\tc, d\n1, 2\t3\n")
    assert _cells(load_file(tmp_path / "t.tsv", tmp_path).text) == [[["a b", "c, d"], ["1, 2", "3"]]]


def test_a_csv_that_is_no_table_is_text_and_a_huge_one_is_skipped(tmp_path):
    text, _, _, _ = parse_bytes("table", b"just one column\nof words\n")
    assert text == "just one column\nof words\n" and find_pipe_tables(text) == []
    big = ("id,value\n" + "".join(f"{i},{'v' * 20}\n" for i in range(2000))).encode()
    assert len(parse_bytes("table", big)[0]) > len(big)
    with pytest.raises(SkipFile, match="too much text"):
        parse_bytes("table", big, LoadLimits(max_chars=len(big)))
    field = b"a,b\n1," + b"x" * 200_000 + b"\n"  # a field over the csv module's limit: plain text, no crash
    assert parse_bytes("table", field)[0].startswith("a,b\n1,x")
