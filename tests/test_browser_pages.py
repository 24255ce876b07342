"""Pages in the browser: a source from a PDF says its page ("p. 2"), and "Open page 2" in its expanded view
shows that page's whole text with the cited words marked in it.

`assistant ui` on stand-in models (tests/ui_fake_server.py in its `composed` style: a HashingEncoder index, each
answer the second sentence of passage [1], cited, with its supporting words' offsets) over a folder with a
2-page PDF; headless Chromium. Skipped when
/usr/bin/chromium or playwright is missing.
"""

from __future__ import annotations

import pytest

from browser_support import launch_chromium, require_browser

pytestmark = [pytest.mark.browser]
sync_api = require_browser()

from test_browser_app import FakeServer, ask, open_page  # noqa: E402  (after the skip)

PAGE_ONE = "The harbour opens at six in the morning.\nFerries leave for the island every hour."
PAGE_TWO = ("The lighthouse keeper counts seventeen gulls at dawn.\nShe writes every count in a blue ledger.\n"
            "The ledger holds forty years of gulls.")
SENTENCE = "She writes every count in a blue ledger"   # sentence 2 of page 2: what the composed answer cites


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest_retrieval import _pdf

    base = tmp_path_factory.mktemp("pages-ui")
    folder = base / "docs"
    folder.mkdir()
    _pdf(folder / "keeper.pdf", [PAGE_ONE, PAGE_TWO])
    (folder / "tokens.md").write_text("# Tokens\n\nA tokenizer splits text into tokens.\n", encoding="utf-8")
    srv = FakeServer(folder, base / "index", base / "ui.log", style="composed").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium(sync_api)


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page = open_page(context, server.url, errors)
    yield page, errors
    context.close()


def test_open_page_shows_the_cited_page_with_the_cited_words_marked(page):
    page, errors = page
    ask(page, "How many gulls does the lighthouse keeper count at dawn?")
    source = page.locator("#src-0-1")
    assert "keeper.pdf, p. 2" in source.locator("> summary").inner_text()
    page.locator("#answer-0 .cite[data-s='0']").click()
    page.wait_for_function("() => document.querySelector('#src-0-1').open")
    assert "keeper.pdf · p. 2" in source.locator(".source-meta").inner_text()
    cited = source.locator(".passage mark.on").all_inner_texts()
    assert cited == [SENTENCE]                          # the cited sentence's words, marked in the passage
    button = source.locator("button.open-page")
    assert button.inner_text() == "Open page 2"
    button.click()
    page.wait_for_selector("#src-0-1 .page-view .page-text", timeout=30_000)
    shown = source.locator(".page-text").inner_text()
    assert " ".join(shown.split()) == " ".join(PAGE_TWO.split())      # the whole of page 2, nothing of page 1
    assert source.locator(".page-head").inner_text().lower() == "keeper.pdf, p. 2"
    marks = source.locator(".page-text mark")
    assert marks.all_inner_texts() == [SENTENCE]        # the same words, marked inside the page ...
    assert marks.first.get_attribute("class") == "on"   # ... as the chip's sentence, shown highlighted
    assert marks.first.evaluate("(m) => getComputedStyle(m).backgroundColor") != "rgba(0, 0, 0, 0)"
    assert button.inner_text() == "Hide page 2"
    button.click()                                      # a second click hides the page again
    assert not source.locator(".page-view").is_visible() and button.inner_text() == "Open page 2"
    ask(page, "What does a tokenizer split text into?")
    unpaged = page.locator("#src-1-1")
    assert unpaged.locator("> summary").inner_text().startswith("[1] tokens.md")
    assert unpaged.locator("button.open-page").count() == 0 and "p. " not in unpaged.inner_text()  # no pages
    assert not errors
