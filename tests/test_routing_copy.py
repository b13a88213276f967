"""Routing shared by several engines, sans-IO (engine/routingcopy.py): copies that apply
the same operations in the same order at the same times make the same decisions; a copy
handed to a joiner goes on as the others do; each effect falls to one engine."""

from __future__ import annotations

from typing import Any

import pytest

from engine.acd import AcdError, QueueConfig
from engine.analysis import Emit, summary_of
from engine.escalation import Decision
from engine.events import AgentPresenceChanged, CallOffered, OfferWithdrawn, utcnow
from engine.livecall import Call
from engine.routing import Announce, Record, Replicate, Transition
from engine.routingcopy import (
    CallCard,
    RoutingCopy,
    SharedRouting,
    follow_shadows,
    on_live_call,
    owner_of,
)
from engine.store.models import UserRow
from media.asr import ModelChoice

QUEUES = [QueueConfig(name="general"), QueueConfig(name="billing", skills=["billing"])]


def live_call(call_id: str, state: str = "active") -> Call:
    call = Call(call_id, "webrtc", "en", ModelChoice("en", None, None), "+15550100", utcnow())
    call.state = state
    return call


def ann() -> UserRow:
    return UserRow(id="u-ann", username="ann", skills=["billing"], role="agent")


def described(effects: list[Any]) -> list[str]:
    """Effects as comparable text (the calls in them are each copy's own shadows)."""
    out = []
    for e in effects:
        if isinstance(e, Emit):
            out.append(e.event.model_dump_json(exclude={"time", "id"}))
        elif isinstance(e, Record):
            out.append(f"record {e.what}")
        else:
            out.append(f"{type(e).__name__} {getattr(e, 'call', None) and e.call.id}")
    return out


def script(caller: Call) -> list[tuple[dict[str, Any], float]]:
    """A caller on node A waits; agent ann signs in on node B and is offered the call;
    a second caller waits behind; ann declines, a timer ticks, ann comes back."""
    second = live_call("c2")
    return [
        ({"op": "escalation", "call": CallCard.of(caller), "skill": "billing",
          "to_person": True, "origin": "A"}, 100.0),
        ({"op": "presence", "user": {"id": "u-ann", "username": "ann", "skills": ["billing"],
          "role": "agent"}, "event": "login", "origin": "B"}, 101.0),
        ({"op": "presence", "user": {"id": "u-ann", "username": "ann", "skills": ["billing"],
          "role": "agent"}, "event": "available", "origin": "B"}, 102.0),
        ({"op": "enqueue", "call": CallCard.of(second), "skill": None, "queue": None,
          "agent": None, "origin": "A"}, 103.0),
        ({"op": "decline", "user_id": "u-ann", "call_id": "c1", "origin": "B"}, 104.0),
        ({"op": "tick", "origin": "B"}, 130.0),
    ]  # fmt: skip


def test_copies_given_the_same_operations_make_the_same_decisions() -> None:
    a, b = RoutingCopy(QUEUES, 20.0), RoutingCopy(QUEUES, 20.0)
    caller = live_call("c1")
    offers = []
    for op, now in script(caller):
        ea, err_a = a.apply(op, now)
        eb, err_b = b.apply(op, now)
        assert described(ea) == described(eb)
        assert repr(err_a) == repr(err_b)
        offers += [e.event for e in ea if isinstance(e, Emit) and isinstance(e.event, CallOffered)]
    assert a.snapshot() == b.snapshot()
    # the caller of node A was offered to the agent of node B, then the second caller
    assert [(o.call_id, o.agent_id) for o in offers] == [("c1", "u-ann"), ("c2", "u-ann")]
    # the offer of c2 rang out at the tick: ann went away, c2 waits again
    assert a.routing.presence_of("u-ann") == "away"
    assert set(a.routing.acd.waiting) == {"c1", "c2"}


def test_a_copy_handed_to_a_joiner_goes_on_as_the_others() -> None:
    old, caller = RoutingCopy(QUEUES, 20.0), live_call("c1")
    ops = script(caller)
    for op, now in ops[:4]:
        old.apply(op, now)
    joiner = RoutingCopy([QueueConfig(name="other")], 20.0)
    joiner.restore(old.snapshot())
    assert joiner.snapshot() == old.snapshot()
    for op, now in ops[4:]:
        assert described(joiner.apply(op, now)[0]) == described(old.apply(op, now)[0])
    assert joiner.snapshot() == old.snapshot()


