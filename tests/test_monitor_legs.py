"""A supervisor's leg over a call's life (engine/monitoring.py), in-process: the real app
and call manager (tests/controlplane.py), phone legs that open no socket, a real aiortc
answer for the supervisor, and their "microphone" fed straight into the leg's audio
track, so what each party is sent is read from its real outgoing mix.

Each test is a regression from the review of the listen/whisper/barge feature: a
whisper that reached the outside number a call was transferred to, a demoted or
signed-out supervisor still listening, a leg left on the call by a failing write or
an unexpected error, a barge that outlived the call's agent, a supervisor's call
listed as one they took, and two admins demoted at once."""

from __future__ import annotations

import asyncio
import fractions
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection

from engine.callstate import Forbidden, NotAllowed
from engine.events import utcnow
from engine.livecall import Call, Leg
from engine.monitor import Mode
from engine.monitoring import SupervisorLeg, _parties
from engine.store.models import UserRow
from engine.users import hash_password
from media.outbound import OutboundAudioTrack
from media.rtp import RtpSession
from media.sip.peer import SipPeer
from media.sip.sdp import parse_offer
from media.wavtrack import FRAME, SEND_RATE
from tests.controlplane import PHONE_SDP, ControlPlane
from tests.test_controls import bridged_call

VOICE = 1000  # every sample the supervisor says


