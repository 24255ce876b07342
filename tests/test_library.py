"""The document library (UI-free): listing with states, removal with exclusions, uploads, safe file paths,
example questions from headings."""

from __future__ import annotations

import os

import pytest

from assistant.library import Library, LibraryError, question_from_heading
from assistant.pipeline import Assistant
from retrieval.sync import read_exclusions
from retrieval.testing import HashingEncoder

from assistant_fakes import FakeGenerator


@pytest.fixture()
def library(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "lora.md").write_text("# LoRA\n\n## Low-rank adapters\n\nLoRA trains magenta low-rank matrices.\n")
    (docs / "sub" / "attention.md").write_text("# Attention\n\n## Queries, keys and values\n\nQueries meet keys.\n")
    (docs / "empty.txt").write_text("")
    (tmp_path / "secret.md").write_text("# Secret\n\nnot indexed\n")
    assistant = Assistant.from_folder(docs, tmp_path / "index", encoder=HashingEncoder(), generator=FakeGenerator())
    return Library(assistant)


def paths(entries):
    return [(e.path, e.state) for e in entries]


def test_entries_show_indexed_and_skipped_files_with_counts_and_filter(library):
    entries = library.entries()
    assert paths(entries) == [("lora.md", "indexed"), ("sub/attention.md", "indexed"), ("empty.txt", "skipped")]
    assert entries[0].chunks >= 1 and entries[0].size > 0 and entries[0].modified > 0
    assert entries[2].reason == "empty file"
    assert paths(library.entries("ATTENTION")) == [("sub/attention.md", "indexed")]
    assert library.counts() == {"indexed": 2, "skipped": 1, "excluded": 0}


def test_removed_folder_file_leaves_search_stays_out_after_resync_and_can_be_restored(library):
    assistant = library.assistant
    assert assistant.retrieve("magenta low-rank")[0][0].path == "lora.md"
    assert "excluded" in library.remove("lora.md")
    assert read_exclusions(assistant.index_path) == ["lora.md"]
    assert all(h.path != "lora.md" for h in assistant.retrieve("magenta low-rank")[0])
    report = library.resync()
    assert report.excluded == ["lora.md"] and all(h.path != "lora.md" for h in assistant.retrieve("magenta")[0])
    assert ("lora.md", "excluded") in paths(library.entries())
    library.restore("lora.md")
    library.resync()
    assert assistant.retrieve("magenta low-rank")[0][0].path == "lora.md"
    with pytest.raises(LibraryError):
        library.remove("nope.md")


def test_removed_upload_deletes_its_copy(library, tmp_path):
    upload = tmp_path / "zorblat.md"
    upload.write_text("# Zorblat\n\nThe zorblat is a purple fruit.\n")
    library.assistant.add_files([upload])
    copy = library.resolve_file("@uploads/zorblat.md")
    assert copy is not None and copy.read_text().startswith("# Zorblat")
    library.remove("@uploads/zorblat.md")
    assert not copy.exists() and "@uploads/zorblat.md" not in paths(library.entries())
    assert read_exclusions(library.assistant.index_path) == []


def test_resolve_file_only_serves_indexed_files_inside_the_folder_or_uploads(library, tmp_path):
    assert library.resolve_file("sub/attention.md") == (tmp_path / "docs" / "sub" / "attention.md").resolve()
    for bad in ["../secret.md", "/etc/passwd", "sub/../../secret.md", "@uploads/../../secret.md", "", "empty.txt"]:
        assert library.resolve_file(bad) is None, bad
    # an indexed path whose file became a link to somewhere outside is refused too
    target = tmp_path / "docs" / "lora.md"
    target.unlink()
    os.symlink(tmp_path / "secret.md", target)
    assert library.resolve_file("lora.md") is None


def test_example_questions_come_from_section_headings(library):
    assert library.example_questions() == ["What are low-rank adapters?", "What are queries, keys and values?"]


@pytest.mark.parametrize("heading,question", [
    ("Attention › What attention is", "What is attention?"),
    ("Guide › How it finds answers", "How it finds answers?"),
    ("Attention › Causal masking", "What is causal masking?"),
    ("RAG › RAG", "What is RAG?"),
    ("Doc › Summary", None),
    ("Title only", None),
    (None, None),
])
def test_question_from_heading(heading, question):
    assert question_from_heading(heading) == question
