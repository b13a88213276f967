"""Calls and legs as records, and the call state machine.

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

``TRANSITIONS`` is the only place these live; the API docs and tests read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from engine.assist.facts import Fact, FactSheet
from engine.escalation import CallEscalation
from engine.recording import CallRecording
from engine.signals import Phase
from media import events as me
from media.asr import ModelChoice
from media.audio import PcmFrame
from media.peer import CallPeer
from media.pipeline import LegPipeline

TRANSITIONS: dict[tuple[str, str], str] = {
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
STATES = ("new", "connecting", "active", "queued", "bridged", "held", "ended")
WITH_AGENT = frozenset({"bridged", "held"})
# who has the caller in each state, for the silence rules (engine.signals): the bot
# while active, the agent while bridged; in any other state (queued, held) nobody
PHASES: dict[str, Phase] = {"active": "bot", "bridged": "agent"}


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


class InvalidTransition(RuntimeError):
    """Our own code asked for a transition the table does not allow (a local bug)."""


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


class UnknownCall(LookupError):
    pass


class NotAllowed(RuntimeError):
    """The request is understood but not possible now (the call's state, the target's)."""


class Forbidden(PermissionError):
    """Not this person's call to control."""


@dataclass(frozen=True, slots=True)
class SilenceCheck:
    """Queued once a second while the bot or an agent talks with the caller (active,
    bridged), so silence rules are judged in order with the call's transcript."""

    now: float  # seconds of caller media so far


@dataclass
class Leg:
    id: str
    role: str
    transport: str
    pipeline: LegPipeline | None = None
    peer: CallPeer | None = None
    user_id: str | None = None  # the agent, for agent legs
    left: bool = False  # transferred away: its end no longer ends the call
    offset: float = 0.0  # seconds between the caller's first audio and this leg's
    codec: str | None = None  # a SIP leg's audio codec (PCMU, PCMA, G722); None for WebRTC


@dataclass
class Call:
    id: str
    channel: str
    language: str
    model: ModelChoice
    caller: str | None
    created_at: datetime
    state: str = "new"
    legs: list[Leg] = field(default_factory=list)
    escalation: CallEscalation = field(default_factory=lambda: CallEscalation([]))
    events: asyncio.Queue[me.MediaEvent | SilenceCheck | None] = field(
        default_factory=asyncio.Queue
    )
    consumer: asyncio.Task[None] | None = None  # persists + publishes media events
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    answered_at: datetime | None = None
    media_t0: float | None = None  # time.monotonic() of the caller's first audio
    escalation_reason: str | None = None  # the first decision that called for a human
    queue_position: int | None = None
    queue_name: str | None = None
    queued_priority: int = 0  # the priority the ACD has for this call
    agent_id: str | None = None
    agent_muted: bool = False
    bridged_at: float = 0.0
    queued_at: float = 0.0  # time.monotonic()
    previous_calls: int = 0  # earlier calls from the same caller identity
    transferred_by: str | None = None  # username of the agent who transferred it last
    transfer_note: str | None = None
    summary: str = ""
    topic: str | None = None  # the skill chosen in the phone menu (press 1 for billing...)
    mood: str | None = None
    trend: float = 0.0
    facts: FactSheet = field(default_factory=FactSheet)
    new_facts: list[Fact] = field(default_factory=list)  # not yet in an assist.updated
    caller_said: list[str] = field(default_factory=list)  # redacted caller finals
    utterance_ids: dict[tuple[str, int], str] = field(default_factory=dict)
    # audio forks listening to this call: each gets (speaker role, 20 ms 16 kHz frame)
    forks: list[Callable[[str, PcmFrame], None]] = field(default_factory=list)
    recording: CallRecording | None = None

    def next_state(self, event: str) -> str:
        try:
            return TRANSITIONS[(self.state, event)]
        except KeyError:
            raise InvalidTransition(f"call {self.id}: no '{event}' from '{self.state}'") from None

    def other_peer(self, leg: Leg) -> CallPeer | None:
        """The peer that hears ``leg`` (caller <-> agent) while they talk; on hold,
        nobody."""
        if self.state != "bridged" or leg.left or (leg.role == "agent" and self.agent_muted):
            return None
        return next(
            (x.peer for x in self.legs if x is not leg and not x.left and x.peer is not None),
            None,
        )

    def caller_leg(self) -> Leg:
        return self.legs[0]

    def agent_leg(self) -> Leg | None:
        return next((x for x in self.legs if x.role == "agent" and not x.left), None)

    def leg(self, leg_id: str) -> Leg | None:
        return next((x for x in self.legs if x.id == leg_id), None)

    def speaker(self, leg_id: str) -> str:
        leg = self.leg(leg_id)
        return leg.role if leg else "caller"
