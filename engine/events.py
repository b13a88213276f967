"""Typed events and the bus that carries them.

Events are nouns with a dotted ``type``. Every published event gets a
monotonically increasing ``id``, so consumers can order, dedupe and resume: from the
bus itself, or, with engines sharing a Redis stream (engine/redisstream.py), from that
stream as the event log appends it, one order for every engine. The bus keeps a bounded
ring of recent events for replay and hands events to local subscribers; with Redis, the
stream's reader feeds it every engine's events.

With a durable log attached (``store_first``, engine/eventlog.py), an event reaches
subscribers and the ring only once the log has stored it (``deliver``): an id a client
has seen never vanishes in a crash.

Subscribers get a bounded queue. A subscriber that falls that far behind is cut
off with ``lagged=True`` rather than silently losing events in the middle of
the stream; it reconnects and resumes from its last id.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(when: datetime) -> datetime:
    """Times are kept in UTC; one without a zone (SQLite hands those back, clients may
    send them) is taken as UTC."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


class EventBase(BaseModel):
    id: int = 0  # set by the bus
    time: datetime = Field(default_factory=utcnow)
    call_id: str | None = None  # None for events about people, not calls


class WordTiming(BaseModel):
    word: str
    start: float
    end: float
    conf: float = 1.0


class CallStarted(EventBase):
    type: Literal["call.started"] = "call.started"
    channel: str
    language: str
    recognizer: str | None
    recognizer_note: str


class CallStateChanged(EventBase):
    type: Literal["call.state_changed"] = "call.state_changed"
    state: str
    previous: str
    reason: str | None = None  # bridged: the agent's username (kept for older readers)
    agent_name: str | None = Field(
        None, description="bridged: the agent's display name, the one callers are told"
    )


# what a transcript event says of who heard it: a consult's words (the caller on hold)
# are the staff's, and never reach the caller's own stream (engine/api/streams.py)
CALLER_HEARD = (
    "whether the caller heard these words: false for what agents (or an outside number "
    "consulted) said while the caller was on hold during a consult, if any of it (more "
    "than 40 ms) was; such events never reach the caller's own stream"
)


class TranscriptPartial(EventBase):
    type: Literal["transcript.partial"] = "transcript.partial"
    leg_id: str
    speaker: str
    agent_id: str | None = Field(
        None, description="an agent's words: which agent (two are on a consult or conference)"
    )
    index: int
    text: str
    start: float
    caller_heard: bool = Field(True, description=CALLER_HEARD)


class TranscriptFinal(EventBase):
    type: Literal["transcript.final"] = "transcript.final"
    leg_id: str
    speaker: str
    agent_id: str | None = Field(
        None, description="an agent's words: which agent (two are on a consult or conference)"
    )
    utterance_id: str
    index: int
    text: str
    start: float
    end: float
    words: list[WordTiming]
    asr_latency: float = Field(description="seconds from the last voiced audio to this result")
    caller_heard: bool = Field(True, description=CALLER_HEARD)


class EmotionUpdated(EventBase):
    type: Literal["emotion.updated"] = "emotion.updated"
    leg_id: str
    speaker: str = "caller"
    utterance_id: str
    at: float
    label: str
    arousal: float
    valence: float
    scores: dict[str, float]
    trend: float
    call_label: str
    call_scores: dict[str, float]
    confidence: float = 0.0  # the label's calibrated probability
    evidence: list[str] = []  # the cues behind it, as a person reads them


class EscalationRaised(EventBase):
    type: Literal["escalation.raised"] = "escalation.raised"
    escalation_id: str
    rule: str
    reason: str
    actions: list[str]
    priority: int = Field(description="the call's priority after this escalation")
    skill: str | None
    at: float
    evidence: dict[str, Any]


class FactOut(BaseModel):
    kind: str
    value: str
    utterance_id: str
    at: float


class SuggestionOut(BaseModel):
    article_id: str
    title: str
    answer: str
    score: float


class AssistUpdated(EventBase):
    type: Literal["assist.updated"] = "assist.updated"
    summary: str
    facts: list[FactOut]
    new_facts: list[FactOut]
    suggestions: list[SuggestionOut]


