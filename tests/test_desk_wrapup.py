"""Enforced after-call work and away reasons (issue 16): the server's rules, in-process.

The failures: "Available" skipped wrap-up and left the call with no disposition; an
agent could idle in wrap-up forever; "away" said nothing of why; a control pressed
after hang-up answered "no live call null". Now the ACD refuses "available" while a
call waits for its disposition, the wrap-up limit (CCENGINE_WRAPUP_SECONDS) stores
"timed-out" and makes the agent available, away carries a reason, and a control on an
ended call is a 409 that says so. Routing runs on a fake clock; the API through the
real app with no socket (tests/controlplane.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import pytest

from engine.acd import (
    MISSED_CALL,
    WRAP_UP_TIMED_OUT,
    WRAPPED_UP_BY_OTHER,
    QueueConfig,
    WrapUpOwed,
)
from engine.analysis import Emit
from engine.events import AgentPresenceChanged, utcnow
from engine.livecall import Call
from engine.routing import TIMED_OUT, Effect, Record, Routing, WrapUpTimedOut
from engine.routingcopy import RoutingCopy, user_card
from engine.routinglog import RoutingLog
from engine.sharedcalls import SharedCalls
from engine.store.models import NoteRow, PresenceRow, UserRow
from media.asr import ModelChoice
from tests.controlplane import ControlPlane
from tests.test_controls import bridged_call

ANN = UserRow(id="id-ann", username="ann", role="agent", skills=[])


class Desk:
    """Routing with a wrap-up limit on a fake clock; effects kept."""

    def __init__(self, limit: float = 0.0) -> None:
        self.now = 1000.0
        self.calls: dict[str, Call] = {}
        self.routing = Routing([QueueConfig(name="general")], 20.0, self.calls,
                               lambda: self.now, wrap_up_limit=limit)  # fmt: skip

    def run(self, effects: Iterable[Effect]) -> list[Effect]:
        return list(effects)

    def on_call(self, call_id: str = "c1") -> None:
        """Ann signed in, available, offered ``call_id``, answered it."""
        call = Call(call_id, "webrtc", "en", ModelChoice("en", None, None), "+1555", utcnow())
        call.state = "active"
        self.calls[call_id] = call
        self.run(self.routing.presence(ANN, "login"))
        self.run(self.routing.presence(ANN, "available"))
        self.run(self.routing.enqueue(call, None))
        self.run(self.routing.answered(ANN.id, call_id))


def presence_changes(effects: list[Effect]) -> list[tuple[str, str | None]]:
    return [
        (e.event.presence, e.event.reason)
        for e in effects
        if isinstance(e, Emit) and isinstance(e.event, AgentPresenceChanged)
    ]


def test_available_is_refused_until_the_call_has_its_disposition() -> None:
    desk = Desk()
    desk.on_call("c1")
    desk.run(desk.routing.hung_up(ANN.id, desk.now - 60, "c1"))
    assert desk.routing.status(ANN.id).wrap_up_call == "c1"
    with pytest.raises(WrapUpOwed, match="call c1 needs a disposition first"):
        desk.run(desk.routing.presence(ANN, "available"))
    # away is allowed (a break), and does not settle what is owed
    desk.run(desk.routing.presence(ANN, "away", "break"))
    with pytest.raises(WrapUpOwed):
        desk.run(desk.routing.presence(ANN, "available"))
    assert desk.routing.acd.next_timer() is None  # no limit: nothing times out
    effects = desk.run(desk.routing.wrapped_up(ANN, "c1", "available"))
    assert presence_changes(effects) == [("available", None)]
    status = desk.routing.status(ANN.id)
    assert (status.presence, status.wrap_up_call, status.away_reason) == ("available", None, None)


def test_a_supervisor_who_wraps_up_the_call_settles_what_the_agent_owed() -> None:
    """The failure: the agent stayed in wrap-up with nothing owed and no deadline,
    idle until they noticed. A supervisor's save moves them on."""
    desk = Desk(limit=30.0)
    desk.on_call("c1")
    desk.run(desk.routing.hung_up(ANN.id, desk.now - 60, "c1"))
    sue = UserRow(id="id-sue", username="sue", role="supervisor", skills=[])
    effects = desk.run(desk.routing.wrapped_up(sue, "c1", "available"))
    assert presence_changes(effects) == [("available", WRAPPED_UP_BY_OTHER)]
    status = desk.routing.status(ANN.id)
    assert (status.presence, status.wrap_up_call) == ("available", None)
    assert desk.routing.next_timer() is None  # no deadline left to time out


