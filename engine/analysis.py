"""Analysis stages: what a call makes of each event its legs report.

Theory of operation
-------------------
Every media event of a call (partials, finals, emotion estimates, key presses,
recognizer failures, silence checks) runs through the same stages, in order:

    Redact    the leg's report becomes the call's event: redacted, on the call's clock,
              with its utterance id; nothing downstream ever sees the raw text
    Feel      a chat's typed line is followed by its emotion estimate, read from the
              line as told (redacted; a masked one has no words to read), as a voice
              leg's pipeline follows each final with one; the two go on side by side,
              so a chat's estimate is told before the virtual agent answers its line
    Persist   the event's rows (utterances, emotion samples, the caller's mood)
    Publish   the event on the bus: after Persist, so what a client saw is on disk
    Menu      a key press picks the call's topic from the phone menu
    Facts     a caller's final adds to what they said and the facts they gave
    BotTurn   the virtual agent, while it has the call, answers (engine/bot/stage.py)
    Assist    a caller's emotion estimate refreshes summary, facts and suggestions
    Escalate  the rules judge the event; each decision is stored, told, then routed
    Assist    again when Escalate gave the call its reason: the summary says why

A stage is a generator: ``handle(call, item)`` yields the item (or another) for the
next stage, and the effects it needs done: ``Write`` (a row, a change to the call),
``Emit`` (an event for the bus), ``Route`` (an escalation decision for the ACD),
``Say`` (a prompt to the caller), ``Act`` (the virtual agent asks the business's
system), ``HangUp``. Stages never do IO themselves. ``Analysis.run``
chains them lazily, so a stage resumes only once the effect it yielded has been
applied: a final is written before it is published, and the second decision of an
event is judged after the first was routed, as the call manager did inline before.
Tests apply the effects to lists (tests/test_analysis.py); the engine applies them
to its write spool, bus, ACD and voice (``CallManager._apply``).

Partials may be dropped before they get here (the call's queue, under backlog); an
event that does get here is never dropped by a stage it concerns.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine.assist.facts import extract
from engine.assist.knowledge import KnowledgeBase
from engine.assist.redact import Redactor
from engine.assist.summary import summarize
from engine.bot.dialog import (
    BOT_STATES,
    KEYED_STATES,
    AskBrain,
    CallAction,
    CheckIdentity,
    SendCode,
)
from engine.bot.events import BotInput
from engine.callstate import SilenceCheck
from engine.escalation import Decision, EmotionSample, Utterance
from engine.events import (
    AsrFailed,
    AssistUpdated,
    DtmfReceived,
    EmotionUpdated,
    EscalationRaised,
    EventBase,
    FactOut,
    SuggestionOut,
    SupervisorAlert,
    TranscriptFinal,
    TranscriptPartial,
    WordTiming,
    utcnow,
)
from engine.livecall import Call
from engine.metrics import Metrics
from engine.store.models import Base, EmotionRow, EscalationRow, UtteranceRow
from media import events as me
from media.emotion import EmotionEstimate, EmotionTracker

log = logging.getLogger(__name__)

# states in which the phone menu still chooses a topic (before a person has the call)
MENU_STATES = ("connecting", "active")
# what the transcript and events say of a caller's line while a secret is asked for:
# all of it, not just the digits, which a recognizer writes as "for", "won", "oh"...
SECRET = "[secret]"
# the evidence of an utterance told masked, in place of its words' cues
MASKED_WORDS = "words: not shown (said while a secret was asked for)"

CallEvent = TranscriptPartial | TranscriptFinal | EmotionUpdated | DtmfReceived | AsrFailed


# -- what flows between stages ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One media event on its way through the stages: as the leg reported it, and as
    the call tells it (set by Redact; None for a silence check)."""

    media: me.MediaEvent | SilenceCheck | BotInput
    event: CallEvent | None = None
    # a key the virtual agent took as (part of) an answer: no key rule judges it (the 0
    # of order 83016 is not "press 0 for a person")
    answered_bot: bool = False
    # the caller's words or key as they were, only while the virtual agent asks for a
    # secret (a PIN): ``event`` is masked, and only the agent's dialog reads this. Items
    # are never stored or told; their events are
    clear: str | None = field(default=None, repr=False)
    # the virtual agent is handing the caller to a person itself, once it has verified
    # them: a rule that would route the call for these same words ("a person, please")
    # is stored and told, and leaves the routing to the agent's hand-off
    bot_hands_off: bool = False