class QueueUpdated(EventBase):
    type: Literal["queue.updated"] = "queue.updated"
    queue: str
    position: int
    priority: int = Field(description="the call's priority in line")
    expected_wait: float | None = Field(description="seconds; null when no agent is staffed")
    announcement: str | None = Field(description="what the caller was told, if anything")
    callback_offered: bool = Field(
        False, description="the caller has waited the queue's maximum: offer a callback"
    )


class AgentPresenceChanged(EventBase):
    type: Literal["agent.presence_changed"] = "agent.presence_changed"
    agent_id: str
    username: str
    presence: str
    previous: str
    # why, when the agent did not ask: "disconnected" (every desk of theirs went away)
    reason: str | None = None


class CallOffered(EventBase):
    """An agent's phone rings: everything they need to decide, before they answer."""

    type: Literal["call.offered"] = "call.offered"
    agent_id: str
    expires_in: float
    channel: str
    caller: str | None
    waited: float = Field(description="seconds since the call joined the queue")
    queue: str
    escalation_reason: str | None
    emotion: str | None
    summary: str
    previous_calls: int = Field(0, description="earlier calls from the same caller identity")
    transferred_by: str | None = Field(None, description="the agent who transferred the call")
    transfer_note: str | None = None
    intent: str | None = Field(None, description="what the caller asked the virtual agent for")
    customer_id: str | None = Field(None, description="the caller's customer record")
    verified_by: str | None = Field(
        None, description="how the caller proved who they are (pin, app_token...); None: not"
    )
    attestation: str | None = Field(
        None, description="the carrier's STIR/SHAKEN level for the caller's number (A, B, C)"
    )
    consult_from: str | None = Field(
        None, description="a consult: the agent on the call who asks you (engine/consult.py)"
    )


class OfferWithdrawn(EventBase):
    type: Literal["call.offer_withdrawn"] = "call.offer_withdrawn"
    agent_id: str
    reason: str  # declined, no_answer, caller_left, disconnected (the agent's desk went)


class CallMuted(EventBase):
    type: Literal["call.muted"] = "call.muted"
    agent_id: str
    muted: bool


class CallTransferred(EventBase):
    type: Literal["call.transferred"] = "call.transferred"
    from_agent: str
    to_queue: str
    to_agent: str | None
    note: str | None
    to_number: str | None = Field(None, description="a transfer outside, through the trunk")


class _Consult(EventBase):
    """A consult on a call (engine/consult.py): ``host`` has the call, ``guest`` was asked."""

    host: str
    guest: str = Field(description="the colleague's username, or the outside number dialled")


class ConsultStarted(_Consult):
    type: Literal["call.consult_started"] = "call.consult_started"
    outside: bool = Field(False, description="the guest is a number dialled through the trunk")


class ConsultAnswered(_Consult):
    type: Literal["call.consult_answered"] = "call.consult_answered"


class ConsultCompleted(_Consult):
    """The host handed the caller to the guest (a warm transfer)."""

    type: Literal["call.consult_completed"] = "call.consult_completed"


class ConsultConferenced(_Consult):
    type: Literal["call.consult_conferenced"] = "call.consult_conferenced"


class ConsultCancelled(_Consult):
    type: Literal["call.consult_cancelled"] = "call.consult_cancelled"
    reason: str = Field(
        description="cancelled, declined, no_answer or guest_left; a number dialled: also "
        "busy, failed, or host_left (the host's line dropped while it rang or talked: it is "
        "hung up and the caller goes back into line, or the call ends if that fails)"
    )


class ConferenceLeft(EventBase):
    """An agent left a three-way conference; ``remaining`` keeps the caller."""

    type: Literal["call.conference_left"] = "call.conference_left"
    agent: str
    remaining: str


class CallWrappedUp(EventBase):
    type: Literal["call.wrapped_up"] = "call.wrapped_up"
    agent_id: str
    disposition: str
    notes: str


class CallbackRequested(EventBase):
    type: Literal["callback.requested"] = "callback.requested"
    callback_id: str
    queue: str
    caller: str | None
    contact: str | None
    summary: str


class CallbackDone(EventBase):
    type: Literal["callback.done"] = "callback.done"
    callback_id: str
    by: str


