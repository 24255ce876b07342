"""Headless Chromium against a real `assistant ui` (default corpus, default weights).

Skipped when /usr/bin/chromium or playwright is missing. The server runs in a subprocess on a free port;
its index goes to a temporary folder (the corpus is indexed on start), the generator weights come from
the user's cache as usual. The README's screenshots (docs/screenshots/after-*.png) are taken here, so they
show the page as it is. (tests/test_browser_app.py covers the chat app's behaviour on stand-in models.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser_support import CHROMIUM, CHROMIUM_ARGS, REPO, free_port, require_browser

pytestmark = [pytest.mark.browser, pytest.mark.real]
sync_api = require_browser()


def _copy_default_corpus_index(target: Path) -> None:
    """Start from a copy of corpus/'s default index (built once, shared with the other real-weight tests),
    so the server syncs incrementally and uploads never touch the shared index."""
    import shutil

    from model.encoder import Encoder
    from retrieval.store import default_index_path
    from retrieval.sync import sync_folder

    shared = default_index_path(REPO / "corpus")
    sync_folder(REPO / "corpus", shared, Encoder.load(None), progress=False)
    shutil.copytree(shared, target, ignore=shutil.ignore_patterns("*.lock", "uploads"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`assistant ui` on the default corpus; yields its URL; stops it afterwards."""
    yield from _serve(tmp_path_factory)


@pytest.fixture(scope="module")
def base_server(tmp_path_factory):
    """The same with `--no-adapter --answer-mode generate`: the base model writes long answers token by token
    (guided answers and the adapter's are a few words, done before streaming can be watched or Stop clicked)."""
    yield from _serve(tmp_path_factory, "--no-adapter", "--answer-mode", "generate")


def _serve(tmp_path_factory, *extra: str):
    port = free_port()
    index = tmp_path_factory.mktemp("ui-index") / "corpus-index"
    _copy_default_corpus_index(index)
    log_path = tmp_path_factory.mktemp("ui-log") / "ui.log"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "GRADIO_ANALYTICS_ENABLED": "False",
           "ASSISTANT_MAX_NEW_TOKENS": "48"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "assistant.cli", "ui", "--port", str(port), "--index",
                                 str(index), *extra], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"assistant ui exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"assistant ui did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        # the start-up line says which decode path runs (native kernels, or why not)
        assert "native CPU decode kernels: " in log_path.read_text(), log_path.read_text()[-3000:]
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_tab(browser, url):
    """A new tab (its own Gradio session) with the chat loaded."""
    page = browser.new_page()
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#question textarea", timeout=60_000)
    return page


@pytest.fixture
def page(server, browser):
    return open_tab(browser, server)


def answer_text(page) -> str:
    """Text of the latest answer."""
    answers = page.locator("#chatbot .turn .text")
    return answers.last.inner_text() if answers.count() else ""


def chat_text(page) -> str:
    """Everything in the chat view, closed sources and score details included."""
    return page.locator("#chatbot").text_content()


def ask_and_watch(page, question: str, timeout: float = 240.0) -> tuple[list[int], str]:
    """Type a question, send it, and sample the answer's length until it is finished (its Copy button shows)."""
    finished = page.locator("#chatbot .turn .copy").count()
    page.fill("#question textarea", question)
    page.click("#send")
    lengths, deadline = [], time.time() + timeout
    while time.time() < deadline:
        lengths.append(len(answer_text(page)))
        if page.locator("#chatbot .turn .copy").count() > finished:
            return lengths, chat_text(page)
        time.sleep(0.05)
    pytest.fail(f"no answer within {timeout} s; chat shows: {page.locator('#chatbot').inner_text()[:500]}")


def source_titles(page) -> list[str]:
    return page.locator("#chatbot .turn").last.locator("details.source > summary").all_inner_texts()


def test_question_streams_an_answer_with_a_source_from_the_right_file(base_server, browser):
    page = open_tab(browser, base_server)  # the base model's longer answers stream over many updates
    models = page.locator("#models").inner_text()
    assert "all-MiniLM-L6-v2" in models and "SmolLM2-135M-Instruct" in models
    page.click("#send")  # an empty question gets a clear message, not an answer
    page.wait_for_function("() => document.querySelector('#message').innerText.includes('empty')", timeout=30_000)
    lengths, chat = ask_and_watch(page, "What does LoRA train instead of the full weight matrices?")
    growth = [b for a, b in zip(lengths, lengths[1:]) if b > a]
    assert len(growth) >= 3, f"the answer did not stream in: {lengths}"
    assert "peft-lora.md" in chat
    assert source_titles(page)[0].startswith("[1] ") and "retrieval score" in chat


