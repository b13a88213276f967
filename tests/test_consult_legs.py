"""A consult's live side (engine/consulting.py) in-process: the real app and call
manager (tests/controlplane.py), phone legs that open no socket (tests/test_monitor_legs.py),
Ann on the call, Bob consulted.

Each test is a regression from the review of the consult / warm transfer / conference
feature: a consult on a shared routing held the caller then failed (now it is rung
through the shared log, tests/test_consult_shared.py); a transfer during a
consult; a consult rung after the caller had gone; a resume while the colleague rang; a
held conference; a colleague left on a call that ended; a consulted colleague hanging
the caller up; an agent's mute never cleared; the DTMF backlog taken by keys never sent;
two agents overwriting each other in the recording."""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.acd import QueueConfig
from engine.callstate import NotAllowed
from engine.conference import hears
from engine.consult import Consult, dial_failure
from engine.events import utcnow
from engine.livecall import Call, Leg
from engine.monitoring import _bridged
from engine.recording import CallRecording
from engine.sip import DialFailed
from engine.store.models import LegRow, UserRow
from media.audio import PcmFrame
from media.peer import CallPeer
from media.rtp import RtpSession
from media.sip.peer import SipPeer
from media.sip.sdp import parse_offer
from tests import redisd
from tests.controlplane import PHONE_SDP, ControlPlane
from tests.redisd import RedisServer
from tests.test_monitor_legs import (
    PASSWORD,
    cp,
    password_hash,
    person,
    phone,
    published,
    with_ann,
)

__all__ = ["cp"]  # the fixture, shared with tests/test_monitor_legs.py


async def bob_available(cp: ControlPlane) -> UserRow:
    bob = await person(cp, "bob")
    for event in ("login", "available"):
        await cp.calls.agent_presence(bob, event)
    return bob


async def bob_rung(cp: ControlPlane) -> tuple[Call, UserRow, UserRow]:
    """Ann's call with Bob rung for a consult."""
    call = await with_ann(cp)
    ann, bob = await person(cp, "ann"), await bob_available(cp)
    await cp.calls.consults.start(ann, call.id, "bob")
    return call, ann, bob


async def consulting(cp: ControlPlane) -> tuple[Call, UserRow, UserRow]:
    """Ann's call with Bob consulted and answered on his desk phone."""
    call, ann, bob = await bob_rung(cp)
    await cp.calls.accept_peer(bob.id, call.id, phone(), "sip", "PCMU")
    assert call.consult is not None and call.consult.phase == "consulting"
    return call, ann, bob


OFFER_TIMEOUT = 2.0  # s: with a shared routing, a consult rings out quickly


