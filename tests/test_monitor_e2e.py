"""A supervisor listens, whispers and barges on a live call, against a real engine.

One call, one engine: the caller, the agent and the supervisor are aiortc peers, each
sending its own tone (caller 440 Hz, agent 700 Hz, supervisor 1100 Hz). What each
party *received* is measured with an FFT after each mode change (PATCH), so a wrong
route (the caller hearing a whisper, a listener heard by anyone) fails the test. Then
the same supervisor does it from the live call page in Chromium (static/monitor.js),
its fake microphone humming the same tone: Whisper reaches the agent, not the caller."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiortc import RTCSessionDescription
from playwright.async_api import Page, async_playwright, expect

from media.wavtrack import FRAME, SEND_RATE, PacedAudioTrack
from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller
from tests.test_browser import CHROMIUM, chromium_args
from tests.webhook_receiver import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CALLER_HZ, AGENT_HZ, SUPERVISOR_HZ = 440.0, 700.0, 1100.0
# amplitude of a tone sent at 6000; Chromium's noise suppression takes some of a steady
# tone away (it reads ~1,300 after a second), which is still far above what is not sent
HEARD, PAGE_HEARD, NOT_HEARD = 1000.0, 400.0, 150.0


class ToneTrack(PacedAudioTrack):
    """A microphone that hums one tone, forever."""

    def __init__(self, hz: float, amplitude: float = 6000) -> None:
        super().__init__()
        self.hz, self.amplitude, self._n = hz, amplitude, 0

    def _next_samples(self) -> np.ndarray:
        t = (self._n + np.arange(FRAME)) / SEND_RATE
        self._n += FRAME
        return (self.amplitude * np.sin(2 * np.pi * self.hz * t)).astype(np.int16)


def level_at(pcm: np.ndarray, hz: float) -> float:
    """Amplitude of ``hz`` in ``pcm`` (a sine of amplitude A reads ~A)."""
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    bins = np.fft.rfftfreq(len(pcm), 1 / SEND_RATE)
    return float(spectrum[np.abs(bins - hz) < 15].max() * 4 / len(pcm))


def tone_wav(path: Path, hz: float, seconds: float = 5.0) -> Path:
    """A microphone for Chromium: ``hz`` at amplitude 6000 (the file loops)."""
    t = np.arange(int(seconds * SEND_RATE)) / SEND_RATE
    pcm = (6000 * np.sin(2 * np.pi * hz * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SEND_RATE)
        w.writeframes(pcm.tobytes())
    return path


async def on_the_page(
    url: str,
    call_id: str,
    mic: Path,
    screenshot: Path,
    phones: dict[str, Caller],
    admin: httpx.AsyncClient,
) -> dict[str, dict[float, float]]:
    """Sue opens the live call page and whispers; then an admin makes her an agent, and
    the engine takes her off the call: the page says so and offers to join again. What
    the caller and the agent received while she whispered."""
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=chromium_args(mic))
        try:
            context = await browser.new_context(permissions=["microphone"], base_url=url)
            login = {"username": "sue", "password": "pw-sue-1"}
            r = await context.request.post("/api/v1/auth/login", data=login)
            assert r.ok, await r.text()
            page: Page = await context.new_page()
            await page.goto(f"/calls/{call_id}")
            await expect(page.get_by_test_id("monitor")).to_be_visible()
            whisper = page.get_by_test_id("monitor-whisper")
            await whisper.click()
            await expect(page.get_by_test_id("monitor-status")).to_have_text(
                "Whispering: only the agent hears you", timeout=15000
            )
            await expect(whisper).to_have_attribute("aria-pressed", "true")
            heard = await levels(phones)
            await page.screenshot(path=str(screenshot), full_page=True)
            # the engine ends her leg (she is no supervisor now): the page resets itself
            r = await admin.patch("/api/v1/agents/sue", json={"role": "agent"})
            assert r.status_code == 200, r.text
            await expect(page.get_by_test_id("monitor-status")).to_have_text(
                "You were signed out: you are off the call"
            )
            await expect(whisper).to_have_attribute("aria-pressed", "false")
            await expect(page.get_by_test_id("monitor-stop")).to_be_disabled()
            r = await admin.patch("/api/v1/agents/sue", json={"role": "supervisor"})
            assert r.status_code == 200, r.text
        finally:
            await browser.close()
    return heard


async def join(phone: Caller, http: httpx.AsyncClient, call_id: str, mode: str) -> httpx.Response:
    """As the supervisor's browser: offer, post it with the mode, take the answer."""
    await phone.pc.setLocalDescription(await phone.pc.createOffer())
    r = await http.post(
        f"/api/v1/calls/{call_id}/monitor",
        json={"mode": mode, "sdp": phone.pc.localDescription.sdp},
    )
    if r.status_code == 201:
        await phone.pc.setRemoteDescription(RTCSessionDescription(r.json()["sdp"], "answer"))
    return r


