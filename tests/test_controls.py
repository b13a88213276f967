"""Desk controls, decisions in and effects out (engine/controls.py): the real ACD and
routing with a fake clock, effects applied the way ``CallManager._desk`` does (a
``Transition`` moves the call's state machine) and kept in a list; then the same
controls through the call manager on a real SQLite store, with phone peers that never
open a socket, for what the effects become (events, rows, the agent's presence).
test_desk_e2e.py proves the wiring to the HTTP API, real audio and softphones.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import TypeVar

import pytest

from engine.acd import QueueConfig
from engine.analysis import Emit
from engine.assist.redact import Redactor
from engine.calls import CallManager
from engine.callstate import HOLD_PROMPT, Forbidden, NotAllowed, UnknownCall
from engine.controls import (
    BridgeVideo,
    CloseLeg,
    Controls,
    Effect,
    HoldMusic,
    Hush,
    RunLeg,
    Save,
    SaveCall,
)
from engine.events import (
    CallAnnotated,
    CallMuted,
    CallTransferred,
    CallWrappedUp,
    EventBase,
    utcnow,
)
from engine.livecall import Call, Leg
from engine.routing import Announce, Record, Routing, Transition, UpdateCall
from engine.store.db import CallRecord as StoredCall
from engine.store.models import CallRow, LegRow, NoteRow, PresenceRow, UserRow
from engine.users import ApiActor
from media.asr import ModelChoice
from media.rtp import RtpSession
from media.sip.peer import SipPeer
from media.sip.sdp import parse_offer
from tests.test_manager_limits import PHONE_SDP, manager

QUEUES = [QueueConfig(name="general"), QueueConfig(name="billing", skills=["billing"])]
T = TypeVar("T")
E = TypeVar("E", bound=EventBase)


def user(name: str, role: str = "agent", skills: Iterable[str] = ()) -> UserRow:
    return UserRow(
        id=f"id-{name}", username=name, display_name=name.title(), role=role,
        skills=list(skills),
        password_hash="x", created_at=utcnow(),
    )  # fmt: skip


ANN, BOB = user("ann"), user("bob", skills=["billing"])
SUE = user("sue", "supervisor")
BOT = ApiActor("key:bot", "api:bot", "operator")


class Desk:
    """Controls over routing and a few live calls, effects applied in order and kept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.calls: dict[str, Call] = {}
        self.routing = Routing(QUEUES, 20.0, self.calls, lambda: self.now)
        self.controls = Controls(self.routing, self.calls, Redactor())
        self.effects: list[Effect] = []

    def run(self, steps: Generator[Effect, None, T]) -> T:
        while True:
            try:
                effect = next(steps)
            except StopIteration as done:
                return done.value
            if isinstance(effect, Transition):
                effect.call.state = effect.call.next_state(effect.event)
                for name, value in effect.values.items():
                    setattr(effect.call, name, value)
            self.effects.append(effect)

    def take(self) -> list[Effect]:
        done, self.effects = self.effects, []
        return done

    def agent(self, who: UserRow, event: str = "available") -> None:
        self.run(self.routing.presence(who, "login"))
        self.run(self.routing.presence(who, event))

    def bridged(self, call_id: str, agent: UserRow) -> Call:
        """A call put through to ``agent`` the way the ACD does it."""
        call = Call(call_id, "sip", "en", ModelChoice("en", None, None), "+15550100", utcnow())
        call.state = "active"
        call.legs.append(Leg(f"{call_id}-caller", "caller", "sip"))
        self.calls[call_id] = call
        self.run(self.routing.enqueue(call, None, queue="general", agent=agent.id))
        self.routing.acd.accept(agent.id, call_id, self.now)
        call.legs.append(Leg(f"{call_id}-{agent.username}", "agent", "sip", user_id=agent.id))
        call.state, call.agent_id, call.bridged_at = "bridged", agent.id, self.now
        self.take()
        return call


def emitted(effects: Iterable[Effect], kind: type[E]) -> list[E]:
    return [e.event for e in effects if isinstance(e, Emit) and isinstance(e.event, kind)]


# -- who may act -------------------------------------------------------------------------