def test_uploaded_file_is_indexed_and_answers_cite_it(page, tmp_path):
    doc = tmp_path / "zorblat-fruit.md"
    doc.write_text(
        "# The zorblat\n\nThe zorblat is a purple fruit that grows only on the island of Quenmora. "
        "Zorblat trees flower every seven years, and each tree gives about forty fruits.\n",
        encoding="utf-8",
    )
    page.click("button[role=tab]:has-text('Library')")
    page.set_input_files("#upload input[type='file']", str(doc))
    page.wait_for_function(
        "() => document.querySelector('#upload-status') && "
        "document.querySelector('#upload-status').innerText.includes('indexed')", timeout=120_000)
    assert "@uploads/zorblat-fruit.md: indexed" in page.locator("#upload-status").inner_text()
    page.click("button[role=tab]:has-text('Chat')")
    ask_and_watch(page, "Where does the zorblat fruit grow?")
    titles = source_titles(page)
    assert titles[0].startswith("[1] @uploads/zorblat-fruit.md")  # the upload is the top passage
    answer = answer_text(page)
    assert "Quenmora" in answer                              # ... and the answer uses it
    adapter_in_use = os.environ.get("ASSISTANT_USE_ADAPTER", "1") not in ("0", "false") and (
        os.environ.get("ASSISTANT_ADAPTER") or (REPO / "assistant/data/adapter/adapter.safetensors").exists())
    if adapter_in_use:
        # The fine-tuned model cites (the base model rarely writes [n]): the upload's source is marked cited.
        assert titles[0].endswith("cited") and "not cited" not in titles[0], (answer, titles[0])


def test_the_evidence_is_highlighted_inside_its_source(server, browser):
    """Guided mode: the reader's evidence span is what the opened source highlights, and what the answer states."""
    page = open_tab(browser, server)
    ask_and_watch(page, "Who introduced LoRA?")
    answer = answer_text(page)
    assert "Edward Hu" in answer, answer
    page.locator("#chatbot .cite").first.click()  # guided answers always cite the evidence's passage
    opened = page.locator("#chatbot details.source[open]")
    opened.wait_for()
    marks = opened.locator(".passage mark").all_inner_texts()
    assert marks and "Edward Hu" in marks[0], marks
    assert marks[0].strip() in answer  # the answer states the evidence
    passage = opened.locator(".passage").inner_text()
    assert marks[0] in passage and "introduced by" in passage


def test_stop_button_stops_a_long_answer(base_server, browser):
    page = open_tab(browser, base_server)
    page.click("text=Settings")
    max_new = page.locator("#max-new-tokens input[type='number']")
    max_new.fill("400")
    max_new.press("Enter")
    page.fill("#question textarea", "Explain how attention, positional encodings and feed-forward layers work together.")
    page.click("#send")
    page.wait_for_function(
        "() => { const b = document.querySelector('#chatbot .turn .text'); "
        "return b && b.innerText.length > 30; }", timeout=180_000)
    start = time.time()
    page.click("#stop")
    page.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('(stopped)')",
                           timeout=30_000)
    assert time.time() - start < 20


def test_two_tabs_asking_at_once_get_their_own_answers(server, browser):
    tabs = [open_tab(browser, server), open_tab(browser, server)]
    questions = ["What is the rank r in LoRA?", "What does top-k sampling keep?"]
    for tab, question in zip(tabs, questions):
        tab.fill("#question textarea", question)
    for tab in tabs:
        tab.click("#send")
    chats = []
    for tab in tabs:
        tab.wait_for_selector("#chatbot .turn .copy", timeout=300_000)
        chats.append(chat_text(tab))
    assert questions[0] in chats[0] and questions[1] not in chats[0]
    assert questions[1] in chats[1] and questions[0] not in chats[1]
    assert "peft-lora.md" in chats[0] and "decoding-strategies.md" in chats[1]


def test_screenshots_of_the_chat_and_the_library(server, browser, tmp_path):
    """The README's pictures: a composed answer with a source opened from its [n] chip (that sentence's words
    highlighted), and the library. They go to a temporary folder, so a test run leaves the work tree clean;
    `ASSISTANT_SCREENSHOTS=docs/screenshots pytest tests/test_browser.py -k screenshots` retakes the README's."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.goto(server, wait_until="domcontentloaded")
    page.wait_for_selector("#question textarea", timeout=60_000)
    ask_and_watch(page, "What does LoRA change in a pretrained model?")
    chips = page.locator("#chatbot .cite")
    if chips.count():
        chips.first.click()
    else:  # the small model did not cite this time: open the first source by hand
        page.locator("#chatbot details.source > summary").first.click()
    page.wait_for_selector("#chatbot details.source[open]")
    page.locator("#chatbot details.source[open] details.scores > summary").first.click()
    page.locator("#chatbot .turn").first.scroll_into_view_if_needed()
    shots = Path(os.environ.get("ASSISTANT_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "after-answer.png"))
    page.click("button[role=tab]:has-text('Library')")
    page.wait_for_selector("#library tbody tr")
    page.screenshot(path=str(shots / "after-library.png"))
    assert (shots / "after-answer.png").stat().st_size > 10_000 and (shots / "after-library.png").stat().st_size > 10_000
