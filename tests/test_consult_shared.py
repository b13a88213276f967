"""Consults across engines: the guest's ring is an operation of the shared routing log
(engine/routingcopy.py ``consult_offer`` / ``consult_withdraw``), decided alike by every
engine's copy. First the copies alone (sans-IO), then the call's engine in-process on a
real redis-server (tests/controlplane.py with ``redis_url``; phone legs that open no
socket, as in tests/test_consult_legs.py): a consult declined, one that rings out, one
cancelled while it rings. (One rung, answered and completed through the log:
tests/test_consult_legs.py; across two engine processes: tests/test_cluster_agents_e2e.py.)

Regressions of the single-engine guard's removal: before it, ``SharedRouting`` had no
consult ring, so the ring was decided on one engine's copy and the copies parted; and
with the log's leader keeping time, no ACD timer swept a consult that rang out, so its
host was never told."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from engine import sharedcalls
from engine.acd import AcdError, QueueConfig
from engine.analysis import Emit
from engine.callstate import NotAllowed
from engine.consult import Consult
from engine.events import CallOffered, OfferWithdrawn, QueueUpdated
from engine.livecall import Call
from engine.recovery import LOST, Recovery
from engine.routing import StopRinging
from engine.routingcopy import SNAPSHOT_VERSION, CallCard, RoutingCopy, on_live_call, owner_of
from engine.routinglog import RoutingUnavailable
from engine.sip import SipFront, _PhoneCall
from engine.store.models import UserRow
from media.sip.registrar import Binding
from tests.controlplane import ControlPlane
from tests.test_consult_legs import OFFER_TIMEOUT, bob_available, shared
from tests.test_monitor_legs import PASSWORD, person, phone, published, with_ann
from tests.test_routing_copy import described, live_call
from tests.test_routing_shared_calls import DeskPhone

__all__ = ["shared"]  # the fixture, shared with tests/test_consult_legs.py
BOB = {"id": "u-bob", "username": "bob", "skills": [], "role": "agent"}


def consult_script(call: Call) -> list[tuple[dict[str, Any], float]]:
    """Bob signs in on engine B; Ann, on engine A, consults him on her call."""
    return [
        ({"op": "presence", "user": BOB, "event": "login", "origin": "B"}, 100.0),
        ({"op": "presence", "user": BOB, "event": "available", "origin": "B"}, 101.0),
        ({"op": "consult_offer", "call": CallCard.of(call), "agent": "u-bob",
          "queue": "general", "origin": "A"}, 102.0),
    ]  # fmt: skip


def test_copies_ring_a_consult_alike_and_a_joiner_times_it_out_too() -> None:
    """Every copy rings Bob for the consult (the call is with Ann, not in line: its shadow
    is made for the offer, then dropped), a copy handed to a joiner holds the ring, and
    the leader's tick rings it out on both with the same effects. The offer of the
    call's engine says who consults."""
    a = RoutingCopy([QueueConfig(name="general")], 20.0)
    b = RoutingCopy([QueueConfig(name="general")], 20.0)
    call = live_call("c1", "held")
    for op, now in consult_script(call):
        ea, err_a = a.apply(op, now)
        eb, err_b = b.apply(op, now)
        assert err_a is None and err_b is None
        assert described(ea) == described(eb)
    offered = [e.event for e in ea if isinstance(e, Emit) and isinstance(e.event, CallOffered)]
    assert [(o.agent_id, o.queue, o.waited) for o in offered] == [("u-bob", "general", 0.0)]
    assert a.routing.offered_to("u-bob", "c1") and a.routing.presence_of("u-bob") == "ringing"
    assert a.shadows == {} and a.routing.acd.waiting == {}  # not put in line
    call.consult = Consult("u-ann", "ann", "u-bob", "bob")
    fresh = on_live_call(Emit(offered[0]), call)
    assert isinstance(fresh, Emit) and isinstance(fresh.event, CallOffered)
    assert fresh.event.consult_from == "ann"  # the shadow has no Consult; the live call has

    snap = a.snapshot()
    assert snap["version"] == SNAPSHOT_VERSION == 3
    joiner = RoutingCopy([QueueConfig(name="general")], 5.0)
    joiner.restore(snap)
    assert joiner.routing.offered_to("u-bob", "c1")
    tick = {"op": "tick", "origin": "B"}
    outs = [c.apply(tick, 122.5) for c in (a, b, joiner)]
    assert len({repr(described(e)) for e, _ in outs}) == 1
    assert "no_answer" in described(outs[0][0])[1]
    assert all(c.routing.presence_of("u-bob") == "away" for c in (a, b, joiner))