def test_only_the_agent_on_the_line_a_supervisor_or_a_program_may_hold() -> None:
    """403 is not your call, 404 no such call, 409 a call with nobody to hold it for:
    the guards are judged before anything is done, and a refusal does nothing."""
    desk = Desk()
    desk.agent(ANN)
    desk.agent(BOB)
    call = desk.bridged("c1", ANN)
    with pytest.raises(Forbidden, match="not on your line"):
        desk.controls.controlled(BOB, "c1")
    with pytest.raises(UnknownCall):
        desk.controls.controlled(ANN, "nope")
    for who in (ANN, SUE, BOT):
        assert desk.controls.controlled(who, "c1") is call
    call.state = "queued"
    with pytest.raises(NotAllowed, match="not with an agent"):
        desk.controls.controlled(SUE, "c1")
    # keys, prompts and the recording need the line, not an agent on the call
    assert desk.controls.on_line(SUE, "c1") is call
    with pytest.raises(Forbidden):
        desk.controls.on_line(BOB, "c1")
    assert desk.effects == [] and call.state == "queued"


def test_hold_then_resume_moves_the_call_and_its_audio_once_each() -> None:
    """Hold: held, cameras off, what was queued for everyone dropped, hold music under
    the hold prompt; a second hold does nothing. Resume undoes it in the other order:
    the music stops before the two hear each other again."""
    desk = Desk()
    desk.agent(ANN)
    call = desk.bridged("c1", ANN)
    desk.run(desk.controls.hold(SUE, call))
    assert desk.take() == [
        Transition(call, "hold", "sue"),
        BridgeVideo(call),
        Hush(call, everyone=True),
        HoldMusic(call, True),
        Announce(call, HOLD_PROMPT, ("held",)),
    ]
    assert call.state == "held"
    desk.run(desk.controls.hold(ANN, call))
    assert desk.take() == []
    desk.run(desk.controls.resume(ANN, call))
    assert desk.take() == [
        HoldMusic(call, False),
        Hush(call),
        Transition(call, "resume", "ann"),
        BridgeVideo(call),
    ]
    assert call.state == "bridged"
    desk.run(desk.controls.resume(ANN, call))
    assert desk.take() == []


def test_mute_twice_tells_once() -> None:
    desk = Desk()
    desk.agent(ANN)
    call = desk.bridged("c1", ANN)
    for _ in range(2):
        desk.run(desk.controls.mute(call, True))
    desk.run(desk.controls.mute(call, False))
    muted = emitted(desk.take(), CallMuted)
    assert [(m.agent_id, m.muted) for m in muted] == [(ANN.id, True), (ANN.id, False)]


# -- transfers ---------------------------------------------------------------------------


def test_a_transfer_to_a_queue_keeps_the_note_and_requeues_at_the_calls_priority() -> None:
    """The agent leaves (to wrap-up, the hand-over note kept even if storage fails), the
    call goes back in line with the priority the rules gave it, and the agent's leg is
    closed only after the call has moved on."""
    desk = Desk()
    desk.agent(ANN)
    desk.agent(BOB)  # free: the re-queued call is offered to Bob at once
    call = desk.bridged("c1", ANN)
    agent_leg = call.agent_leg()
    assert agent_leg is not None
    call.escalation.priority = 7
    call.agent_muted = True
    desk.now += 30
    desk.run(
        desk.controls.transfer(
            ANN, call, queue="billing", agent=None, target=None, note="wants a refund"
        )
    )
    effects = desk.take()
    notes = [e.row for e in effects if isinstance(e, Record) and isinstance(e.row, NoteRow)]
    assert [(n.kind, n.text, n.author) for n in notes] == [("transfer", "wants a refund", "ann")]
    assert Transition(call, "transfer", "transferred to queue billing", {"agent_id": None}) in (
        effects
    )
    assert UpdateCall("call c1 queue", "c1", {"queue": "billing"}) in effects
    [moved] = emitted(effects, CallTransferred)
    assert (moved.from_agent, moved.to_queue, moved.note) == ("ann", "billing", "wants a refund")
    assert effects[-1] == CloseLeg(call, agent_leg)
    assert agent_leg.left and not call.agent_muted and call.agent_id is None
    assert (call.transferred_by, call.transfer_note) == ("ann", "wants a refund")
    assert call.state == "queued" and call.queue_name == "billing"
    assert desk.routing.acd.waiting["c1"].priority == 7
    assert desk.routing.presence_of(ANN.id) == "wrap_up"
    assert desk.routing.presence_of(BOB.id) == "ringing"
    # the caller stops hearing the agent's last words and any hold music before the prompt
    said = next(i for i, e in enumerate(effects) if isinstance(e, Announce))
    assert effects.index(HoldMusic(call, False)) < effects.index(Hush(call)) < said


