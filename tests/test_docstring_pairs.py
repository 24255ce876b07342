"""assistant.docstring_pairs: the reranker's technical training passages come from third-party packages' own
documented objects, rendered like a Markdown API page, never from the standard library (the technical benchmark
folders are made of standard-library docstrings)."""

from __future__ import annotations

import json
import sys
import types

from assistant.docstring_pairs import MAX_CHARS, passages, read_pairs, render

LONG = ("Merge two sorted runs into one.\n\nThe runs must be sorted by the same key; ties keep the order of the "
        "first run. Returns a new list and leaves both inputs as they are.\n\nRaises ValueError when a run is not "
        "sorted.")


def _fake_package(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def merge_runs(left, right, *, key=None):
        pass

    merge_runs.__doc__ = LONG
    merge_runs.__module__ = name

    def tiny():
        """Too short to ask about."""

    tiny.__module__ = name
    module.merge_runs, module.tiny = merge_runs, tiny
    module.dumps = json.dumps  # a standard-library function re-exported by the package
    module._private = merge_runs
    return module


def test_render_is_a_markdown_api_section_cut_at_paragraphs():
    module = _fake_package("fakepkg_render")
    text = render("fakepkg_render", "merge_runs", module.merge_runs)
    assert text.startswith("## fakepkg_render.merge_runs\n\n```python\nmerge_runs(left, right, *, key=None)\n```")
    assert "Raises ValueError" in text
    assert render("fakepkg_render", "tiny", module.tiny) is None
    long_doc = types.SimpleNamespace(__doc__="\n\n".join(f"Paragraph {i} " + "word " * 60 for i in range(20)))
    cut = render("fakepkg_render", "long", long_doc)
    body = cut.split("```", 2)[-1]
    assert len(body) < MAX_CHARS + 400 and body.rstrip().endswith("word")  # whole paragraphs only


def test_passages_skip_private_stdlib_and_undocumented_objects(monkeypatch):
    monkeypatch.setitem(sys.modules, "fakepkg_walk", _fake_package("fakepkg_walk"))
    found = list(passages(["fakepkg_walk", "no_such_package_here"]))
    assert [(package, name) for package, name, _ in found] == [("fakepkg_walk", "fakepkg_walk.merge_runs")]


def test_read_pairs_ignores_a_cut_last_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"name": "a", "passage": "p", "question": "q?"}) + "\n{\"name\": \"b\", \"pas",
                    encoding="utf-8")
    assert [r["name"] for r in read_pairs(path)] == ["a"]
    assert read_pairs(tmp_path / "missing.jsonl") == []
