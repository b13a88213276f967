"""The virtual agent with real Chromium as the caller (issue 15): the caller page of a
real engine process, its microphone a WAV file of piper speech on a fixed timeline, its
keypad clicked by Playwright once the agent's prompt has been heard. What the caller
heard is the audio Chromium received, recorded in the page and recognised here: the
order's status from a stand-in for the business's order system, the greeting cut off
by the caller's voice; and a person asked for rings an agent's desk in Chromium with
who, how verified and what about, while the PIN keyed on the page appears nowhere."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from string import Template
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests import speech
from tests.bot_peers import LOUD, SECRET, OrderSystem, spoken_lines
from tests.engine_proc import EngineProcess
from tests.test_bot_e2e import wait_for
from tests.test_browser import CHROMIUM, chromium_args
from tests.test_identity_e2e import PIN, flow, leaks, until_ended

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(300)]

RATE = 48000  # the recording's rate, as the page's AudioContext runs
FRAME = RATE // 50  # 20 ms
CHUNK = 2048  # frames the page's tap hands over at a time
ACCOUNT = "5550100"  # the phone number on customer c-1's record
# a person asked for after the status, heard by ~32 s (~34 s with the box busy)
PERSON_AT = 41.0

# Installed before the caller page's own scripts: what the page sends and hears, on one
# clock, from the moment its peer connection gets the engine's audio: channel 0 its
# microphone, channel 1 what it receives (what the <audio id="remote"> element plays).
RECORDER = Template("""(() => {
  const rec = { chunks: [], loud: [] };
  window.ccRecorder = rec;
  let mic = null;
  const gum = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (c) => (mic = await gum(c));
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("track", (e) => { if (e.track.kind === "audio") tap(e.track); });
    }
  };
  function tap(track) {
    const ctx = new AudioContext({ sampleRate: $rate });
    const merge = ctx.createChannelMerger(2);
    ctx.createMediaStreamSource(mic).connect(merge, 0, 0);
    ctx.createMediaStreamSource(new MediaStream([track])).connect(merge, 0, 1);
    const proc = ctx.createScriptProcessor($chunk, 2, 1);
    proc.onaudioprocess = (e) => {
      const a = e.inputBuffer.getChannelData(0), b = e.inputBuffer.getChannelData(1);
      const both = new Int16Array(2 * a.length);
      let sum = 0;
      for (let i = 0; i < a.length; i++) {
        both[2 * i] = Math.max(-1, Math.min(1, a[i])) * 32767;
        both[2 * i + 1] = Math.max(-1, Math.min(1, b[i])) * 32767;
        sum += b[i] * b[i];
      }
      rec.chunks.push(both);
      rec.loud.push(Math.sqrt(sum / a.length) * 32768 > $loud);
    };
    merge.connect(proc);
    proc.connect(ctx.destination);
    ctx.resume();
  }
  rec.state = () => [rec.loud.length, rec.loud.lastIndexOf(true)];
  rec.pcm = (from) => {
    const parts = rec.chunks.slice(from);
    const all = new Int16Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { all.set(p, at); at += p.length; }
    const bytes = new Uint8Array(all.buffer);
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    }
    return btoa(s);
  };
})();""").substitute(rate=RATE, chunk=CHUNK, loud=LOUD)


@pytest.fixture(scope="module")
def engine(
    tmp_path_factory: pytest.TempPathFactory, orders: OrderSystem
) -> Iterator[EngineProcess]:
    flows = tmp_path_factory.mktemp("flows")
    (flows / "orders.yaml").write_text(flow(orders.url))
    proc = EngineProcess(
        tmp_path_factory.mktemp("bot-browser-engine"),
        CCENGINE_BOT_FLOWS=str(flows),
        CCENGINE_BOT_ACTION_SECRET=SECRET,
        CCENGINE_OFFER_TIMEOUT="30",
        CCENGINE_LOG_LEVEL="DEBUG",  # the log searched for the PIN says all it can
    ).start()
    try:
        r = httpx.put(
            f"{proc.url}/api/v1/customers/c-1",
            json={"name": "Customer c-1", "phones": [ACCOUNT], "secrets": {"pin": PIN}},
            headers=proc.headers,
            timeout=30,
        )
        assert r.status_code == 200, r.text
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """What the callers say, one clip a line (48 kHz)."""
    said = {
        "ask": "Hi, I'm calling to find out where my order is.",
        "number": "It's eight three zero one six.",
        "person": "Thanks. Can I speak to a person, please?",
    }
    return spoken_lines(tmp_path_factory.mktemp("lines"), said)


def microphone(path: Path, said: list[tuple[float, np.ndarray]]) -> Path:
    """A caller's microphone: each line from its second on, silence around them."""
    end = max(at + len(pcm) / RATE for at, pcm in said) + 1.0
    pcm = np.zeros(int(end * RATE), dtype=np.int16)
    for at, line in said:
        pcm[int(at * RATE) : int(at * RATE) + len(line)] = line
    return speech.write_wav(path, pcm, RATE)


