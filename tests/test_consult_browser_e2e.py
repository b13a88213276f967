"""The desk's consult, conference and keypads in real Chromium (static/consult.js,
static/dialpad.js). One engine: Ann works the desk page (her fake microphone hums
700 Hz); the caller and Bob are aiortc peers.

The failures this guards: the buttons not matching the consult's state (Transfer
offered while Bob still rings, Leave missing in a conference), a desk that stays on a
call it left, keys typed on the keypad that never reach the call, and a dial pad
that takes letters or says nothing when the call cannot be placed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller
from tests.test_browser import CHROMIUM, chromium_args
from tests.test_monitor_e2e import PAGE_HEARD, ToneTrack, level_at, tone_wav

pytestmark = [pytest.mark.integration, pytest.mark.browser]


async def desk_signed_in(browser: Browser, url: str) -> Page:
    """Ann's desk page, signed in, her microphone allowed."""
    context = await browser.new_context(permissions=["microphone"])
    desk = await context.new_page()
    await desk.goto(f"{url}/agent")
    await desk.get_by_test_id("username").fill("ann")
    await desk.get_by_test_id("password").fill("pw-ann-1")
    await desk.get_by_test_id("sign-in").click()
    return desk


async def test_the_desk_consults_conferences_and_sends_keys(
    tmp_path: Path, output_dir: Path
) -> None:
    engine = EngineProcess(tmp_path / "desk").start()
    admin = engine.http(timeout=30)
    for name in ("ann", "bob"):
        user = {"username": name, "password": f"pw-{name}-1"}
        assert (await admin.post("/api/v1/agents", json=user)).status_code == 201
    bob = await engine.agent("bob", "pw-bob-1", "login", "available")
    caller = Caller(engine.url, None, mic=ToneTrack(440.0))
    bob_phone = Caller(engine.url, None, mic=ToneTrack(1100.0))
    mic = tone_wav(tmp_path / "ann.wav", 700.0)
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=chromium_args(mic))
            try:
                desk = await desk_signed_in(browser, engine.url)
                await desk.get_by_test_id("go-available").click()
                await expect(desk.get_by_test_id("presence")).to_have_text("available")

                # the dial pad takes digits, + * # only; without a trunk it says why
                number = desk.get_by_test_id("dial-number")
                await number.press_sequentially("+1a55b5")
                await desk.get_by_test_id("dial-4").click()
                await desk.get_by_test_id("dial-back").click()
                await expect(number).to_have_value("+1555")
                await desk.get_by_test_id("dial-call").click()
                await expect(desk.get_by_test_id("dial-status")).to_contain_text(
                    "Could not call +1555: no SIP trunk"
                )

                r = await admin.post("/api/v1/call-links", json={"agent": "ann"})
                caller.invite = r.json()["token"]
                await caller.dial()
                cid = caller.call_id
                await desk.get_by_test_id("accept").click(timeout=30_000)
                await expect(desk.get_by_test_id("call-state")).to_have_text("bridged")

                # keys typed on the keypad reach the caller's line
                await desk.get_by_test_id("keys-toggle").click()
                await desk.get_by_test_id("key-5").click()
                await desk.get_by_test_id("key-5").press("#")
                await expect(desk.get_by_test_id("keys-sent")).to_have_text("Keys sent: 5#")

                # consult Bob: only Cancel while he rings
                await desk.get_by_test_id("consult-to").focus()
                await expect(desk.get_by_test_id("consult-to")).to_have_value("bob")
                await desk.get_by_test_id("consult-start").click()
                status = desk.get_by_test_id("consult-status")
                await expect(status).to_have_text("Ringing bob… the caller is on hold.")
                await expect(desk.get_by_test_id("consult-cancel")).to_be_visible()
                await expect(desk.get_by_test_id("consult-complete")).to_be_hidden()
                await expect(desk.get_by_test_id("call-state")).to_have_text("held")
                await bob_phone.accept(bob, cid)
                await expect(status).to_contain_text("Talking to bob")
                await expect(desk.get_by_test_id("consult-complete")).to_be_visible()
                await desk.get_by_test_id("consult-conference").click()
                await expect(status).to_contain_text("Conference: the caller, ann and bob")
                await expect(desk.get_by_test_id("consult-start")).to_be_hidden()
                await asyncio.sleep(1.5)
                mark = len(bob_phone.heard)
                await asyncio.sleep(1.2)
                bob_heard = level_at(bob_phone.heard_pcm(mark), 700.0)
                await desk.screenshot(
                    path=str(output_dir / "consult-conference.png"), full_page=True
                )

                # Ann leaves: her desk goes to wrap-up, Bob keeps the caller
                await desk.get_by_test_id("conference-leave").click()
                await expect(desk.get_by_test_id("call-error")).to_have_text(
                    "You left the conference."
                )
                await expect(desk.get_by_test_id("wrapup")).to_be_visible()
                call = (await admin.get(f"/api/v1/calls/{cid}")).json()
            finally:
                await browser.close()
    finally:
        await asyncio.gather(caller.close(), bob_phone.close())
        await asyncio.gather(bob.aclose(), admin.aclose())
        engine.stop()
    bob_id = call["agent_id"]
    assert call["state"] == "bridged" and bob_id is not None
    assert bob_heard > PAGE_HEARD, bob_heard  # in the conference, Bob heard Ann's page
