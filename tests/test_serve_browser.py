"""The page of `charrnn serve` in a real browser: the system's headless Chromium, driven by Playwright.

Nothing is downloaded: Playwright is pointed at the Chromium the system has (Debian's `chromium`,
`apt-get install chromium`; or the path in CHARRNN_TEST_CHROMIUM). Without one the tests skip,
saying so.
"""

from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest

from charrnn.serve.app import ServeSettings
from charrnn.serve.completions import Limits
from charrnn.serve.server import server_in_thread
from charrnn.store.checkpoint import load_weights

sync_api = pytest.importorskip("playwright.sync_api")


def _chromium() -> str | None:
    given = os.environ.get("CHARRNN_TEST_CHROMIUM")
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium on this system: apt-get install chromium (or set CHARRNN_TEST_CHROMIUM to a "
    "Chromium binary); Playwright's own browser download is never used",
)


@pytest.fixture(scope="module")
def served(trained_run):
    loaded = load_weights(trained_run / "best.safetensors")
    loaded.model.eval()
    settings = ServeSettings(limits=Limits(max_tokens=1_000_000))
    with server_in_thread(loaded.model, loaded.tokenizer, "pattern", settings) as (url, server):
        yield url, server.config.app.state.server.engine


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


def test_type_a_prompt_generate_watch_it_grow_stop_and_the_server_stops_too(served, browser, tmp_path):
    url, engine = served
    page = browser.new_page(viewport={"width": 1000, "height": 760})
    requests_outside: list[str] = []
    page.on(
        "request",
        lambda request: None if request.url.startswith(url) else requests_outside.append(request.url),
    )
    page.goto(url + "/")
    page.fill("#prompt", "the quick ")
    page.fill("#length", "1000000")
    page.fill("#seed", "42")
    page.click("#generate")
    output = page.locator("#output")
    page.wait_for_function("document.getElementById('output').textContent.length > 40")
    first = len(output.text_content() or "")
    page.wait_for_function(f"document.getElementById('output').textContent.length > {first + 40}")  # it grows
    cancelled = engine.streams_cancelled
    page.screenshot(path=str(tmp_path / "writing.png"))
    page.keyboard.press("Escape")  # the Stop button's key
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Stopped')")
    assert "Seed 42" in (page.text_content("#status") or "")
    deadline = time.monotonic() + 5
    while engine.streams_in_flight:  # the server's work stopped too
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert engine.streams_cancelled == cancelled + 1
    stopped_at = len(output.text_content() or "")
    time.sleep(0.3)
    assert len(output.text_content() or "") == stopped_at
    assert (output.text_content() or "").startswith("the quick ")
    assert requests_outside == []  # self-contained: nothing from the network
    page.close()


def test_the_keyboard_generates_and_the_seed_reproduces_the_text(served, browser):
    url, _ = served
    page = browser.new_page()
    page.goto(url + "/")
    page.fill("#prompt", "lazy ")
    page.fill("#length", "60")
    page.fill("#temperature", "1.5")
    page.fill("#seed", "9007199254740993")  # 2^53 + 1: a JavaScript number would round it
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')")
    text = page.text_content("#output")
    answer = httpx.post(
        url + "/v1/completions",
        json={"prompt": "lazy ", "max_tokens": 60, "temperature": 1.5, "seed": 9007199254740993},
    ).json()
    assert text == "lazy " + answer["choices"][0]["text"]
    assert "Seed 9007199254740993." in (page.text_content("#status") or "")
    assert page.is_enabled("#copy") and page.is_disabled("#stop-button")
    page.close()


def test_the_copy_button_copies_what_was_written(served, browser):
    url, _ = served
    context = browser.new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page = context.new_page()
    page.goto(url + "/")
    page.fill("#prompt", "the ")
    page.fill("#length", "25")
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')")
    page.click("#copy")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Copied')")
    written = (page.text_content("#output") or "")[len("the ") :]
    assert len(written) == 25 and page.evaluate("navigator.clipboard.readText()") == written
    context.close()


def test_a_server_with_an_api_key_asks_for_it_once(trained_run, browser):
    loaded = load_weights(trained_run / "best.safetensors")
    settings = ServeSettings(api_key="sesame")
    with server_in_thread(loaded.model.eval(), loaded.tokenizer, "pattern", settings) as (url, _):
        page = browser.new_page()
        asked: list[str] = []

        def answer(dialog) -> None:
            asked.append(dialog.message)
            dialog.accept("sesame")

        page.on("dialog", answer)
        page.goto(url + "/")
        page.fill("#prompt", "the ")
        page.fill("#length", "20")
        for _ in range(2):
            page.click("#generate")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')")
        assert asked == ["This server needs its API key:"]
        page.close()


def test_surprise_colours_the_text_and_errors_are_shown(served, browser):
    url, _ = served
    page = browser.new_page()
    page.goto(url + "/")
    page.check("#surprise")
    page.fill("#prompt", "the ")
    page.fill("#length", "30")
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')")
    spans = page.locator("#output span[title$='bits']")
    assert spans.count() == 30
    page.fill("#prompt", "the €")
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Error')")
    assert "'€' (U+20AC)" in (page.text_content("#status") or "")
    page.close()
