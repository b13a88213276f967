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

import numpy as np
import pytest

from engine.callstate import NotAllowed
from engine.events import utcnow
from engine.livecall import Call
from engine.recording import CallRecording
from engine.store.models import UserRow
from media.audio import PcmFrame
from tests import redisd
from tests.controlplane import ControlPlane
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


async def consulting(cp: ControlPlane) -> tuple[Call, UserRow, UserRow]:
    """Ann's call with Bob consulted and answered on his desk phone."""
    call = await with_ann(cp)
    ann, bob = await person(cp, "ann"), await bob_available(cp)
    await cp.calls.consults.start(ann, call.id, "bob")
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
    call = await with_ann(shared)
    ann, bob = await person(shared, "ann"), await bob_available(shared)
    await m.consults.start(ann, call.id, "bob")
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
    call = await with_ann(cp)
    ann, bob = await person(cp, "ann"), await bob_available(cp)
    await m.consults.start(ann, call.id, "bob")
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
