"""The call record and the call state machine: plain data, no IO, no live handles.

Theory of operation
-------------------
A call is created when a caller's offer arrives and lives through:

    state        event     -> next state
    new          answered  -> connecting   (our SDP answer is out)
    connecting   media     -> active       (the caller's audio reached us)
    new          end       -> ended
    connecting   end       -> ended        (no media in time, ICE failed, hang-up)
    active       end       -> ended        (hang-up, caller vanished, shutdown)
    active       queue     -> queued       (escalated: waiting for a person)
    queued       accept    -> bridged      (an agent answered; caller and agent hear each other)
    queued       end       -> ended        (hang-up, or the caller chose a callback)
    bridged      hold      -> held         (the caller hears hold audio, the agent nothing)
    held         resume    -> bridged
    bridged      transfer  -> queued       (to a queue or one agent; the agent leg leaves)
    held         transfer  -> queued
    bridged      end       -> ended        (either side hangs up)
    held         end       -> ended

``TRANSITIONS`` is the only place these live; the API docs and tests read it, and so
do the desk-control guards below it (who may act on a call, in which states).

The record
----------
``CallRecord`` and ``LegRecord`` are what a call *is*, as plain data: what another node
needs to route it, show it, or take over its desk controls, and what could be kept in
Redis. ``to_json``/``from_json`` carry it; ``record()`` is a deep, handle-free copy.
The node that answered the call runs it as ``engine.livecall.Call``, a subclass that
adds what cannot leave the node (tasks, queues, peers, pipelines, the rules engine).
tests/test_callstate.py fails if a record type gains a field that is not plain data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from typing import Literal, get_args

from pydantic import TypeAdapter

from engine.assist.facts import FactSheet
from engine.signals import Phase
from media.asr.models import ModelChoice

CallState = Literal["new", "connecting", "active", "queued", "bridged", "held", "ended"]
LegRole = Literal["caller", "agent"]

TRANSITIONS: dict[tuple[CallState, str], CallState] = {
    ("new", "answered"): "connecting",
    ("connecting", "media"): "active",
    ("new", "end"): "ended",
    ("connecting", "end"): "ended",
    ("active", "end"): "ended",
    ("active", "queue"): "queued",
    ("connecting", "queue"): "queued",  # a callback rings its agent as soon as it is answered
    ("queued", "end"): "ended",
    ("queued", "accept"): "bridged",
    ("bridged", "hold"): "held",
    ("held", "resume"): "bridged",
    ("bridged", "transfer"): "queued",
    ("held", "transfer"): "queued",
    ("bridged", "end"): "ended",
    ("held", "end"): "ended",
}
STATES: tuple[CallState, ...] = get_args(CallState)
# the states in which an agent is on the call: the only ones the desk controls act on
# (hold, resume, mute, transfer); see ``check_with_agent``
WITH_AGENT: frozenset[CallState] = frozenset({"bridged", "held"})
# who has the caller in each state, for the silence rules (engine.signals): the bot
# while active, the agent while bridged; in any other state (queued, held) nobody
PHASES: dict[str, Phase] = {"active": "bot", "bridged": "agent"}


class InvalidTransition(RuntimeError):
    """Our own code asked for a transition the table does not allow (a local bug)."""


class UnknownCall(LookupError):
    pass


class NotAllowed(RuntimeError):
    """The request is understood but not possible now (the call's state, the target's)."""


class Forbidden(PermissionError):
    """Not this person's call to control."""


