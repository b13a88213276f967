"""Issue 16's acceptance in real Chromium: a desk tab that closes takes its agent out of
the calls' way. The engine is a process with the default CCENGINE_AGENT_DISCONNECT_AFTER
(10 s); each agent's desk is a page of its own context.

The failure: the closed tab left Ann available, so the next escalated caller rang her
desk, which nobody would ever see, for the whole offer timeout."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.engine_proc import EngineProcess
from tests.test_browser import launch

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def sign_in_available(page: Page, url: str, name: str) -> None:
    page.goto(f"{url}/agent")
    page.get_by_test_id("username").fill(name)
    page.get_by_test_id("password").fill(f"pw-{name}-123")
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("presence")).to_have_text("away")
    page.get_by_test_id("go-available").click()
    expect(page.get_by_test_id("presence")).to_have_text("available")


def test_a_closed_desk_tab_is_away_in_ten_seconds_and_the_next_caller_rings_bob(
    engine: EngineProcess, voices: dict[str, Path]
) -> None:
    engine.add_user("ann", "pw-ann-123")
    engine.add_user("bob", "pw-bob-123")
    with sync_playwright() as p, httpx.Client(base_url=engine.url, timeout=30) as http:
        browser = launch(p, voices["calm"])
        try:
            ann = browser.new_context().new_page()
            sign_in_available(ann, engine.url, "ann")  # available first: idle longest
            bob = browser.new_context().new_page()
            sign_in_available(bob, engine.url, "bob")
            ann.context.close()  # the tab closes
            closed = time.monotonic()
            presence: dict[str, str] = {}
            while time.monotonic() - closed < 13 and presence.get("ann") != "away":
                time.sleep(0.25)
                agents = http.get("/api/v1/agents", headers=engine.headers).json()
                presence = {a["username"]: a["presence"] for a in agents}
            took = time.monotonic() - closed
            assert presence == {"ann": "away", "bob": "available"}, presence
            assert took < 11.5, took  # 10 s, and the time to notice

            chat = http.post("/api/v1/chats", json={"language": "en"}).json()
            caller = {"Authorization": f"Bearer {chat['caller_token']}"}
            r = http.post(
                f"/api/v1/calls/{chat['call_id']}/messages",
                json={"text": "I want to speak to a person please"},
                headers=caller,
            )
            assert r.status_code == 204, r.text
            expect(bob.get_by_test_id("ring")).to_be_visible(timeout=15_000)
            agents = http.get("/api/v1/agents", headers=engine.headers).json()
            assert {a["username"]: a["presence"] for a in agents} == {
                "ann": "away", "bob": "ringing",
            }  # fmt: skip
        finally:
            browser.close()
