"""Headless Chromium against `assistant ui` on stand-in models (tests/ui_fake_server.py): the chat app's
behaviour, fast and deterministic. (tests/test_browser.py runs the real models.)

Skipped when /usr/bin/chromium or playwright is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser_support import CHROMIUM, CHROMIUM_ARGS, REPO, free_port, require_browser

HOSTILE = ('# Hostile page\n\n## Script tags\n\nThis page holds <script>window.pwned = 1</script> and '
           '<img src=x onerror="window.pwned = 2"> and ${window.pwned = 3} in its text.\n')

pytestmark = [pytest.mark.browser]
sync_api = require_browser()


class FakeServer:
    """`tests/ui_fake_server.py FOLDER INDEX PORT [STYLE]` in a subprocess; restartable on the same port (the
    browser's saved owner id is per origin, so a restart must keep the port). `style`: "" or "composed"."""

    def __init__(self, folder: Path, index: Path, log: Path, style: str = "") -> None:
        self.folder, self.index, self.log, self.style = folder, index, log, style
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "FakeServer":
        env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "ui_fake_server.py"), str(self.folder),
                                          str(self.index), str(self.port), *([self.style] if self.style else [])],
                                         cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the UI exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"the UI did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("fake-ui")
    folder = base / "docs"
    folder.mkdir()
    for name in ("peft-lora.md", "attention.md", "tokenization.md", "quantization.md"):
        shutil.copy(REPO / "corpus" / name, folder / name)
    (folder / "hostile.md").write_text(HOSTILE, encoding="utf-8")
    (folder / "blob.txt").write_bytes(b"\x00\x01 not text \x00" * 10)
    srv = FakeServer(folder, base / "index", base / "ui.log").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def playwright_browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def context(playwright_browser):
    """A fresh browser profile: its own localStorage, so its own owner id and chats."""
    ctx = playwright_browser.new_context(viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


def open_page(context, url, errors: list[str] | None = None):
    """A new page of the chat at `url`, ready for a question; `errors` collects its page errors from the start."""
    page = context.new_page()
    if errors is not None:
        page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#question textarea", timeout=60_000)
    page.wait_for_function("() => { const o = document.querySelector('#owner textarea, #owner input');"
                           " return o && o.value.length > 0; }", timeout=30_000)
    return page


def wait_answers(page, n: int, timeout: float = 60_000) -> None:
    """Until the chat shows n finished turns (finished turns have their Copy button)."""
    page.wait_for_function(f"() => document.querySelectorAll('#chatbot .turn .copy').length >= {n}",
                           timeout=timeout)


def ask(page, question: str, key: str = "Enter") -> None:
    turns = page.locator("#chatbot .turn .copy").count()
    page.fill("#question textarea", question)
    page.locator("#question textarea").press(key)
    wait_answers(page, turns + 1)


def chat_text(page) -> str:
    return page.locator("#chatbot").text_content()


def test_enter_sends_and_shift_enter_adds_a_line(server, context):
    page = open_page(context, server.url)
    assert "Enter to send" in page.locator("#hint").inner_text()
    box = page.locator("#question textarea")
    box.fill("What does LoRA")
    box.press("Shift+Enter")
    box.type("train?")
    assert box.input_value() == "What does LoRA\ntrain?" and page.locator("#chatbot .turn").count() == 0
    box.press("Enter")
    wait_answers(page, 1)
    assert "What does LoRA\ntrain?" in chat_text(page) and box.input_value() == ""


def test_citation_chip_opens_its_whole_source_in_numeric_order(server, context):
    page = open_page(context, server.url)
    ask(page, "What does LoRA train instead of the full weights?")
    numbers = page.locator("#chatbot details.source .num").all_inner_texts()
    assert numbers == [f"[{i}]" for i in range(1, len(numbers) + 1)] and len(numbers) >= 2
    assert page.locator("#chatbot details.source[open]").count() == 0
    assert "similarity" not in page.locator("#chatbot .sources").inner_text()  # scores behind the toggle
    chip = page.locator("#chatbot .cite").first
    n = chip.get_attribute("data-n")
    chip.click()
    source = page.locator(f"#chatbot #src-0-{n}")
    page.wait_for_function(f"() => document.querySelector('#src-0-{n}').open")
    assert "cited" in source.locator(":scope > summary").inner_text()
    passage = source.locator(".passage").inner_text()
    assert len(passage) > 200 and "…" not in passage                    # the whole passage, not a snippet
    source.locator("details.scores summary").click()
    assert "similarity" in source.inner_text()
    source.locator(".open-file").click()                                # inside the folder: can be opened
    page.wait_for_selector("#source-file a", timeout=20_000)
    href = page.locator("#source-file a").first.get_attribute("href")
    served = page.evaluate("(url) => fetch(url).then(r => r.text())", href)
    name = page.locator(f"#chatbot #src-0-{n} .open-file").get_attribute("data-arg")
    assert served == (server.folder / name).read_text(encoding="utf-8")


def test_copy_and_regenerate(server, context):
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = open_page(context, server.url)
    ask(page, "What is quantization?")
    shown = page.locator("#chatbot #answer-0").inner_text()        # the chip shows "1" where the text has [1]
    page.locator("#chatbot .copy").first.click()
    page.wait_for_function("() => document.querySelector('#chatbot .copy').innerText.includes('Copied')")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.endswith(" [1].") and copied.replace(" [1].", " 1.") == shown
    # Mark the rendered answer; regenerating renders a new one (its timing text alone may come out the same).
    page.evaluate("document.querySelector('#chatbot .timing').dataset.before = '1'")
    page.locator("#chatbot .regenerate").first.click()
    page.wait_for_function("() => { const e = document.querySelector('#chatbot .timing');"
                           " return e && !e.dataset.before && e.innerText.includes('total'); }", timeout=30_000)
    assert page.locator("#chatbot .turn").count() == 1                 # the answer was replaced, not added
    assert "What is quantization?" in chat_text(page)


def test_empty_chat_offers_examples_from_the_documents_and_a_click_asks(server, context):
    page = open_page(context, server.url)
    examples = page.locator("#chatbot .example")
    assert examples.count() >= 3
    texts = examples.all_inner_texts()
    headings = "\n".join((server.folder / name).read_text() for name in os.listdir(server.folder)
                         if name.endswith(".md"))
    assert all(t.endswith("?") for t in texts)
    assert any("attention" in t.lower() for t in texts) and all(
        any(w.lower() in headings.lower() for w in t.rstrip("?").split()[-2:]) for t in texts)
    examples.nth(1).click()
    wait_answers(page, 1)
    assert page.locator("#chatbot .q").inner_text() == texts[1]


def test_chat_survives_reload_and_restart_and_is_not_shown_to_another_browser(server, context, playwright_browser):
    page = open_page(context, server.url)
    ask(page, "How does grouped-query attention save memory?")
    ask(page, "And what does it cost?")
    page.reload()
    page.wait_for_selector("#question textarea")
    page.wait_for_function("() => document.querySelectorAll('#chatbot .turn').length == 2", timeout=30_000)
    assert "How does grouped-query attention save memory?" in page.locator("#chats").inner_text()

    server.stop()
    server.start()
    page = open_page(context, server.url)
    page.wait_for_function("() => document.querySelectorAll('#chatbot .turn').length == 2", timeout=30_000)
    ask(page, "Is it used in practice?")                            # continues the reopened chat
    assert page.locator("#chatbot .turn").count() == 3
    assert page.locator("#chats label").count() >= 1

    other = playwright_browser.new_context()
    try:
        stranger = open_page(other, server.url)
        time.sleep(1)
        assert "grouped-query" not in stranger.locator("#chats").inner_text()
        assert stranger.locator("#chatbot .turn").count() == 0
    finally:
        other.close()

    page.locator("#new-chat").click()
    page.wait_for_function("() => document.querySelectorAll('#chatbot .turn').length == 0")
    ask(page, "What is BPE?")
    # the new chat is saved and listed after the answer (a later event): rename it once it is there, as a user would
    page.wait_for_function("() => document.querySelector('#chats').innerText.includes('What is BPE?')")
    page.click("text=Rename or delete")
    title = page.locator("#chat-title input, #chat-title textarea")
    title.wait_for(state="visible")
    for _ in range(20):  # the name field can be set back to its state just after it shows: type until it stays
        title.fill("Tokenizers")
        page.wait_for_timeout(250)
        if title.input_value() == "Tokenizers":
            break
    page.click("#rename-chat")
    page.wait_for_function("() => document.querySelector('#chats').innerText.includes('Tokenizers')")
    page.locator("#chats label", has_text="grouped-query").click()    # reopen the first chat from the list
    page.wait_for_function("() => document.querySelectorAll('#chatbot .turn').length == 3", timeout=30_000)
    page.locator("#chats label", has_text="Tokenizers").click()
    page.wait_for_function("() => document.querySelectorAll('#chatbot .turn').length == 1", timeout=30_000)
    page.click("#delete-chat")
    page.wait_for_function("() => !document.querySelector('#chats').innerText.includes('Tokenizers')")
    assert "grouped-query" in page.locator("#chats").inner_text()


def test_hostile_document_text_is_shown_not_run(server, context):
    page = open_page(context, server.url)
    ask(page, "script tags hostile page pwned")
    page.locator("#chatbot details.source").first.locator(":scope > summary").click()
    assert page.evaluate("window.pwned") is None
    assert "<script>" in chat_text(page) or "onerror" in chat_text(page)


def test_library_lists_states_and_removing_a_file_keeps_it_out_of_answers_after_resync(server, context):
    page = open_page(context, server.url)
    page.click("button[role=tab]:has-text('Library')")
    library = page.locator("#library")
    page.wait_for_selector("#library tr[data-path='quantization.md']")
    assert "indexed ·" in library.locator("tr[data-path='quantization.md']").inner_text()
    assert "skipped: binary file" in library.locator("tr[data-path='blob.txt']").inner_text()
    page.fill("#library-filter textarea, #library-filter input", "quant")
    page.wait_for_function("() => document.querySelectorAll('#library tbody tr').length == 1")

    library.locator("tr[data-path='quantization.md'] button").click()
    page.wait_for_function("() => document.querySelector('#library-message').innerText.includes('Removed')")
    assert "excluded" in library.locator("tr[data-path='quantization.md']").inner_text()
    page.fill("#library-filter textarea, #library-filter input", "")
    page.click("#resync")
    page.wait_for_function("() => document.querySelector('#resync-status').innerText.includes('Re-synced')",
                           timeout=60_000)
    assert "1 excluded" in page.locator("#resync-status").inner_text()
    page.click("button[role=tab]:has-text('Chat')")
    ask(page, "What does quantization of weights to int4 or int8 do?")
    assert "quantization.md" not in page.locator("#chatbot .sources").inner_text()

    page.click("button[role=tab]:has-text('Library')")
    library.locator("tr[data-path='quantization.md'] button").click()  # Restore
    page.wait_for_function("() => document.querySelector('#library-message').innerText.includes('no longer excluded')")
    page.click("#resync")
    page.wait_for_function("() => document.querySelector('#resync-status').innerText.includes('1 added')",
                           timeout=60_000)


def test_upload_shows_each_file_and_rejected_ones_as_rejected(server, context, tmp_path):
    good = tmp_path / "zorblat.md"
    good.write_text("# Zorblat\n\nThe zorblat is a purple fruit from Quenmora.\n")
    bad = tmp_path / "tool.exe"
    bad.write_bytes(b"MZ\x00\x00")
    page = open_page(context, server.url)
    page.click("button[role=tab]:has-text('Library')")
    page.set_input_files("#upload input[type='file']", [str(good), str(bad)])
    page.wait_for_function("() => document.querySelector('#upload-status').innerText.includes('rejected')",
                           timeout=60_000)
    status = page.locator("#upload-status")
    assert "✓ @uploads/zorblat.md: indexed" in status.inner_text()
    assert "@uploads/tool.exe: rejected" in status.locator(".rejected").inner_text()
    page.wait_for_selector("#library tr[data-path='@uploads/zorblat.md']")
    page.locator("#library tr[data-path='@uploads/zorblat.md'] button").click()
    page.wait_for_function("() => document.querySelector('#library-message').innerText.includes('deleted its uploaded copy')")
    assert page.locator("#library tr[data-path='@uploads/zorblat.md']").count() == 0


def test_phone_width_has_no_horizontal_scroll(server, playwright_browser):
    context = playwright_browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = open_page(context, server.url)
        ask(page, "What is multi-head attention?")
        page.locator("#chatbot .cite").first.click()
        for tab in ("Chat", "Library"):
            page.click(f"button[role=tab]:has-text('{tab}')")
            time.sleep(0.5)
            width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], (tab, width)
        short = page.locator("#models .model").first
        assert short.inner_text() == "FakeModel-1B-Instruct.Q4_1" and "sha256" in short.get_attribute("title")
    finally:
        context.close()