def test_another_agents_wrap_up_does_not_settle_the_first_agents_debt() -> None:
    """An agent-to-agent transfer: Bob, who took the call from Ann, saves his wrap-up.
    Ann still owes hers (deadline and all): a colleague's save must not wipe it out."""
    desk = Desk(limit=30.0)
    desk.on_call("c1")
    desk.run(desk.routing.hung_up(ANN.id, desk.now - 60, "c1"))
    bob = UserRow(id="id-bob", username="bob", role="agent", skills=[])
    desk.run(desk.routing.presence(bob, "login"))
    assert presence_changes(desk.run(desk.routing.wrapped_up(bob, "c1", "available"))) == []
    status = desk.routing.status(ANN.id)
    assert (status.presence, status.wrap_up_call) == ("wrap_up", "c1")
    assert status.wrap_up_ends_at is not None
    with pytest.raises(WrapUpOwed):
        desk.run(desk.routing.presence(ANN, "available"))


def test_away_again_with_the_same_reason_changes_nothing() -> None:
    """The failure: a second "lunch" (a double click, two desks) was a 409 "already"."""
    desk = Desk()
    desk.run(desk.routing.presence(ANN, "login"))
    desk.run(desk.routing.presence(ANN, "away", "lunch"))
    assert desk.run(desk.routing.presence(ANN, "away", "lunch")) == []
    effects = desk.run(desk.routing.presence(ANN, "away", "meeting"))  # another reason
    assert presence_changes(effects) == [("away", "meeting")]


def test_the_wrap_up_limit_stores_timed_out_and_makes_the_agent_available() -> None:
    desk = Desk(limit=30.0)
    desk.on_call("c1")
    desk.run(desk.routing.hung_up(ANN.id, desk.now - 60, "c1"))
    status = desk.routing.status(ANN.id)
    assert status.wrap_up_since is not None and status.wrap_up_ends_at is not None
    assert (status.wrap_up_ends_at - status.wrap_up_since).total_seconds() == 30.0
    assert desk.routing.next_timer() == desk.now + 30
    desk.now += 29.9
    assert desk.run(desk.routing.tick()) == []
    desk.now += 0.1
    effects = desk.run(desk.routing.tick())
    assert effects[0] == WrapUpTimedOut(ANN.id, "ann", "c1", status.wrap_up_since)
    assert presence_changes(effects) == [("available", WRAP_UP_TIMED_OUT)]
    rows = [e.row for e in effects if isinstance(e, Record) and isinstance(e.row, PresenceRow)]
    assert [(r.presence, r.reason) for r in rows] == [("available", WRAP_UP_TIMED_OUT)]
    assert desk.routing.status(ANN.id).wrap_up_call is None
    assert desk.routing.next_timer() is None and TIMED_OUT == "timed-out"


def test_an_agent_away_when_wrap_up_times_out_stays_away_and_owes_nothing() -> None:
    desk = Desk(limit=30.0)
    desk.on_call("c1")
    desk.run(desk.routing.hung_up(ANN.id, desk.now - 60, "c1"))
    desk.run(desk.routing.presence(ANN, "away", "lunch"))
    desk.now += 30
    effects = desk.run(desk.routing.tick())
    assert [(e.agent_id, e.call_id) for e in effects if isinstance(e, WrapUpTimedOut)] == [
        (ANN.id, "c1")
    ]
    assert len(effects) == 1
    status = desk.routing.status(ANN.id)
    assert (status.presence, status.away_reason, status.wrap_up_call) == ("away", "lunch", None)
    desk.run(desk.routing.presence(ANN, "available"))  # nothing owed now