class SupervisorAlert(EventBase):
    """An escalation rule asked for a supervisor's eyes on a call."""

    type: Literal["supervisor.alert"] = "supervisor.alert"
    escalation_id: str
    reason: str
    priority: int
    state: str


class AlertAcknowledged(EventBase):
    """A person took a supervisor alert in hand (engine/alerts.py). Not a call's event
    (``call_id`` is null; ``about`` is the call): a caller's own stream never shows it."""

    type: Literal["alert.acknowledged"] = "alert.acknowledged"
    alert_id: str
    about: str = Field(description="the call the alert is about")
    by: str
    acked_at: datetime


class AlertClosed(EventBase):
    """A supervisor alert is over: its call ended (engine/alerts.py). Not a call's event,
    as ``alert.acknowledged``."""

    type: Literal["alert.closed"] = "alert.closed"
    alert_id: str
    about: str = Field(description="the call the alert is about")
    reason: str


class DtmfReceived(EventBase):
    """A key the phone caller pressed; ``menu`` is the skill it chose, if any. While
    the virtual agent asks for a secret (a PIN), the key is not told: ``digit`` is
    ``"*"`` and ``masked`` true."""

    type: Literal["dtmf.received"] = "dtmf.received"
    digit: str
    at: float
    menu: str | None = None
    masked: bool = False


class CallVerified(EventBase):
    """The caller proved who they are: ``method`` is the factor (pin, dob, last4) or
    ``app_token`` (the business's app vouched for them)."""

    type: Literal["call.verified"] = "call.verified"
    customer_id: str
    method: str


class VerificationFailed(EventBase):
    """A wrong answer to the virtual agent's verification: never the answer, nor
    whether the number the caller gave has an account (the call's own caller sees its
    events: that would tell them)."""

    type: Literal["call.verification_failed"] = "call.verification_failed"
    attempt: int = Field(description="wrong answers in this call so far")


class CustomerLocked(EventBase):
    """A customer's record takes no more answers for now: too many wrong ones in a row
    (CCENGINE_VERIFY_MAX_FAILURES). Not a call's event (``call_id`` is null): a
    caller's own stream never shows it."""

    type: Literal["customer.locked"] = "customer.locked"
    customer_id: str


class BotSaid(EventBase):
    """The virtual agent said this to the caller (its side of the transcript)."""

    type: Literal["bot.said"] = "bot.said"
    utterance_id: str = Field(description="its line in the call's transcript (speaker bot)")
    text: str
    at: float = Field(description="seconds on the call's clock when it was decided")


class CallAnnotated(EventBase):
    """Someone (a person, or a program with a key) wrote a note on the call."""

    type: Literal["call.annotated"] = "call.annotated"
    author: str
    text: str


class RecordingChanged(EventBase):
    """Recording started, paused or resumed; ``at`` is on the call's clock. Also told,
    with ``recording`` false, ``by`` "engine" and a ``reason``, when the recording
    stopped by itself: the disk refused a write."""

    type: Literal["recording.changed"] = "recording.changed"
    recording: bool
    at: float
    by: str
    reason: str | None = Field(
        None,
        description="why the recording stopped by itself (a person's start, pause or "
        'resume has none): "disk_full: <error>" or "write_failed: <error>"; it cannot be '
        "started or resumed again on this call",
    )


class AsrFailed(EventBase):
    """A leg's recognizer was lost (its worker process died or hung): the utterance
    in progress was not transcribed. The call goes on and stays routable;
    ``recovered`` says a new recognizer hears the next utterance."""

    type: Literal["asr.failed"] = "asr.failed"
    leg_id: str
    speaker: str
    index: int
    reason: str
    recovered: bool


class _Monitor(EventBase):
    """A supervisor on a live call (engine/monitoring.py). ``call_id`` is null: a call's
    own stream is what its caller reads, and a caller is not told who listens; the call
    is ``monitored_call_id``."""

    monitored_call_id: str
    leg_id: str = Field(description="the supervisor's leg")
    supervisor_id: str
    supervisor: str = Field(description="their username")
    mode: Literal["listen", "whisper", "barge"]