def next_state(call_id: str, state: CallState, event: str) -> CallState:
    """The state ``event`` takes a call in ``state`` to; ``InvalidTransition`` if the
    table has no such move (our bug, not the caller's)."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"call {call_id}: no '{event}' from '{state}'") from None


# -- desk-control guards: pure reads of the record, so any node can judge a request ----


def check_on_line(call: CallRecord, user_id: str, role: str) -> None:
    """An agent acts only on the call they are on; supervisors and programs with a
    control key act on any."""
    if role == "agent" and call.agent_id != user_id:
        raise Forbidden(f"call {call.id} is not on your line")


def check_with_agent(call: CallRecord) -> None:
    """Hold, resume, mute and transfer need an agent on the call (bridged or held)."""
    if call.state not in WITH_AGENT:
        raise NotAllowed(f"call {call.id} is {call.state}, not with an agent")


def check_voice(call: CallRecord, what: str) -> None:
    """A chat has no media: found in review, a desk phone picked up bridged a voice
    leg into one, and hold, recording and a transfer to a number took it too."""
    if call.channel == "chat":
        raise NotAllowed(f"a chat cannot be {what}")


# -- the record -----------------------------------------------------------------------


@dataclass
class LegRecord:
    """One party's connection to a call: the caller, an agent, or a number a call was
    transferred out to (an agent leg with no ``user_id``)."""

    id: str
    role: LegRole
    transport: str  # "webrtc" or "sip"
    # the rest by name only: the live subclass adds fields, and a positional argument
    # past here would land in a different field on each side of the split
    _: KW_ONLY
    user_id: str | None = None  # the agent, for agent legs
    left: bool = False  # transferred away: its end no longer ends the call
    # seconds between the caller's first audio and this leg's: a duration, not an
    # instant, so it means the same on any node (it puts every speaker on one clock)
    offset: float = 0.0
    codec: str | None = None  # a SIP leg's audio codec (PCMU, PCMA, G722); None for WebRTC


@dataclass
class CallRecord:
    """A call as plain data. Times are wall-clock (UTC); nothing here is tied to the
    process that runs the call.

    In the record, though one might doubt it:

    - ``model``: which recognizer transcribes the call, chosen by the node that
      answered it (its ``path`` and ``looked_in`` are that node's folders: shown, never
      opened elsewhere). Plain frozen data.
    - ``priority``: what the escalation rules' decisions have raised the call's
      priority to, copied as each is stored (the rules engine that counts it stays on
      the live side); ``queued_priority`` is the priority the ACD routes it with, which
      also carries a callback's own priority.
    - ``facts``: a ``FactSheet`` is nothing but its list of frozen facts (what was seen
      is read off the list), so it travels as that list.
    - ``caller_said``: the caller's redacted finals, which the summary and a new agent
      read; never raw text.

    Left on the live side (``engine.livecall.Call``), with why:

    - ``queued_at``, ``bridged_at``, ``media_t0``: ``time.monotonic()`` readings, which
      mean nothing on another node; the ACD and the handle-time sums read them. They
      become wall-clock when routing moves off the node (issue 14, later steps).
    - ``escalation``: the rules engine (a compiled phrase index, streaks and clocks on
      the call's media time); it judges the media this node receives, so it stays with
      the media. Its outcome is here: ``escalation_reason``, ``priority``.
    - ``new_facts`` (facts not yet sent in an ``assist.updated``) and ``utterance_ids``
      (the recognizer's per-leg index -> utterance id): bookkeeping of the analysis
      that runs beside the media.
    - ``events``, ``consumer``, ``tasks``, ``ended``, ``forks``, ``recording``, and the
      legs' ``pipeline`` and ``peer``: live handles.
    - ``bot`` and ``bot_turn``: the virtual agent's dialog with the caller. It talks
      over this node's media, as the rules engine judges it; what it learnt reaches the
      record as the call's ``intent`` and ``facts`` when it hands the caller on.
    """

    id: str
    channel: str  # "webrtc" or "sip"
    language: str
    model: ModelChoice
    caller: str | None
    created_at: datetime
    _: KW_ONLY  # the rest by name only (see LegRecord)
    state: CallState = "new"
    legs: Sequence[LegRecord] = field(default_factory=list)
    answered_at: datetime | None = None
    escalation_reason: str | None = None  # the first decision that called for a human
    priority: int = 0  # the rules' priority, as stored with the call (see above)
    queue_name: str | None = None
    queue_position: int | None = None
    queued_priority: int = 0  # the priority the ACD has for this call
    agent_id: str | None = None
    # the name the caller is told for that agent (their display name; None: none set,
    # "one of our team"), told again with each return to "bridged"
    agent_name: str | None = None
    agent_muted: bool = False
    previous_calls: int = 0  # earlier calls from the same caller identity
    transferred_by: str | None = None  # username of the agent who transferred it last
    transfer_note: str | None = None
    summary: str = ""
    topic: str | None = None  # the skill chosen in the phone menu (press 1 for billing...)
    intent: str | None = None  # what the caller asked the virtual agent for (not a skill)
    customer_id: str | None = None  # their customer record (engine/customers.py), if known
    verified_by: str | None = None  # how they proved who they are (pin, app_token); None: not
    # the STIR/SHAKEN attestation of the caller's number (A, B, C), as the carrier signed
    # it; shown, not checked (engine/stirshaken.py)
    attestation: str | None = None
    upgraded_from: str | None = None  # the chat this call continues (channel "chat")
    mood: str | None = None
    trend: float = 0.0
    facts: FactSheet = field(default_factory=FactSheet)
    caller_said: list[str] = field(default_factory=list)  # redacted caller finals

    def next_state(self, event: str) -> CallState:
        return next_state(self.id, self.state, event)

    def to_json(self) -> str:
        """The record as JSON; a live call gives its record's fields only."""
        return _RECORD.dump_json(self).decode()

    @staticmethod
    def from_json(text: str | bytes) -> CallRecord:
        """A record from ``to_json``; pydantic's ``ValidationError`` if it is not one (a
        state the table does not know, a field of the wrong type)."""
        return _RECORD.validate_json(text)

    def record(self) -> CallRecord:
        """This call's record alone: a deep copy as plain data, whatever the live side
        holds (a live call's legs come back as ``LegRecord``)."""
        return _RECORD.validate_python(_RECORD.dump_python(self))


# validates what it reads and writes each field by its declared type: a live call's
# extra fields, and its legs' handles, are never written
_RECORD: TypeAdapter[CallRecord] = TypeAdapter(CallRecord)


# -- what callers hear ---------------------------------------------------------------


def queue_announcement(position: int, wait: float | None) -> str:
    text = f"I am connecting you to a person. You are number {position} in line."
    if wait is None:
        return text + " All of our agents are busy right now. Please stay on the line."
    if wait < 60:
        return text + " Someone will be with you in less than a minute."
    return text + f" The expected wait is about {round(wait / 60)} minutes."


HOLD_PROMPT = "Please hold for a moment. I will be right back with you."
CALLBACK_PROMPT = "Thank you. We have your request, and an agent will call you back."
MAX_WAIT_PROMPT = (
    "Thank you for waiting. If you prefer, you can ask for a call back on your screen, "
    "and you will not lose your place."
)


def common_prompts() -> list[str]:
    """What callers hear most often, worth synthesising before anyone calls."""
    lines = [queue_announcement(n, w) for n in (1, 2, 3) for w in (None, 0.0)]
    return [*lines, HOLD_PROMPT, CALLBACK_PROMPT, MAX_WAIT_PROMPT]


def transfer_prompt(queue: str | None, agent: str | None) -> str:
    who = f"my colleague {agent}" if agent else f"our {queue} team" if queue else "a colleague"
    return f"I am transferring you to {who}. They will see everything we talked about."


# -- admission ------------------------------------------------------------------------

# how soon to ask again when the call store failed (a full disk, a database that does not
# answer): HTTP 503 and SIP 503 both say it in Retry-After
STORAGE_RETRY_AFTER = 2


class Overloaded(RuntimeError):
    """No capacity for another call right now (the message says why); ask again in
    ``retry_after`` seconds (HTTP and SIP 503 carry it as Retry-After)."""

    def __init__(self, reason: str, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Throttled(RuntimeError):
    """Too much from one client right now (the message says what); ask again in
    ``retry_after`` seconds (HTTP 429 with Retry-After)."""

    def __init__(self, reason: str, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


# -- the call's own events -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SilenceCheck:
    """Queued once a second while the bot or an agent talks with the caller (active,
    bridged), so silence rules are judged in order with the call's transcript."""

    now: float  # seconds of caller media so far
    # per side, the latest voice any of its legs' VAD heard, on the call's clock: speech
    # not transcribed yet (a lagging recognizer) is not silence
    voiced: tuple[tuple[str, float], ...] = ()
    # the virtual agent's words are still being played to the caller
    bot_speaking: bool = False
