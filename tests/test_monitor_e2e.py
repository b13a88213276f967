"""A supervisor listens, whispers and barges on a live call, against a real engine.

One call, one engine: the caller, the agent and the supervisor are aiortc peers, each
sending its own tone (caller 440 Hz, agent 700 Hz, supervisor 1100 Hz). What each
party *received* is measured with an FFT after each mode change (PATCH), so a wrong
route (the caller hearing a whisper, a listener heard by anyone) fails the test."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiortc import RTCSessionDescription

from media.wavtrack import FRAME, SEND_RATE, PacedAudioTrack
from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.integration

CALLER_HZ, AGENT_HZ, SUPERVISOR_HZ = 440.0, 700.0, 1100.0
HEARD, NOT_HEARD = 1000.0, 150.0  # amplitude of a tone sent at 6000


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


async def levels(phones: dict[str, Caller], settle: float = 1.0, span: float = 1.5) -> dict:
    """Per party, the level of each tone in what it received over ``span`` seconds,
    after ``settle`` seconds for a change to take (300 ms queues, jitter)."""
    await asyncio.sleep(settle)
    marks = {name: len(p.heard) for name, p in phones.items()}
    await asyncio.sleep(span)
    out: dict[str, dict[float, float]] = {}
    for name, p in phones.items():
        pcm = p.heard_pcm(marks[name])
        assert len(pcm) > SEND_RATE, f"{name} received {len(pcm)} samples"
        out[name] = {hz: level_at(pcm, hz) for hz in (CALLER_HZ, AGENT_HZ, SUPERVISOR_HZ)}
    print({k: {int(hz): round(v) for hz, v in d.items()} for k, d in out.items()})
    return out


async def test_listen_whisper_barge_route_the_voices(tmp_path: Path, receiver: Receiver) -> None:
    engine = EngineProcess(
        tmp_path / "monitor", CCENGINE_WEBHOOK_ALLOWED_NETWORKS='["127.0.0.1/32"]'
    ).start()
    engine.add_user("ann", "pw-ann-1")
    engine.add_user("sue", "pw-sue-1", "--role", "supervisor")
    ann = await engine.agent("ann", "pw-ann-1", "login", "available")
    sue = await engine.agent("sue", "pw-sue-1")
    admin = engine.http(timeout=30)
    caller = Caller(engine.url, None, mic=ToneTrack(CALLER_HZ))
    agent = Caller(engine.url, None, mic=ToneTrack(AGENT_HZ))
    supervisor = Caller(engine.url, None, mic=ToneTrack(SUPERVISOR_HZ))
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
        left = await levels({"caller": caller, "agent": agent}, settle=1.0, span=1.5)
        record = (await caller.call_record())["legs"]
        staff_view = (await admin.get(f"/api/v1/calls/{cid}")).json()["legs"]
        await caller.pc.close()
        await asyncio.wait_for(caller.ended.wait(), 20)
        r = await sue.post(f"/api/v1/calls/{cid}/monitor", json=offer)
        assert r.status_code == 409 and "ended" in r.json()["detail"], r.text
        await asyncio.to_thread(receiver.wait, 4, 20)
    finally:
        watcher.cancel()
        await asyncio.gather(caller.close(), agent.close(), supervisor.close())
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
    # the supervisor's leg is in the record for staff, not for the caller
    assert [leg["role"] for leg in staff_view] == ["caller", "agent", "supervisor"]
    assert [leg["role"] for leg in record] == ["caller", "agent"]
    # audited: who and which mode, on the event stream and by webhook; never the
    # caller's own stream
    audit = [e for e in events if e["type"].startswith("supervisor.monitor_")]
    assert [(e["type"], e["mode"], e["supervisor"]) for e in audit] == [
        ("supervisor.monitor_started", "listen", "sue"),
        ("supervisor.monitor_mode_changed", "whisper", "sue"),
        ("supervisor.monitor_mode_changed", "barge", "sue"),
        ("supervisor.monitor_stopped", "barge", "sue"),
    ]
    assert all(e["monitored_call_id"] == cid and e["call_id"] is None for e in audit)
    assert audit[-1]["reason"] == "left" and audit[1]["previous"] == "listen"
    hooked = [json.loads(body)["type"] for _h, body, _s, _t in receiver.got]
    assert hooked == [e["type"] for e in audit]
    assert not [e for e in caller.events if e["type"].startswith("supervisor.")]
