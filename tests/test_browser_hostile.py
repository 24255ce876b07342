"""Hostile content in the browser: documents holding <script>, <img onerror>, javascript: links, raw HTML
blocks in Markdown and very long unbroken lines are indexed, a question brings them into the answer (a
stand-in generator echoes the passages, so the model's output carries the payloads too), the sources and an
upload with a hostile file name; nothing runs (every payload would set window.__pwned) and the chat column
does not overflow sideways.

Stand-in models (HashingEncoder, an echoing FakeGenerator), the real Gradio app in this process, headless
Chromium. Elements are found by their stable ids (#chatbot, #question, #send, #upload, #upload-status,
#index-status), so the tests hold for any UI that keeps those ids.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not CHROMIUM.exists():
    pytest.skip("needs /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

LONG = "W" * 3000  # one "word" far wider than any screen
PAYLOADS = [
    "<script>window.__pwned = 'script'</script>",
    "<img src=x onerror=\"window.__pwned = 'img'\">",
    "<svg onload=\"window.__pwned = 'svg'\"><circle r=5 /></svg>",
    "<details open ontoggle=\"window.__pwned = 'details'\"><summary>s</summary>d</details>",
    "<iframe srcdoc=\"<script>parent.__pwned = 'iframe'</script>\"></iframe>",
    "<a href=\"javascript:window.__pwned = 'a'\" id=\"jslink\">click me</a>",
    "[markdown link](javascript:window.__pwned='md')",
    "<div style=\"position:fixed;inset:0;width:5000px\" onmouseover=\"window.__pwned = 'div'\">cover</div>",
]
HOSTILE_NAME = "<img src=x onerror=window.__pwned=1>`<b>x<b>`.md"


def _documents(folder: Path) -> None:
    body = "\n\n".join(PAYLOADS)
    (folder / "hostile.md").write_text(
        f"# Zebrafinch <img src=x onerror=\"window.__pwned = 'heading'\">\n\nZebrafinch notes.\n\n{body}\n\n"
        f"Zebrafinch long line: {LONG}\n")
    (folder / "hostile.txt").write_text(f"Zebrafinch plain text.\n{body}\n{LONG}\n")
    escaped = "".join(f"<p>{p.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')}</p>"
                      for p in PAYLOADS)
    (folder / "hostile.html").write_text(f"<html><body><h1>Zebrafinch page</h1>{escaped}<p>{LONG}</p></body></html>")


def _echo(prompt: str) -> str:
    """The passages of the prompt, as the answer (so the model's output holds the payloads), citing [1]."""
    match = re.search(r"Passages:\n\n(.*?)\n\nQuestion:", prompt, re.S)
    return (match.group(1) if match else prompt) + "\n\nSee [1]."


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from assistant.pipeline import Assistant
    from assistant.ui import serve
    from retrieval.testing import HashingEncoder

    from assistant_fakes import FakeGenerator

    root = tmp_path_factory.mktemp("hostile")
    docs = root / "docs"
    docs.mkdir()
    _documents(docs)
    assistant = Assistant.from_folder(docs, root / "index", encoder=HashingEncoder(),
                                      generator=FakeGenerator(_echo, chunk=200, context_length=32768),
                                      refusal_threshold=0.0, k=3, max_new_tokens=1024)
    port = _free_port()
    demo = serve(assistant, host="127.0.0.1", port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/", root
    finally:
        demo.close()


@pytest.fixture
def page(server):
    url, _ = server
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.dialogs = dialogs
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#question textarea", timeout=60_000)
            yield page
        finally:
            browser.close()


def _assert_nothing_ran(page) -> None:
    page.wait_for_timeout(1000)  # error/load/toggle events fire asynchronously
    frames_pwned = [f.evaluate("() => window.__pwned === undefined ? null : String(window.__pwned)")
                    for f in page.frames]
    assert frames_pwned == [None] * len(frames_pwned), frames_pwned
    assert not page.dialogs
    assert page.locator("#chatbot a[href^='javascript:' i]").count() == 0
    assert page.locator("#chatbot iframe, #chatbot script, #upload-status script, #index-status script").count() == 0


def _assert_no_sideways_overflow(page) -> None:
    overflow = page.evaluate("""() => {
        const out = [];
        const chat = document.querySelector('#chatbot');
        const limit = chat.getBoundingClientRect().right + 2;
        if (document.documentElement.scrollWidth > window.innerWidth + 2)
            out.push('page ' + document.documentElement.scrollWidth + ' > ' + window.innerWidth);
        for (const el of chat.querySelectorAll('*')) {
            const r = el.getBoundingClientRect();
            if (r.width > 0 && r.right > limit && getComputedStyle(el).position !== 'fixed') {
                // a box may be wider than the column only inside something that scrolls it
                let clipped = false;
                for (let p = el.parentElement; p && p !== chat.parentElement; p = p.parentElement) {
                    const s = getComputedStyle(p);
                    if (['auto', 'scroll', 'hidden', 'clip'].includes(s.overflowX) &&
                        p.getBoundingClientRect().right <= limit) { clipped = true; break; }
                }
                if (!clipped) out.push(el.tagName + '.' + el.className + ' right=' + r.right + ' > ' + limit);
            }
        }
        return out.slice(0, 5);
    }""")
    assert not overflow, overflow


def _ask(page, question: str) -> str:
    finished = page.locator("#chatbot .turn .copy").count()
    page.fill("#question textarea", question)
    page.click("#send")
    page.wait_for_function(f"() => document.querySelectorAll('#chatbot .turn .copy').length > {finished}",
                           timeout=120_000)
    page.wait_for_timeout(500)
    return page.locator("#chatbot").inner_text()


def test_hostile_documents_in_answer_and_sources_run_nothing_and_keep_the_layout(page):
    chat = _ask(page, "What do the zebrafinch notes say?")
    assert "hostile." in chat  # the sources are listed
    assert "<img src=x onerror=" in chat and "<script>" in chat  # the answer shows the payloads as text
    _assert_nothing_ran(page)
    # Nothing from a document or the model became markup: no image, no <details>, no SVG inside the question,
    # the answer or a passage (the page's own source boxes are <details class="source">).
    assert page.locator("#chatbot img[src='x'], #chatbot svg circle[r='5'], #chatbot .q *, #chatbot .text details, "
                        "#chatbot .passage details, #chatbot .passage img").count() == 0
    # open every source box, and its score details
    for title in page.locator("#chatbot details.source > summary").all():
        title.click()
    page.wait_for_timeout(500)
    chat = page.locator("#chatbot").inner_text()
    assert "onerror" in chat  # the payloads are shown as text, not dropped or run
    _assert_nothing_ran(page)
    for link in page.locator("#chatbot a").all():  # clicking any link in the chat runs nothing either
        href = link.get_attribute("href") or ""
        assert not href.strip().lower().startswith(("javascript:", "data:", "vbscript:")), href
    _assert_no_sideways_overflow(page)


def test_an_upload_with_a_hostile_name_is_shown_as_text(page, server):
    _, root = server
    folder = root / "incoming"
    folder.mkdir(exist_ok=True)
    doc = folder / HOSTILE_NAME
    doc.write_text("# Upload\n\nThe quail upload mentions zebrafinch cousins.\n" + PAYLOADS[1] + "\n")
    page.click("button[role=tab]:has-text('Library')")
    page.set_input_files("#upload input[type='file']", str(doc))
    page.wait_for_function(
        "() => document.querySelector('#upload-status') && "
        "document.querySelector('#upload-status').innerText.includes('indexed')", timeout=120_000)
    status = page.locator("#upload-status").inner_text()
    assert "onerror" in status  # the name is shown as text
    assert "files" in page.locator("#index-status").inner_text()
    _assert_nothing_ran(page)
    page.click("button[role=tab]:has-text('Chat')")
    chat = _ask(page, "What does the quail upload mention?")
    assert "@uploads/" in chat
    _assert_nothing_ran(page)
    _assert_no_sideways_overflow(page)