def test_away_reasons_are_kept_and_a_missed_offer_says_so() -> None:
    desk = Desk()
    desk.run(desk.routing.presence(ANN, "login"))
    effects = desk.run(desk.routing.presence(ANN, "away", "meeting"))
    rows = [e.row for e in effects if isinstance(e, Record) and isinstance(e.row, PresenceRow)]
    assert [(r.presence, r.reason) for r in rows] == [("away", "meeting")]
    desk.run(desk.routing.presence(ANN, "away", "training"))  # another reason, still away
    assert desk.routing.status(ANN.id).away_reason == "training"
    with pytest.raises(ValueError, match="not a reason to be away"):
        desk.run(desk.routing.presence(ANN, "away", "nap"))
    desk.run(desk.routing.presence(ANN, "available"))
    call = Call("c2", "webrtc", "en", ModelChoice("en", None, None), "+1555", utcnow())
    call.state = "active"
    desk.calls["c2"] = call
    desk.run(desk.routing.enqueue(call, None))
    desk.now += 20
    effects = desk.run(desk.routing.tick())
    assert ("away", MISSED_CALL) in presence_changes(effects)
    assert desk.routing.status(ANN.id).away_reason == MISSED_CALL


def test_every_engine_copy_owes_and_times_out_alike() -> None:
    """Several engines: the owed disposition and its deadline travel in the operations
    and in a joining engine's snapshot."""
    copy = RoutingCopy([QueueConfig(name="general")], 20.0, wrap_up_limit=30.0)
    card = user_card(ANN)
    for event in ("login", "available"):
        assert copy.apply({"op": "presence", "user": card, "event": event}, 10.0)[1] is None
    copy.routing.acd.agents[ANN.id].presence = "on_call"  # answered, as far as this goes
    op = {"op": "hung_up", "agent": ANN.id, "handle_time": 5.0, "call_id": "c1"}
    assert copy.apply(op, 20.0)[1] is None
    _, refused = copy.apply({"op": "presence", "user": card, "event": "available"}, 21.0)
    assert isinstance(refused, WrapUpOwed)
    joiner = RoutingCopy([QueueConfig(name="general")], 20.0)
    joiner.restore(copy.snapshot())
    assert joiner.routing.acd.agents[ANN.id].owes == "c1"
    assert joiner.routing.next_timer() == 50.0
    effects, _ = joiner.apply({"op": "tick"}, 50.0)
    assert WrapUpTimedOut(ANN.id, "ann", "c1") in effects
    assert joiner.routing.presence_of(ANN.id) == "available"


class Log:
    """The shared routing log as ``SharedCalls.calls_lost`` sees it: in step, and the
    operations it is asked for kept."""

    def __init__(self) -> None:
        self.synced = asyncio.Event()
        self.synced.set()
        self.ops: list[dict[str, object]] = []

    async def submit(self, op: dict[str, object]) -> None:
        self.ops.append(op)


async def test_a_call_cut_off_by_a_dead_engine_leaves_its_agent_owing_it() -> None:
    """The failure: the "hung_up" of a call whose engine died had no call id, so its
    agent owed nothing and had no deadline. Now every copy makes them owe it."""
    log = Log()
    copy = RoutingCopy([QueueConfig(name="general")], 20.0, wrap_up_limit=30.0)
    shared = SharedCalls(cast(RoutingLog, log), copy, "e2", {}, lambda e: asyncio.sleep(0))
    shared.calls_lost([("c1", (ANN.id,))])
    await asyncio.wait_for(asyncio.gather(*shared.background), 5)
    hung_up = [op for op in log.ops if op["op"] == "hung_up"]
    assert len(hung_up) == 1 and hung_up[0]["call_id"] == "c1"
    card = user_card(ANN)
    for event in ("login", "available"):
        copy.apply({"op": "presence", "user": card, "event": event}, 10.0)
    copy.routing.acd.agents[ANN.id].presence = "on_call"
    assert copy.apply(hung_up[0], 20.0)[1] is None
    assert copy.routing.acd.agents[ANN.id].owes == "c1"
    assert copy.routing.next_timer() == 50.0