def test_a_withdrawn_consult_frees_the_guest_on_every_copy() -> None:
    copies = [RoutingCopy([QueueConfig(name="general")], 20.0) for _ in range(2)]
    call = live_call("c1", "held")
    withdraw = {"op": "consult_withdraw", "agent": "u-bob", "call_id": "c1", "origin": "A"}
    for c in copies:
        for op, now in [*consult_script(call), (withdraw, 103.0)]:
            c.apply(op, now)
        assert c.routing.presence_of("u-bob") == "available"
        assert not c.routing.offered_to("u-bob", "c1") and c.routing.acd._offers == {}


def test_a_consult_asked_for_a_call_that_left_is_refused() -> None:
    """A ring asked for just before the call left for good (its hang-up appended first,
    by another connection) is refused, so its host is told, rather than taken as rung."""
    copy = RoutingCopy([QueueConfig(name="general")], 20.0)
    call = live_call("c1", "held")
    *signin, (ring, now) = consult_script(call)
    for op, at in signin:
        copy.apply(op, at)
    copy.apply({"op": "leave", "call": CallCard.of(call), "reason": "caller_left"}, 101.5)
    effects, error = copy.apply(ring, now)
    assert effects == [] and isinstance(error, AcdError)
    assert copy.routing.presence_of("u-bob") == "available"


def test_a_ringing_guest_is_freed_when_a_survivor_ends_the_lost_call() -> None:
    """Review finding: Bob still rang for a consult when the call's engine died. The
    survivor's "leave" (engine/sharedcalls.py ``calls_lost``) found the call not in
    line and did nothing; the leader's tick later rang him out (away, a missed call)
    and the withdrawal went to no engine, so his desk kept ringing. Now the leave
    withdraws the ring on every copy, and the engine that asked tells it (``orphan``):
    no engine else would."""
    copies = [RoutingCopy([QueueConfig(name="general")], 20.0) for _ in range(2)]
    call = live_call("c1", "held")
    lost = {"op": "leave", "call": CallCard.ended("c1"), "reason": "node_lost",
            "orphan": "c1", "origin": "C"}  # fmt: skip
    outs = []
    for c in copies:
        for op, now in consult_script(call):
            c.apply(op, now)
        effects, error = c.apply(lost, 105.0)
        assert error is None
        outs.append(effects)
        assert c.routing.presence_of("u-bob") == "available"
        assert not c.routing.offered_to("u-bob", "c1") and c.routing.acd._offers == {}
        c.apply({"op": "tick", "origin": "B"}, 125.0)  # nothing left to ring out
        assert c.routing.presence_of("u-bob") == "available"  # not away: no missed call
    assert described(outs[0]) == described(outs[1])
    effects = outs[0]
    told = [e for e in effects if owner_of(e, lost, "C", {}) is True]
    withdrawn = [e.event for e in told if isinstance(e, Emit)
                 and isinstance(e.event, OfferWithdrawn)]  # fmt: skip
    assert [(w.agent_id, w.call_id, w.reason) for w in withdrawn] == [("u-bob", "c1", "node_lost")]
    assert StopRinging("c1") in told
    assert not [e for e in effects if owner_of(e, lost, "A", {}) is not False]  # nobody else


def test_a_guest_freed_from_a_consult_ring_is_offered_the_caller_waiting() -> None:
    """Found while fixing the review: a withdrawn consult ring made Bob available
    without a look at the line, so a caller who had waited for him (the only agent)
    waited on until some other change; now the next caller rings him at once."""
    copy = RoutingCopy([QueueConfig(name="general")], 20.0)
    call = live_call("c1", "held")
    for op, now in consult_script(call):
        copy.apply(op, now)
    waiting = {"op": "requested", "call": CallCard.of(live_call("c2")), "queue": None,
               "agent": None, "origin": "A"}  # fmt: skip
    assert copy.apply(waiting, 103.0)[1] is None
    assert copy.routing.acd.waiting["c2"].offered_to is None  # Bob rings for the consult
    withdraw = {"op": "consult_withdraw", "agent": "u-bob", "call_id": "c1", "origin": "A"}
    effects, _ = copy.apply(withdraw, 104.0)
    assert copy.routing.offered_to("u-bob", "c2")
    offered = [e.event for e in effects if isinstance(e, Emit) and isinstance(e.event, CallOffered)]
    assert [(o.call_id, o.agent_id) for o in offered] == [("c2", "u-bob")]