class MonitorStarted(_Monitor):
    type: Literal["supervisor.monitor_started"] = "supervisor.monitor_started"


class MonitorModeChanged(_Monitor):
    type: Literal["supervisor.monitor_mode_changed"] = "supervisor.monitor_mode_changed"
    previous: Literal["listen", "whisper", "barge"]


class MonitorStopped(_Monitor):
    """``reason``: left, call_ended, transferred (the agent left the call), signed_out
    (signed out, a new password, removed or no longer a supervisor), remote_closed,
    ice_failed, media_timeout, no_media, error."""

    type: Literal["supervisor.monitor_stopped"] = "supervisor.monitor_stopped"
    reason: str


class CallEnded(EventBase):
    type: Literal["call.ended"] = "call.ended"
    reason: str
    duration: float


Event = Annotated[
    CallStarted
    | CallStateChanged
    | TranscriptPartial
    | TranscriptFinal
    | EmotionUpdated
    | EscalationRaised
    | AssistUpdated
    | QueueUpdated
    | AgentPresenceChanged
    | CallOffered
    | OfferWithdrawn
    | CallMuted
    | CallTransferred
    | ConsultStarted
    | ConsultAnswered
    | ConsultCompleted
    | ConsultConferenced
    | ConsultCancelled
    | ConferenceLeft
    | CallWrappedUp
    | CallbackRequested
    | CallbackDone
    | SupervisorAlert
    | AlertAcknowledged
    | AlertClosed
    | DtmfReceived
    | BotSaid
    | CallVerified
    | VerificationFailed
    | CustomerLocked
    | CallAnnotated
    | RecordingChanged
    | AsrFailed
    | MonitorStarted
    | MonitorModeChanged
    | MonitorStopped
    | CallEnded,
    Field(discriminator="type"),
]
event_adapter: TypeAdapter[Event] = TypeAdapter(Event)
EVENT_TYPES = [
    "call.started",
    "call.state_changed",
    "transcript.partial",
    "transcript.final",
    "emotion.updated",
    "escalation.raised",
    "assist.updated",
    "queue.updated",
    "agent.presence_changed",
    "call.offered",
    "call.offer_withdrawn",
    "call.muted",
    "call.transferred",
    "call.consult_started",
    "call.consult_answered",
    "call.consult_completed",
    "call.consult_conferenced",
    "call.consult_cancelled",
    "call.conference_left",
    "call.wrapped_up",
    "callback.requested",
    "callback.done",
    "supervisor.alert",
    "alert.acknowledged",
    "alert.closed",
    "dtmf.received",
    "bot.said",
    "call.verified",
    "call.verification_failed",
    "customer.locked",
    "call.annotated",
    "recording.changed",
    "asr.failed",
    "supervisor.monitor_started",
    "supervisor.monitor_mode_changed",
    "supervisor.monitor_stopped",
    "call.ended",
]

# Recent events kept in memory for replay; older ones come from the durable event log.
# Kept as the JSON a replay sends: a final with its word times is ~9 KB as pydantic
# objects and ~1 KB as JSON, so 4,000 events are ~2 MB, not the ~14 MB (and ~70 MB at the
# 20,000 it was) that filled for minutes of a soak and read as a leak
RING_SIZE = 4_000
SUBSCRIBER_QUEUE = 2_000


@dataclass(frozen=True, slots=True)
class Recent:
    """An event as the ring keeps it: its id, its call and its JSON."""

    id: int
    call_id: str | None
    body: str


class Subscription:
    def __init__(self, bus: EventBus, call_id: str | None) -> None:
        self._bus = bus
        self.call_id = call_id
        # one slot more than events may use: the end-of-stream marker always fits
        self.queue: asyncio.Queue[EventBase | None] = asyncio.Queue(SUBSCRIBER_QUEUE + 1)
        self.lagged = False

    def offer(self, event: EventBase) -> None:
        if self.call_id is not None and event.call_id != self.call_id:
            return
        if self.lagged:
            return
        if self.queue.qsize() < SUBSCRIBER_QUEUE:
            self.queue.put_nowait(event)
            return
        self.cut_off()

    def cut_off(self) -> None:
        """End the stream with ``lagged``: the client resumes from its last id."""
        if self.lagged:
            return
        self.lagged = True
        self._bus.lagged_subscribers += 1
        self.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[EventBase]:
        while (event := await self.queue.get()) is not None:
            yield event

    def close(self) -> None:
        self._bus._subs.discard(self)