def test_a_transfer_to_an_agent_who_cannot_take_it_is_refused_before_anything_moves() -> None:
    desk = Desk()
    desk.agent(ANN)
    call = desk.bridged("c1", ANN)
    refusals = [
        ("carl", None, "there is no agent 'carl'"),
        ("sue", SUE, "there is no agent 'sue'"),
        ("ann", ANN, "already with that agent"),
        ("bob", BOB, "bob is not signed in"),
    ]
    for name, target, why in refusals:
        with pytest.raises(NotAllowed, match=why):
            desk.run(desk.controls.transfer(ANN, call, queue=None, agent=name, target=target,
                                            note=None))  # fmt: skip
    with pytest.raises(NotAllowed, match="no queue 'nope'"):
        desk.run(desk.controls.transfer(ANN, call, queue="nope", agent=None, target=None,
                                        note=None))  # fmt: skip
    assert desk.effects == [] and call.state == "bridged" and call.agent_id == ANN.id


def test_a_transfer_finds_the_caller_gone_and_says_so() -> None:
    """The caller hung up while the agent was leaving (the note is being written): the
    transfer is refused with the reason, and nothing is queued."""
    desk = Desk()
    desk.agent(ANN)
    call = desk.bridged("c1", ANN)
    steps = desk.controls.transfer(ANN, call, queue=None, agent=None, target=None, note=None)
    for effect in steps:  # the caller hangs up while the hand-over note is written
        if isinstance(effect, Record) and isinstance(effect.row, NoteRow):
            break
    call.ended.set()
    with pytest.raises(NotAllowed, match="has ended"):
        desk.run(steps)
    assert "c1" not in desk.routing.acd.waiting


async def test_a_number_that_takes_a_transfer_replaces_the_agent_and_a_held_call_resumes() -> None:
    desk = Desk()
    desk.agent(ANN)
    call = desk.bridged("c1", ANN)
    desk.run(desk.controls.hold(ANN, call))
    desk.take()
    ann_leg = call.agent_leg()
    assert ann_leg is not None
    peer = SipPeer(RtpSession(parse_offer(PHONE_SDP), lambda _d: None), hangup=lambda: None)
    desk.run(desk.controls.transfer_out(ANN, call, peer, "PCMU", "+15550199", None))
    effects = desk.take()
    new_leg = call.agent_leg()
    assert new_leg is not None and new_leg is not ann_leg and new_leg.peer is peer
    assert Transition(call, "resume", "ann") in effects and call.state == "bridged"
    rows = [e.row for e in effects if isinstance(e, Record)]
    assert [type(r) for r in rows] == [PresenceRow, NoteRow, LegRow]  # Ann to wrap-up first
    assert isinstance(rows[1], NoteRow) and rows[1].text == "transferred to +15550199"
    [moved] = emitted(effects, CallTransferred)
    assert (moved.to_number, moved.to_queue) == ("+15550199", "")
    assert effects[-2:] == [RunLeg(call, new_leg), CloseLeg(call, ann_leg)]
    assert desk.routing.presence_of(ANN.id) == "wrap_up"


# -- after the call ----------------------------------------------------------------------


def stored(call_id: str, *agents: UserRow) -> StoredCall:
    row = CallRow(id=call_id, channel="sip", state="ended", language="en", created_at=utcnow())
    row.legs = [
        LegRow(id=str(uuid.uuid4()), call_id=call_id, role="agent", transport="sip",
               user_id=a.id, created_at=utcnow())
        for a in agents
    ]  # fmt: skip
    return StoredCall(row, [], [], [], [])


def test_wrap_up_waits_for_the_agent_to_leave_the_call_and_is_theirs() -> None:
    """Still on the call: 409; a call the agent never took: 403; then the note and the
    disposition are stored (not spooled: the agent learns if they were not) and the
    agent goes where they asked."""
    desk = Desk()
    desk.agent(ANN)
    desk.agent(BOB)
    call = desk.bridged("c1", ANN)
    with pytest.raises(NotAllowed, match="before wrapping it up"):
        desk.run(desk.controls.wrap_up(ANN, "c1", stored("c1", ANN), "resolved", "", "available"))
    with pytest.raises(Forbidden, match="did not take"):
        desk.run(desk.controls.wrap_up(BOB, "c1", stored("c1", ANN), "resolved", "", "available"))
    with pytest.raises(UnknownCall):
        desk.run(desk.controls.wrap_up(ANN, "c2", None, "resolved", "", "available"))
    assert desk.effects == []
    desk.run(desk.controls.transfer(ANN, call, queue=None, agent=None, target=None, note=None))
    desk.take()
    assert desk.routing.presence_of(ANN.id) == "wrap_up"
    desk.run(desk.controls.wrap_up(ANN, "c1", stored("c1", ANN), "resolved", "ok", "away"))
    effects = desk.take()
    [note] = [e.row for e in effects if isinstance(e, Save)]
    assert isinstance(note, NoteRow) and (note.kind, note.disposition) == ("wrap_up", "resolved")
    [values] = [e for e in effects if isinstance(e, SaveCall)]
    assert values.values["disposition"] == "resolved"
    assert emitted(effects, CallWrappedUp)[0].agent_id == ANN.id
    assert desk.routing.presence_of(ANN.id) == "away"