# -- the call's engine, on a real redis-server ------------------------------------------


async def ringing_bob(cp: ControlPlane) -> tuple[Call, UserRow, UserRow]:
    m = cp.calls
    call = await with_ann(cp)
    ann, bob = await person(cp, "ann"), await bob_available(cp)
    await m.consults.start(ann, call.id, "bob")
    assert m.routing_copy is not None
    assert m.routing_copy.routing.offered_to(bob.id, call.id)
    assert call.consult is not None and call.consult.phase == "ringing"
    assert call.state == "held"
    offers = await told(cp, "call.offered", agent_id=bob.id)
    assert [o["consult_from"] for o in offers] == ["ann"]
    return call, ann, bob


async def told(
    cp: ControlPlane, kind: str, within: float = 5.0, **match: str
) -> list[dict[str, Any]]:
    """The events of ``kind`` (matching ``match``) once there is one: an event reaches
    the bus once the event log has it."""
    async with asyncio.timeout(within):
        while True:
            got = [e for e in published(cp, kind) if all(e[k] == v for k, v in match.items())]
            if got:
                return got
            await asyncio.sleep(0.05)


async def cancelled(cp: ControlPlane, within: float = 5.0) -> dict[str, Any]:
    """The host's one ConsultCancelled: once it is told, every event published so far
    is seen (a marker published after it has come through: the bus keeps their order),
    and there is no second."""
    await told(cp, "call.consult_cancelled", within)
    cp.bus.publish(
        QueueUpdated(call_id="marker", queue="general", position=1, priority=0,
                     expected_wait=None, announcement=None)
    )  # fmt: skip
    await told(cp, "queue.updated", call_id="marker")
    [event] = published(cp, "call.consult_cancelled")
    return event


async def test_a_consult_declined_through_the_log(shared: ControlPlane) -> None:
    m = shared.calls
    call, _ann, bob = await ringing_bob(shared)
    await m.decline(bob.id, call.id)  # as the desk's decline, sent on to the call's engine
    assert (await cancelled(shared))["reason"] == "declined"
    assert call.consult is None and call.state == "held"
    assert m.presence_of(bob.id) == "available"


async def test_a_consult_that_rings_out_is_told_to_its_host(shared: ControlPlane) -> None:
    """No ACD timer runs with a shared routing (the log's leader ticks): the host was
    never told, and the caller stayed held with a consult that could not end."""
    m = shared.calls
    call, _ann, bob = await ringing_bob(shared)
    told = await cancelled(shared, within=OFFER_TIMEOUT + 5)
    assert (told["reason"], told["guest"]) == ("no_answer", "bob")
    assert call.consult is None and call.state == "held"
    assert m.presence_of(bob.id) == "away"  # a missed offer, as any


async def test_a_consult_cancelled_while_ringing_withdraws_the_guests_offer(
    shared: ControlPlane,
) -> None:
    m = shared.calls
    call, ann, bob = await ringing_bob(shared)
    await m.consults.cancel(ann, call.id)
    assert m.routing_copy is not None
    assert not m.routing_copy.routing.offered_to(bob.id, call.id)
    assert m.presence_of(bob.id) == "available" and call.state == "bridged"
    withdrawn = await told(shared, "call.offer_withdrawn", agent_id=bob.id)
    assert [e["reason"] for e in withdrawn] == ["cancelled"]
    assert (await cancelled(shared))["reason"] == "cancelled"
    # the ring is over: Bob can be consulted again, and answers
    await m.consults.start(ann, call.id, "bob")
    assert m.routing_copy.routing.offered_to(bob.id, call.id)