class EventBus:
    def __init__(self, ring_size: int = RING_SIZE) -> None:
        self._ids = itertools.count(1)
        self._ring: collections.deque[Recent] = collections.deque(maxlen=ring_size)
        self._subs: set[Subscription] = set()
        self.lagged_subscribers = 0
        self.last_id = 0
        self.delivered_to = 0  # the newest id subscribers have been given
        # Takes each event as it is published and gives it back through ``deliver`` once
        # stored; None: subscribers get events at once (nothing durable to wait for).
        self.store_first: Callable[[EventBase], None] | None = None
        # False: events are numbered later, by the log shared with other engines
        # (engine/redisstream.py), as it appends them; ``publish`` leaves ``id`` at 0
        self.numbers_events = True
        # ids within the ring's reach that the ring lacks: a shared stream's readers gave
        # up on their engine's batch, which may yet be stored (replay then reads them
        # from the database). Only ids from the ring's oldest on are kept.
        self.skipped: set[int] = set()

    @property
    def ring_size(self) -> int:
        """How many recent events the ring keeps."""
        return self._ring.maxlen or 0

    @property
    def ring_bytes(self) -> int:
        """The JSON held in the ring of recent events (its length bounds it)."""
        return sum(len(e.body) for e in self._ring)

    def continue_from(self, first_id: int) -> None:
        """Number the next event ``first_id`` (ids from a durable log's reservation)."""
        if first_id <= self.last_id:
            raise ValueError(f"event ids must grow: {first_id} <= {self.last_id}")
        self._ids = itertools.count(first_id)
        self.last_id = self.delivered_to = first_id - 1

    def publish(self, event: EventBase) -> EventBase:
        """Numbers ``event`` (unless a shared log does: then its id is set once it is
        appended, before anyone is given it) and hands it on."""
        if self.numbers_events:
            event.id = self.last_id = next(self._ids)
        if self.store_first is not None:
            self.store_first(event)
        else:
            self.deliver(event)
        return event

    def deliver(self, event: EventBase, body: str | None = None) -> None:
        """To the ring and every subscriber: events come here in id order. ``body``: the
        event's JSON, if the caller has made it already."""
        self.delivered_to = event.id
        self._ring.append(Recent(event.id, event.call_id, body or event.model_dump_json()))
        for sub in list(self._subs):
            sub.offer(event)

    def restart_at(self, event_id: int) -> None:
        """Events before ``event_id`` were missed (a shared stream lost them): the ring
        starts again there, and subscribers are cut off to resume by id from the
        database, rather than go on with a hole in their stream."""
        self._ring.clear()
        self.delivered_to = event_id - 1
        for sub in list(self._subs):
            sub.cut_off()

    def skip(self, ids: Iterable[int]) -> None:
        """These ids will not come (their engine's batch was given up): a replay looks
        them up in the database, as they may have been stored after all."""
        self.skipped.update(ids)
        self._prune_skipped()

    def skipped_after(self, after: int) -> list[int]:
        """The skipped ids after ``after`` the ring would otherwise be trusted for."""
        self._prune_skipped()
        return sorted(i for i in self.skipped if i > after)

    def _prune_skipped(self) -> None:
        oldest = self.oldest_id  # what is older comes from the database anyway
        if any(i < oldest for i in self.skipped):
            self.skipped = {i for i in self.skipped if i >= oldest}

    def subscribe(self, call_id: str | None = None) -> Subscription:
        sub = Subscription(self, call_id)
        self._subs.add(sub)
        return sub

    def replay(self, call_id: str | None = None, after: int = 0) -> list[Recent]:
        """Events still in the ring, oldest first.

        Subscribe first, then replay, then skip ids already seen: nothing is missed.
        """
        return [e for e in self._ring if e.id > after and (call_id is None or e.call_id == call_id)]

    @property
    def oldest_id(self) -> int:
        return self._ring[0].id if self._ring else self.delivered_to + 1