class Voice(MediaStreamTrack):
    """The supervisor's decoded microphone: a constant, 20 ms frames a few ms apart."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.pts = 0

    async def recv(self) -> av.AudioFrame:
        await asyncio.sleep(0.005)
        samples = np.full((1, FRAME), VOICE, np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts = SEND_RATE, self.pts
        frame.time_base = fractions.Fraction(1, SEND_RATE)
        self.pts += FRAME
        return frame


def phone() -> SipPeer:
    return SipPeer(RtpSession(parse_offer(PHONE_SDP), lambda _d: None), hangup=lambda: None)


def listened(leg: Leg) -> OutboundAudioTrack:
    """The leg's outgoing mix, read by nobody (its phone's sender drains another), so
    what a voice pushed into it stays there to be counted."""
    assert leg.peer is not None
    leg.peer.outbound = OutboundAudioTrack()
    return leg.peer.outbound


def heard(track: OutboundAudioTrack, sup: SupervisorLeg) -> int:
    return track._live.pending(sup.id)


async def settle() -> None:
    await asyncio.sleep(0.1)  # a dozen of the voice's frames


PASSWORD = "pw-all-123"
ADMINS = ("ada", "bea", "cat")
ROLES = {"ann": "agent", "bob": "agent", "ada": "admin", "sue": "supervisor", "sam": "supervisor",
         "sid": "supervisor", "sol": "supervisor"}  # fmt: skip


@functools.cache
def password_hash() -> str:
    return hash_password(PASSWORD)  # ~0.2 s of CPU: once, not per person per test


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(tmp_path / "engine", media_timeout=60.0) as cp:
        for name, role in ROLES.items():
            await cp.store.add_user(
                UserRow(id=f"id-{name}", username=name, display_name=name, role=role,
                        skills=[], password_hash=password_hash(), created_at=utcnow())
            )  # fmt: skip
        yield cp


async def person(cp: ControlPlane, name: str) -> UserRow:
    row = await cp.store.user_by_name(name)
    assert row is not None
    return row


async def with_ann(cp: ControlPlane, name: str = "ann") -> Call:
    """A phone call that Ann (or ``name``) answered on her desk phone."""
    agent = await person(cp, name)
    for event in ("login", "available"):
        await cp.calls.agent_presence(agent, event)
    return await bridged_call(cp.calls, agent)


async def offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    # recvonly: the answer makes no track of its own, the test gives the leg its voice
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def join(cp: ControlPlane, call: Call, who: UserRow, mode: Mode = "whisper") -> SupervisorLeg:
    """``who`` on the call, speaking with ``Voice``."""
    pc, sdp = await offer()
    try:
        leg, _answer = await cp.calls.monitors.start(who, call, mode, sdp)
    finally:
        await pc.close()
    leg.peer.audio_track.set_result(Voice())
    return leg


def published(cp: ControlPlane, kind: str) -> list[dict[str, Any]]:
    events = (json.loads(r.body) for r in cp.bus.replay(None))
    return [e for e in events if e["type"] == kind]


async def stops(cp: ControlPlane, n: int) -> list[tuple[str, str]]:
    """(supervisor, reason) of the supervisor.monitor_stopped events, once there are
    ``n`` (an event reaches the bus once the event log has it)."""
    async with asyncio.timeout(5):
        # the ring is what the streams replay: polled, a test needs no subscription
        while len(got := published(cp, "supervisor.monitor_stopped")) < n:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return [(e["supervisor"], e["reason"]) for e in got]


async def test_a_transfer_takes_the_supervisors_off_the_call(cp: ControlPlane) -> None:
    """Found in review: after Ann transferred the call to an outside number (an "agent"
    leg with no user), Sue's whisper went on to the stranger who took it. The agent's
    leaving ends every supervisor leg (reason "transferred"); an outside number is no
    party a supervisor hears or speaks to, and such a call cannot be joined; nor can a
    chat (no audio)."""
    m = cp.calls
    call = await with_ann(cp)
    ann_leg = call.agent_leg()
    assert ann_leg is not None
    to_ann, to_caller = listened(ann_leg), listened(call.caller_leg())
    sue = await join(cp, call, await person(cp, "sue"))
    await settle()
    assert heard(to_ann, sue) > 0 and heard(to_caller, sue) == 0  # a whisper, working
    outside = phone()
    await m.transfer_out(await person(cp, "ann"), call.id, outside, "PCMU", "+15550199", None)
    to_stranger = listened(call.legs[-1])
    await settle()
    assert sue.stopped and sue.reason == "transferred" and call.monitors == []
    assert sue.task is not None and sue.task.done()
    assert heard(to_stranger, sue) == heard(to_caller, sue) == heard(to_ann, sue) == 0
    assert [p for p, _peer in _parties(call)] == ["caller"]  # the stranger is not ours
    with pytest.raises(NotAllowed, match="outside number"):
        await join(cp, call, await person(cp, "sam"))
    record = await m.store.get_call(call.id)
    assert record is not None
    [row] = [leg for leg in record.call.legs if leg.role == "supervisor"]
    assert row.ended_at is not None
    # a transfer to a queue (or another agent) too: whoever answers next is not Ann
    second = await with_ann(cp, "bob")
    second.channel = "chat"  # a chat has no audio: like hold or recording, refused
    with pytest.raises(NotAllowed, match="a chat cannot be monitored"):
        await join(cp, second, await person(cp, "sam"))
    second.channel = "sip"
    sam = await join(cp, second, await person(cp, "sam"), "barge")
    await m.transfer(await person(cp, "bob"), second.id, queue="general")
    assert sam.stopped and second.monitors == []
    assert await stops(cp, 2) == [("sue", "transferred"), ("sam", "transferred")]


async def test_signed_out_demoted_or_removed_supervisors_stop_listening(
    cp: ControlPlane,
) -> None:
    """Found in review: a supervisor made an agent, given a new password, removed or
    signed out kept listening to the call (and, demoted, got 403 on leaving it). Each
    of those ends their legs (reason "signed_out"); leaving one's own leg asks no role.
    And a call a supervisor listened to was listed among the calls they took."""
    call = await with_ann(cp)
    names = ("sue", "sam", "sid", "sol")
    legs = {name: await join(cp, call, await person(cp, name), "listen") for name in names}
    # ``/calls?agent_id=`` lists the calls an agent took: not those a supervisor heard
    assert [c.id for c in await cp.store.list_calls(agent_id="id-sue")] == []
    assert [c.id for c in await cp.store.list_calls(agent_id="id-ann")] == [call.id]
    admin = cp.http()
    sol = await cp.agent("sol", PASSWORD)
    assert (await sol.post("/api/v1/auth/logout")).status_code == 204
    r = await admin.patch("/api/v1/agents/sue", json={"role": "agent"})
    assert r.status_code == 200, r.text
    r = await admin.patch("/api/v1/agents/sam", json={"password": "pw-sam-456789"})
    assert r.status_code == 200, r.text
    assert (await admin.delete("/api/v1/agents/sid")).status_code == 204
    assert all(leg.stopped and leg.reason == "signed_out" for leg in legs.values())
    assert call.monitors == []
    assert sorted(await stops(cp, 4)) == sorted((n, "signed_out") for n in names)
    # a skills change is no reason to stop listening
    sue = await join(cp, call, await person(cp, "ada"), "listen")
    r = await admin.patch("/api/v1/agents/ada", json={"display_name": "Ada L"})
    assert r.status_code == 200 and not sue.stopped
    # leaving is one's own leg: no role asked (a supervisor demoted since may hang up)
    ada = await person(cp, "ada")
    ada.role = "agent"
    await cp.calls.monitors.leave(ada, call)
    assert sue.stopped and sue.reason == "left"


async def test_a_join_under_way_when_its_supervisor_is_signed_out_is_refused(
    cp: ControlPlane,
) -> None:
    """The WebRTC answer takes a while; a sign-out meanwhile must not let the join
    finish into a live leg nobody may hold."""
    call = await with_ann(cp)
    pc, sdp = await offer()
    sue = await person(cp, "sue")
    try:
        joining = asyncio.create_task(cp.calls.monitors.start(sue, call, "listen", sdp))
        await asyncio.sleep(0)  # at its first await
        await cp.calls.monitors.user_gone(sue.id)
        with pytest.raises(Forbidden, match="signed out"):
            await joining
    finally:
        await pc.close()
    assert call.monitors == []
    assert published(cp, "supervisor.monitor_started") == []


async def test_a_leg_falls_silent_before_its_record_is_written_and_a_failed_write_ends_it_anyway(
    cp: ControlPlane,
) -> None:
    """Found in review: stop() wrote to the store before it stopped the voice, so a
    stuck store kept a supervisor talking; a failing write left the leg's peer open
    and aborted the call's teardown. Now the voice stops first, and the event and the
    peer's close happen whatever the write did."""
    m = cp.calls
    call = await with_ann(cp)
    ann_leg = call.agent_leg()
    assert ann_leg is not None
    to_ann = listened(ann_leg)
    sue = await join(cp, call, await person(cp, "sue"))
    await settle()
    assert heard(to_ann, sue) > 0
    stuck = asyncio.Event()

    async def stuck_store(_what: str, *_args: object) -> None:
        await stuck.wait()

    m.monitors.keep = stuck_store
    leaving = asyncio.create_task(m.monitors.leave(await person(cp, "sue"), call))
    await settle()
    assert not leaving.done()  # still writing ...
    assert call.monitors == [] and sue.task is not None and sue.task.done()  # ... but silent
    assert heard(to_ann, sue) == 0
    stuck.set()
    await leaving

    async def failing_store(_what: str, *_args: object) -> None:
        raise OSError("disk full")

    sam = await join(cp, call, await person(cp, "sam"), "barge")
    m.monitors.keep = failing_store
    with pytest.raises(OSError):
        await m.monitors.stop(call, sam, "left")
    assert sam.peer.pc.connectionState == "closed" and ("sam", "left") in await stops(cp, 2)
    m.monitors.keep = m._keep
    sid = await join(cp, call, await person(cp, "sid"), "barge")
    m.monitors.keep = failing_store
    await m.end_call(call.id, "hangup")  # the failing write does not stop the teardown
    assert sid.stopped and call.id not in m.calls
    assert ("sid", "call_ended") in await stops(cp, 3)