async def test_a_decline_from_another_engine_is_told_to_the_host_once(shared: ControlPlane) -> None:
    """Reviewer's ask: the test above cannot fail if the withdrawal's "declined" is not
    told (``CallManager.decline`` tells the host itself, on the engine that declines).
    Here the decline comes through the log as from Bob's engine: only the withdrawal
    the call's engine applies tells Ann, once."""
    m = shared.calls
    call, _ann, bob = await ringing_bob(shared)
    assert m.routing_log is not None
    await m.routing_log.submit({"op": "decline", "user_id": bob.id, "call_id": call.id})
    assert (await cancelled(shared))["reason"] == "declined"
    assert call.consult is None and call.state == "held"
    assert m.presence_of(bob.id) == "available"


async def test_a_ring_asked_again_after_the_cancels_withdrawal_is_taken_back(
    shared: ControlPlane,
) -> None:
    """``start``'s second withdrawal: the host's cancel cleared the consult while its
    ring was asked for, and the cancel's withdrawal reached the log first (it found
    nothing to take back). Without the second, Bob rang for a consult that was over."""
    m = shared.calls
    copy = m.routing_copy
    assert copy is not None and m.routing_log is not None
    call = await with_ann(shared)
    ann, bob = await person(shared, "ann"), await bob_available(shared)
    await m.hold(ann, call.id)  # no hold to await: the ring is asked for at once
    # the cancel's withdrawal, in the log before the ring
    await m.routing_log.submit({"op": "consult_withdraw", "agent": bob.id, "call_id": call.id})
    start = asyncio.create_task(m.consults.start(ann, call.id, "bob"))
    async with asyncio.timeout(5):  # the ring applied; ``start`` has not heard yet
        while not copy.routing.offered_to(bob.id, call.id):  # noqa: ASYNC110
            await asyncio.sleep(0)
    assert not start.done()
    call.consult = None  # the cancel, as ``_guest_leaves`` clears it
    await start
    assert not copy.routing.offered_to(bob.id, call.id)
    assert m.presence_of(bob.id) == "available"
    assert published(shared, "call.consult_started") == []


async def lost_engine(cp: ControlPlane, call: Call) -> None:
    """The engine running ``call`` dies (its record names an engine with no heartbeat)
    and a survivor ends its calls (engine/recovery.py, wired as engine/app.py wires it),
    through the shared log (``SharedCalls.calls_lost``)."""
    m = cp.calls
    assert m.shared is not None
    await m.store.update_call(call.id, engine_id="dead-engine")
    survivor = Recovery(m.store, cp.bus, lease=30)
    survivor.host = "another-host"  # this process's engine is alive, not a dead one here
    survivor.on_calls_ended = m.shared.calls_lost
    assert await survivor.recover(LOST) == 1
    await asyncio.wait_for(asyncio.gather(*m.shared.background), 10)


async def test_a_guest_on_a_lost_call_goes_to_wrap_up(shared: ControlPlane) -> None:
    """Review finding (high): Bob answered Ann's consult, then the call's engine died.
    The survivor hung up only the call's agent (Ann): Bob, on the call through his own
    leg but not its agent, stayed on_call in every copy for good (no sign-out, no
    removal, no timer). Now every agent with a leg still open on the call is hung up,
    and owes it its disposition."""
    m = shared.calls
    copy = m.routing_copy
    assert copy is not None
    call, ann, bob = await ringing_bob(shared)
    await m.accept_peer(bob.id, call.id, phone(), "sip", "PCMU")
    assert copy.routing.presence_of(bob.id) == "on_call"
    await lost_engine(shared, call)
    assert copy.routing.presence_of(bob.id) == "wrap_up"
    assert copy.routing.acd.agents[bob.id].owes == call.id
    assert copy.routing.presence_of(ann.id) == "wrap_up"


async def test_a_guest_ringing_for_a_lost_call_is_free_again(shared: ControlPlane) -> None:
    """Review finding: Bob still rang when the call's engine died; the survivor's leave
    found no caller in line, and he rang until he was set away for a missed call."""
    m = shared.calls
    copy = m.routing_copy
    assert copy is not None
    call, _ann, bob = await ringing_bob(shared)
    await lost_engine(shared, call)
    assert not copy.routing.offered_to(bob.id, call.id)
    assert copy.routing.presence_of(bob.id) == "available"
    withdrawn = await told(shared, "call.offer_withdrawn", agent_id=bob.id)
    assert [e["reason"] for e in withdrawn] == ["node_lost"]