@asynccontextmanager
async def chromium(mic: Path) -> AsyncIterator[Browser]:
    """Chromium whose microphone says ``mic`` once (from the page's getUserMedia on)."""
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, args=chromium_args(mic, loop=False)
        )
        try:
            yield browser
        finally:
            await browser.close()


async def signed_in_desk(browser: Browser, url: str, username: str, password: str) -> Page:
    """The agent desk in a new context of ``browser``: signed in, available."""
    desk = await (await browser.new_context(permissions=["microphone"])).new_page()
    await desk.goto(f"{url}/agent")
    await desk.get_by_test_id("username").fill(username)
    await desk.get_by_test_id("password").fill(password)
    await desk.get_by_test_id("sign-in").click()
    await desk.get_by_test_id("go-available").click()
    await expect(desk.get_by_test_id("presence")).to_have_text("available")
    return desk


class PageCaller:
    """The caller page in Chromium, with its ears: what the page received, recorded."""

    def __init__(self, page: Page, call_id: str) -> None:
        self.page = page
        self.call_id = call_id
        self.mark = 0  # recorded chunks before the agent's line heard last

    @classmethod
    async def dial(cls, browser: Browser, url: str) -> PageCaller:
        page = await (await browser.new_context(permissions=["microphone"])).new_page()
        await page.add_init_script(RECORDER)
        await page.goto(f"{url}/call")
        await page.get_by_test_id("call").click()
        state = page.get_by_test_id("state")
        await expect(state).to_have_attribute("data-state", "active", timeout=20_000)
        return cls(page, await page.evaluate("window.ccengineCallId"))

    async def state(self) -> tuple[int, int]:
        n, last = await self.page.evaluate("window.ccRecorder.state()")
        return n, last

    async def agent_said(self, text: str | re.Pattern[str], within: float = 30) -> None:
        """Until the agent's line ``text`` is on the page and has been heard to its
        end (0.8 s quiet after it)."""
        said = self.page.get_by_test_id("captions").locator(".line.bot", has_text=text)
        await expect(said.first).to_be_visible(timeout=within * 1000)
        self.mark = (await self.state())[0]
        await self.agent_done(within)

    async def agent_done(self, within: float = 20, quiet: float = 0.8) -> None:
        """Until the agent has spoken since the mark and been quiet ``quiet`` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            n, last = await self.state()
            if last >= self.mark and (n - last - 1) * CHUNK / RATE >= quiet:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"the agent did not finish speaking within {within} s")

    async def key(self, digits: str) -> None:
        """Click keys on the page's keypad, each once the last has reached the engine
        (the page sends one request a key: sent at once, two could overtake)."""
        pad = self.page.get_by_test_id("keypad")
        for d in digits:
            async with self.page.expect_response(lambda r: r.url.endswith("/keys")) as sent:
                await pad.get_by_role("button", name=d, exact=True).click()
            assert (await sent.value).status == 204

    async def recorded(self, start: int = 0) -> np.ndarray:
        """(samples, 2): the microphone and what was received, from chunk ``start``."""
        data = base64.b64decode(await self.page.evaluate(f"window.ccRecorder.pcm({start})"))
        return np.frombuffer(data, dtype="<i2").reshape(-1, 2)

    async def heard_since_mark(self) -> str:
        return speech.recognise(np.ascontiguousarray((await self.recorded(self.mark))[:, 1]))


async def verify_by_keys(caller: PageCaller) -> None:
    """From the agent's read-back of the order number to "verified": yes, the phone
    number on the account and the PIN, keyed once each prompt has been heard."""
    await caller.agent_said("8 3 0 1 6")
    await caller.key("1")  # yes
    await caller.agent_said("phone number on your account")
    await caller.key(f"{ACCOUNT}#")
    await caller.agent_said("PIN")
    await caller.key(f"{PIN}#")
    await expect(caller.page.get_by_test_id("verified")).to_have_text("You are verified.")


async def test_a_chromium_caller_keys_the_pin_and_hears_the_status(
    engine: EngineProcess, orders: OrderSystem, lines: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """Greeted, the caller asks where their order is and says its number (on the
    microphone's timeline), keys yes to the read-back, the number on the account and
    the PIN on the page's keypad, and hears the status that the order system gave:
    recognised from what Chromium received."""
    mic = microphone(tmp_path / "mic.wav", said_order(lines))
    async with chromium(mic) as browser:
        caller = await PageCaller.dial(browser, engine.url)
        await caller.agent_said("How can I help?")
        greeting = await caller.heard_since_mark()
        assert "calling" in greeting.lower() and "help" in greeting.lower(), greeting
        await verify_by_keys(caller)
        await caller.agent_said("out for delivery")
        status = (await caller.heard_since_mark()).lower()
        await caller.page.get_by_test_id("hangup").click()
    print("the caller heard:", status)
    assert "delivery" in status and "friday" in status, status
    asked = [a for a in orders.asked if a["call_id"] == caller.call_id]
    assert asked and asked[-1]["slots"] == {"order": "83016"}
    assert (asked[-1]["customer_id"], asked[-1]["verified_by"]) == ("c-1", "pin")


async def test_a_chromium_caller_who_talks_over_the_greeting_stops_it(
    engine: EngineProcess, lines: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """Barge-in, measured on the audio Chromium received against its own microphone
    on one clock: the greeting stops soon after the caller starts talking (bounded
    loosely for this shared box; `make bench` times it), its end is never heard, and
    the agent answers what they said."""
    mic = microphone(tmp_path / "mic.wav", [(0.8, lines["ask"])])
    async with chromium(mic) as browser:
        caller = await PageCaller.dial(browser, engine.url)
        await caller.agent_said("What is your order number?")
        pcm = await caller.recorded()
        said = await caller.page.get_by_test_id("captions").locator(".line.bot").all_inner_texts()
        await caller.page.get_by_test_id("hangup").click()
    mine, heard = loud_frames(pcm[:, 0]), loud_frames(pcm[:, 1])
    began = int(np.argmax(heard)) / 50  # the greeting
    spoke = int(np.argmax(mine)) / 50
    print(f"greeting began {began:.2f} s into the recording, the caller spoke at {spoke:.2f} s")
    # into the greeting's first sentence: the greeting is sounding as the caller begins
    first = int(spoke * 50)
    talked_over = began + 0.2 < spoke < began + 1.3 and heard[max(0, first - 25) : first].any()
    assert talked_over, "the caller did not talk over the greeting"
    # the greeting's last loud frame: within 2 s of the caller's first word, long before
    # the caller's line ends and the agent answers it (the greeting has pauses of its own
    # up to 220 ms, so its stop is where it last sounds, not the first gap)
    still = np.flatnonzero(heard[first : first + 100])
    stop = (first + int(still[-1]) + 1) / 50 if len(still) else spoke
    print(f"greeting stopped {1000 * (stop - spoke):.0f} ms after the caller spoke")
    assert stop - spoke < 0.6
    assert "How can I help?" in said[0] and "What is your order number?" in said[-1], said
    # the greeting's end ("How can I help?") was never played: it was cut off
    words = speech.recognise(np.ascontiguousarray(pcm[:, 1])).lower()
    assert "order number" in words and "help" not in words, words


async def test_a_verified_chromium_caller_asks_for_a_person_and_the_pin_is_nowhere(
    engine: EngineProcess, lines: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """The caller asks about order 83016, verifies by keys, hears the status, then
    asks for a person: the agent's desk in Chromium rings with what was asked, the
    order number and "verified: PIN". The PIN is in none of the events, the call's
    record, the desk or the engine's log; its keys were told masked."""
    engine.add_user("bea", "pw-bea-123")
    events: list[dict[str, Any]] = []
    watcher = asyncio.create_task(engine.watch_events(events))
    mic = microphone(tmp_path / "mic.wav", [*said_order(lines), (PERSON_AT, lines["person"])])
    try:
        async with chromium(mic) as browser:
            desk = await signed_in_desk(browser, engine.url, "bea", "pw-bea-123")
            caller = await PageCaller.dial(browser, engine.url)
            await verify_by_keys(caller)
            await caller.agent_said("out for delivery")
            heard_by = (await caller.state())[0] * CHUNK / RATE
            print(f"the status heard {heard_by:.1f} s into the call")
            assert heard_by < PERSON_AT - 1, f"too late: the person is asked at {PERSON_AT} s"
            preview = desk.get_by_test_id("preview")
            await expect(desk.get_by_test_id("ring")).to_be_visible(timeout=40_000)
            await expect(preview).to_contain_text("Asked for")
            await expect(preview).to_contain_text("person")
            await expect(preview).to_contain_text("customer c-1 · verified: PIN")
            await expect(preview).to_contain_text("83016")
            shown = await desk.content() + await caller.page.content()
            await caller.page.get_by_test_id("hangup").click()
        async with engine.http(timeout=30) as http:
            await until_ended(http, caller.call_id)
            detail = (await http.get(f"/api/v1/calls/{caller.call_id}")).json()
        await asyncio.sleep(0.5)  # the call's last events and log lines
    finally:
        watcher.cancel()
        # its WebSocket closed before the loop ends (left open, it was reported unclosed
        # at exit now and then, failing a passed run)
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    offer = await wait_for(events, "call.offered", caller.call_id)
    assert (offer["customer_id"], offer["verified_by"], offer["intent"]) == ("c-1", "pin", "person")
    assert (detail["customer_id"], detail["verified_by"]) == ("c-1", "pin")
    # the keys as the events tell them: the account's number, then the PIN masked
    mine = [e for e in events if e.get("call_id") == caller.call_id]
    keys = [(e["digit"], e["menu"]) for e in mine if e["type"] == "dtmf.received"]
    assert keys == [(k, None) for k in f"1{ACCOUNT}#" + "*" * (len(PIN) + 1)], keys
    assert not leaks(json.dumps(mine))
    assert not leaks(json.dumps(detail))
    assert not leaks(shown)
    log = engine.log.read_text(errors="replace")
    assert not leaks(log)
    # nor one key at a time: no key is logged but the account's digits, 1 and masked ones
    logged = set(re.findall(r'"type":"dtmf\.received","digit":"(.)"', log))
    assert "*" in logged and logged <= {"1", *ACCOUNT, "#", "*"}, logged


def loud_frames(pcm: np.ndarray) -> np.ndarray:
    """Per 20 ms frame of ``pcm``: speech in it or not."""
    frames = pcm[: len(pcm) - len(pcm) % FRAME].astype(np.float64).reshape(-1, FRAME)
    return np.sqrt(np.mean(frames**2, axis=1)) > LOUD


def said_order(lines: dict[str, np.ndarray]) -> list[tuple[float, np.ndarray]]:
    """Where order 83016 is: the greeting is over by ~4 s; "What is your order
    number?" comes ~0.5-2 s after the request ends (~10 s); the number follows it.
    Said in one breath, a caller's number was once heard "830-166-6666"."""
    return [(6.0, lines["ask"]), (13.0, lines["number"])]