@pytest.fixture
async def shared(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[ControlPlane]:
    """The engine as it runs with CCENGINE_REDIS_URL: every routing step an operation of
    the shared log on a real redis-server (engine/routinglog.py); Ann and Bob, agents."""
    async with ControlPlane(
        tmp_path / "engine", media_timeout=60.0, offer_timeout=OFFER_TIMEOUT,
        redis_url=redis_server.url, redis_prefix=redisd.prefix(),
    ) as cp:  # fmt: skip
        for name in ("ann", "bob"):
            await cp.store.add_user(
                UserRow(id=f"id-{name}", username=name, display_name=name, role="agent",
                        skills=[], password_hash=password_hash(), created_at=utcnow())
            )  # fmt: skip
        assert cp.calls.routing_log is not None
        yield cp


async def test_a_consult_on_a_shared_routing_rings_answers_and_completes_in_the_log(
    shared: ControlPlane,
) -> None:
    """Was refused ("consults work on a single engine for now"): the shared routing had
    no consult ring, and one engine's copy would have rung the colleague alone. Now the
    ring, the answer and the hand-over are operations of the shared log, so every
    engine's copy has Bob ringing, then on the call, and Ann in wrap-up after."""
    m = shared.calls
    copy = m.routing_copy
    assert copy is not None and m.routing_log is not None
    call = await with_ann(shared)
    ann, bob = await person(shared, "ann"), await bob_available(shared)
    applied = m.routing_log.applied
    await m.consults.start(ann, call.id, "bob")
    assert m.routing_log.applied > applied  # asked of the log, not decided here
    assert call.state == "held" and copy.routing.offered_to(bob.id, call.id)
    async with asyncio.timeout(5):  # an event reaches the bus once the event log has it
        while not (offers := [e for e in published(shared, "call.offered")  # noqa: ASYNC110
                              if e["agent_id"] == bob.id]):  # fmt: skip
            await asyncio.sleep(0.05)
    assert [o["consult_from"] for o in offers] == ["ann"]

    await m.accept_peer(bob.id, call.id, phone(), "sip", "PCMU")
    assert call.consult is not None and call.consult.phase == "consulting"
    assert copy.routing.presence_of(bob.id) == "on_call"
    assert [leg.user_id for leg in call.legs if leg.role == "agent"] == [ann.id, bob.id]

    await m.consults.complete(ann, call.id)
    assert call.agent_id == bob.id and call.consult is None
    assert copy.routing.presence_of(ann.id) == "wrap_up"
    assert copy.routing.presence_of(bob.id) == "on_call"
    record = await m.store.get_call(call.id)
    assert record is not None and record.call.agent_id == bob.id
    await m.end_call(call.id, "hangup")
    assert copy.routing.presence_of(bob.id) == "wrap_up"


async def test_an_answer_after_the_consult_was_cancelled_in_the_log_is_refused(
    shared: ControlPlane,
) -> None:
    """With the answer decided in the log first (as ``_bridge_agent`` does), a cancel can
    land while the log decides it: the colleague was on the call in the log, with no
    consult left to join. Their leg is closed, they go to wrap-up, and they are told."""
    m = shared.calls
    call, ann, bob = await bob_rung(shared)
    consult = call.consult
    assert consult is not None
    closed: list[bool] = []
    bobs = phone()
    real_close = bobs.close

    async def close() -> None:
        closed.append(True)
        await real_close()

    bobs.close = close  # type: ignore[method-assign]  # counts the real close
    copy = m.routing_copy
    assert copy is not None
    answer = asyncio.create_task(m.accept_peer(bob.id, call.id, bobs, "sip", "PCMU"))
    async with asyncio.timeout(5):  # the log has taken the answer; its effects follow
        while copy.routing.presence_of(bob.id) != "on_call":  # noqa: ASYNC110
            await asyncio.sleep(0)
    await m.consults.cancel(ann, call.id)  # its withdrawal comes after: nothing to withdraw
    with pytest.raises(NotAllowed, match="cancelled before you answered"):
        await answer
    assert closed and all(leg.user_id != bob.id for leg in call.legs)
    assert copy.routing.presence_of(bob.id) == "wrap_up"
    assert call.state == "bridged" and call.agent_id == ann.id


async def test_while_a_colleague_rings_no_transfer_resume_or_hangup_by_them(
    cp: ControlPlane,
) -> None:
    """Found in review: a transfer (or one to a number) while the consult rang left the
    ring with a call that moved on; a resume while it rang bridged the caller to
    nobody once Bob answered; Bob, rung, counted as offered the call and could hang the
    caller up; and a conference could be held but not resumed."""
    m = cp.calls
    call = await with_ann(cp)
    ann, bob = await person(cp, "ann"), await bob_available(cp)
    await m.consults.start(ann, call.id, "bob")
    assert call.consult is not None and call.consult.phase == "ringing"
    with pytest.raises(NotAllowed, match="during a consult"):
        await m.transfer(ann, call.id, queue="general")
    with pytest.raises(NotAllowed, match="during a consult"):
        m.may_transfer(ann, call.id)  # asked before a number is dialled
    with pytest.raises(NotAllowed, match="during a consult"):
        await m.transfer_out(ann, call.id, phone(), "PCMU", "+15550199", None)
    with pytest.raises(NotAllowed, match="cancel the consult first"):
        await m.resume(ann, call.id)
    desk = await cp.agent("bob", PASSWORD)
    try:
        r = await desk.post(f"/api/v1/calls/{call.id}/hangup")
        assert r.status_code == 403, r.text
    finally:
        await desk.aclose()
    assert not call.ended.is_set() and call.state == "held"
    await m.accept_peer(bob.id, call.id, phone(), "sip", "PCMU")
    await m.consults.conference(ann, call.id)
    assert call.state == "bridged"
    with pytest.raises(NotAllowed, match="conference cannot be held"):
        await m.hold(ann, call.id)
    assert call.state == "bridged"


async def test_a_caller_gone_during_the_hold_is_not_consulted_on(cp: ControlPlane) -> None:
    """Found in review: the colleague was rung after the hold's writes and prompt even
    if the caller had hung up meanwhile, and left ringing for a call that was over."""
    m = cp.calls
    call = await with_ann(cp)
    ann, bob = await person(cp, "ann"), await bob_available(cp)
    # the hangup lands while the consult's hold is being written
    started, _ = await asyncio.gather(
        m.consults.start(ann, call.id, "bob"), m.end_call(call.id, "hangup"),
        return_exceptions=True,
    )  # fmt: skip
    assert isinstance(started, NotAllowed), started
    assert call.ended.is_set() and call.consult is None
    assert m.presence_of(bob.id) == "available" and not m.offered_to(bob.id, call.id)
    assert published(cp, "call.consult_started") == []


async def test_the_ring_sweep_leaves_a_consult_still_holding_alone(cp: ControlPlane) -> None:
    """Found while testing the fixes: the ACD timer's sweep, run while the consult's
    hold was written, found the colleague not rung yet and told the consult over."""
    m = cp.calls
    call = await with_ann(cp)
    ann, bob = await person(cp, "ann"), await bob_available(cp)
    await asyncio.gather(m.consults.start(ann, call.id, "bob"), m.consults.sweep())
    assert call.consult is not None and m.offered_to(bob.id, call.id)


async def test_an_ending_call_frees_every_agent_on_it(cp: ControlPlane) -> None:
    """Found in review: end_call freed only ``call.agent_id`` and a consult's guest, so a
    colleague's leg on a call whose consult was already cleared stayed on_call."""
    m = cp.calls
    call, ann, bob = await consulting(cp)
    call.consult = None  # as between a hand-over's first step and its last
    await m.end_call(call.id, "hangup")
    assert m.presence_of(bob.id) != "on_call" and m.presence_of(ann.id) != "on_call"


async def test_the_host_leg_leaves_before_any_await(cp: ControlPlane) -> None:
    """Found in review: the host's leg was marked left only after the supervisors'
    leaving was awaited: its media ending then ended the call or handed it over twice."""
    m = cp.calls
    call = await with_ann(cp)
    leg = call.agent_leg()
    assert leg is not None
    steps = m.controls.agent_leaves(await person(cp, "ann"), call, None, "handed over")
    next(steps)  # the first step, not yet awaited
    assert leg.left
    steps.close()


async def test_a_mute_cleared_by_leaving_is_told(cp: ControlPlane) -> None:
    """Found in review: the agent leaving cleared their mute without a call.muted event,
    so desks and the console went on showing them muted."""
    m = cp.calls
    call = await with_ann(cp)
    ann = await person(cp, "ann")
    await m.mute(ann, call.id, True)
    await m.transfer(ann, call.id, queue="general")
    told = [(e["agent_id"], e["muted"]) for e in published(cp, "call.muted")]
    assert told[-2:] == [(ann.id, True), (ann.id, False)]


async def test_keys_not_sent_do_not_fill_the_backlog(
    cp: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the bounded DTMF backlog was advanced before the send; a send
    that failed left its keys counted, refusing the next ones."""
    m = cp.calls
    call = await with_ann(cp)
    peer = call.caller_leg().peer
    assert peer is not None

    async def broken(digits: str) -> str:
        raise OSError("the line is gone")

    monkeypatch.setattr(peer, "send_dtmf", broken)  # the phone's socket failing
    with pytest.raises(OSError):
        await m.send_dtmf(await person(cp, "ann"), call.id, "1234567890")
    assert m._keys_until.get(call.id, 0.0) <= time.monotonic()


def test_two_agents_are_mixed_in_the_recording(tmp_path: Path) -> None:
    """Found in review: two agent legs (a consult) both wrote channel 1 frame by frame,
    each over the other."""
    rec = CallRecording(tmp_path, "c1", 0.0)

    def frame(value: int) -> PcmFrame:
        return PcmFrame(np.full(320, value, np.int16), 0.0)

    rec.write(0, 0.0, frame(7))
    rec.write(1, 0.0, frame(1000))  # Ann
    rec.write(1, 0.0, frame(2000))  # Bob, the same 20 ms
    rec.write(1, 0.02, frame(30000))
    rec.write(1, 0.02, frame(30000))  # loud together: clipped, not wrapped
    with wave.open(str(rec.finish())) as w:
        both = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert set(both[:320, 0]) == {7} and set(both[:320, 1]) == {3000}
    assert set(both[320:640, 1]) == {32767}


async def test_a_cancel_racing_the_answer_leaves_no_open_leg(cp: ControlPlane) -> None:
    """Found in review: the answer was told only after its writes, and went on after a
    cancel that came meanwhile: the colleague's leg row stayed open, their leg ran."""
    m = cp.calls
    call, ann, bob = await bob_rung(cp)
    consult = call.consult
    assert consult is not None
    answer = asyncio.create_task(m.accept_peer(bob.id, call.id, phone(), "sip", "PCMU"))
    async with asyncio.timeout(5):
        while consult.phase == "ringing":  # noqa: ASYNC110  # the answer's first step
            await asyncio.sleep(0)
    await m.consults.cancel(ann, call.id)
    await answer
    assert call.consult is None and call.state == "bridged"
    assert m.presence_of(bob.id) != "on_call"
    record = await m.store.get_call(call.id)
    assert record is not None
    assert [leg for leg in record.call.legs if leg.user_id == bob.id and not leg.ended_at] == []
    [bob_leg] = [leg for leg in call.legs if leg.user_id == bob.id]
    assert bob_leg.left
    assert not [t for t in call.tasks if t.get_name() == f"leg-{bob_leg.id}"]  # never run


# -- consulting an outside number (dialled through the trunk) ------------------------------

NUMBER = "+15550102030"


class Line:
    """The SIP trunk as a consult sees it (engine/consulting.py ``OutsideLine``): the
    number answers with a phone leg that opens no socket, fails with ``fails``, or rings
    until called off (``rings``). ``byes``: the times our side hung the answer up."""

    def __init__(self, fails: Exception | None = None, *, rings: bool = False) -> None:
        self.fails, self.rings = fails, rings
        self.ringing = asyncio.Event()
        self.called_off = False
        self.byes = 0
        self.peer = SipPeer(RtpSession(parse_offer(PHONE_SDP), lambda _d: None), self._bye)

    def _bye(self) -> None:
        self.byes += 1

    def may_dial(self, number: str) -> None:
        if number.startswith("sip:"):  # as SipFront says of a domain it may not call
            raise NotAllowed("elsewhere.test is not in CCENGINE_SIP_DIAL_DOMAINS")

    async def dial_party(self, number: str) -> tuple[CallPeer, str]:
        self.ringing.set()
        if self.rings:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.called_off = True
                raise
        if self.fails is not None:
            raise self.fails
        return self.peer, "PCMU"


async def told(cp: ControlPlane, kind: str, n: int = 1) -> list[dict[str, Any]]:
    """The events of ``kind`` published, once there are ``n`` (an event reaches the bus
    once the event log has it)."""
    async with asyncio.timeout(5):
        while len(got := published(cp, kind)) < n:  # noqa: ASYNC110  # polled, as stops()
            await asyncio.sleep(0.02)
    return got


def outside_leg(call: Call) -> Leg:
    """The number's leg on the call now (those that left it are not)."""
    [leg] = [x for x in call.legs if x.role == "agent" and x.user_id is None and not x.left]
    return leg


async def consulting_number(cp: ControlPlane) -> tuple[Call, UserRow, Line, Leg]:
    """Ann's call with NUMBER consulted and answered (``Line``): the call, Ann, the
    line, and Ann's own leg."""
    call = await with_ann(cp)
    ann = await person(cp, "ann")
    line = Line()
    await cp.calls.consults.start_outside(ann, call.id, NUMBER, line)
    host = call.agent_leg()
    assert host is not None and host.user_id == ann.id
    return call, ann, line, host


async def test_an_outside_number_is_consulted_then_handed_the_caller(cp: ControlPlane) -> None:
    """The outside party joins as the consult's guest (a leg with no user): host and
    number talk while the caller is held; complete hands them the caller as a transfer
    to a number does (Ann to wrap-up, supervisors may not coach an outsider)."""
    m = cp.calls
    call = await with_ann(cp)
    ann = await person(cp, "ann")
    await m.consults.start_outside(ann, call.id, NUMBER, Line())
    consult = call.consult
    assert consult is not None and consult.phase == "consulting" and consult.outside
    assert call.state == "held" and call.agent_id == ann.id
    leg, host = outside_leg(call), call.agent_leg()
    assert host is not None and host.user_id == ann.id
    assert (leg.transport, leg.codec, consult.guest_leg) == ("sip", "PCMU", leg.id)
    assert consult.party(leg.user_id) == "guest" and consult.party(ann.id) == "host"
    # the agents' talk reaches each other while the caller hears neither
    assert hears(consult.heard, "guest", "host", state=call.state)
    assert not hears(consult.heard, "guest", "caller", state=call.state)
    assert [(e["host"], e["guest"]) for e in await told(cp, "call.consult_answered")] == [
        ("ann", NUMBER)
    ]
    assert published(cp, "call.offered")[-1]["agent_id"] == ann.id  # nobody else rung
    await m.consults.complete(ann, call.id)
    assert call.consult is None and call.state == "bridged" and call.agent_id is None
    assert call.agent_leg() is leg and host.left
    assert m.presence_of(ann.id) == "wrap_up"
    with pytest.raises(NotAllowed, match="outside number"):
        _bridged(call)  # engine/monitoring.py: no coaching someone outside
    record = await m.store.get_call(call.id)
    assert record is not None
    stored = {x.id: x for x in record.call.legs}
    assert stored[leg.id].user_id is None and stored[leg.id].transport == "sip"
    assert stored[host.id].ended_at is not None and stored[leg.id].ended_at is None
    assert [e["guest"] for e in await told(cp, "call.consult_completed")] == [NUMBER]


@pytest.mark.parametrize(
    ("fails", "reason"),
    [(DialFailed(486, "Busy Here"), "busy"), (OSError("no route to the trunk"), "failed")],
)
async def test_a_number_not_answering_leaves_the_caller_on_hold_with_the_host(
    cp: ControlPlane, fails: Exception, reason: str
) -> None:
    """A busy number: the request fails (the API's 502), the host is told why, and the
    caller stays held with her (as when a colleague declines); no leg is left. Any
    other failure of the dial too: a consult left "ringing" would hold the caller for
    ever (resume is refused while one rings); it is a DialFailed (a 502 with the reason,
    was a 500) with no SIP status."""
    m = cp.calls
    call = await with_ann(cp)
    ann = await person(cp, "ann")
    with pytest.raises(DialFailed) as failed:
        await m.consults.start_outside(ann, call.id, NUMBER, Line(fails))
    assert failed.value.status == (fails.status if isinstance(fails, DialFailed) else 0)
    assert call.consult is None and call.state == "held" and call.agent_id == ann.id
    assert [leg.user_id for leg in call.legs if leg.role == "agent"] == [ann.id]
    [cancelled] = await told(cp, "call.consult_cancelled")
    assert (cancelled["guest"], cancelled["reason"]) == (NUMBER, reason)
    await m.resume(ann, call.id)
    assert call.state == "bridged"


@pytest.mark.parametrize("ending", ["cancel", "hangup"])
async def test_a_dial_still_ringing_is_called_off(cp: ControlPlane, ending: str) -> None:
    """The host cancels (or the caller hangs up) while the number rings: the dial is
    called off (SipFront then CANCELs the INVITE), no leg is left, and the host's
    request ends: 409 for both (cancelled, or the call ended), not as if answered."""
    m = cp.calls
    call = await with_ann(cp)
    ann = await person(cp, "ann")
    line = Line(rings=True)
    start = asyncio.create_task(m.consults.start_outside(ann, call.id, NUMBER, line))
    await asyncio.wait_for(line.ringing.wait(), 5)
    assert call.consult is not None and call.consult.phase == "ringing"
    with pytest.raises(NotAllowed, match="a number is being dialled: cancel the consult first"):
        await m.resume(ann, call.id)  # (said "a colleague is being rung")
    if ending == "cancel":
        await m.consults.cancel(ann, call.id)
        with pytest.raises(NotAllowed, match="cancelled before they answered"):
            await asyncio.wait_for(start, 5)  # (was answered as if they had)
        assert call.state == "bridged" and not call.ended.is_set()
        [cancelled] = await told(cp, "call.consult_cancelled")
        assert (cancelled["guest"], cancelled["reason"]) == (NUMBER, "cancelled")
    else:
        await m.end_call(call.id, "hangup")
        with pytest.raises(NotAllowed, match="ended before"):
            await asyncio.wait_for(start, 5)
    assert line.called_off and call.consult is None
    assert [leg.user_id for leg in call.legs if leg.role == "agent"] == [ann.id]
    assert not m.consults._dials


async def test_an_outside_guest_leaves_with_a_bye_or_by_hanging_up(cp: ControlPlane) -> None:
    """Cancel after the answer: the number gets a BYE, the caller is back with Ann. The
    number hanging up during a later consult is guest_left (the caller stays held);
    in a conference, Ann leaving hands the caller to the number."""
    m = cp.calls
    call = await with_ann(cp)
    ann = await person(cp, "ann")
    first = Line()
    await m.consults.start_outside(ann, call.id, NUMBER, first)
    await m.consults.cancel(ann, call.id)
    assert first.byes == 1 and call.state == "bridged"
    assert [x.left for x in call.legs if x.role == "agent" and x.user_id is None] == [True]
    # the number hangs up: its media ends (as a BYE from the trunk ends it)
    second = Line()
    await m.consults.start_outside(ann, call.id, NUMBER, second)
    leg = outside_leg(call)
    second.peer.remote_ended = True
    assert await m.consults.leg_ended(call, leg)
    assert call.consult is None and call.state == "held" and second.byes == 0
    assert [e["reason"] for e in await told(cp, "call.consult_cancelled", 2)] == [
        "cancelled", "guest_left",
    ]  # fmt: skip
    await m.resume(ann, call.id)
    third = Line()
    await m.consults.start_outside(ann, call.id, NUMBER, third)
    await m.consults.conference(ann, call.id)
    assert call.consult is not None and call.state == "bridged"
    await m.consults.leave(ann, call.id)
    leg = outside_leg(call)
    assert call.agent_leg() is leg and call.agent_id is None and third.byes == 0
    assert [(e["agent"], e["remaining"]) for e in await told(cp, "call.conference_left")] == [
        ("ann", NUMBER)
    ]
    assert not call.ended.is_set() and m.presence_of(ann.id) == "wrap_up"


async def test_an_outside_consult_is_refused_before_the_hold(cp: ControlPlane) -> None:
    """Refusals come before the caller is held: a number this engine may not dial, a
    consult already going on; over HTTP: no SIP on this engine, not exactly one of
    agent and number, a number that is not one."""
    m = cp.calls
    call = await with_ann(cp)
    ann = await person(cp, "ann")
    with pytest.raises(NotAllowed, match="DIAL_DOMAINS"):
        await m.consults.start_outside(ann, call.id, "sip:x@elsewhere.test", Line())
    assert call.state == "bridged" and call.consult is None
    line = Line(rings=True)
    start = asyncio.create_task(m.consults.start_outside(ann, call.id, NUMBER, line))
    await asyncio.wait_for(line.ringing.wait(), 5)
    with pytest.raises(NotAllowed, match="already consulting"):
        await m.consults.start_outside(ann, call.id, "+15550999", Line())
    await m.consults.cancel(ann, call.id)
    with pytest.raises(NotAllowed, match="cancelled before"):
        await start
    desk = await cp.agent("ann", PASSWORD)
    try:
        url = f"/api/v1/calls/{call.id}/consult"
        r = await desk.post(url, json={"number": NUMBER})
        assert r.status_code == 409 and "SIP is not running" in r.json()["detail"], r.text
        for body in ({"agent": "bob", "number": NUMBER}, {}, {"number": "call me"}):
            r = await desk.post(url, json=body)
            assert r.status_code == 422, (body, r.text)
    finally:
        await desk.aclose()
    assert call.state == "bridged" and call.consult is None


def test_a_dial_failure_is_told_as_the_host_reads_it() -> None:
    assert [dial_failure(s) for s in (408, 486, 603, 404, 503)] == [
        ("no_answer", "no_answer"), ("decline", "busy"), ("decline", "declined"),
        ("failed", "failed"), ("failed", "failed"),
    ]  # fmt: skip


def test_an_outside_guest_is_the_leg_with_no_user() -> None:
    """Consult.party matched the guest by user id only: a number's leg (no user) must
    be the guest once it answered, the host's leg the host; while it rings the plain
    bridge holds (everyone is the host's side)."""
    c = Consult("u-ann", "ann", None, NUMBER)
    assert c.outside and c.party(None) == "host" and c.party("u-ann") == "host"
    c.move("answer")
    assert c.party(None) == "guest" and c.party("u-ann") == "host"
    c.move("conference")
    assert c.party(None) == "guest" and c.party("u-ann") == "host"
    colleague = Consult("u-ann", "ann", "u-bob", "bob", phase="consulting")
    assert not colleague.outside and colleague.party(None) == "host"
    assert colleague.party("u-bob") == "guest"


async def test_an_outside_consult_on_a_shared_routing_hands_over_in_the_log(
    shared: ControlPlane,
) -> None:
    """With several engines a number is dialled by the engine running the call, with
    no ring in the shared log; the hand-over is an operation of the log as a
    colleague's is: every engine's copy has Ann in wrap-up and nobody ringing."""
    m = shared.calls
    copy = m.routing_copy
    assert copy is not None
    call = await with_ann(shared)
    ann = await person(shared, "ann")
    await m.consults.start_outside(ann, call.id, NUMBER, Line())
    assert call.consult is not None and call.consult.phase == "consulting"
    assert copy.routing.presence_of(ann.id) == "on_call"
    await m.consults.complete(ann, call.id)
    assert call.agent_id is None and call.state == "bridged"
    assert copy.routing.presence_of(ann.id) == "wrap_up"
    await m.end_call(call.id, "hangup")


# -- review of the outside consult: the leg that answers, the host's drop, the answers --------


class Gate:
    """``store.add`` held for the leg rows ``held`` picks until ``release``: the window
    where a hand-over lands while the guest's leg row is being written."""

    def __init__(self, cp: ControlPlane, monkeypatch: pytest.MonkeyPatch, held: Any) -> None:
        self.entered, self.release = asyncio.Event(), asyncio.Event()
        real = cp.store.add

        async def add(*rows: Any) -> None:
            if any(isinstance(r, LegRow) and held(r) for r in rows):
                self.entered.set()
                await self.release.wait()
            await real(*rows)

        monkeypatch.setattr(cp.store, "add", add)


@pytest.mark.parametrize("guest", ["number", "colleague"])
async def test_a_hand_over_while_the_guests_leg_is_written_runs_their_leg(
    cp: ControlPlane, monkeypatch: pytest.MonkeyPatch, guest: str
) -> None:
    """Found in review: the guest's answer is told, then its leg row written; the host
    completing meanwhile clears the consult, and the answer took that for a cancel: it
    wrote the leg's end and never ran the leg, yet the guest had the caller: nobody
    read their media (the caller never heard them), their hang-up never ended the call,
    and their stored leg said ended. Decided on the leg now: it runs, and stays open."""
    m = cp.calls
    call = await with_ann(cp)
    ann = await person(cp, "ann")
    if guest == "number":
        gate = Gate(cp, monkeypatch, lambda r: r.user_id is None and r.role == "agent")
        answer = asyncio.create_task(m.consults.start_outside(ann, call.id, NUMBER, Line()))
    else:
        bob = await bob_available(cp)
        gate = Gate(cp, monkeypatch, lambda r: r.user_id == bob.id)
        await m.consults.start(ann, call.id, "bob")
        answer = asyncio.create_task(m.accept_peer(bob.id, call.id, phone(), "sip", "PCMU"))
    await asyncio.wait_for(gate.entered.wait(), 5)
    await m.consults.complete(ann, call.id)  # while the guest's row is being written
    gate.release.set()
    await asyncio.wait_for(answer, 5)
    leg = call.agent_leg()
    assert leg is not None and leg.user_id != ann.id and not leg.left
    assert [t for t in call.tasks if t.get_name() == f"leg-{leg.id}"]  # its media is read
    record = await m.store.get_call(call.id)
    assert record is not None
    [stored] = [x for x in record.call.legs if x.id == leg.id]
    assert stored.ended_at is None
    assert not call.ended.is_set() and call.state == "bridged"


@pytest.mark.parametrize("phase", ["consulting", "conference"])
async def test_the_hosts_line_dropping_does_not_hand_the_caller_to_a_number_consulted(
    cp: ControlPlane, phase: str
) -> None:
    """Found in review: Ann's leg dropping while she consulted a number handed the
    caller to that outsider, who never agreed to take them, and was told as a
    conference left. Now the number gets a BYE (``host_left``) and the caller goes back
    into line, where Bob is offered them; Ann owes a wrap-up. In a conference the
    caller already talks to the number: it keeps them, as before."""
    m = cp.calls
    call = await with_ann(cp)
    ann, bob = await person(cp, "ann"), await bob_available(cp)
    line = Line()
    await m.consults.start_outside(ann, call.id, NUMBER, line)
    if phase == "conference":
        await m.consults.conference(ann, call.id)
    host = call.agent_leg()
    assert host is not None and host.user_id == ann.id
    assert await m.consults.leg_ended(call, host)  # her media ended
    assert call.consult is None and not call.ended.is_set() and host.left
    assert m.presence_of(ann.id) == "wrap_up"
    if phase == "conference":
        assert call.agent_leg() is outside_leg(call) and line.byes == 0
        assert [e["remaining"] for e in await told(cp, "call.conference_left")] == [NUMBER]
        return
    assert line.byes == 1 and not [x for x in call.legs if x.role == "agent" and not x.left]
    [cancelled] = await told(cp, "call.consult_cancelled")
    assert (cancelled["guest"], cancelled["reason"]) == (NUMBER, "host_left")
    assert call.state == "queued" and call.agent_id is None
    [moved] = await told(cp, "call.transferred")
    assert (moved["from_agent"], moved["to_queue"]) == ("ann", "general")
    async with asyncio.timeout(5):  # the ACD's next tick offers it
        while not m.offered_to(bob.id, call.id):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert published(cp, "call.conference_left") == []


async def test_the_consult_request_for_a_number_says_how_it_ended(cp: ControlPlane) -> None:
    """Found in review, over HTTP: a cancel while the number rang answered 202, as if it
    had answered; a dial that failed other than with a SIP answer was a 500; a busy or
    declined number was told "did not answer". Now: 409 for the cancel, 502 with the
    reason for the rest."""
    call = await with_ann(cp)
    url = f"/api/v1/calls/{call.id}/consult"
    desk = await cp.agent("ann", PASSWORD)
    assert cp.app is not None
    try:
        for fails, said in [
            (DialFailed(486, "Busy Here"), f"{NUMBER} is busy: 486 Busy Here"),
            (DialFailed(603, "Decline"), f"{NUMBER} declined the call: 603 Decline"),
            (DialFailed(408, "no answer"), f"{NUMBER} did not answer: 408 no answer"),
            (OSError("no route"), f"{NUMBER} could not be reached: the dial failed: no route"),
        ]:
            cp.app.state.sip = Line(fails)
            r = await desk.post(url, json={"number": NUMBER})
            assert (r.status_code, r.json()["detail"]) == (502, said), r.text
            assert call.consult is None
        line = cp.app.state.sip = Line(rings=True)
        asked = asyncio.create_task(desk.post(url, json={"number": NUMBER}))
        await asyncio.wait_for(line.ringing.wait(), 5)
        r = await desk.post(f"/api/v1/calls/{call.id}/resume")
        assert r.status_code == 409 and "a number is being dialled" in r.json()["detail"]
        assert (await desk.post(f"{url}/cancel")).status_code == 204
        r = await asyncio.wait_for(asked, 5)
        assert r.status_code == 409 and "cancelled before they answered" in r.json()["detail"]
        assert call.state == "bridged" and call.consult is None
    finally:
        cp.app.state.sip = None


async def test_the_caller_is_told_who_has_them_after_a_hand_over(cp: ControlPlane) -> None:
    """Found in review: after a warm transfer the caller page went on naming Ann: the
    caller was resumed to Bob with no name told, and the page took a name only from an
    answer out of the line. Every return to "bridged" now names whoever has the call
    (a hold's resume too, the same agent again)."""
    await cp.store.update_user("id-ann", display_name="Ann Lee")
    await cp.store.update_user("id-bob", display_name="Bob Ray")
    call, ann, _bob = await consulting(cp)
    await cp.calls.consults.complete(ann, call.id)

    def bridged() -> list[dict[str, Any]]:
        return [e for e in published(cp, "call.state_changed") if e["state"] == "bridged"]

    async with asyncio.timeout(5):  # (an event reaches the bus once the log has it)
        while len(bridged()) < 2:  # noqa: ASYNC110  # polled, as told()
            await asyncio.sleep(0.02)
    assert [e["agent_name"] for e in bridged()] == ["Ann Lee", "Bob Ray"]
    assert call.agent_name == "Bob Ray"


async def test_the_hosts_line_ending_twice_still_sends_the_caller_back_into_line(
    cp: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the host's leg may be told ended twice (WebRTC: the peer's end and
    the media timeout). ``_host_dropped`` left the leg not ``left`` while the number's
    leg closed, so the second, finding no consult, ended the call ("agent_hangup"): the
    caller meant to go back into line was hung up. Now the second finds the leg left;
    the caller is queued and Ann's leg closed."""
    m = cp.calls
    call, _ann, line, host = await consulting_number(cp)
    closing, go_on = asyncio.Event(), asyncio.Event()
    bye = line.peer.close

    async def slow_bye() -> None:  # the number's BYE takes its time
        closing.set()
        await go_on.wait()
        await bye()

    monkeypatch.setattr(line.peer, "close", slow_bye)
    first = asyncio.create_task(m._agent_leg_ended(call, host))
    try:
        await asyncio.wait_for(closing.wait(), 5)
        # the second signal, while the first awaits (the bug's end_call sets ``ended``
        # at once, then waits on the BYE too: a task, so the test cannot hang on it)
        second = asyncio.create_task(m._agent_leg_ended(call, host))
        await asyncio.sleep(0.05)
        assert not call.ended.is_set()
    finally:
        go_on.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert not call.ended.is_set() and call.state == "queued" and line.byes == 1
    [moved] = await told(cp, "call.transferred")
    assert (moved["from_agent"], moved["to_queue"]) == ("ann", "general")
    record = await m.store.get_call(call.id)
    assert record is not None
    [stored] = [x for x in record.call.legs if x.id == host.id]
    assert stored.ended_at is not None  # closed, though transfer found no agent leg


async def test_the_hosts_line_dropping_while_the_number_rings_sends_the_caller_back(
    cp: ControlPlane,
) -> None:
    """Found in review: Ann's line dropping while the number still rang ended the call.
    Now it is as while they talk: the dial is called off (SipFront CANCELs the INVITE),
    Ann is told ``host_left``, and the caller goes back into line, where Bob is offered
    them."""
    m = cp.calls
    call = await with_ann(cp)
    ann, bob = await person(cp, "ann"), await bob_available(cp)
    line = Line(rings=True)
    start = asyncio.create_task(m.consults.start_outside(ann, call.id, NUMBER, line))
    await asyncio.wait_for(line.ringing.wait(), 5)
    host = call.agent_leg()
    assert host is not None and host.user_id == ann.id
    assert await m.consults.leg_ended(call, host)  # her media ended
    with pytest.raises(NotAllowed, match="cancelled before they answered"):
        await asyncio.wait_for(start, 5)
    assert line.called_off and not m.consults._dials and line.byes == 0
    assert call.consult is None and not call.ended.is_set() and host.left
    [cancelled] = await told(cp, "call.consult_cancelled")
    assert (cancelled["guest"], cancelled["reason"]) == (NUMBER, "host_left")
    assert call.state == "queued" and m.presence_of(ann.id) == "wrap_up"
    async with asyncio.timeout(5):  # the ACD's next tick offers it
        while not m.offered_to(bob.id, call.id):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_the_hosts_line_dropping_when_the_calls_queue_was_removed(
    cp: ControlPlane,
) -> None:
    """Found in review: the caller's queue removed meanwhile, the transfer back into line
    failed ("there is no queue") and the call ended, though Ann was told the caller went
    back into line. Now it goes to the default queue."""
    m = cp.calls
    call = await with_ann(cp)
    ann = await person(cp, "ann")
    m.routing.set_queue(QueueConfig(name="billing"))
    call.queue_name = "billing"  # the call came in there; the queue is removed since
    m.routing.remove_queue("billing")
    await m.consults.start_outside(ann, call.id, NUMBER, Line())
    host = call.agent_leg()
    assert host is not None
    assert await m.consults.leg_ended(call, host)
    assert not call.ended.is_set() and call.state == "queued" and call.queue_name == "general"
    [moved] = await told(cp, "call.transferred")
    assert moved["to_queue"] == "general"


async def test_the_hosts_line_dropping_while_storage_fails_ends_the_call(
    cp: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the host's leg is marked left before the first await (so a
    second end signal cannot end the call meant to go back into line); when letting the
    number go then failed (the database away as its leg's end was written), no second
    signal could come either, and the caller stayed on hold with nobody. Now that ends
    the call, as a host's hang-up does."""
    m = cp.calls
    call, _ann, _line, host = await consulting_number(cp)

    async def down(*_args: Any, **_kwargs: Any) -> None:
        raise OSError("database is locked")

    monkeypatch.setattr(m.store, "end_leg", down)
    assert not await m.consults.leg_ended(call, host)  # the caller is not left on hold
