"""Tables in the browser: a cited passage that holds a table (from a PDF, and from a Markdown file whose cells
hold <script> and <img onerror>) shows it as a table, header cells and all, with the chip's supporting words
highlighted inside the cells; "Open page 2" shows the page's table the same way; the hostile cells stay text.

Stand-in models (HashingEncoder, a scripted FakeGenerator) with the pipeline's answer replaced by a composed
one whose sentences rest on the table (sentence 0: one cell; sentence 1: from the prose before the table into
its header row), the real Gradio app in this process, headless Chromium. Skipped when /usr/bin/chromium or
playwright is missing.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from browser_support import free_port, launch_chromium, require_browser

pytestmark = [pytest.mark.browser]
sync_api = require_browser()

from test_browser_app import ask, open_page  # noqa: E402  (after the skip)

ROWS = [["Model", "Params", "Score"], ["Base", "110M", "81.2"], ["Large", "340M", "84.6"], ["Tiny", "14M", "72.0"]]
HOSTILE = ("# Payloads\n\nThe payload table follows.\n\n| Name | Payload |\n|---|---|\n"
           "| img | <img src=x onerror=window.__pwned=1> |\n| script | <script>window.__pwned=2</script> |\n")
# question -> (words that pick the source, sentence 0's words, sentence 1's first and last words)
PLANS = {"Which model wins by a clear margin in the comparison results?": ("| Large |", "340M",
                                                                          ("table below", "Params")),
         "Which payloads does the payload table hold?": ("| img |", "<img src=x onerror=window.__pwned=1>",
                                                         ("table follows", "Payload"))}


def _results_pdf(path) -> None:
    """Page 1: a line of prose; page 2: a line, a 3-column table with a bold header row, a line."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=A4)
    c.setFont("Times-Roman", 10)
    c.drawString(72, 760, "The harbour opens at six in the morning.")
    c.showPage()
    c.setFont("Times-Roman", 10)
    c.drawString(72, 760, "Results of the comparison follow in the table below.")
    for r, row in enumerate(ROWS):
        for col, cell in enumerate(row):
            c.setFont("Times-Bold" if r == 0 else "Times-Roman", 10)
            c.drawString(72 + 120 * col, 720 - 16 * r, cell)
    c.setFont("Times-Roman", 10)
    c.drawString(72, 640, "The large model wins by a clear margin.")
    c.showPage()
    c.save()


def _on_the_table(stream):
    """Wraps `Assistant.stream`: the answer becomes a composed one citing the source that holds the question's
    table, sentence 0 resting on one cell, sentence 1 on the words from the prose before the table into its
    header row."""

    def wrapped(question: str, *args, **kwargs):
        from assistant.answer import Answer, AnswerSentence

        for item in stream(question, *args, **kwargs):
            if not isinstance(item, Answer):
                continue
            picks, cell, (first, last) = PLANS[question]
            source = next(s for s in item.sources if picks in s.text)
            text, n = source.text, source.number
            at = text.index(cell)
            start, end = text.index(first), text.index(last) + len(last)
            sentences = [AnswerSentence(cell, n, at, at + len(cell), 1.0, "sentence", ""),
                         AnswerSentence(text[start:end], n, start, end, 1.0, "sentence", "")]
            answer = replace(item, text=f"It is {cell} [{n}]. The table says so [{n}].", citations=[n],
                             sources=[replace(s, cited=s.number == n) for s in item.sources],
                             sentences=sentences, kind="explanation", layout="text", mode="guided")
            yield answer.text
            yield answer
            return

    return wrapped


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("reportlab")
    from assistant.pipeline import Assistant
    from assistant.ui import serve
    from retrieval.testing import HashingEncoder

    from assistant_fakes import FakeGenerator

    root = tmp_path_factory.mktemp("tables")
    docs = root / "docs"
    docs.mkdir()
    _results_pdf(docs / "results.pdf")
    (docs / "payloads.md").write_text(HOSTILE, encoding="utf-8")
    assistant = Assistant.from_folder(docs, root / "index", encoder=HashingEncoder(),
                                      generator=FakeGenerator("A table [1]."), refusal_threshold=-1.0, k=3)
    assistant.stream = _on_the_table(assistant.stream)
    port = free_port()
    demo = serve(assistant, host="127.0.0.1", port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium(sync_api)


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    yield open_page(context, server, errors), errors
    context.close()


def _click_chip(page, turn: int, sentence: int) -> str:
    chip = page.locator(f"#answer-{turn} .cite[data-s='{sentence}']")
    source = f"#src-{turn}-{chip.get_attribute('data-n')}"
    chip.click()
    page.wait_for_function(f"() => document.querySelector('{source}').open")
    return source


def _highlighted(page, selector: str) -> list[str]:
    """The words shown highlighted under `selector`: its marks whose background is not transparent."""
    return page.evaluate("""(sel) => Array.from(document.querySelectorAll(sel + ' mark'))
        .filter((m) => getComputedStyle(m).backgroundColor !== 'rgba(0, 0, 0, 0)').map((m) => m.textContent)""",
                         selector)


def test_a_cited_table_passage_and_its_page_show_tables_with_the_chips_words_marked_in_the_cells(page):
    page, errors = page
    ask(page, "Which model wins by a clear margin in the comparison results?")
    source = _click_chip(page, 0, 0)
    passage = page.locator(f"{source} .passage")
    assert passage.locator("table").count() == 1 and "|" not in passage.inner_text()
    assert passage.locator("thead th").all_inner_texts() == ROWS[0]
    assert [c.strip() for c in passage.locator("tbody td").all_inner_texts()] == sum(ROWS[1:], [])
    assert _highlighted(page, f"{source} .passage") == ["340M"]           # sentence 0: the one cell
    assert passage.locator("td mark.on").all_inner_texts() == ["340M"]
    assert "Results of the comparison" in passage.inner_text() and "clear margin" in passage.inner_text()

    _click_chip(page, 0, 1)                                                # sentence 1: prose into the header
    assert [w.strip() for w in _highlighted(page, f"{source} .passage")] == ["table below.", "Model", "Params"]

    page.locator(f"{source} button.open-page").click()
    page.wait_for_selector(f"{source} .page-view .page-text table", timeout=30_000)
    panel = page.locator(f"{source} .page-text")
    assert panel.locator("thead th").all_inner_texts() == ROWS[0] and "harbour" not in panel.inner_text()
    assert "|" not in panel.inner_text()
    assert [w.strip() for w in _highlighted(page, f"{source} .page-text")] == ["table below.", "Model", "Params"]
    assert panel.locator("th mark.on").all_inner_texts() == ["Model", "Params"]
    assert not errors


def test_hostile_table_cells_show_as_text(page):
    page, errors = page
    ask(page, "Which payloads does the payload table hold?")
    source = _click_chip(page, 0, 0)
    cells = page.locator(f"{source} .passage tbody td").all_inner_texts()
    assert [c.strip() for c in cells] == ["img", "<img src=x onerror=window.__pwned=1>", "script",
                                          "<script>window.__pwned=2</script>"]
    assert page.locator(f"{source} .passage td mark.on").all_inner_texts() == ["<img src=x onerror=window.__pwned=1>"]
    assert page.locator("#chatbot img, #chatbot script").count() == 0
    assert page.evaluate("() => window.__pwned") is None and not errors
