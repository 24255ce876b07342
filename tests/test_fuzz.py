"""Property-based fuzzing (hypothesis) of the loaders, the chunker and the sync with random and mutated bytes
of every supported type: nothing but a skip reason ever comes out of a bad file, and the good files of the
same folder are all indexed.

CI runs a few examples per property (ASSISTANT_FUZZ_EXAMPLES, default 12); a longer run:
    ASSISTANT_FUZZ_EXAMPLES=500 pytest -m fuzz
"""

from __future__ import annotations

import functools
import io
import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from retrieval.chunking import ChunkerSettings, chunk_document
from retrieval.loaders import SkipFile, load_file
from retrieval.retriever import Retriever
from retrieval.sync import sync_folder
from retrieval.testing import HashingEncoder

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("ASSISTANT_FUZZ_EXAMPLES", "12"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@functools.lru_cache(maxsize=1)
def seeds() -> dict[str, bytes]:
    """One small valid file of every supported kind (by extension)."""
    import docx
    from reportlab.pdfgen import canvas

    d = docx.Document()
    d.add_heading("Memo", level=1)
    d.add_paragraph("Lavender badgers translate sonnets.")
    table = d.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "cell"
    buf = io.BytesIO()
    d.save(buf)
    pdf = io.BytesIO()
    c = canvas.Canvas(pdf)
    c.drawString(72, 800, "Emerald flamingos audit the pretzel factory.")
    c.showPage()
    c.save()
    formats = {}
    state = random.getstate()  # e-mail MIME boundaries use the global random: hypothesis must not see it
    with tempfile.TemporaryDirectory() as tmp:
        from test_formats import BUILDERS  # PPTX, XLSX, EPUB, ODT, EML, MBOX

        for name, build in BUILDERS.items():
            formats[Path(name).suffix] = build(Path(tmp) / name).read_bytes()
    random.setstate(state)
    return {
        **formats,
        ".txt": "Plain notes. Grüße, café, 漢字.\n\nSecond paragraph.\n".encode(),
        ".md": b"# Title\n\nSome *text* with <b>html</b>.\n\n## Sub\n\n```\ncode\n```\n",
        ".rst": b"Title\n=====\n\nParagraph.\n\nSection\n-------\n\nMore.\n",
        ".html": b"<html><head><title>T</title></head><body><h1>H</h1><p>Para <i>x</i></p></body></html>",
        ".py": b"def f(x):\n    return x + 1\n",
        ".json": b'{"a": [1, 2, {"b": "c"}]}',
        ".pdf": pdf.getvalue(),
        ".docx": buf.getvalue(),
    }


@st.composite
def fuzzed_file(draw) -> tuple[str, bytes]:
    """(extension, bytes): random bytes, or a supported file with bytes flipped, inserted, cut or repeated."""
    ext = draw(st.sampled_from(sorted(seeds())))
    if draw(st.integers(0, 3)) == 0:
        return ext, draw(st.binary(min_size=1, max_size=3000))
    data = bytearray(seeds()[ext])
    for _ in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "repeat"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 256))]
        elif op == "truncate":
            del data[pos:]
        elif op == "repeat":
            data[pos:pos] = data[pos:pos + 64] * draw(st.integers(2, 50))
    return ext, bytes(data) or b"\x00"


@FUZZ
@given(fuzzed_file())
def test_loader_and_chunker_give_a_document_or_a_skip_reason(sample):
    ext, data = sample
    encoder = HashingEncoder()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{ext}"
        path.write_bytes(data)
        try:
            doc = load_file(path, tmp)
        except SkipFile as exc:
            assert exc.reason.strip()
            return
        assert isinstance(doc.text, str) and doc.text.strip()
        chunks = chunk_document(doc, encoder.count_tokens, ChunkerSettings.for_encoder(encoder))
        for chunk in chunks:
            assert chunk.repeated_header() + doc.text[chunk.start:chunk.end] == chunk.text


GOOD = {"good-a.md": "The amber walrus repairs seventeen lanterns.",
        "good-b.txt": "Quokkas negotiate turquoise mortgages at noon."}


@FUZZ
@given(st.lists(fuzzed_file(), min_size=1, max_size=4))
@example(samples=[(".md", b"# ```\n")])  # text, but no chunk: found by this test (a NameError in sync)
def test_sync_of_a_folder_with_bad_files_indexes_every_good_one(samples):
    encoder = HashingEncoder()
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs"
        docs.mkdir()
        for name, text in GOOD.items():
            (docs / name).write_text(f"# {name}\n\n{text}\n")
        fuzzed = []
        for i, (ext, data) in enumerate(samples):
            name = f"fuzz{i}{ext}"
            (docs / name).write_bytes(data)
            fuzzed.append(name)
        report = sync_folder(docs, Path(tmp) / "index", encoder, progress=False)
        indexed = set(report.added) | {new for new, _ in report.duplicates}
        skipped = dict(report.skipped)
        for name in fuzzed:
            assert (name in indexed) != (name in skipped), (name, report.summary())
            if name in skipped:
                assert skipped[name].strip()
        assert set(GOOD) <= indexed
        retriever = Retriever(Path(tmp) / "index", encoder)
        for name, text in GOOD.items():
            assert retriever.search(text, k=1, mode="lexical")[0].path == name
        retriever.store.close()