def test_an_engine_of_the_version_before_wrap_up_cannot_hand_its_copy_on() -> None:
    """Mixed versions: an engine without enforced wrap-up refuses "wrapped_up" and lets
    an agent who owes go available: its copy would part silently from the others'.
    The versions refuse each other's snapshots, saying what to do."""
    copy = RoutingCopy([QueueConfig(name="general")], 20.0)
    old = copy.snapshot() | {"version": 1}
    with pytest.raises(ValueError, match="start them on one version"):
        RoutingCopy([QueueConfig(name="general")], 20.0).restore(old)


async def test_a_wrap_up_saved_at_the_deadline_is_not_overwritten_by_timed_out(
    tmp_path: Path,
) -> None:
    """The failure: the agent's save is written before routing hears of it; the
    timer firing in between stored "timed-out" over it and told a second
    call.wrapped_up. Now the timeout writes only if nothing was saved since the agent
    began to owe the call."""
    async with ControlPlane(tmp_path / "engine", wrapup_seconds=30) as cp:
        await cp.add_user("ann", "pw-ann-123")
        ann = await cp.agent("ann", "pw-ann-123", "login", "available")
        async with contextlib.aclosing(ann):
            user = await cp.store.user_by_name("ann")
            assert user is not None
            m = cp.calls
            now = [m.routing.clock()]
            m.routing.clock = lambda: now[0]
            call = await bridged_call(m, user)
            await m.end_call(call.id, "agent_hangup")
            # Controls.wrap_up's first steps: the note and the call's disposition ...
            saved = NoteRow(call_id=call.id, author_id=user.id, author="ann", kind="wrap_up",
                            text="", disposition="resolved", created_at=utcnow())  # fmt: skip
            values = {"disposition": "resolved", "wrapped_up_at": utcnow()}
            await m.store.add_and_update_call(call.id, values, saved)
            now[0] += 31  # ... and the deadline passes before routing is told
            await m._route(m.routing.tick())
            await asyncio.sleep(0.3)  # the app's own timer loop, had it taken the tick
            record = await m.store.get_call(call.id)
            assert record is not None and record.call.disposition == "resolved"
            assert [n.disposition for n in record.notes] == ["resolved"]
            assert not [e for e in m.bus.replay(call.id) if "call.wrapped_up" in e.body]
            assert m.presence_of(user.id) == "available"  # the deadline still moved her on


