"""Desk controls: what an agent's, a supervisor's or a program's action on a call means.
Sans-IO. (The HTTP routes for them are engine/api/desk.py and engine/api/rest.py.)

Theory of operation
-------------------
Who may act is judged first, by the pure guards of engine/callstate.py:

    controlled  the call is with an agent (bridged, held) and on this actor's line:
                mute, hold, resume, transfer to a queue, an agent or a number
    on line     on this actor's line, in any state: keys, prompts, the recording
    after       the agent who took the call, or a supervisor: wrap-up; anyone with
                control: a note on a call, live or ended

An agent acts only on the call they are on (``Forbidden``, 403); a call in the wrong
state or a target that is not there is ``NotAllowed`` (409).

What an action then does is a generator of effects, the pattern of engine/routing.py
(whose effects these generators also yield, for the ACD's part of a transfer):

    Save        a row stored now; a failure fails the request (a wrap-up, a note)
    SaveCall    values stored on a call's record now, likewise
    Hush        the audio queued for the caller (or for every leg) is dropped
    HoldMusic   the caller hears hold audio whenever nothing else plays, or stops
    BridgeVideo cameras follow the audio bridge after a state change
    RunLeg      a new leg's media starts (a number that took a transfer)
    CloseLeg    a leg that left (the agent who transferred) is closed, its last words
                transcribed, once the call has moved on
    SupervisorsLeave  the supervisors on the call leave with the agent they joined:
                whoever comes next (an agent, an outside number) is not whom they
                listened to, and must not hear a whisper meant for another

The engine applies each effect before it asks for the next (``CallManager._desk``),
so a decision goes on from the state the effect left: a caller who hangs up while
the transfer prompt is synthesised is seen by the next step. Live media stays with
the engine; these generators only change the call's own fields. Tests run them with
lists (tests/test_controls.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from engine.analysis import Emit, clock
from engine.assist.redact import Redactor
from engine.callstate import (
    HOLD_PROMPT,
    Forbidden,
    NotAllowed,
    UnknownCall,
    check_on_line,
    check_with_agent,
    transfer_prompt,
)
from engine.events import (
    CallAnnotated,
    CallMuted,
    CallTransferred,
    CallWrappedUp,
    RecordingChanged,
    utcnow,
)
from engine.livecall import Call, Leg
from engine.routing import Announce, Record, Routing, Transition, UpdateCall
from engine.routing import Effect as RoutingEffect
from engine.store.models import Base, LegRow, NoteRow, UserRow
from engine.users import Actor
from media.peer import CallPeer

if TYPE_CHECKING:
    from engine.store.db import CallRecord as StoredCall

T = TypeVar("T")


# -- what the controls ask to be done -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Save:
    """A row stored now, not spooled: the person who asked learns if it failed."""

    row: Base


@dataclass(frozen=True, slots=True)
class SaveCall:
    """Values stored on a call's record now, like ``Save``."""

    call_id: str
    values: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Hush:
    """Drop the audio queued for the caller (``everyone``: for every leg), so nobody
    hears the end of what was said before the change twice or out of place."""

    call: Call
    everyone: bool = False


@dataclass(frozen=True, slots=True)
class HoldMusic:
    call: Call
    on: bool


@dataclass(frozen=True, slots=True)
class BridgeVideo:
    call: Call


@dataclass(frozen=True, slots=True)
class RunLeg:
    """``leg``, already on the call, starts its media and analysis."""

    call: Call
    leg: Leg


@dataclass(frozen=True, slots=True)
class CloseLeg:
    call: Call
    leg: Leg


@dataclass(frozen=True, slots=True)
class SupervisorsLeave:
    call: Call


Effect = (
    RoutingEffect | Save | SaveCall | Hush | HoldMusic | BridgeVideo | RunLeg | CloseLeg
    | SupervisorsLeave
)  # fmt: skip
# a control's effects, then what it answers (the note written, the call transferred)
Steps = Generator[Effect, None, T]