async def test_a_stray_ring_answered_is_refused_and_taken_back(shared: ControlPlane) -> None:
    """Review finding: the log can hold Bob's ring for a call with no consult (the
    ring's request timed out after the log took it). He answered on his desk phone:
    ``_bridge_agent`` took him as the call's agent while it was held (InvalidTransition,
    Ann locked out, Bob's leg without media), and the hang-up endpoint let him end the
    caller's call. And a refusal of a desk phone's answer (NotAllowed) was raised out
    of the desk phone's task, never read. Now the answer is refused and the ring taken
    back; his phone is hung up; Ann keeps the call."""
    m = shared.calls
    copy = m.routing_copy
    assert copy is not None and m.routing_log is not None
    call = await with_ann(shared)
    ann, bob = await person(shared, "ann"), await bob_available(shared)
    await m.hold(ann, call.id)
    ring = {"op": "consult_offer", "call": CallCard.of(call), "agent": bob.id, "queue": None}
    await m.routing_log.submit(ring)  # the ring the log took; its request failed
    assert copy.routing.offered_to(bob.id, call.id) and call.consult is None

    desk = await shared.agent("bob", PASSWORD)
    try:
        r = await desk.post(f"/api/v1/calls/{call.id}/hangup")
        assert r.status_code == 403, r.text  # rung, but not offered the caller
    finally:
        await desk.aclose()
    assert not call.ended.is_set()

    answer = DeskPhone()
    with pytest.raises(NotAllowed, match="not waiting for an agent"):  # the API's 409
        await m.accept_peer(bob.id, call.id, answer.peer, "sip", "PCMU")
    assert answer.byes == 1  # his phone hung up
    assert not copy.routing.offered_to(bob.id, call.id)  # the ring taken back
    assert copy.routing.presence_of(bob.id) == "available"

    await m.routing_log.submit(ring)  # again, answered on the desk phone the engine rang
    on_desk = DeskPhone()

    async def answered(*_args: object, invited: Callable[[str], None], **_kw: object) -> _PhoneCall:
        invited("sip-call-1")  # the INVITE sent, and answered
        return _PhoneCall("sip-call-1", peer=on_desk.peer, agent=True)

    front = object.__new__(SipFront)  # its desk-phone ring alone: no SIP socket here
    front.settings, front.calls, front._desk_ringing = shared.settings, m, {}
    front._call_out = answered  # type: ignore[method-assign]  # the network's part
    binding = Binding("sip:bob@127.0.0.1", ("127.0.0.1", 5062), 0.0)
    await front._ring_desk(bob.id, binding, call.id, None, "token")  # raised NotAllowed
    assert on_desk.byes == 1
    assert not copy.routing.offered_to(bob.id, call.id)

    assert all(leg.user_id != bob.id for leg in call.legs)
    assert call.state == "held" and call.agent_id == ann.id
    await m.resume(ann, call.id)  # Ann is not locked out
    assert call.state == "bridged"


def log_fails_once(
    monkeypatch: pytest.MonkeyPatch, cp: ControlPlane, kind: str, *, taken: bool
) -> None:
    """The shared log fails the next ``kind`` operation asked of it, once: it took it
    and the answer did not come in time (``taken``: applied, as ``submit`` raises
    after ``ANSWER_WITHIN`` s), or it never had it (Redis away for a moment). A step
    asked again in the background (``SharedCalls.leave``) is asked again at once."""
    log = cp.calls.routing_log
    assert log is not None
    real, failing = log.submit, [kind]

    async def submit(op: Mapping[str, Any], *, effects: bool = True) -> None:
        if op.get("op") in failing:
            failing.clear()
            if taken:
                await real(op, effects=effects)
            raise RoutingUnavailable("the shared routing log did not answer in time")
        await real(op, effects=effects)

    monkeypatch.setattr(log, "submit", submit)
    monkeypatch.setattr(sharedcalls, "RETRY", 0.05)


