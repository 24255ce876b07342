"""Chunking: structure-aware, token-budgeted by the encoder's own count, exact offsets, overlap."""

from __future__ import annotations

import math

import pytest

from conftest_retrieval import MAX_BYTES, PLANTED, make_mixed_folder
from retrieval.chunking import ChunkerSettings, chunk_document
from retrieval.loaders import Document, load_file, scan_folder
from retrieval.testing import HashingEncoder

ENC = HashingEncoder()


def _doc(text, kind="markdown", path="a.md", **kw):
    return Document(path, text, kind, "0" * 64, len(text), 0.0, **kw)


def _check_offsets(doc, chunks):
    for c in chunks:
        assert doc.text[c.start:c.end] == c.text
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
