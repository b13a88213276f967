"""Routing, decisions in and effects out (engine/routing.py): the real ACD with a fake
clock and no engine, socket or database. The harness applies the effects the way
``CallManager._route`` does (a ``Transition`` moves the call's state machine), one at
a time, and keeps them in a list; the end-to-end tests (test_agents_e2e.py,
test_desk_e2e.py) prove the wiring to the bus, the store and the voice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import pytest

from engine.acd import AcdError, QueueConfig
from engine.analysis import Emit
from engine.callstate import MAX_WAIT_PROMPT, NotAllowed
from engine.escalation import Decision
from engine.events import (
    AgentPresenceChanged,
    CallOffered,
    EventBase,
    OfferWithdrawn,
    QueueUpdated,
    utcnow,
)
from engine.livecall import Call
from engine.routing import (
    Announce,
    Effect,
    Record,
    Ring,
    Routing,
    StopRinging,
    Transition,
    UpdateCall,
)
from engine.store.models import OverrideRow, UserRow
from media.asr import ModelChoice

QUEUES = [
    QueueConfig(name="general"),
    QueueConfig(name="billing", skills=["billing"]),
    QueueConfig(name="vip", priority=5, max_wait=30.0),
]
E = TypeVar("E", bound=EventBase)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Desk:
    """Routing over a few live calls, its effects applied in order and kept."""

    def __init__(self, queues: list[QueueConfig] = QUEUES, offer_timeout: float = 20.0) -> None:
        self.clock = Clock()
        self.calls: dict[str, Call] = {}
        self.routing = Routing(queues, offer_timeout, self.calls, self.clock)
        self.effects: list[Effect] = []
        # called with each effect as it is applied, before routing goes on
        self.on_effect: Callable[[Effect], None] = lambda effect: None

    def run(self, effects: Iterable[Effect]) -> list[Effect]:
        done = []
        for effect in effects:
            if isinstance(effect, Transition):
                effect.call.state = effect.call.next_state(effect.event)
            self.on_effect(effect)
            done.append(effect)
        self.effects += done
        return done

    def call(self, call_id: str, state: str = "active") -> Call:
        call = Call(call_id, "webrtc", "en", ModelChoice("en", None, None), "+15550100", utcnow())
        call.state = state
        self.calls[call_id] = call
        return call

    def escalate(self, call: Call, skill: str | None = None, priority: int = 0) -> list[Effect]:
        call.escalation.priority += priority
        decision = Decision("r", "the caller asked", ["route_to_human"], priority, skill, 0.0, {})
        return self.run(self.routing.escalation(call, decision, to_person=True))

    def agent(self, name: str, skills: Iterable[str] = (), event: str = "available") -> str:
        user = UserRow(id=f"id-{name}", username=name, role="agent", skills=list(skills))
        self.run(self.routing.presence(user, "login"))
        if event != "login":
            self.run(self.routing.presence(user, event))
        return user.id


def emitted(effects: Iterable[Effect], kind: type[E]) -> list[E]:
    return [e.event for e in effects if isinstance(e, Emit) and isinstance(e.event, kind)]


def positions(effects: Iterable[Effect]) -> list[tuple[str, int]]:
    return [(u.call_id, u.position) for u in emitted(effects, QueueUpdated)]


def offers(effects: Iterable[Effect]) -> list[tuple[str, str]]:
    return [(o.agent_id, o.call_id) for o in emitted(effects, CallOffered)]


def test_an_escalated_call_goes_to_the_queue_of_its_skill() -> None:
    desk = Desk()
    call = desk.call("c1")
    effects = desk.escalate(call, skill="billing")
    assert effects[0] == UpdateCall("call c1 queue", "c1", {"queue": "billing"})
    assert effects[1] == Transition(call, "queue", "billing")
    assert call.state == "queued" and call.queue_name == "billing"
    assert desk.routing.acd.waiting["c1"].queue == "billing"
    announced = [e for e in effects if isinstance(e, Announce)]
    assert [a.text for a in announced] == [
        "I am connecting you to a person. You are number 1 in line. "
        "All of our agents are busy right now. Please stay on the line."
    ]
    assert announced[0].while_state == ("queued",)
    (update,) = emitted(effects, QueueUpdated)
    assert (update.queue, update.position, update.announcement) == ("billing", 1, announced[0].text)


def test_a_skill_with_no_queue_waits_in_the_default_queue_for_an_agent_who_has_it() -> None:
    desk = Desk()
    desk.agent("ann")
    bob = desk.agent("bob", skills=["retention"])
    call = desk.call("c1")
    effects = desk.escalate(call, skill="retention")
    assert call.queue_name == "general"
    assert offers(effects) == [(bob, "c1")]  # ann was idle longer, but lacks the skill


def test_the_menu_topic_picks_the_queue_when_the_rule_names_no_skill() -> None:
    desk = Desk()
    call = desk.call("c1")
    call.topic = "billing"
    desk.escalate(call)
    assert call.queue_name == "billing"


def test_queue_positions_are_announced_in_order_and_move_up_when_a_caller_leaves() -> None:
    desk = Desk()
    calls = [desk.call(f"c{i}") for i in (1, 2, 3)]
    for i, call in enumerate(calls, 1):
        desk.clock.now += 1
        effects = desk.escalate(call)
        said = [e.text for e in effects if isinstance(e, Announce)]
        assert len(said) == 1 and f"You are number {i} in line" in said[0]
        assert positions(effects) == [(call.id, i)]  # the others' places did not change
    left = desk.run(desk.routing.leave(calls[0], "caller_left"))
    assert positions(left) == [("c2", 1), ("c3", 2)]
    assert not [e for e in left if isinstance(e, Announce)]  # told, not said
    assert emitted(left, OfferWithdrawn) == []  # nobody was ringing
    assert [c.queue_position for c in calls[1:]] == [1, 2]


def test_an_offer_rings_the_agent_idle_longest_and_their_desk_phone() -> None:
    desk = Desk()
    ann = desk.agent("ann")
    desk.clock.now += 5
    desk.agent("bob")
    call = desk.call("c1")
    call.escalation_reason = "the caller asked"
    effects = desk.escalate(call)
    (offer,) = emitted(effects, CallOffered)
    assert (offer.agent_id, offer.queue, offer.expires_in, offer.waited) == (ann, "general", 20, 0)
    assert offer.escalation_reason == "the caller asked" and offer.caller == "+15550100"
    assert Ring(ann, "ann", "c1", "+15550100") in effects
    ringing = emitted(effects, AgentPresenceChanged)
    assert [(p.username, p.presence) for p in ringing] == [("ann", "ringing")]
    # the agent is rung before the caller is told where they stand (synthesis is slow)
    kinds = [type(e) for e in effects]
    assert kinds.index(Ring) < kinds.index(Announce)


def test_an_offer_declined_goes_to_the_next_agent() -> None:
    desk = Desk()
    ann = desk.agent("ann")
    desk.clock.now += 5
    bob = desk.agent("bob")
    desk.escalate(desk.call("c1"))
    effects = desk.run(desk.routing.decline(ann, "c1"))
    assert effects[0] == StopRinging("c1")
    (withdrawn,) = emitted(effects, OfferWithdrawn)
    assert (withdrawn.agent_id, withdrawn.reason) == (ann, "declined")
    assert offers(effects) == [(bob, "c1")]
    assert desk.routing.presence_of(ann) == "available"
    assert desk.routing.offered_to(bob, "c1") and not desk.routing.offered_to(ann, "c1")
    with pytest.raises(AcdError):  # no longer ringing on ann
        desk.run(desk.routing.decline(ann, "c1"))


def test_an_agent_who_lets_it_ring_out_is_set_away_and_the_offer_is_withdrawn() -> None:
    desk = Desk(offer_timeout=10.0)
    ann = desk.agent("ann")
    desk.clock.now += 5
    bob = desk.agent("bob")
    desk.escalate(desk.call("c1"))
    assert desk.routing.next_timer() == desk.clock.now + 10
    desk.clock.now += 10
    effects = desk.run(desk.routing.tick())
    assert effects[0] == StopRinging("c1")
    assert [(w.agent_id, w.reason) for w in emitted(effects, OfferWithdrawn)] == [
        (ann, "no_answer")
    ]
    assert desk.routing.presence_of(ann) == "away"
    assert any(isinstance(e, Record) and e.row.presence == "away" for e in effects)
    assert offers(effects) == [(bob, "c1")]


def test_a_caller_who_leaves_withdraws_the_offer_and_frees_the_agent() -> None:
    desk = Desk()
    ann = desk.agent("ann")
    call = desk.call("c1")
    desk.escalate(call)
    effects = desk.run(desk.routing.leave(call, "caller_left"))
    assert [type(e) for e in effects[:2]] == [Emit, StopRinging]
    assert [(w.agent_id, w.reason) for w in emitted(effects, OfferWithdrawn)] == [
        (ann, "caller_left")
    ]
    assert desk.routing.presence_of(ann) == "available"
    assert "c1" not in desk.routing.acd.waiting


def test_an_agent_going_away_is_refused_while_ringing_and_gone_after() -> None:
    desk = Desk()
    ann = desk.agent("ann")
    desk.escalate(desk.call("c1"))
    with pytest.raises(NotAllowed):
        desk.run(desk.routing.agent_gone(ann))
    desk.run(desk.routing.decline(ann, "c1"))
    effects = desk.run(desk.routing.agent_gone(ann))
    assert [(p.previous, p.presence) for p in emitted(effects, AgentPresenceChanged)] == [
        ("available", "offline")
    ]
    assert desk.routing.presence_of(ann) == "offline" and ann not in desk.routing.acd.agents


def test_a_priority_raise_moves_a_waiting_call_ahead() -> None:
    desk = Desk()
    first, second = desk.call("c1"), desk.call("c2")
    desk.escalate(first)
    desk.clock.now += 1
    desk.escalate(second)
    second.escalation.priority += 3  # a later rule raised it while it waits
    decision = Decision("angry", "the caller is angry", ["raise_priority"], 3, None, 9.0, {})
    effects = desk.run(desk.routing.escalation(second, decision, to_person=False))
    assert positions(effects) == [("c2", 1), ("c1", 2)]
    assert emitted(effects, QueueUpdated)[0].priority == 3
    assert second.queued_priority == 3
    # nothing more to sync: the same decision again moves nobody
    assert desk.run(desk.routing.escalation(second, decision, to_person=False)) == []
    ann = desk.agent("ann", event="login")
    effects = desk.run(
        desk.routing.presence(UserRow(id=ann, username="ann", skills=[]), "available")
    )
    assert offers(effects) == [(ann, "c2")]


def test_a_call_that_waited_the_queues_maximum_is_offered_a_callback() -> None:
    desk = Desk()
    call = desk.call("c1")
    desk.run(desk.routing.requested(call, queue="vip"))
    assert desk.routing.acd.waiting["c1"].priority == 5  # the queue's own priority
    desk.clock.now += 30
    effects = desk.run(desk.routing.tick())
    assert effects[0] == Announce(call, MAX_WAIT_PROMPT, ("queued",))
    (update,) = emitted(effects, QueueUpdated)
    assert update.callback_offered and update.position == 1


def test_a_dialled_agent_who_signed_out_leaves_the_call_to_the_queue() -> None:
    desk = Desk()
    ann = desk.agent("ann", event="login")  # signed in, away
    desk.run(desk.routing.presence(UserRow(id=ann, username="ann", skills=[]), "logout"))
    call = desk.call("c1")
    desk.run(desk.routing.requested(call, queue="gone", agent=ann))
    assert call.state == "queued" and call.queue_name == "general"  # removed queue: default
    assert desk.routing.acd.waiting["c1"].target is None
    assert desk.routing.agent_named("ann") == ann


def test_a_dialled_agent_is_the_only_one_rung() -> None:
    desk = Desk()
    desk.agent("ann")
    desk.clock.now += 5
    bob = desk.agent("bob")
    effects = desk.run(desk.routing.requested(desk.call("c1"), agent=bob))
    assert offers(effects) == [(bob, "c1")]


def test_each_effect_is_applied_before_routing_goes_on() -> None:
    """A caller who hung up while their queue was being written (the write waits in the
    spool while storage fails) must not be put in line: end_call has already left the
    queue and nothing would take them out again. Routing sees the hang-up only if it
    asks after the write was applied: with an eager runner this fails."""
    desk = Desk()
    ann = desk.agent("ann")
    call = desk.call("c1")

    def hang_up_during_the_write(effect: Effect) -> None:
        if isinstance(effect, UpdateCall):
            call.ended.set()

    desk.on_effect = hang_up_during_the_write
    effects = desk.escalate(call)
    assert [type(e) for e in effects] == [UpdateCall]
    assert "c1" not in desk.routing.acd.waiting and call.state == "active"
    assert desk.routing.presence_of(ann) == "available"


def test_an_agent_whose_role_is_removed_stops_taking_calls_and_skills_take_effect() -> None:
    desk = Desk()
    ann = desk.agent("ann")
    user = UserRow(id=ann, username="ann", role="agent", skills=["billing"])
    assert desk.run(desk.routing.user_changed(user)) == []
    assert desk.routing.acd.agents[ann].skills == {"billing"}
    user.role = "supervisor"
    effects = desk.run(desk.routing.user_changed(user))
    assert [p.presence for p in emitted(effects, AgentPresenceChanged)] == ["offline"]
    assert ann not in desk.routing.acd.agents


def test_queue_changes_from_the_database_win_and_a_queue_always_remains() -> None:
    desk = Desk(queues=[QueueConfig(name="general")])
    at = utcnow()
    rows = [
        OverrideRow(kind="queue", name="general", config=None, updated_by="x", updated_at=at),
        OverrideRow(kind="queue", name="bad", config={"name": "B A D"}, updated_by="x",
                    updated_at=at),
        OverrideRow(kind="queue", name="sales", config={"name": "sales", "skills": ["sales"]},
                    updated_by="x", updated_at=at),
    ]  # fmt: skip
    desk.routing.load_overrides(rows)
    assert list(desk.routing.acd.queues) == ["sales"]
    assert desk.routing.queue_for("sales") == "sales" and desk.routing.queue_for(None) == "sales"
    removed = OverrideRow(kind="queue", name="sales", config=None, updated_by="x", updated_at=at)
    desk.routing.load_overrides([removed])
    assert list(desk.routing.acd.queues) == ["general"]  # never without a queue


def test_a_queue_removed_on_another_engine_takes_no_new_callers_here() -> None:
    desk = Desk()
    waiting = desk.call("c1")
    desk.run(desk.routing.enqueue(waiting, "billing"))
    at = utcnow()
    removed = OverrideRow(kind="queue", name="billing", config=None, updated_by="x", updated_at=at)
    desk.routing.load_overrides([removed])  # engine/changes.py told this engine
    assert not desk.routing.has_queue("billing")
    later = desk.call("c2")
    desk.run(desk.routing.enqueue(later, "billing"))
    assert later.queue_name == "general", "a new billing caller waits in the default queue"
    assert waiting.queue_name == "billing" and "c1" in desk.routing.acd.waiting
    desk.run(desk.routing.leave(waiting, "hangup"))
    assert "billing" not in desk.routing.acd.closing, "gone with its last caller"
