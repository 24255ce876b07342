"""Composed answers in the browser: each citation chip opens its source with the supporting words of ITS
sentence highlighted (not those of the answer's other sentences, even when both rest on the same passage),
also after a reload (the per-sentence highlights are saved with the chat); a bullets answer is a list.

Stand-in models (HashingEncoder, a scripted FakeGenerator) with the pipeline's answer replaced by a composed
one (tests/assistant_fakes.py `composing`), the real Gradio app in this process, headless Chromium.
Skipped when /usr/bin/chromium or playwright is missing.
"""

from __future__ import annotations

import pytest

from browser_support import free_port, launch_chromium, require_browser

pytestmark = [pytest.mark.browser]
sync_api = require_browser()

from test_browser_app import open_page  # noqa: E402  (after the skip)

LORA = ("# LoRA\n\nLoRA freezes the pretrained weights of the model. It trains two small low-rank matrices "
        "A and B next to each frozen weight. The rank is usually between 4 and 64.\n")
OTHER = "# Tokenizers\n\nA tokenizer splits text into tokens. Byte-pair encoding merges frequent pairs.\n"


def _plan(question: str, answer):
    """Two sentences of passage [1]: the first two, as a bulleted list when the question asks for a list."""
    if not answer.sources:
        return None
    if question.lower().startswith("list"):
        return {"picks": [(1, 1), (1, 2)], "layout": "bullets", "kind": "list", "intro": "LoRA in short:"}
    return {"picks": [(1, 1), (1, 2)]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from assistant.pipeline import Assistant
    from assistant.ui import serve
    from retrieval.testing import HashingEncoder

    from assistant_fakes import FakeGenerator, composing

    root = tmp_path_factory.mktemp("composed")
    docs = root / "docs"
    docs.mkdir()
    (docs / "lora.md").write_text(LORA, encoding="utf-8")
    (docs / "tokenizers.md").write_text(OTHER, encoding="utf-8")
    assistant = Assistant.from_folder(docs, root / "index", encoder=HashingEncoder(),
                                      generator=FakeGenerator("LoRA trains small matrices [1]."),
                                      refusal_threshold=-1.0, k=2)
    composed: list = []
    assistant.stream = composing(assistant.stream, _plan, record=composed)
    port = free_port()
    demo = serve(assistant, host="127.0.0.1", port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/", composed
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium(sync_api)


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield open_page(context, server[0])
    context.close()


def _ask(page, question: str) -> None:
    done = page.locator("#chatbot .turn .copy").count()
    page.fill("#question textarea", question)
    page.locator("#question textarea").press("Enter")
    page.wait_for_function(f"() => document.querySelectorAll('#chatbot .turn .copy').length > {done}",
                           timeout=60_000)


def _highlighted(page, source: str) -> list[str]:
    """The words shown highlighted in a source: its marks whose background is not transparent."""
    return page.evaluate("""(sel) => Array.from(document.querySelectorAll(sel + ' .passage mark'))
        .filter((m) => getComputedStyle(m).backgroundColor !== 'rgba(0, 0, 0, 0)').map((m) => m.textContent)""",
                         source)


def _click_chip(page, sentence: int) -> str:
    """Click the chip of sentence `sentence` of the first answer; returns its source's selector once open."""
    chip = page.locator(f"#answer-0 .cite[data-s='{sentence}']")
    source = f"#src-0-{chip.get_attribute('data-n')}"
    chip.click()
    page.wait_for_function(f"() => document.querySelector('{source}').open")
    return source


def test_each_chip_highlights_its_own_sentences_supporting_words_also_after_a_reload(page, server):
    _ask(page, "What does LoRA train?")
    answer = server[1][-1]
    words = [next(s for s in answer.sources if s.number == x.passage).text[x.start:x.end] for x in answer.sentences]
    assert [x.passage for x in answer.sentences] == [1, 1] and words[0] != words[1]   # two spans of one passage
    assert page.locator("#answer-0 .cite").count() == 2

    source = _click_chip(page, 1)
    assert _highlighted(page, source) == [words[1]]            # the 2nd sentence's words, not the 1st's
    assert words[0] in page.locator(f"{source} .passage").inner_text()   # ... which are there, unmarked
    source = _click_chip(page, 0)
    assert _highlighted(page, source) == [words[0]]

    page.reload()                                               # the chat comes back from the saved turn
    page.wait_for_function("() => document.querySelectorAll('#chatbot .turn .cite').length == 2", timeout=30_000)
    source = _click_chip(page, 1)
    assert _highlighted(page, source) == [words[1]]


def test_a_bullets_answer_is_a_list_with_a_chip_per_item(page, server):
    _ask(page, "List what LoRA does")
    answer = server[1][-1]
    assert answer.layout == "bullets"
    items = page.locator("#answer-0 ul li")
    assert items.count() == 2
    texts = items.all_inner_texts()
    assert [t.rsplit(" ", 1)[0] for t in texts] == [s.text for s in answer.sentences]   # the chip shows "1"
    assert not any(t.startswith("-") for t in texts)
    assert page.locator("#answer-0 > p").inner_text() == "LoRA in short:"
    assert [items.nth(i).locator(".cite").get_attribute("data-s") for i in range(2)] == ["0", "1"]