async def test_the_supervisors_leave_first_when_the_call_ends(cp: ControlPlane) -> None:
    """Found in review: the supervisors' legs ended last in the teardown, after the
    recognizers and the event consumer (seconds when one is stuck), so a barging
    supervisor went on talking to a caller whose agent had hung up. Now they are off
    the call before anything of the teardown is awaited; a frame decoded meanwhile is
    not sent."""
    m = cp.calls
    call = await with_ann(cp)
    to_caller = listened(call.caller_leg())
    sue = await join(cp, call, await person(cp, "sue"), "barge")
    await settle()
    assert heard(to_caller, sue) > 0
    to_caller._live.clear()
    call.ended.set()  # the teardown has begun: the voice sends nothing from here
    await settle()
    assert heard(to_caller, sue) == 0
    call.ended.clear()
    ending = asyncio.create_task(m.end_call(call.id, "agent_hangup"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sue.stopped and call.state != "ended"  # off before the call's own teardown
    await ending
    assert await stops(cp, 1) == [("sue", "call_ended")]


async def test_a_voice_that_fails_ends_its_leg(
    cp: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: an unexpected error in the voice's task left a dead leg on the
    call (still counted, still blocking the supervisor from joining again)."""
    call = await with_ann(cp)
    pc, sdp = await offer()
    sue_row = await person(cp, "sue")
    try:
        sue, _ = await cp.calls.monitors.start(sue_row, call, "listen", sdp)
    finally:
        await pc.close()
    sue.peer.audio_track.set_exception(RuntimeError("a bug"))
    await asyncio.wait_for(asyncio.shield(sue.task), 5)  # type: ignore[arg-type]
    assert sue.stopped and sue.reason == "error" and call.monitors == []
    assert "a bug" in caplog.text
    again = await join(cp, call, sue_row, "listen")  # may join again
    assert not again.stopped


async def test_admins_demoted_at_once_leave_one(cp: ControlPlane) -> None:
    """Found in review: demotions at once each counted the admins before any was
    written, and left none (three at once, so the race is all but certain without the
    lock). One engine process: across several it stays best-effort."""
    for name in ("bea", "cat"):
        await cp.store.add_user(
            UserRow(id=f"id-{name}", username=name, display_name=name, role="admin",
                    skills=[], password_hash=password_hash(), created_at=utcnow())
        )  # fmt: skip
    admin = cp.http()
    answers = await asyncio.gather(
        *(admin.patch(f"/api/v1/agents/{name}", json={"role": "agent"}) for name in ADMINS)
    )
    assert sorted(r.status_code for r in answers) == [200, 200, 409], [r.text for r in answers]
    assert len([u for u in await cp.store.users() if u.role == "admin"]) == 1