def test_what_routing_refuses_comes_back_and_changes_nothing() -> None:
    copy = RoutingCopy(QUEUES, 20.0)
    before = copy.snapshot()
    effects, error = copy.apply(
        {"op": "decline", "user_id": "u-nobody", "call_id": "c9", "origin": "A"}, 1.0
    )
    assert effects == [] and isinstance(error, AcdError)
    assert copy.snapshot() == before
    with pytest.raises(ValueError, match="version"):
        copy.restore({"version": 99})


def test_each_effect_falls_to_one_engine() -> None:
    copy = RoutingCopy(QUEUES, 20.0)
    caller = live_call("c1")
    caller.caller_said = ["I was charged twice for my bill."]
    copy.apply({"op": "presence", "user": {"id": "u-ann", "username": "ann",
                "skills": ["billing"], "role": "agent"}, "event": "login", "origin": "B"},
               1.0)  # fmt: skip
    copy.apply({"op": "presence", "user": {"id": "u-ann", "username": "ann",
                "skills": ["billing"], "role": "agent"}, "event": "available", "origin": "B"},
               2.0)  # fmt: skip
    op = {"op": "escalation", "call": CallCard.of(caller), "skill": "billing", "to_person": True}
    effects, _ = copy.apply({**op, "origin": "A"}, 3.0)
    on_a = {"c1": caller}  # node A runs the call; node B runs none
    offer = next(e for e in effects if isinstance(e, Emit) and isinstance(e.event, CallOffered))
    presence = next(
        e for e in effects if isinstance(e, Emit) and isinstance(e.event, AgentPresenceChanged)
    )
    record = next(e for e in effects if isinstance(e, Record))
    moved = next(e for e in effects if isinstance(e, Transition))
    by_a = {"origin": "A"}
    assert owner_of(offer, by_a, "A", on_a) is caller and owner_of(offer, by_a, "B", {}) is False
    assert owner_of(moved, by_a, "A", on_a) is caller and owner_of(moved, by_a, "B", {}) is False
    # the offer's presence change is told and kept once: by the engine that asked
    assert owner_of(presence, by_a, "A", on_a) is True
    assert owner_of(presence, by_a, "B", {}) is False
    assert owner_of(record, by_a, "A", on_a) is True and owner_of(record, by_a, "B", {}) is False
    # a call whose engine died: the engine that ended it tells its events, moves nothing
    orphan = {"origin": "B", "orphan": "c1"}
    assert owner_of(offer, orphan, "B", {}) is True and owner_of(offer, orphan, "A", {}) is False
    assert owner_of(moved, orphan, "B", {}) is False
    # the engine running the call sends the offer with what the live call knows now
    caller.mood = "frustrated"
    sent = on_live_call(offer, caller)
    assert isinstance(sent, Emit) and isinstance(sent.event, CallOffered)
    assert sent.event.emotion == "frustrated" and sent.event.summary == summary_of(caller)
    assert sent.event.summary != offer.event.summary  # type: ignore[union-attr]
    assert sent.event.expires_in == offer.event.expires_in  # type: ignore[union-attr]
    lifted = on_live_call(moved, caller)
    assert isinstance(lifted, Transition) and lifted.call is caller
    # and puts its shadow's place in line on the live call
    follow_shadows(copy, on_a)
    assert caller.queue_name == "billing"


