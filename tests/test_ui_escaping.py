"""The UI's text rendering: HTML from documents and the model shows as text everywhere the chat page puts it
(question, answer with citation chips, source passage with its evidence highlight, source labels, upload
report). The browser side is tests/test_browser_hostile.py."""

from __future__ import annotations

from types import SimpleNamespace

from assistant.ui_render import (esc, render_answer_text, render_passage, render_source, render_turn,
                                 render_upload_report)

PAYLOAD = "<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script>${alert(1)}"


def test_markup_and_template_syntax_are_escaped():
    out = esc(PAYLOAD)
    assert "<" not in out and ">" not in out and "${" not in out and "{" not in out
    assert esc("a & b") == "a &amp; b"


def test_answers_keep_their_citation_chips_and_nothing_else():
    html = render_answer_text(f"{PAYLOAD} [1] and [7]", turn=0, numbers={1})
    assert html.count("<button") == 1 and 'data-n="1"' in html  # only a number that names a source
    assert "<img" not in html and "<script" not in html and "[7]" in html


def test_passages_and_evidence_highlights_are_escaped():
    text = f"before {PAYLOAD} after"
    start = text.index("<img")
    html = render_passage(text, [(start, start + len(PAYLOAD))])
    assert html.count("<mark>") == 1 and "<img" not in html and "<script" not in html
    view = {"number": 1, "path": "<b>x</b>.md", "heading": "<i>h</i>", "text": text, "cited": True,
            "score": 0.5, "dense_score": 0.4, "highlights": [(start, start + 4)]}
    html = render_source(0, view)
    assert "<b>x" not in html and "<i>h" not in html and "<img" not in html
    turn = {"question": PAYLOAD, "answer": PAYLOAD + " [1]", "sources": [view], "timing": PAYLOAD}
    html = render_turn(0, turn)
    assert "<img" not in html and "<script" not in html


def test_upload_reports_escape_names_reasons_and_notes():
    report = SimpleNamespace(added=["@uploads/<b>a</b>.md"], updated=[], renamed=[], duplicates=[], unchanged=[],
                             skipped=[("@uploads/<img src=x>.exe", "unsupported <type>")],
                             notes=[("@uploads/<b>a</b>.md", "read with 3 replacement characters <x>")])
    html = render_upload_report(report)
    assert "<b>a" not in html and "<img" not in html and "<type>" not in html and "<x>" not in html
    assert "rejected" in html and "replacement characters" in html


def test_composed_answers_escape_list_items_side_labels_and_table_cells():
    from assistant.ui_render import render_answer_blocks

    text = (f"Intro {PAYLOAD}\n- item {PAYLOAD} [1]\n\n**<b>Side</b> {PAYLOAD}:** body {PAYLOAD} [1].\n\n"
            f"| <i>h</i> | {PAYLOAD} |\n|---|---|\n| {PAYLOAD} | cell [1] |")
    sentences = [{"passage": 1, "start": 0, "end": 4, "text": "x"}] * 3
    html = render_answer_blocks(text, 0, {1}, sentences)
    assert "<ul>" in html and '<strong class="side-label">' in html and "<table>" in html  # the blocks are built
    for bad in ("<img", "<script", "<b>", "<i>", "${"):
        assert bad not in html, bad
    assert html.count("<button") == 3
    turn = {"question": "q", "answer": text, "layout": "sides", "sentences": sentences,
            "sources": [{"number": 1, "path": "a.md", "text": PAYLOAD, "cited": True, "score": 0.5}]}
    html = render_turn(0, turn)
    assert "<img" not in html and "<script" not in html and '<mark data-s="0 1 2">&lt;img</mark>' in html