async def test_the_api_refuses_available_and_controls_after_hang_up_with_clear_409s(
    control_plane: ControlPlane,
) -> None:
    cp = control_plane
    await cp.add_user("ann", "pw-ann-123")
    ann = await cp.agent("ann", "pw-ann-123", "login", "available")
    async with contextlib.aclosing(ann), cp.http() as admin:
        user = await cp.store.user_by_name("ann")
        assert user is not None
        call = await bridged_call(cp.calls, user)
        await cp.calls.end_call(call.id, "agent_hangup")

        listed = {a["username"]: a for a in (await admin.get("/api/v1/agents")).json()}
        assert listed["ann"]["presence"] == "wrap_up"
        assert listed["ann"]["wrap_up_call"] == call.id and listed["ann"]["wrap_up_since"]
        assert listed["ann"]["wrap_up_ends_at"] is None  # no limit by default

        r = await ann.post("/api/v1/agents/me/presence", json={"event": "available"})
        assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["detail"] == (
            f"call {call.id} needs a disposition first: save its wrap-up, then you are available"
        )
        # the desk asks for the wrap-up only on this refusal, which names the call; any
        # other 409 on "available" (signed out meanwhile) used to read as "save it first"
        assert r.json()["wrap_up_call"] == call.id
        for action, body in (("mute", {"muted": True}), ("hold", None), ("resume", None)):
            r = await ann.post(f"/api/v1/calls/{call.id}/{action}", json=body)
            assert r.status_code == 409, r.text
            assert (
                r.json()["detail"] == f"call {call.id} has ended: there is no live call to {action}"
            )
        r = await ann.post("/api/v1/calls/null/mute", json={"muted": True})
        assert (r.status_code, r.json()["detail"]) == (404, "no call null")
        r = await ann.post(
            "/api/v1/agents/me/presence", json={"event": "available", "reason": "lunch"}
        )
        assert r.status_code == 422 and 'goes with "away" only' in r.json()["detail"]

        r = await ann.post(f"/api/v1/calls/{call.id}/wrap-up", json={"disposition": "resolved"})
        assert r.status_code == 204, r.text
        r = await ann.post("/api/v1/agents/me/presence", json={"event": "away", "reason": "lunch"})
        assert r.status_code == 200 and r.json()["away_reason"] == "lunch"
        listed = {a["username"]: a for a in (await admin.get("/api/v1/agents")).json()}
        assert (listed["ann"]["presence"], listed["ann"]["away_reason"]) == ("away", "lunch")
        assert listed["ann"]["wrap_up_call"] is None and listed["ann"]["presence_since"]
        r = await ann.post("/api/v1/agents/me/presence", json={"event": "available"})
        assert r.status_code == 200 and r.json()["away_reason"] is None
        await ann.post("/api/v1/agents/me/presence", json={"event": "logout"})
        r = await ann.post("/api/v1/agents/me/presence", json={"event": "available"})
        assert r.status_code == 409 and "wrap_up_call" not in r.json(), r.text
        await ann.post("/api/v1/agents/me/presence", json={"event": "login"})
        async with cp.client() as typed:  # the Python client says why, too
            await typed.login("ann", "pw-ann-123")
            assert (await typed.set_presence("away", "training")).away_reason == "training"


async def test_a_timed_out_wrap_up_is_stored_and_told(tmp_path: Path) -> None:
    """The engine applies the timeout as a wrap-up: the call's disposition, a wrap-up
    note by the agent, the event on the bus; the agent is available again."""
    async with ControlPlane(tmp_path / "engine", wrapup_seconds=30) as cp:
        await cp.add_user("ann", "pw-ann-123")
        ann = await cp.agent("ann", "pw-ann-123", "login", "available")
        async with contextlib.aclosing(ann):
            user = await cp.store.user_by_name("ann")
            assert user is not None
            m = cp.calls
            now = [m.routing.clock()]
            m.routing.clock = lambda: now[0]
            call = await bridged_call(m, user)
            await m.end_call(call.id, "agent_hangup")
            listed = (await ann.get("/api/v1/agents")).json()
            assert listed[0]["wrap_up_ends_at"] is not None
            now[0] += 31
            # the app's own timer loop may take the tick first: either applies it, once.
            # (This test failed 1 run in 4: it looked in the bus's ring as soon as the
            # disposition was stored, but an event reaches the ring only once the durable
            # event log has stored it, in its next batch (engine/eventlog.py,
            # ``store_first``): wait for the event itself.)
            await m._route(m.routing.tick())

            def told() -> list[str]:
                return [e.body for e in m.bus.replay(call.id) if "call.wrapped_up" in e.body]

            for _ in range(100):
                if told():
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)  # a second one would have come by now
            record = await m.store.get_call(call.id)
            assert record is not None and record.call.disposition == TIMED_OUT
            assert [(n.kind, n.author, n.disposition) for n in record.notes] == [
                ("wrap_up", "ann", TIMED_OUT)
            ]
            assert len(told()) == 1 and '"disposition":"timed-out"' in told()[0]
            assert m.presence_of(user.id) == "available"