@dataclass(frozen=True, slots=True)
class Escalated:
    """``item`` gave the call its escalation reason (Escalate's word to the stages
    after it)."""

    item: Item


Flow = Item | Escalated


# -- what stages ask to be done -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """A write the call must not lose: ``row`` added, ``values`` set on the call, or
    both in one transaction."""

    what: str  # for the log, if storage fails and it waits in the spool
    row: Base | None = None
    values: Mapping[str, object] | None = None

    def __post_init__(self) -> None:
        if self.row is None and self.values is None:
            raise ValueError(f"{self.what}: a write of nothing")


@dataclass(frozen=True, slots=True)
class Emit:
    event: EventBase


@dataclass(frozen=True, slots=True)
class Route:
    """An escalation decision, stored and told; ``to_person``: it is the first that
    routes the call to a human (the ACD's part is the engine's, not a stage's)."""

    decision: Decision
    to_person: bool


@dataclass(frozen=True, slots=True)
class Say:
    text: str
    while_state: tuple[str, ...]
    # the virtual agent's turn it belongs to: a caller who barges in ends the turn, and
    # what was still to be said of it is not (``Call.bot_turn``); None: not the agent's
    turn: int | None = None


@dataclass(frozen=True, slots=True)
class Act:
    """The virtual agent asks the business's system (engine/bot/actions.py), or checks
    who the caller is (engine/customers.py); the answer comes back among the call's
    events (``ActionAnswered``, ``IdentityChecked``)."""

    action: CallAction | CheckIdentity | SendCode | AskBrain


@dataclass(frozen=True, slots=True)
class HangUp:
    """End the call once what is queued for the caller has been said."""

    reason: str


Effect = Write | Emit | Route | Say | Act | HangUp
Output = Flow | Effect


class Stage(Protocol):
    def handle(self, call: Call, item: Flow) -> Iterator[Output]: ...


class Analysis:
    """The stages of every call, run in order on each of its events."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)

    def run(self, call: Call, event: me.MediaEvent | SilenceCheck | BotInput) -> Iterator[Effect]:
        """The effects of ``event``, in order. Lazy: apply each before asking for the
        next, since the stages go on from the state the effect left."""
        flow: list[Flow] = [Item(event)]
        for stage in self.stages:
            passed: list[Flow] = []
            for item in flow:
                for out in stage.handle(call, item):
                    if isinstance(out, Item | Escalated):
                        passed.append(out)
                    else:
                        yield out
            flow = passed


# -- the call's clock and summary ---------------------------------------------------


def offset(call: Call, leg_id: str) -> float:
    """Leg time to call time: every speaker on one clock."""
    leg = call.leg(leg_id)
    return leg.offset if leg else 0.0


def clock(call: Call) -> float:
    """Now on the call's clock: seconds of the caller's media (what silence ticks
    carry); a chat, which has none, counts from its start."""
    pipeline = call.caller_leg().pipeline if call.legs else None
    if pipeline is not None:
        return pipeline.seconds_in
    if call.channel == "chat" and call.media_t0 is not None:
        # found in review: at 0.0 for every line, a chat's transcript came back out of
        # order and, after a PIN, every line stayed masked
        return time.monotonic() - call.media_t0
    return 0.0


def caller_heard(call: Call, leg_id: str, start: float, end: float) -> bool:
    """Whether the caller heard what ``leg_id`` said over ``[start, end]`` (the leg's
    own clock, as its recognizer reports): their own words, yes; an agent's, unless
    any of it was said while the caller was held for a consult (engine/unheard.py).
    A leg the call does not know is not the caller's: unheard (fail closed)."""
    leg = call.leg(leg_id)
    if leg is None:
        return False
    return leg.role == "caller" or leg.unheard.heard(start, end)


def _partial_end(call: Call, ev: me.TranscriptPartial) -> float:
    """Where a partial's words end on the leg's clock: the end of the audio the
    recognizer had heard for it. Not the leg's latest audio: a partial lagging behind
    a turn would be judged by what came after (a consult's words as the conference's).
    A partial that does not say is judged to the latest, which hides more."""
    if ev.end is not None:
        return max(ev.start, ev.end)
    leg = call.leg(ev.leg_id)
    pipeline = leg.pipeline if leg is not None else None
    return max(ev.start, pipeline.seconds_in) if pipeline is not None else ev.start


def summary_of(call: Call) -> str:
    """The running summary as of now: an offer made between a caller's words and
    their emotion estimate already carries those words and why it escalated."""
    return summarize(
        call.caller_said, call.facts.facts, call.mood, call.trend, call.escalation_reason
    )


# -- the stages ---------------------------------------------------------------------


class Redact:
    """What a leg reported, as the call tells it. Nothing leaves this stage
    unredacted: not to the store, not to the bus."""

    def __init__(self, redactor: Redactor, menu: Mapping[str, str], metrics: Metrics) -> None:
        self.redactor = redactor
        self.menu = menu  # key -> skill (the phone menu)
        self.metrics = metrics

    def handle(self, call: Call, item: Flow) -> Iterator[Output]:
        if not isinstance(item, Item):
            return
        ev = item.media
        # the virtual agent asks for a PIN, checks it, or just did: the caller's words
        # and keys are told masked, and the raw report is kept by this item only
        if isinstance(ev, SilenceCheck):
            yield item
        elif isinstance(ev, me.TranscriptPartial):
            partial = self._partial(call, ev)
            if partial.speaker == "caller" and secret(call, partial.start):
                partial = partial.model_copy(update={"text": SECRET})
                ev = dataclasses.replace(ev, text=SECRET)
            yield Item(ev, partial)
        elif isinstance(ev, me.TranscriptFinal):
            final = self._final(call, ev)
            if final.speaker == "caller" and secret(call, final.start):
                masked = final.model_copy(update={"text": SECRET, "words": []})
                raw = dataclasses.replace(ev, text=SECRET, words=[])
                call.masked.add((ev.leg_id, ev.index))
                yield Item(raw, masked, clear=ev.text)
            else:
                yield Item(ev, final)
        elif isinstance(ev, me.EmotionEstimated):
            yield Item(ev, self.emotion(call, ev))
        elif isinstance(ev, me.KeyPressed):
            if secret(call, ev.at):  # no menu either: the key answers the agent
                masked_key = DtmfReceived(call_id=call.id, digit="*", at=ev.at, masked=True)
                yield Item(dataclasses.replace(ev, digit="*"), masked_key, clear=ev.digit)
            else:
                # a key that answers the agent (the 1 of "yes") chose no menu skill
                bot = call.bot
                answers = bot is not None and call.state in BOT_STATES and bot.state in KEYED_STATES
                menu = None if answers else self.menu.get(ev.digit)
                yield Item(ev, DtmfReceived(call_id=call.id, digit=ev.digit, at=ev.at, menu=menu))
        elif isinstance(ev, BotInput):
            yield item  # the virtual agent's own inputs: nothing to redact
        elif isinstance(ev, me.RecognitionFailed):
            self.metrics.asr_failures.inc()
            failed = AsrFailed(
                call_id=call.id,
                leg_id=ev.leg_id,
                speaker=call.speaker(ev.leg_id),
                index=ev.index,
                reason=ev.reason,
                recovered=ev.recovered,
            )
            yield Item(ev, failed)
        # speech starts and leg ends are the leg's business, not the call's record

    def _partial(self, call: Call, ev: me.TranscriptPartial) -> TranscriptPartial:
        return TranscriptPartial(
            call_id=call.id,
            leg_id=ev.leg_id,
            speaker=call.speaker(ev.leg_id),
            agent_id=call.agent_of(ev.leg_id),
            index=ev.index,
            text=self.redactor.redact(ev.text, partial=True).text,
            start=round(ev.start + offset(call, ev.leg_id), 3),
            # a partial's words run to the end of the audio it was made of
            caller_heard=caller_heard(call, ev.leg_id, ev.start, _partial_end(call, ev)),
        )

    def _final(self, call: Call, ev: me.TranscriptFinal) -> TranscriptFinal:
        clean = self.redactor.redact(ev.text, ev.words)
        if clean.kinds:
            self.metrics.redactions.inc(len(clean.kinds))
        utt_id = str(uuid.uuid4())
        # the emotion estimate of this utterance comes later and names it by this id
        call.utterance_ids[(ev.leg_id, ev.index)] = utt_id
        off = offset(call, ev.leg_id)
        return TranscriptFinal(
            call_id=call.id,
            leg_id=ev.leg_id,
            speaker=call.speaker(ev.leg_id),
            agent_id=call.agent_of(ev.leg_id),
            utterance_id=utt_id,
            index=ev.index,
            text=clean.text,
            start=round(ev.start + off, 3),
            end=round(ev.end + off, 3),
            words=[
                WordTiming(
                    word=w.word,
                    start=round(w.start + off, 3),
                    end=round(w.end + off, 3),
                    conf=w.conf,
                )
                for w in clean.words
            ],
            asr_latency=round(ev.asr_latency, 4),
            caller_heard=caller_heard(call, ev.leg_id, ev.start, ev.end),
        )

    @staticmethod
    def emotion(call: Call, ev: me.EmotionEstimated) -> EmotionUpdated:
        """The call's event of a leg's emotion estimate (Feel's too)."""
        est = ev.estimate
        evidence = list(est.evidence)
        if (ev.leg_id, ev.index) in call.masked:
            call.masked.discard((ev.leg_id, ev.index))  # each estimate comes once
            # found in review: a voice leg judged the secret's words as heard, and its
            # evidence quoted their cues; the voice's part tells nothing that was said
            evidence = [e for e in evidence if not e.startswith("words")] + [MASKED_WORDS]
        return EmotionUpdated(
            call_id=call.id,
            leg_id=ev.leg_id,
            speaker=call.speaker(ev.leg_id),
            utterance_id=call.utterance_ids.get((ev.leg_id, ev.index), ""),
            at=round(ev.at + offset(call, ev.leg_id), 3),
            label=est.label,
            arousal=est.arousal,
            valence=est.valence,
            scores=est.scores,
            trend=est.trend,
            call_label=est.call_label,
            call_scores=est.call_scores,
            confidence=est.confidence,
            evidence=evidence,
        )


class Feel:
    """A chat's typed line, judged from its words alone (``EmotionTracker.update_words``)
    with the tracker of the leg that typed it: the estimate a voice leg's pipeline
    reports after each final (media/pipeline.py), made here because a chat has no
    pipeline. It comes after Redact, so it reads the line as stored and told: redacted,
    and nothing of a line masked while a secret was asked for. Agents' lines are judged
    too, as on a call; like theirs, their emotion is kept and shown, never a rule's."""

    def __init__(self) -> None:
        # the models and the words' lexicon are read now, once, not on some chat's first
        # line: stages do no IO
        EmotionTracker().update_words("read it all")

    def handle(self, call: Call, item: Flow) -> Iterator[Output]:
        yield item
        if call.channel != "chat" or not isinstance(item, Item):
            return
        final, media = item.event, item.media
        if not isinstance(final, TranscriptFinal) or not isinstance(media, me.TranscriptFinal):
            return
        leg = call.leg(media.leg_id)
        if leg is None:
            return
        if leg.emotion is None:
            leg.emotion = EmotionTracker()
        # a masked line's stored text is only the mask: read as a word, "secret" made it
        # a third upset, and with the next line an upset streak
        told = "" if item.clear is not None else final.text
        estimated = me.EmotionEstimated(
            media.leg_id, media.index, media.end, leg.emotion.update_words(told)
        )
        yield Item(estimated, Redact.emotion(call, estimated))


class Persist:
    """The call's record of what was said and felt; partials are never kept."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def handle(self, call: Call, item: Flow) -> Iterator[Output]:
        if isinstance(item, Item):
            ev, media = item.event, item.media
            if isinstance(ev, TranscriptFinal) and isinstance(media, me.TranscriptFinal):
                yield Write(f"call {call.id} utterance {ev.utterance_id}", _utterance_row(ev))
                if call.channel != "chat":  # a typed line: no recognizer to time
                    self.metrics.asr_latency.labels(media.end_rule).observe(media.asr_latency)
            elif isinstance(ev, EmotionUpdated) and isinstance(media, me.EmotionEstimated):
                row = _emotion_row(ev, media.estimate)
                yield Write(f"call {call.id} emotion {ev.utterance_id}", row)
                if ev.speaker == "caller":
                    mood = {"emotion": media.estimate.call_label}
                    yield Write(f"call {call.id} mood", values=mood)
        yield item


def secret(call: Call, at: float) -> bool:
    """Whether what the caller said or keyed at ``at`` (the call's clock) is masked:
    the virtual agent is asking for a secret or checking it, or it was when that began
    (engine/bot/stage.py sets ``secret_until``)."""
    return (call.bot is not None and call.bot.secret_pending) or at < call.secret_until


def _utterance_row(final: TranscriptFinal) -> UtteranceRow:
    return UtteranceRow(
        id=final.utterance_id,
        seq=final.index,
        created_at=final.time,
        words=[w.model_dump() for w in final.words],
        **final.model_dump(
            include={"call_id", "leg_id", "speaker", "start", "end", "text", "caller_heard"}
        ),
    )


def _emotion_row(update: EmotionUpdated, est: EmotionEstimate) -> EmotionRow:
    return EmotionRow(
        # confidence and evidence ride with the measurements: one JSON column, no
        # migration for what only readers of a call need
        features={
            # a typed line has no voice to measure
            **(dataclasses.asdict(est.prosody) if est.prosody is not None else {}),
            "confidence": est.confidence,
            "evidence": update.evidence,  # as told: a masked utterance's words left out
        },
        **update.model_dump(
            exclude={"id", "time", "type", "call_scores", "speaker", "confidence", "evidence"}
        ),
    )


class Publish:
    """The call's event on the bus, once Persist has kept it."""

    def handle(self, call: Call, item: Flow) -> Iterator[Output]:
        if isinstance(item, Item) and item.event is not None:
            yield Emit(item.event)
        yield item


class Menu:
    """A key of the phone menu chooses the call's topic, once, while the bot has it."""

    def handle(self, call: Call, item: Flow) -> Iterator[Output]:
        if isinstance(item, Item) and isinstance(item.event, DtmfReceived):
            skill = item.event.menu
            # a call the virtual agent answers has no key menu: its keys answer the agent
            menu = call.bot is None
            if menu and skill is not None and call.state in MENU_STATES and call.topic is None:
                call.topic = skill
                yield Write(f"call {call.id} topic", values={"topic": skill})
                yield Say(f"{skill.replace('_', ' ')}. How can I help?", MENU_STATES)
        yield item


class Facts:
    """What the caller said, and the facts in it (not yet shown: ``call.new_facts``)."""

    def __init__(self, products: Sequence[str]) -> None:
        self.products = list(products)

    def handle(self, call: Call, item: Flow) -> Iterator[Output]:
        if isinstance(item, Item) and isinstance(item.event, TranscriptFinal):
            final = item.event
            if final.speaker == "caller":
                call.caller_said.append(final.text)
                found = extract(final.text, final.utterance_id, final.end, self.products)
                call.new_facts += call.facts.add(found)
        yield item


class Assist:
    """After each caller emotion estimate (it closes their utterance): summary, facts
    so far, suggested answers. Assist runs before Escalate, so an offer that rings an
    agent carries this summary and mood; and once more after it when that estimate
    gave the call its escalation reason, so the summary says why. Also when the virtual
    agent handed the caller on for one of its own inputs (an action that failed): no
    estimate follows that, and the desk must show what it learnt."""

    def __init__(self, knowledge: Callable[[], KnowledgeBase]) -> None:
        self.knowledge = knowledge  # a callable: the knowledge base may change meanwhile

    def handle(self, call: Call, item: Flow) -> Iterator[Output]:
        ev = item.item.event if isinstance(item, Escalated) else item.event
        if isinstance(ev, EmotionUpdated) and ev.speaker == "caller":
            # a chat's typed lines too: Feel follows each with its estimate
            yield from self._update(call, ev.call_label, ev.trend)
        elif isinstance(item, Escalated) and isinstance(item.item.media, BotInput):
            yield from self._update(call, call.mood, call.trend)
        if isinstance(item, Item):
            yield item

    def _update(self, call: Call, mood: str | None, trend: float) -> Iterator[Output]:
        call.mood, call.trend = mood, trend
        summary = call.summary = summary_of(call)
        facts = [FactOut(**dataclasses.asdict(f)) for f in call.facts.facts]
        new = [FactOut(**dataclasses.asdict(f)) for f in call.new_facts]
        call.new_facts = []
        # the last three utterances: what the caller is talking about *now*
        query = " ".join(call.caller_said[-3:])
        found = self.knowledge().suggest(query)
        suggestions = [SuggestionOut(**dataclasses.asdict(s)) for s in found]
        values = {"summary": summary, "facts": [f.model_dump() for f in facts]}
        yield Write(f"call {call.id} summary", values=values)
        yield Emit(
            AssistUpdated(
                call_id=call.id,
                summary=summary,
                facts=facts,
                new_facts=new,
                suggestions=suggestions,
            )
        )


class Escalate:
    """The rules judge the event. Each decision is recorded, then told; the first that
    routes to a human becomes the call's escalation reason and is routed. The event
    goes no further: what follows sees only ``Escalated``."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def handle(self, call: Call, item: Flow) -> Iterator[Output]:
        if not isinstance(item, Item):
            return
        reason = call.escalation_reason
        for d in self._judge(call, item):  # a list: judged before any is acted on
            yield from self.decided(call, d, route=not item.bot_hands_off)
        if call.escalation_reason != reason:
            yield Escalated(item)

    @staticmethod
    def _judge(call: Call, item: Item) -> list[Decision]:
        rules, ev, media = call.escalation, item.event, item.media
        if isinstance(media, SilenceCheck):
            return rules.tick(media.now, dict(media.voiced))
        if isinstance(ev, TranscriptFinal):
            said = Utterance(ev.utterance_id, ev.text, ev.start, ev.end)
            if ev.speaker == "caller":
                return rules.observe_utterance(said)
            if ev.speaker == "agent":
                # an agent leg is always a person (an agent, or whoever a call was
                # transferred out to): the bot's prompts are played, never transcribed
                return rules.observe_agent_utterance(said)
        if isinstance(ev, DtmfReceived) and not item.answered_bot:
            return rules.observe_dtmf(ev.digit, ev.at)
        if isinstance(ev, EmotionUpdated) and isinstance(media, me.EmotionEstimated):
            if ev.speaker != "caller":
                return []
            est = media.estimate
            # loudness only of voiced windows: with nothing voiced, prosody measures the
            # whole stretch (noise, breath), not the caller's voice
            # (and a typed line has no voice at all)
            voiced = est.prosody is not None and est.prosody.f0_median_st is not None
            energy = est.prosody.energy_db if est.prosody is not None and voiced else None
            # the caller's leg time is the call's (the caller's audio starts the clock)
            at = media.at
            sample = EmotionSample(
                ev.utterance_id, at, est.label, est.trend, est.scores, energy, est.continues
            )
            return rules.observe_emotion(sample)
        return []

    def decided(self, call: Call, d: Decision, *, route: bool = True) -> Iterator[Output]:
        """A decision stored and told, then routed: the rules' own, or the virtual
        agent's hand-off (engine/bot/stage.py). ``route`` False: only stored and told
        (the agent routes the caller itself)."""
        esc_id = str(uuid.uuid4())
        now = utcnow()
        call.priority = call.escalation.priority  # the record's copy: as stored below
        values: dict[str, object] = {"priority": call.priority}
        route = route and d.routes_to_human and call.escalation_reason is None
        if route:
            call.escalation_reason = d.reason
            values |= {"escalated_at": now, "escalation_reason": d.reason}
        row = EscalationRow(
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
        yield Write(f"call {call.id} escalation {esc_id}", row, values)
        self.metrics.escalations.labels(d.rule_id).inc()
        log.info("call %s escalated: %s", call.id, d.reason)
        yield Emit(
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
        if "alert_supervisor" in d.actions:
            yield Emit(
                SupervisorAlert(
                    call_id=call.id,
                    escalation_id=esc_id,
                    reason=d.reason,
                    priority=call.escalation.priority,
                    state=call.state,
                )
            )
        yield Route(d, route)


def call_stages(
    *,
    redactor: Redactor,
    menu: Mapping[str, str],
    products: Sequence[str],
    knowledge: Callable[[], KnowledgeBase],
    metrics: Metrics,
) -> list[Stage]:
    """The stages every call runs, in their order (see the module docstring)."""
    # the virtual agent's stage is built on this module's effects: imported here, not
    # at the top, where it would import this module half made
    from engine.bot.stage import BotTurn

    escalate = Escalate(metrics)
    return [
        Redact(redactor, menu, metrics),
        Feel(),  # a call's legs have pipelines that estimate: passes
        Persist(metrics),
        Publish(),
        Menu(),
        Facts(products),
        BotTurn(knowledge, escalate, redactor),  # a call without a virtual agent: passes
        Assist(knowledge),
        escalate,
        Assist(knowledge),  # only what Escalate passes on: the reason it gave
    ]