def test_a_note_is_redacted_and_needs_a_call() -> None:
    desk = Desk()
    with pytest.raises(UnknownCall):
        desk.run(desk.controls.annotate(BOT, "c9", "hello", known=False))
    note = desk.run(desk.controls.annotate(BOT, "c9", "card 4111 1111 1111 1111", known=True))
    assert "4111" not in note.text and note.kind == "note"
    effects = desk.take()
    assert effects[0] == Save(note)
    assert emitted(effects, CallAnnotated)[0].text == note.text


def test_the_recording_changes_only_when_asked_for_something_new() -> None:
    desk = Desk()
    desk.agent(ANN)
    call = desk.bridged("c1", ANN)
    with pytest.raises(NotAllowed, match="not being recorded"):
        desk.controls.recording(ANN, call, False)
    started = desk.controls.recording(ANN, call, True)
    assert started is not None and (started.recording, started.by) == (True, "ann")


# -- through the call manager, on a real store -------------------------------------------


async def bridged_call(m: CallManager, agent: UserRow) -> Call:
    """A phone call that an agent answered on their desk phone; no media flows."""

    def phone() -> SipPeer:
        return SipPeer(RtpSession(parse_offer(PHONE_SDP), lambda _d: None), hangup=lambda: None)

    call = await m.create_phone_call(phone(), "+15550001234", "PCMU", menu=False)
    await m._transition(call, "media")
    await m.route_invited(call, queue="general", agent_id=agent.id, reason="asked for ann")
    assert m.offered_to(agent.id, call.id)
    await m.accept_peer(agent.id, call.id, phone(), "sip", "PCMU")
    return call


def published(m: CallManager, call: Call, kind: str) -> list[str]:
    return [e.body for e in m.bus.replay(call.id) if f'"type":"{kind}"' in e.body]


async def test_the_manager_applies_hold_mute_and_a_transfer(tmp_path: Path) -> None:
    """What the effects become: the state changes published (with who made them), one
    mute event for two requests, hold music on the caller's line while held, the
    hand-over note in the call's record, the call back in line at its priority and Ann
    in wrap-up, then her wrap-up refused while she is on a call and taken after."""
    async with manager(tmp_path, media_timeout=60.0) as m:
        ann, bob = user("ann"), user("bob")
        await m.store.add(ann, bob)
        for who in (ann, bob):
            await m.agent_presence(who, "login")
        await m.agent_presence(ann, "available")
        call = await bridged_call(m, ann)
        assert call.state == "bridged"
        with pytest.raises(NotAllowed, match="before wrapping it up"):
            await m.wrap_up(ann, call.id, "resolved", "", "available")
        with pytest.raises(Forbidden):
            await m.hold(bob, call.id)
        await m.hold(ann, call.id)
        await m.hold(ann, call.id)
        caller = call.caller_leg().peer
        assert caller is not None and caller.outbound._background is not None
        await m.resume(SUE, call.id)
        assert caller.outbound._background is None
        changes = [b for b in published(m, call, "call.state_changed") if "ann" in b or "sue" in b]
        assert ['"state":"held"' in changes[-2], '"state":"bridged"' in changes[-1]] == [True] * 2
        assert '"reason":"sue"' in changes[-1]
        await m.mute(ann, call.id, True)
        await m.mute(ann, call.id, True)
        assert len(published(m, call, "call.muted")) == 1
        call.escalation.priority = 4
        await m.transfer(ann, call.id, queue="general", note="wants a refund")
        assert call.state == "queued" and m.acd.waiting[call.id].priority == 4
        assert m.presence_of(ann.id) == "wrap_up"
        record = await m.store.get_call(call.id)
        assert record is not None
        assert [(n.kind, n.text) for n in record.notes] == [("transfer", "wants a refund")]
        await m.wrap_up(ann, call.id, "resolved", "done", "available")
        assert m.offered_to(ann.id, call.id)  # available again: the waiting call rings her
        await m.end_call(call.id, "hangup")
        await asyncio.sleep(0)
