"""Loaders: every supported type is read to clean text; every unreadable file gets a reason, never a crash."""

from __future__ import annotations

import os
import random

import pytest

from conftest_retrieval import BROKEN, MAX_BYTES, PLANTED, make_mixed_folder
from retrieval.errors import RetrievalError
from retrieval.loaders import SkipFile, decode_text, html_to_text, kind_for, load_file, scan_folder


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
    assert kind_for("README") == "text" and kind_for("photo.jpg") is None
    assert decode_text("żółw".encode("utf-16")) == "żółw"
    assert decode_text("\ufeffbom".encode("utf-8")) == "bom"
    with pytest.raises(SkipFile, match="binary"):
        decode_text(b"abc\x00def")