class Controls:
    """The desk's actions on the calls of ``calls`` (the engine's live calls, read
    only), with the ACD of ``routing`` for transfers and presence; ``redactor`` cleans
    notes as it cleans transcripts."""

    def __init__(self, routing: Routing, calls: Mapping[str, Call], redactor: Redactor) -> None:
        self.routing = routing
        self.calls = calls
        self.redactor = redactor

    # -- who may act --------------------------------------------------------------

    def live(self, call_id: str) -> Call:
        try:
            return self.calls[call_id]
        except KeyError:
            raise UnknownCall(call_id) from None

    def on_line(self, actor: Actor, call_id: str) -> Call:
        """A live call in any state: an agent may act only on their own."""
        call = self.live(call_id)
        check_on_line(call, actor.id, actor.role)
        return call

    def controlled(self, actor: Actor, call_id: str) -> Call:
        """A live call with an agent on it that ``actor`` may control: the agent on it,
        a supervisor, or a program with a control key."""
        call = self.on_line(actor, call_id)
        check_with_agent(call)
        return call

    @staticmethod
    def keys_path(call: Call) -> CallPeer:
        """Where keys sent to the caller go; ``NotAllowed`` with no audio path."""
        peer = call.caller_leg().peer
        if peer is None or call.state == "held":
            raise NotAllowed(f"call {call.id} is {call.state}: no audio path to send keys on")
        return peer

    @staticmethod
    def prompt_path(call: Call, *, voice: bool) -> CallPeer:
        """Where a prompt to the caller is played; ``NotAllowed`` without a voice
        installed or an audio path."""
        peer = call.caller_leg().peer
        if not voice:
            raise NotAllowed("no text-to-speech voice is installed (piper or espeak-ng)")
        if peer is None or call.state == "held":
            raise NotAllowed(f"call {call.id} is {call.state}: the caller cannot hear a prompt")
        return peer

    # -- on a call with an agent --------------------------------------------------

    @staticmethod
    def mute(call: Call, muted: bool) -> Steps[None]:
        """Mute or unmute the agent towards the caller; told once per change."""
        if call.agent_muted != muted:
            call.agent_muted = muted
            yield Emit(CallMuted(call_id=call.id, agent_id=call.agent_id or "", muted=muted))

    @staticmethod
    def hold(actor: Actor, call: Call) -> Steps[None]:
        """The caller hears a short prompt, then hold audio; the agent hears nothing."""
        if call.state == "held":
            return
        yield Transition(call, "hold", actor.username)
        yield BridgeVideo(call)
        yield Hush(call, everyone=True)  # nobody hears the other's last words twice
        yield HoldMusic(call, True)
        yield Announce(call, HOLD_PROMPT, ("held",))

    @staticmethod
    def resume(actor: Actor, call: Call) -> Steps[None]:
        if call.state == "bridged":
            return
        yield HoldMusic(call, False)
        yield Hush(call)
        yield Transition(call, "resume", actor.username)
        yield BridgeVideo(call)

    def transfer(
        self,
        actor: Actor,
        call: Call,
        *,
        queue: str | None,
        agent: str | None,
        target: UserRow | None,
        note: str | None,
    ) -> Steps[None]:
        """Hand the caller to ``queue`` or to the agent named ``agent`` (``target``: that
        name's user, looked up by the engine). The next agent is offered the call with
        everything so far; the caller never repeats themselves."""
        if agent is not None:
            if target is None or target.role != "agent":
                raise NotAllowed(f"there is no agent '{agent}'")
            if target.id == call.agent_id:
                raise NotAllowed("the call is already with that agent")
            if self.routing.presence_of(target.id) == "offline":
                raise NotAllowed(f"{agent} is not signed in")
        queue = queue or call.queue_name or self.routing.default_queue()
        if not self.routing.has_queue(queue):
            raise NotAllowed(f"there is no queue '{queue}'")
        leg = yield from self.agent_leaves(actor, call, note, note or "")
        if call.ended.is_set():  # the caller hung up meanwhile: nothing left to hand over
            raise NotAllowed(f"call {call.id} has ended")
        now = self.routing.clock()
        where = f"agent {agent}" if agent else f"queue {queue}"
        yield Transition(call, "transfer", f"transferred to {where}", {"agent_id": None})
        yield BridgeVideo(call)
        yield Emit(
            CallTransferred(
                call_id=call.id, from_agent=actor.username, to_queue=queue, to_agent=agent,
                note=note,
            )
        )  # fmt: skip
        prompt = transfer_prompt(queue, target.display_name if target else None)
        yield Announce(call, prompt, ("queued",))
        call.queue_name, call.queued_at, call.queue_position = queue, now, None
        yield UpdateCall(f"call {call.id} queue", call.id, {"queue": queue})
        if call.ended.is_set():  # hung up meanwhile: end_call closed the legs, left the queue
            return
        yield from self.routing.transfer(call, queue, target.id if target else None, now)
        if leg is not None:
            yield CloseLeg(call, leg)

    def transfer_out(
        self,
        actor: Actor,
        call: Call,
        peer: CallPeer,
        codec: str,
        number: str,
        note: str | None,
    ) -> Steps[None]:
        """Someone outside the contact center (``peer``, a number we called) answered a
        transfer: they take the agent's place in the bridge, transcribed on the agent's
        side; the agent goes to wrap-up."""
        old = yield from self.agent_leaves(actor, call, note, note or f"transferred to {number}")
        now = self.routing.clock()
        if call.state == "held":
            yield Transition(call, "resume", actor.username)
        leg = Leg(str(uuid.uuid4()), "agent", "sip", codec=codec)
        leg.peer = peer
        call.legs.append(leg)
        call.bridged_at = now
        call.escalation.observe_phase("agent", clock(call))  # a new person: a new clock
        yield Record(
            f"leg {leg.id}",
            LegRow(id=leg.id, call_id=call.id, role="agent", transport="sip", codec=codec,
                   user_id=None, created_at=utcnow()),
        )  # fmt: skip
        yield Emit(
            CallTransferred(
                call_id=call.id, from_agent=actor.username, to_queue="", to_agent=None,
                to_number=number, note=note,
            )
        )  # fmt: skip
        yield BridgeVideo(call)
        yield RunLeg(call, leg)
        if old is not None:
            yield CloseLeg(call, old)

    def agent_leaves(
        self, actor: Actor, call: Call, note: str | None, record: str
    ) -> Generator[Effect, None, Leg | None]:
        """The agent's leg leaves a call that goes on (a transfer, by ``actor``): the
        agent goes to wrap-up, ``record`` is kept as the hand-over note, and the caller
        stops hearing what was queued for them. The leg, to close once the call has
        moved on."""
        # before the first step is awaited: from here its end does not end the call
        leg, from_agent = call.agent_leg(), call.agent_id
        if leg is not None:
            leg.left = True
        yield SupervisorsLeave(call)  # first: nothing they say reaches the next one
        muted, call.agent_id, call.agent_muted = call.agent_muted, None, False
        call.agent_name = None  # whoever comes next is told by their own name
        if muted:  # their desk (and the console) must not go on showing them muted
            yield Emit(CallMuted(call_id=call.id, agent_id=from_agent or "", muted=False))
        yield from self.routing.hung_up(from_agent, call.bridged_at, call.id)
        call.transferred_by, call.transfer_note = actor.username, note
        # the agent has already left the call: the note must not fail the transfer
        yield Record(
            f"call {call.id} transfer note",
            NoteRow(call_id=call.id, author_id=actor.id, author=actor.username,
                    kind="transfer", text=record, created_at=utcnow()),
        )  # fmt: skip
        yield HoldMusic(call, False)
        yield Hush(call)
        return leg

    # -- on the line, in any state -------------------------------------------------

    @staticmethod
    def recording(actor: Actor, call: Call, on: bool) -> RecordingChanged | None:
        """Whether to start, pause or resume the call's recording: the change to make
        and tell (its ``at``: seconds of the caller's audio), or None if it is so
        already; ``NotAllowed`` to start or resume one that stopped by itself (the
        disk refused a write). The engine opens the recording's files."""
        caller = call.caller_leg().pipeline
        now = caller.seconds_in if caller is not None else 0.0
        if call.recording is None:
            if not on:
                raise NotAllowed(f"call {call.id} is not being recorded")
        elif on and call.recording.failed is not None:
            # its files broke (a full disk): nothing would be written, so a start or
            # resume answered as done would say "recording" of a call that is not
            raise NotAllowed(f"the recording stopped: {call.recording.failed}")
        elif call.recording.active == on:
            return None
        return RecordingChanged(call_id=call.id, recording=on, at=now, by=actor.username)

    # -- after the call, or about it -----------------------------------------------

    def wrap_up(
        self,
        user: UserRow,
        call_id: str,
        stored: StoredCall | None,
        disposition: str,
        notes: str,
        then: str,
    ) -> Steps[None]:
        """After the call (``stored``, as the engine read it): how it ended and what to
        remember, stored with the call; then the agent is ready for the next one (or
        goes away: ``then``, a presence event)."""
        if stored is None:
            raise UnknownCall(call_id)
        handled = any(leg.user_id == user.id for leg in stored.call.legs)
        if not handled and user.role == "agent":
            raise Forbidden(f"you did not take call {call_id}")
        live = self.calls.get(call_id)
        if live is not None and live.agent_id == user.id:
            raise NotAllowed("hang up or transfer the call before wrapping it up")
        now = utcnow()
        yield Save(
            NoteRow(call_id=call_id, author_id=user.id, author=user.username, kind="wrap_up",
                    text=notes, disposition=disposition, created_at=now)
        )  # fmt: skip
        yield SaveCall(call_id, {"disposition": disposition, "wrapped_up_at": now})
        yield Emit(
            CallWrappedUp(call_id=call_id, agent_id=user.id, disposition=disposition, notes=notes)
        )
        yield from self.routing.wrapped_up(user, call_id, then)

    def annotate(self, actor: Actor, call_id: str, text: str, *, known: bool) -> Steps[NoteRow]:
        """A note on a call, live or ended (``known``: the engine has it, live or
        stored), redacted, stored with it and published; the note."""
        if not known:
            raise UnknownCall(call_id)
        note = NoteRow(
            call_id=call_id, author_id=actor.id, author=actor.username, kind="note",
            text=self.redactor.redact(text).text, disposition=None, created_at=utcnow(),
        )  # fmt: skip
        yield Save(note)
        yield Emit(CallAnnotated(call_id=call_id, author=actor.username, text=note.text))
        return note
