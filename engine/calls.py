"""Calls and legs, the call state machine, and the manager that runs them.

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
    queued       end       -> ended
    bridged      end       -> ended        (either side hangs up)

``TRANSITIONS`` below is the only place these live; the API docs and tests read
it. Each caller leg runs a media ``LegPipeline``; its events enter one ordered
per-call queue whose consumer persists finals and emotion samples *before*
publishing them, so anything a client has seen is already on disk, and a crash
loses at most the utterance in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from engine.acd import Acd, AcdError, Offer, OfferExpired, PresenceChanged, load_queues
from engine.acd import Action as AcdAction
from engine.assist.facts import Fact, FactSheet, extract
from engine.assist.knowledge import KnowledgeBase
from engine.assist.redact import Redactor
from engine.assist.summary import summarize
from engine.config import Settings
from engine.escalation import CallEscalation, Decision, EmotionSample, Utterance, load_rules
from engine.events import (
    AgentPresenceChanged,
    AssistUpdated,
    CallEnded,
    CallOffered,
    CallStarted,
    CallStateChanged,
    EmotionUpdated,
    EscalationRaised,
    EventBase,
    EventBus,
    FactOut,
    OfferWithdrawn,
    QueueUpdated,
    SuggestionOut,
    TranscriptFinal,
    TranscriptPartial,
    WordTiming,
    utcnow,
)
from engine.metrics import Metrics
from engine.store.db import Store
from engine.store.models import (
    CallRow,
    EmotionRow,
    EscalationRow,
    LegRow,
    PresenceRow,
    UserRow,
    UtteranceRow,
)
from media import events as me
from media.asr import ModelChoice, RecognizerFactory, choose_model, create_factory
from media.audio import downmix_int16
from media.pipeline import LegPipeline
from media.tts import Speaker, default_speaker
from media.vad import VadSettings
from media.wavtrack import to_send_rate
from media.webrtc import WebRtcLeg, pump_audio

log = logging.getLogger(__name__)

TRANSITIONS: dict[tuple[str, str], str] = {
    ("new", "answered"): "connecting",
    ("connecting", "media"): "active",
    ("new", "end"): "ended",
    ("connecting", "end"): "ended",
    ("active", "end"): "ended",
    ("active", "queue"): "queued",
    ("queued", "end"): "ended",
    ("queued", "accept"): "bridged",
    ("bridged", "end"): "ended",
}
STATES = ("new", "connecting", "active", "queued", "bridged", "ended")
TEARDOWN_TIMEOUT = 10.0  # a stuck recognizer or disk must not keep a call open
# Partials beyond this backlog are dropped (finals and emotions never are): a stalled
# disk must not grow memory without bound.
MAX_EVENT_BACKLOG = 1000


def queue_announcement(position: int, wait: float | None) -> str:
    text = f"I am connecting you to a person. You are number {position} in line."
    if wait is None:
        return text + " All of our agents are busy right now. Please stay on the line."
    if wait < 60:
        return text + " Someone will be with you in less than a minute."
    return text + f" The expected wait is about {round(wait / 60)} minutes."


class InvalidTransition(RuntimeError):
    """Our own code asked for a transition the table does not allow (a local bug)."""


class Overloaded(RuntimeError):
    """No capacity for another call right now."""


class UnknownCall(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class SilenceCheck:
    """Queued once a second while a call is active, so silence rules are judged in
    order with the call's transcript."""

    now: float  # seconds of caller media so far


@dataclass
class Leg:
    id: str
    role: str
    transport: str
    pipeline: LegPipeline | None = None
    peer: WebRtcLeg | None = None


@dataclass
class Call:
    id: str
    channel: str
    language: str
    model: ModelChoice
    caller: str | None
    created_at: datetime = field(default_factory=utcnow)
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
    escalation_reason: str | None = None  # the first decision that called for a human
    queue_position: int | None = None
    queue_name: str | None = None
    queued_priority: int = 0  # the priority the ACD has for this call
    agent_id: str | None = None
    bridged_at: float = 0.0
    queued_at: float = 0.0  # time.monotonic()
    summary: str = ""
    mood: str | None = None
    facts: FactSheet = field(default_factory=FactSheet)
    new_facts: list[Fact] = field(default_factory=list)  # not yet in an assist.updated
    caller_said: list[str] = field(default_factory=list)  # redacted caller finals
    utterance_ids: dict[tuple[str, int], str] = field(default_factory=dict)

    def next_state(self, event: str) -> str:
        try:
            return TRANSITIONS[(self.state, event)]
        except KeyError:
            raise InvalidTransition(f"call {self.id}: no '{event}' from '{self.state}'") from None

    def other_peer(self, leg: Leg) -> WebRtcLeg | None:
        """The peer that hears ``leg`` (caller <-> agent), once bridged."""
        if self.state != "bridged":
            return None
        return next((x.peer for x in self.legs if x is not leg and x.peer is not None), None)

    def speaker(self, leg_id: str) -> str:
        return next((leg.role for leg in self.legs if leg.id == leg_id), "caller")