def test_the_engines_code_asks_the_log_and_reads_its_copy() -> None:
    copy = RoutingCopy(QUEUES, 20.0)
    shared = SharedRouting(copy)
    caller = live_call("c1")
    caller.escalation.priority = 3
    [asked] = list(shared.escalation(caller, Decision("r", "why", [], 0, None, 0.0, {}),
                                     to_person=True))  # fmt: skip
    assert isinstance(asked, Replicate) and asked.op["op"] == "escalation"
    assert asked.op["call"]["priority"] == 3 and asked.op["call"]["state"] == "active"
    assert copy.routing.acd.waiting == {}, "asking decides nothing"
    copy.apply({**asked.op, "origin": "A"}, 1.0)
    assert shared.has_queue("general") and "c1" in shared.acd.waiting
    [presence] = list(shared.presence(ann(), "login"))
    assert isinstance(presence, Replicate) and presence.op["user"]["username"] == "ann"
    copy.apply({**presence.op, "origin": "B"}, 2.0)
    assert shared.presence_of("u-ann") == "away" and shared.agent_named("ann") == "u-ann"
    assert list(shared.hung_up(None, 0.0)) == [] and list(shared.tick()) == []
    [gone] = list(shared.leave(caller, "caller_left"))
    effects, _ = copy.apply({**gone.op, "origin": "A"}, 3.0)  # type: ignore[dict-item]
    assert "c1" not in copy.routing.acd.waiting and copy.shadows == {}
    assert not any(isinstance(e, Emit) and isinstance(e.event, OfferWithdrawn) for e in effects)
    assert all(not isinstance(e, Announce) for e in effects)


def test_a_call_that_left_is_not_put_back_in_line_by_a_late_operation() -> None:
    """An escalation asked for before the caller hung up, appended after the call's
    leave (two connections to Redis): it used to put the call back in line, a ghost
    that rang every agent in turn and set each away."""
    copy = RoutingCopy(QUEUES, 20.0)
    caller = live_call("c1")
    stale = {"op": "escalation", "call": CallCard.of(caller), "skill": None, "to_person": True}
    caller.ended.set()
    copy.apply({"op": "leave", "call": CallCard.of(caller), "reason": "caller_left"}, 1.0)
    effects, error = copy.apply(stale, 2.0)
    assert effects == [] and error is None
    assert copy.routing.acd.waiting == {} and copy.shadows == {}
    joiner = RoutingCopy(QUEUES, 20.0)
    joiner.restore(copy.snapshot())
    assert joiner.apply(stale, 3.0) == ([], None) and joiner.routing.acd.waiting == {}


def test_a_dead_engines_call_frees_its_agent_and_the_survivor_tells_it() -> None:
    """The agent on a call whose engine died stayed on_call in every copy: nothing but
    that engine's hang-up moves them. The survivor that ends the call asks for its leave
    (an orphan: it tells the call's events itself) and the agent's hang-up."""
    copy = RoutingCopy(QUEUES, 20.0)
    ringing, talking = live_call("c1"), live_call("c2")
    bob = {"id": "u-bob", "username": "bob", "skills": [], "role": "agent"}
    for user in ({"id": "u-ann", "username": "ann", "skills": [], "role": "agent"}, bob):
        for event in ("login", "available"):
            copy.apply({"op": "presence", "user": user, "event": event, "origin": "B"}, 1.0)
    for call in (talking, ringing):
        copy.apply({"op": "escalation", "call": CallCard.of(call), "skill": None,
                    "to_person": True, "origin": "A"}, 2.0)  # fmt: skip
    talker = next(a for a in copy.routing.acd.agents.values() if a.offered == "c2")
    copy.apply({"op": "answered", "agent": talker.id, "call_id": "c2", "origin": "A"}, 3.0)
    assert copy.routing.presence_of(talker.id) == "on_call"
    # engine A dies; B ends both calls and asks for what A can no longer
    card = CallCard.of(ringing) | {"ended": True, "state": "ended"}
    lost = {"op": "leave", "call": card, "reason": "node_lost", "orphan": "c1", "origin": "B"}
    effects, error = copy.apply(lost, 10.0)
    assert error is None and "c1" not in copy.routing.acd.waiting
    withdrawn = [e for e in effects if isinstance(e, Emit) and isinstance(e.event, OfferWithdrawn)]
    assert len(withdrawn) == 1 and owner_of(withdrawn[0], lost, "B", {}) is True
    learned = copy.routing.acd.average_handle_time
    effects, error = copy.apply(
        {
            "op": "hung_up",
            "agent": talker.id,
            "handle_time": 0.0,
            "unknown_length": True,
            "origin": "B",
        },
        10.0,
    )
    assert error is None and copy.routing.presence_of(talker.id) == "wrap_up"
    # its length is not known: it was learned as a 0 s call, and expected waits shrank
    assert copy.routing.acd.average_handle_time == learned
    assert all(a.presence != "on_call" for a in copy.routing.acd.agents.values())
