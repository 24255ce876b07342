"""The chat UI served by `assistant serve`'s app, in headless Chromium: the same process answers the API and
the page, and with an API key the page asks for the key once, then chats (tiny models, fast).

Skipped when /usr/bin/chromium or playwright is missing.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from assistant_fakes import tiny_tokenizer
from server_fixtures import serve_tiny

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "browser-key-42"

pytestmark = [pytest.mark.browser]

if not CHROMIUM.exists():
    pytest.skip("needs /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = serve_tiny(tmp_path_factory.mktemp("browser-server"), tiny_tokenizer(), api_key=KEY, ui=True)
    yield server
    server.stop()


def test_ui_asks_for_the_key_once_then_chats_beside_the_api(live) -> None:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.goto(live.url + "/", wait_until="domcontentloaded")
            assert "/login" in page.url  # no key yet: the key page
            page.fill("#key", "wrong")
            page.click("#enter")
            page.wait_for_selector("#error")
            page.fill("#key", KEY)
            page.click("#enter")
            page.wait_for_selector("#question textarea", timeout=60_000)  # the Gradio chat, same origin
            page.fill("#question textarea", "What does LoRA train?")
            page.click("#send")
            deadline = time.time() + 60
            while time.time() < deadline and not page.locator("#chatbot .turn .copy").count():
                time.sleep(0.1)
            assert page.locator("#chatbot .turn .copy").count() >= 1  # the answer is finished in the page
            # a second tab of the same browser session needs no key again
            other = context.new_page()
            other.goto(live.url + "/", wait_until="domcontentloaded")
            other.wait_for_selector("#question textarea", timeout=60_000)
            assert "/login" not in other.url
        finally:
            browser.close()
    # the same process serves the API (with the key)
    reply = httpx.get(live.url + "/v1/models", headers={"authorization": f"Bearer {KEY}"})
    assert reply.status_code == 200
    assert live.engine.stats().finished >= 1  # the UI's answer went through the batch engine