async def levels(
    phones: dict[str, Caller],
    settle: float = 1.0,
    span: float = 1.5,
    tones: tuple[float, ...] = (CALLER_HZ, AGENT_HZ, SUPERVISOR_HZ),
) -> dict:
    """Per party, the level of each of ``tones`` in what it received over ``span``
    seconds, after ``settle`` seconds for a change to take (300 ms queues, jitter)."""
    await asyncio.sleep(settle)
    marks = {name: len(p.heard) for name, p in phones.items()}
    await asyncio.sleep(span)
    out: dict[str, dict[float, float]] = {}
    for name, p in phones.items():
        pcm = p.heard_pcm(marks[name])
        assert len(pcm) > SEND_RATE, f"{name} received {len(pcm)} samples"
        out[name] = {hz: level_at(pcm, hz) for hz in tones}
    print({k: {int(hz): round(v) for hz, v in d.items()} for k, d in out.items()})
    return out


async def test_listen_whisper_barge_route_the_voices(
    tmp_path: Path, receiver: Receiver, output_dir: Path
) -> None:
    engine = EngineProcess(
        tmp_path / "monitor", CCENGINE_WEBHOOK_ALLOWED_NETWORKS='["127.0.0.1/32"]'
    ).start()
    admin = engine.http(timeout=30)
    for user in ({"username": "ann", "password": "pw-ann-1"},
                 {"username": "sue", "password": "pw-sue-1", "role": "supervisor"}):  # fmt: skip
        assert (await admin.post("/api/v1/agents", json=user)).status_code == 201
    ann = await engine.agent("ann", "pw-ann-1", "login", "available")
    sue = await engine.agent("sue", "pw-sue-1")
    caller = Caller(engine.url, None, mic=ToneTrack(CALLER_HZ))
    agent = Caller(engine.url, None, mic=ToneTrack(AGENT_HZ))
    supervisor = Caller(engine.url, None, mic=ToneTrack(SUPERVISOR_HZ))
    again = Caller(engine.url, None, mic=ToneTrack(SUPERVISOR_HZ))  # a second time
    events: list[dict[str, Any]] = []
    watcher = asyncio.create_task(engine.watch_events(events))
    phones = {"caller": caller, "agent": agent, "supervisor": supervisor}
    try:
        kinds = [f"supervisor.monitor_{k}" for k in ("started", "mode_changed", "stopped")]
        r = await admin.post("/api/v1/webhooks", json={"url": receiver.url, "events": kinds})
        assert r.status_code == 201, r.text
        # a call link straight to Ann: no virtual agent, no escalation to wait for
        r = await admin.post("/api/v1/call-links", json={"agent": "ann"})
        caller.invite = r.json()["token"]
        await caller.dial()
        cid = caller.call_id
        await caller.wait_for("call.offered", within=30)
        # not bridged yet: nothing to monitor
        offer = {"mode": "listen", "sdp": "v=0"}
        r = await sue.post(f"/api/v1/calls/{cid}/monitor", json=offer)
        assert r.status_code == 409 and "not with an agent" in r.json()["detail"], r.text
        await agent.accept(ann, cid)
        await caller.wait_for("call.state_changed", state="bridged")
        # who may: supervisors and admins in person; not agents, keys or the caller
        assert (await ann.post(f"/api/v1/calls/{cid}/monitor", json=offer)).status_code == 403
        assert (await admin.post(f"/api/v1/calls/{cid}/monitor", json=offer)).status_code == 403
        assert (await caller.post(f"/api/v1/calls/{cid}/monitor", offer)).status_code == 403
        r = await sue.post(f"/api/v1/calls/{cid}/monitor", json={"mode": "shout", "sdp": "v=0"})
        assert r.status_code == 422
        r = await sue.post(f"/api/v1/calls/{cid}/monitor", json=offer)
        assert r.status_code == 400, r.text  # not an SDP offer: the peer's fault, said so
        r = await sue.patch(f"/api/v1/calls/{cid}/monitor", json={"mode": "barge"})
        assert r.status_code == 409 and "not monitoring" in r.json()["detail"]

        r = await join(supervisor, sue, cid, "listen")
        assert r.status_code == 201 and r.json()["mode"] == "listen", r.text
        listen = await levels(phones)
        r = await sue.patch(f"/api/v1/calls/{cid}/monitor", json={"mode": "whisper"})
        assert r.status_code == 200 and r.json()["mode"] == "whisper", r.text
        whisper = await levels(phones)
        r = await sue.patch(f"/api/v1/calls/{cid}/monitor", json={"mode": "barge"})
        assert r.status_code == 200, r.text
        barge = await levels(phones)
        assert (await sue.delete(f"/api/v1/calls/{cid}/monitor")).status_code == 204
        parties = {"caller": caller, "agent": agent}
        left = await levels(parties, settle=1.0, span=1.5)
        mic = tone_wav(tmp_path / "sue.wav", SUPERVISOR_HZ)
        shot = output_dir / "monitor-whisper.png"
        paged = await on_the_page(engine.url, cid, mic, shot, parties, admin)
        # on the call again when it ends: the supervisor's leg ends with it
        assert (await join(again, sue, cid, "listen")).status_code == 201
        async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
            own = await http.get(f"/api/v1/calls/{cid}", headers=caller.auth)  # its token
        record = own.json()["legs"]
        staff_view = (await admin.get(f"/api/v1/calls/{cid}")).json()["legs"]
        await caller.pc.close()
        await asyncio.wait_for(caller.ended.wait(), 20)
        r = await sue.post(f"/api/v1/calls/{cid}/monitor", json=offer)
        assert r.status_code == 409 and "ended" in r.json()["detail"], r.text
        await asyncio.to_thread(receiver.wait, 8, 20)
    finally:
        watcher.cancel()
        await asyncio.gather(caller.close(), agent.close(), supervisor.close(), again.close())
        await asyncio.gather(ann.aclose(), sue.aclose(), admin.aclose())
        engine.stop()

    def hears(got: dict[float, float], hz: float) -> bool:
        return got[hz] > HEARD

    def deaf(got: dict[float, float], hz: float) -> bool:
        return got[hz] < NOT_HEARD

    # listen: the supervisor hears both; nobody hears the supervisor
    assert hears(listen["supervisor"], CALLER_HZ) and hears(listen["supervisor"], AGENT_HZ)
    assert deaf(listen["caller"], SUPERVISOR_HZ) and deaf(listen["agent"], SUPERVISOR_HZ)
    assert hears(listen["caller"], AGENT_HZ) and hears(listen["agent"], CALLER_HZ)
    # whisper: the agent hears the supervisor and the caller; the caller never the supervisor
    assert hears(whisper["agent"], SUPERVISOR_HZ) and hears(whisper["agent"], CALLER_HZ)
    assert deaf(whisper["caller"], SUPERVISOR_HZ) and hears(whisper["caller"], AGENT_HZ)
    assert hears(whisper["supervisor"], CALLER_HZ) and hears(whisper["supervisor"], AGENT_HZ)
    # barge: everyone hears everyone
    assert hears(barge["caller"], SUPERVISOR_HZ) and hears(barge["caller"], AGENT_HZ)
    assert hears(barge["agent"], SUPERVISOR_HZ) and hears(barge["agent"], CALLER_HZ)
    # left: the supervisor is gone from both mixes; the call goes on
    assert deaf(left["caller"], SUPERVISOR_HZ) and deaf(left["agent"], SUPERVISOR_HZ)
    assert hears(left["caller"], AGENT_HZ) and hears(left["agent"], CALLER_HZ)
    # the supervisor's legs (aiortc, then the page) are in the record for staff, not for
    # the caller
    assert [leg["role"] for leg in staff_view] == ["caller", "agent"] + ["supervisor"] * 3
    assert [leg["role"] for leg in record] == ["caller", "agent"]
    # audited: who and which mode, on the event stream and by webhook; never the
    # caller's own stream
    audit = [e for e in events if e["type"].startswith("supervisor.monitor_")]
    assert [(e["type"], e["mode"], e["supervisor"]) for e in audit] == [
        ("supervisor.monitor_started", "listen", "sue"),
        ("supervisor.monitor_mode_changed", "whisper", "sue"),
        ("supervisor.monitor_mode_changed", "barge", "sue"),
        ("supervisor.monitor_stopped", "barge", "sue"),
        ("supervisor.monitor_started", "whisper", "sue"),
        ("supervisor.monitor_stopped", "whisper", "sue"),
        ("supervisor.monitor_started", "listen", "sue"),
        ("supervisor.monitor_stopped", "listen", "sue"),
    ]
    assert all(e["monitored_call_id"] == cid and e["call_id"] is None for e in audit)
    assert [e["reason"] for e in audit if "reason" in e] == ["left", "signed_out", "call_ended"]
    assert audit[1]["previous"] == "listen"
    # the page's Whisper: the agent hears Chromium's microphone, the caller does not
    assert paged["agent"][SUPERVISOR_HZ] > PAGE_HEARD and deaf(paged["caller"], SUPERVISOR_HZ)
    hooked = [json.loads(body)["type"] for _h, body, _s, _t in receiver.got]
    assert hooked == [e["type"] for e in audit]
    assert not [e for e in caller.events if e["type"].startswith("supervisor.")]