class CallManager:
    def __init__(self, settings: Settings, store: Store, bus: EventBus, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.metrics = metrics
        threads = settings.asr_threads or 2 * (os.cpu_count() or 2)
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="asr")
        self.calls: dict[str, Call] = {}
        self._factories: dict[str, RecognizerFactory | None] = {}
        self._choices: dict[str, ModelChoice] = {}
        # a broken rules file stops start-up with the reason, rather than a call later
        self.rules = load_rules(settings.escalation_rules)
        self.redactor = Redactor(settings.redact_patterns)
        self.knowledge = KnowledgeBase.from_folder(settings.knowledge_base)
        self.acd = Acd(load_queues(settings.queues), settings.offer_timeout)
        self.speaker: Speaker | None = None
        self._usernames: dict[str, str] = {}
        if settings.knowledge_base:
            log.info("knowledge base: %d articles", len(self.knowledge.articles))

    # -- models -----------------------------------------------------------------

    def model_choice(self, language: str) -> ModelChoice:
        if language not in self._choices:
            choice = choose_model(language, self.settings.model_dirs)
            self._choices[language] = choice
            self._factories[language] = create_factory(choice)
            (log.warning if choice.fallback or not choice.backend else log.info)(
                "speech for '%s': %s", language, choice.note
            )
        return self._choices[language]

    async def preload(self, languages: list[str]) -> None:
        loop = asyncio.get_running_loop()
        self.speaker = await loop.run_in_executor(self.executor, default_speaker)
        for lang in languages:
            self.model_choice(lang)
            factory = self._factories.get(lang)
            load = getattr(factory, "load", None)
            if load is not None:
                await loop.run_in_executor(self.executor, load)

    # -- lifecycle --------------------------------------------------------------

    async def create_webrtc_call(
        self, sdp: str, language: str | None, caller: str | None
    ) -> tuple[Call, str]:
        if len(self.calls) >= self.settings.max_concurrent_calls:
            self.metrics.rejected.labels("overloaded").inc()
            raise Overloaded(
                f"engine is at its limit of {self.settings.max_concurrent_calls} calls"
            )
        language = (language or self.settings.default_language).lower()
        choice = self.model_choice(language)
        call = Call(str(uuid.uuid4()), "webrtc", language, choice, caller)
        call.escalation = CallEscalation(self.rules)
        leg = Leg(str(uuid.uuid4()), "caller", "webrtc")
        leg.peer = WebRtcLeg(on_ended=lambda reason: self.end_call(call.id, reason))
        try:
            answer, _summary = await leg.peer.answer(sdp)
        except BaseException:
            await leg.peer.close()
            raise
        call.legs.append(leg)
        self.calls[call.id] = call
        self.metrics.active_calls.inc()
        self.metrics.calls.labels("webrtc").inc()
        await self.store.add(
            CallRow(
                id=call.id,
                channel=call.channel,
                state=call.state,
                language=language,
                recognizer=choice.backend,
                recognizer_note=choice.note,
                caller=caller,
                created_at=call.created_at,
            ),
            LegRow(
                id=leg.id,
                call_id=call.id,
                role=leg.role,
                transport=leg.transport,
                codec=None,
                created_at=call.created_at,
            ),
        )
        self._publish(
            CallStarted(
                call_id=call.id,
                channel=call.channel,
                language=language,
                recognizer=choice.backend,
                recognizer_note=choice.note,
            )
        )
        await self._transition(call, "answered")
        call.consumer = asyncio.create_task(self._consume(call), name=f"events-{call.id}")
        call.tasks.append(asyncio.create_task(self._run_leg(call, leg), name=f"leg-{leg.id}"))
        return call, answer

    async def _transition(
        self, call: Call, event: str, reason: str | None = None, **values: object
    ) -> None:
        previous, call.state = call.state, call.next_state(event)
        values["state"] = call.state
        if call.state == "active":
            call.answered_at = utcnow()
            values["answered_at"] = call.answered_at
        await self.store.update_call(call.id, **values)
        self._publish(
            CallStateChanged(call_id=call.id, state=call.state, previous=previous, reason=reason)
        )

    async def _run_leg(self, call: Call, leg: Leg) -> None:
        assert leg.peer is not None
        try:
            track = await asyncio.wait_for(leg.peer.audio_track, self.settings.media_timeout)
        except TimeoutError:
            await self.end_call(call.id, "no_media")
            return
        leg.pipeline = LegPipeline(
            leg.id,
            self._factories.get(call.language),
            self.executor,
            lambda ev: self._enqueue(call, ev),
            vad=VadSettings(aggressiveness=self.settings.vad_aggressiveness),
        )
        await leg.pipeline.start()
        if leg.role == "caller":
            call.tasks.append(asyncio.create_task(self._silence_clock(call, leg.pipeline)))
        frames = self.metrics.frames
        pipeline = leg.pipeline
        first = leg.role == "caller"

        def push(pcm: np.ndarray, rate: int, channels: int) -> int:
            nonlocal first
            if first:
                first = False
                # state change is async; schedule it without blocking the media path
                call.tasks.append(asyncio.create_task(self._transition(call, "media")))
            n = pipeline.push_pcm(pcm, rate, channels)
            frames.inc(n)
            # the bridge: what this leg says, the other party hears
            other = call.other_peer(leg)
            if other is not None:
                other.outbound.push_live(to_send_rate(downmix_int16(pcm, channels), rate))
            return n

        reason = await pump_audio(track, push, self.settings.media_timeout)
        if leg.role == "agent" and reason == "remote_closed":
            reason = "agent_hangup"
        await self.end_call(call.id, reason)

    async def accept(self, user: UserRow, call_id: str, sdp: str) -> str:
        """The ringing agent answers with their softphone's SDP offer: bridge them in."""
        call = self.get(call_id)
        self.acd.ringing(user.id, call_id)  # before any media work: AcdError if not
        leg = Leg(str(uuid.uuid4()), "agent", "webrtc")
        leg.peer = WebRtcLeg(on_ended=lambda reason: self.end_call(call.id, "agent_hangup"))
        try:
            answer, _ = await leg.peer.answer(sdp)
        except BaseException:
            await leg.peer.close()  # the offer keeps ringing: the agent may try again
            raise
        now = time.monotonic()
        try:
            # it may have stopped ringing while we set up media (timeout, caller left)
            actions = self.acd.accept(user.id, call_id, now)
        except AcdError:
            await leg.peer.close()
            raise
        call.legs.append(leg)
        call.agent_id, call.bridged_at = user.id, now
        await self.store.add(
            LegRow(id=leg.id, call_id=call.id, role="agent", transport="webrtc", codec=None,
                   created_at=utcnow())
        )  # fmt: skip
        for other in call.legs:
            if other.peer is not None and other is not leg:
                other.peer.outbound.clear()  # stop the queue announcement: a person is here
        await self._acd_actions(actions)
        await self._transition(call, "accept", user.username)
        await self._queue_changed()
        call.tasks.append(asyncio.create_task(self._run_leg(call, leg), name=f"leg-{leg.id}"))
        return answer

    async def _silence_clock(self, call: Call, pipeline: LegPipeline) -> None:
        while True:
            await asyncio.sleep(1.0)
            if call.state == "active":
                call.events.put_nowait(SilenceCheck(pipeline.seconds_in))

    def _enqueue(self, call: Call, ev: me.MediaEvent) -> None:
        if isinstance(ev, me.TranscriptPartial) and call.events.qsize() >= MAX_EVENT_BACKLOG:
            self.metrics.dropped_partials.inc()
            return
        call.events.put_nowait(ev)

    async def _consume(self, call: Call) -> None:
        """Persist, then publish, every media event of the call, in order."""
        while (ev := await call.events.get()) is not None:
            try:
                await self._handle_media_event(call, ev)
            except Exception:  # one bad event must not stop the call's stream
                log.exception("call %s: failed to handle %s", call.id, type(ev).__name__)

    async def _handle_media_event(self, call: Call, ev: me.MediaEvent | SilenceCheck) -> None:
        if isinstance(ev, SilenceCheck):
            await self._escalate(call, call.escalation.tick(ev.now))
        elif isinstance(ev, me.TranscriptPartial):
            self._publish(
                TranscriptPartial(
                    call_id=call.id,
                    leg_id=ev.leg_id,
                    speaker=call.speaker(ev.leg_id),
                    index=ev.index,
                    text=self.redactor.redact(ev.text, partial=True).text,
                    start=ev.start,
                )
            )
        elif isinstance(ev, me.TranscriptFinal):
            # nothing leaves this point unredacted: not the store, not the bus
            clean = self.redactor.redact(ev.text, ev.words)
            if clean.kinds:
                self.metrics.redactions.inc(len(clean.kinds))
            utt_id = str(uuid.uuid4())
            call.utterance_ids[(ev.leg_id, ev.index)] = utt_id
            final = TranscriptFinal(
                call_id=call.id,
                leg_id=ev.leg_id,
                speaker=call.speaker(ev.leg_id),
                utterance_id=utt_id,
                index=ev.index,
                text=clean.text,
                start=ev.start,
                end=ev.end,
                words=[
                    WordTiming(word=w.word, start=w.start, end=w.end, conf=w.conf)
                    for w in clean.words
                ],
                asr_latency=round(ev.asr_latency, 4),
            )
            await self.store.add(
                UtteranceRow(
                    id=utt_id,
                    seq=ev.index,
                    created_at=final.time,
                    words=[w.model_dump() for w in final.words],
                    **final.model_dump(
                        include={"call_id", "leg_id", "speaker", "start", "end", "text"}
                    ),
                )
            )
            self.metrics.asr_latency.observe(ev.asr_latency)
            self._publish(final)
            if final.speaker == "caller":
                call.caller_said.append(final.text)
                call.new_facts += call.facts.add(
                    extract(final.text, utt_id, final.end, self.settings.products)
                )
                await self._escalate(
                    call,
                    call.escalation.observe_utterance(
                        Utterance(utt_id, final.text, final.start, final.end)
                    ),
                )
        elif isinstance(ev, me.EmotionEstimated):
            est = ev.estimate
            utt_id = call.utterance_ids.get((ev.leg_id, ev.index), "")
            update = EmotionUpdated(
                call_id=call.id,
                leg_id=ev.leg_id,
                utterance_id=utt_id,
                at=ev.at,
                label=est.label,
                arousal=est.arousal,
                valence=est.valence,
                scores=est.scores,
                trend=est.trend,
                call_label=est.call_label,
                call_scores=est.call_scores,
            )
            await self.store.add(
                EmotionRow(
                    features=dataclasses.asdict(est.prosody),
                    **update.model_dump(exclude={"id", "time", "type", "call_scores"}),
                )
            )
            if call.speaker(ev.leg_id) == "caller":
                await self.store.update_call(call.id, emotion=est.call_label)
            self._publish(update)
            if call.speaker(ev.leg_id) == "caller":
                # assist first: an offer that rings an agent carries this summary and mood
                await self._assist(call, est.call_label, est.trend)
                sample = EmotionSample(utt_id, ev.at, est.label, est.trend, est.scores)
                reason = call.escalation_reason
                await self._escalate(call, call.escalation.observe_emotion(sample))
                if call.escalation_reason != reason:  # the summary now says why
                    await self._assist(call, est.call_label, est.trend)

    async def _assist(self, call: Call, mood: str, trend: float) -> None:
        """After each caller utterance: summary, facts so far, suggested answers."""
        summary = summarize(call.caller_said, call.facts.facts, mood, trend, call.escalation_reason)
        call.summary, call.mood = summary, mood
        facts = [FactOut(**dataclasses.asdict(f)) for f in call.facts.facts]
        new = [FactOut(**dataclasses.asdict(f)) for f in call.new_facts]
        call.new_facts = []
        # the last three utterances: what the caller is talking about *now*
        query = " ".join(call.caller_said[-3:])
        suggestions = [
            SuggestionOut(**dataclasses.asdict(s)) for s in self.knowledge.suggest(query)
        ]
        await self.store.update_call(
            call.id, summary=summary, facts=[f.model_dump() for f in facts]
        )
        self._publish(
            AssistUpdated(
                call_id=call.id,
                summary=summary,
                facts=facts,
                new_facts=new,
                suggestions=suggestions,
            )
        )

    async def _escalate(self, call: Call, decisions: list[Decision]) -> None:
        """Record each decision, then tell everyone; the first that routes to a human
        becomes the call's escalation reason."""
        for d in decisions:
            esc_id = str(uuid.uuid4())
            now = utcnow()
            values: dict[str, object] = {"priority": call.escalation.priority}
            route = d.routes_to_human and call.escalation_reason is None
            if route:
                call.escalation_reason = d.reason
                values |= {"escalated_at": now, "escalation_reason": d.reason}
            await self.store.add(
                EscalationRow(
                    id=esc_id,
                    call_id=call.id,
                    rule=d.rule_id,
                    reason=d.reason,
                    actions=d.actions,
                    priority=d.priority,
                    skill=d.skill,
                    at=d.at,
                    evidence=d.evidence,
                    created_at=now,
                )
            )
            await self.store.update_call(call.id, **values)
            self.metrics.escalations.labels(d.rule_id).inc()
            log.info("call %s escalated: %s", call.id, d.reason)
            self._publish(
                EscalationRaised(
                    call_id=call.id,
                    escalation_id=esc_id,
                    rule=d.rule_id,
                    reason=d.reason,
                    actions=d.actions,
                    priority=call.escalation.priority,
                    skill=d.skill,
                    at=d.at,
                    evidence=d.evidence,
                )
            )
            if route and call.state == "active":
                await self._enqueue_for_person(call, d.skill)
            elif call.id in self.acd.waiting:
                await self._sync_priority(call)

    async def _sync_priority(self, call: Call) -> None:
        """Bring the ACD up to the call's priority (rules may raise it while it waits)."""
        raised = call.escalation.priority - call.queued_priority
        if raised > 0:
            call.queued_priority = call.escalation.priority
            actions = self.acd.raise_priority(call.id, raised, time.monotonic())
            await self._queue_changed()
            await self._acd_actions(actions)

    def _queue_for(self, skill: str | None) -> str:
        if skill:
            for q in self.acd.queues.values():
                if skill in q.skills:
                    return q.name
        return next(iter(self.acd.queues))

    async def _enqueue_for_person(self, call: Call, skill: str | None) -> None:
        # the call's whole priority so far, including rules that fired before routing
        queue = self._queue_for(skill)
        # no queue for that skill: wait in the default queue for an agent who has it
        skills = {skill} if skill and skill not in self.acd.queues[queue].skills else set()
        call.queue_name, call.queued_at = queue, time.monotonic()
        call.queued_priority = call.escalation.priority
        actions = self.acd.enqueue(
            call.id, queue, call.queued_at, priority=call.queued_priority, skills=skills
        )
        await self._transition(call, "queue", queue)
        await self._queue_changed(announce=call)
        await self._acd_actions(actions)

    async def _queue_changed(self, announce: Call | None = None) -> None:
        """Tell every waiting caller where they stand; say it to ``announce``."""
        for position, waiting in enumerate(self.acd.line(), 1):
            call = self.calls.get(waiting.call_id)
            if call is None:
                continue
            wait = self.acd.expected_wait(call.id)
            if call is not announce and call.queue_position == position:
                continue
            call.queue_position = position
            text = None
            if call is announce:
                text = queue_announcement(position, wait)
                await self.say(call, text)
            self._publish(
                QueueUpdated(
                    call_id=call.id,
                    queue=waiting.queue,
                    position=position,
                    priority=waiting.priority,
                    expected_wait=None if wait is None else round(wait, 1),
                    announcement=text,
                )
            )

    # -- agents -------------------------------------------------------------------

    async def agent_presence(self, user: UserRow, event: str) -> str:
        """An agent asks to log in, go available or away, or log out."""
        self._usernames[user.id] = user.username
        self.acd.add_agent(user.id, set(user.skills))
        await self._acd_actions(self.acd.presence(user.id, event, time.monotonic()))
        return self.acd.agents[user.id].presence

    def presence_of(self, user_id: str) -> str:
        agent = self.acd.agents.get(user_id)
        return agent.presence if agent else "offline"

    async def decline(self, user_id: str, call_id: str) -> None:
        actions = self.acd.decline(user_id, call_id, time.monotonic())
        self._publish(OfferWithdrawn(call_id=call_id, agent_id=user_id, reason="declined"))
        await self._acd_actions(actions)

    async def _acd_actions(self, actions: list[AcdAction]) -> None:
        for a in actions:
            if isinstance(a, PresenceChanged):
                await self.store.add(
                    PresenceRow(
                        user_id=a.agent_id, presence=a.presence, previous=a.previous, at=utcnow()
                    )
                )
                self._publish(
                    AgentPresenceChanged(
                        agent_id=a.agent_id,
                        username=self._usernames.get(a.agent_id, ""),
                        presence=a.presence,
                        previous=a.previous,
                    )
                )
            elif isinstance(a, Offer):
                self._publish(self._offer(a))
            elif isinstance(a, OfferExpired):
                self._publish(
                    OfferWithdrawn(call_id=a.call_id, agent_id=a.agent_id, reason="no_answer")
                )
            else:  # MaxWaitReached: callbacks instead of waiting come with the agent softphone
                log.info("call %s has waited the queue's maximum", a.call_id)

    def _offer(self, offer: Offer) -> CallOffered:
        call = self.calls[offer.call_id]
        now = time.monotonic()
        return CallOffered(
            call_id=call.id,
            agent_id=offer.agent_id,
            expires_in=round(offer.expires_at - now, 1),
            channel=call.channel,
            caller=call.caller,
            waited=round(now - call.queued_at, 1),
            queue=call.queue_name or "",
            escalation_reason=call.escalation_reason,
            emotion=call.mood,
            summary=call.summary,
        )

    async def run_acd_timers(self) -> None:
        """Offer timeouts and maximum waits: wake when the ACD's next timer is due."""
        while True:
            due = self.acd.next_timer()
            now = time.monotonic()
            await asyncio.sleep(1.0 if due is None else min(1.0, max(0.0, due - now)))
            try:
                await self._acd_actions(self.acd.tick(time.monotonic()))
            except Exception:  # a failing store must not stop the timers of every call
                log.exception("ACD timer step failed")

    async def say(self, call: Call, text: str) -> None:
        """Speak to the caller (queued behind anything already playing)."""
        peer = next((leg.peer for leg in call.legs if leg.peer is not None), None)
        if self.speaker is None or peer is None:
            return
        loop = asyncio.get_running_loop()
        pcm, rate = await loop.run_in_executor(self.executor, self.speaker.speak, text)
        peer.outbound.play(pcm, rate)

    def _publish(self, event: EventBase) -> None:
        self.bus.publish(event)

    def get(self, call_id: str) -> Call:
        try:
            return self.calls[call_id]
        except KeyError:
            raise UnknownCall(call_id) from None

    async def end_call(self, call_id: str, reason: str) -> None:
        """Idempotent teardown that finishes even when a part of the call is stuck."""
        call = self.calls.get(call_id)
        if call is None or call.ended.is_set() or call.state == "ended":
            return
        call.ended.set()
        if call.agent_id is not None and call.agent_id in self.acd.agents:
            handle = time.monotonic() - call.bridged_at
            await self._acd_actions(self.acd.hangup(call.agent_id, time.monotonic(), handle))
        if (waiting := self.acd.waiting.get(call.id)) is not None:
            if waiting.offered_to is not None:
                self._publish(
                    OfferWithdrawn(
                        call_id=call.id, agent_id=waiting.offered_to, reason="caller_left"
                    )
                )
            await self._acd_actions(self.acd.remove(call.id, time.monotonic()))
            await self._queue_changed()
        current = asyncio.current_task()
        for leg in call.legs:
            if leg.pipeline is not None:
                try:
                    await asyncio.wait_for(leg.pipeline.close(), TEARDOWN_TIMEOUT)
                except TimeoutError:
                    log.warning("call %s: recognizer did not finish in time", call_id)
                    leg.pipeline.cancel()
                self.metrics.dropped_chunks.inc(leg.pipeline.dropped_chunks)
        call.events.put_nowait(None)
        consumer = call.consumer
        if consumer is not None and consumer is not current:
            try:
                await asyncio.wait_for(asyncio.shield(consumer), TEARDOWN_TIMEOUT)
            except TimeoutError:
                log.warning("call %s: event consumer stuck, cancelling", call_id)
                consumer.cancel()
        for task in call.tasks:
            if task is not current and not task.done():
                task.cancel()
        now = utcnow()
        duration = (now - call.created_at).total_seconds()
        await self._transition(call, "end", reason, ended_at=now, end_reason=reason)
        for leg in call.legs:
            await self.store.end_leg(leg.id, now)
        self._publish(CallEnded(call_id=call.id, reason=reason, duration=round(duration, 3)))
        self.metrics.active_calls.dec()
        self.metrics.ended.labels(reason).inc()
        self.calls.pop(call.id, None)
        for leg in call.legs:
            if leg.peer is not None:
                with contextlib.suppress(Exception):
                    await leg.peer.close()
        log.info("call %s ended: %s after %.1f s", call.id, reason, duration)

    async def shutdown(self) -> None:
        await asyncio.gather(
            *(self.end_call(cid, "engine_shutdown") for cid in list(self.calls)),
            return_exceptions=True,
        )
        self.executor.shutdown(wait=False, cancel_futures=True)
