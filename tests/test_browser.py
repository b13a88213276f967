"""A real Chromium caller: the caller page and the live view, driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.engine_proc import EngineProcess

pytestmark = [pytest.mark.browser, pytest.mark.integration]
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser(voices: dict[str, Path]) -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={voices['calm']}",
            ],
        )
        try:
            yield b
        finally:
            b.close()


def test_browser_call_shows_live_words(
    engine: EngineProcess, browser: Browser, output_dir: Path
) -> None:
    context = browser.new_context(permissions=["microphone"])
    caller = context.new_page()
    caller.goto(f"{engine.url}/call")
    caller.get_by_test_id("call").click()
    expect(caller.get_by_test_id("state")).to_have_text("active", timeout=20_000)
    expect(caller.get_by_test_id("notice")).to_contain_text("pocketsphinx")
    # the caller's own captions, from the event stream
    expect(caller.get_by_test_id("captions")).to_contain_text("order", timeout=30_000)
    call_id = caller.evaluate("window.ccengineCallId")

    live = context.new_page()
    live.goto(f"{engine.url}/calls/{call_id}")
    expect(live.get_by_test_id("state")).to_contain_text("active")
    # new words arrive live (the fake microphone loops the script)
    expect(live.get_by_test_id("transcript")).to_contain_text("morning", timeout=40_000)
    expect(live.locator("[data-testid=call-emotion]")).to_have_count(1, timeout=20_000)
    expect(live.get_by_test_id("timeline")).not_to_be_empty()
    # agent assist: what the caller wants, and the article that answers it
    expect(live.get_by_test_id("summary")).to_contain_text("Caller:", timeout=20_000)
    expect(live.get_by_test_id("suggestions")).to_contain_text("Where is my order?")
    live.screenshot(path=str(output_dir / "live-view.png"), full_page=True)
    caller.screenshot(path=str(output_dir / "caller-page.png"), full_page=True)

    index = context.new_page()
    index.goto(engine.url)
    expect(index.locator(f"a[href='/calls/{call_id}']")).to_have_count(1)

    caller.get_by_test_id("hangup").click()
    expect(caller.get_by_test_id("state")).to_have_text("ended")
    expect(live.get_by_test_id("state")).to_contain_text("ended (hangup)", timeout=15_000)
    live.screenshot(path=str(output_dir / "live-view-ended.png"), full_page=True)
    context.close()
