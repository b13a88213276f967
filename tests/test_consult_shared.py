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
from typing import Any

from engine.acd import AcdError, QueueConfig
from engine.analysis import Emit
from engine.consult import Consult
from engine.events import CallOffered
from engine.livecall import Call
from engine.routingcopy import SNAPSHOT_VERSION, CallCard, RoutingCopy, on_live_call
from engine.store.models import UserRow
from tests.controlplane import ControlPlane
from tests.test_consult_legs import OFFER_TIMEOUT, bob_available, shared
from tests.test_monitor_legs import person, published, with_ann
from tests.test_routing_copy import described, live_call

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
    [event] = await told(cp, "call.consult_cancelled", within)
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