async def test_a_ring_the_log_took_but_did_not_answer_is_taken_back(
    shared: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: the ring's request timed out after the log took it; the host
    was told 503 and the consult cleared, but Bob rang on (and could answer a call
    with no consult). Now the ring is taken back."""
    m = shared.calls
    copy = m.routing_copy
    assert copy is not None
    call = await with_ann(shared)
    ann, bob = await person(shared, "ann"), await bob_available(shared)
    await m.hold(ann, call.id)
    log_fails_once(monkeypatch, shared, "consult_offer", taken=True)
    with pytest.raises(RoutingUnavailable):
        await m.consults.start(ann, call.id, "bob")
    assert call.consult is None
    async with asyncio.timeout(OFFER_TIMEOUT - 0.5):  # sooner than it would ring out
        while copy.routing.offered_to(bob.id, call.id):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert m.presence_of(bob.id) == "available"  # not away: it did not ring out


async def test_a_cancel_goes_on_when_its_withdrawal_fails(
    shared: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: the cancel cleared the consult, then its withdrawal failed: the
    host got a 503 with the caller still on hold and no consult left to cancel, and
    Bob rang on with no consult behind his ring. Now the withdrawal is asked again in
    the background and the cancel goes on: the caller is back with Ann, told once."""
    m = shared.calls
    copy = m.routing_copy
    assert copy is not None
    call, ann, bob = await ringing_bob(shared)
    log_fails_once(monkeypatch, shared, "consult_withdraw", taken=False)
    await m.consults.cancel(ann, call.id)
    assert call.consult is None and call.state == "bridged"
    assert (await cancelled(shared))["reason"] == "cancelled"
    async with asyncio.timeout(OFFER_TIMEOUT - 0.5):  # asked again, sooner than a ring-out
        while copy.routing.offered_to(bob.id, call.id):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert m.presence_of(bob.id) == "available"


async def test_a_too_late_answer_frees_its_guest_when_the_log_fails(
    shared: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: the guest's answer, decided in the log after a cancel, is undone
    by hanging them up; that step failing raised RoutingUnavailable instead of the
    refusal, and left Bob on_call with no leg for good. Now it is asked again in the
    background, and the refusal is what Bob is told."""
    m = shared.calls
    copy = m.routing_copy
    assert copy is not None
    call = await with_ann(shared)
    ann, bob = await person(shared, "ann"), await bob_available(shared)
    await m.consults.start(ann, call.id, "bob")
    answer = asyncio.create_task(m.accept_peer(bob.id, call.id, phone(), "sip", "PCMU"))
    async with asyncio.timeout(5):  # the log has taken the answer; its effects follow
        while copy.routing.presence_of(bob.id) != "on_call":  # noqa: ASYNC110
            await asyncio.sleep(0)
    log_fails_once(monkeypatch, shared, "hung_up", taken=False)
    await m.consults.cancel(ann, call.id)
    with pytest.raises(NotAllowed, match="cancelled before you answered"):
        await answer
    async with asyncio.timeout(5):
        while copy.routing.presence_of(bob.id) == "on_call":  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert copy.routing.presence_of(bob.id) == "wrap_up"
    assert all(leg.user_id != bob.id for leg in call.legs)


async def test_a_withdrawal_asked_again_leaves_a_later_ring_of_the_call_alone(
    shared: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: a consult's withdrawal, asked again in the background while the
    log could not be reached, stopped only if the host consulted the same colleague
    again. Ann transferring the call to that colleague meanwhile rang him with an offer
    of the same call, and the next try took it back. It stops once the call is back in
    line too."""
    m = shared.calls
    copy = m.routing_copy
    assert copy is not None
    call = await with_ann(shared)
    ann, bob = await person(shared, "ann"), await bob_available(shared)
    log = m.routing_log
    assert log is not None
    real, blocked = log.submit, [True]

    async def submit(op: Mapping[str, Any], *, effects: bool = True) -> None:
        if op.get("op") == "consult_withdraw" and blocked:
            raise RoutingUnavailable("the shared routing log did not answer in time")
        await real(op, effects=effects)

    monkeypatch.setattr(log, "submit", submit)
    monkeypatch.setattr(sharedcalls, "RETRY", 0.05)
    await m.consults.withdraw(call, bob.id)  # failed: asked again in the background
    await m.transfer(ann, call.id, queue="general", agent="bob", note="over to you")
    assert call.state == "queued" and copy.routing.offered_to(bob.id, call.id)
    blocked.clear()  # the log is back: the next try would go through
    await asyncio.sleep(0.3)  # several tries' worth
    # his ring of the transfer stands: not taken back (and rung again at once, his desk
    # told "cancelled" in between)
    assert copy.routing.offered_to(bob.id, call.id)
    assert [e for e in published(shared, "call.offer_withdrawn") if e["call_id"] == call.id] == []
