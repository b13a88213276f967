"""Post-call analytics: what a finished call's timeline says. Pure functions, no IO.

Theory of operation
-------------------
A call leaves four records behind, and each figure here is read from one of them:

    record                       on which clock        gives
    utterances (speaker, words)  the call's (seconds)  talk per side, talk/listen ratio,
                                                       non-talk, interruptions, categories
    emotion samples (per leg)    the call's            the sentiment arc per side
    state changes (event log)    wall time             handle time: queue, bot, agent, hold;
                                                       the queue and hold left out of dead air
    the call row's times         wall time             wrap-up (ended -> wrapped up), and
    and its agent legs                                 the split when the log was pruned

Speech is where words were heard: an utterance's first word to its last (the
recognizer's endpointing adds trailing silence to the utterance itself); with no word
timings, the utterance's own start and end. The virtual agent's lines are stored with
no length (said at one instant), so they are given the time their words take at
BOT_WORDS_PER_SECOND.

    talk[side]        seconds that side spoke (overlapping turns of one side counted once)
    listen[side]      seconds the others spoke; ratio = talk / listen (None: nobody else)
    non-talk          dead air: stretches where nobody spoke, from the first speech to
                      the last (before it is ringing and greeting, after it hanging up),
                      less the time queued or held (silence there is expected); state
                      changes are put on the call clock from the answer (or the start)
    chats             typed lines take no time: talk, listen, ratio, share and non-talk
                      are None (not 0), and there are no interruptions
    interruption      (the caller's and the agent's: the bot's lengths are estimates)
                      one side starts while the other has been talking for at least
                      LEAD_SECONDS and is still talking; a short turn wholly inside the
                      other's is a backchannel ("mm-hmm"), not one (the same test as the
                      live talk-over rule, engine/signals.py)
    handle time       queue (queued), bot (active), agent (bridged), hold (held), each the
                      sum of that state's stretches clamped to the call's start and end;
                      wrap-up from the end to the disposition. With the log pruned: the
                      escalation and the agent legs' times (handle_split)

Every list in the result is bounded (MAX_* below), so a pathological call cannot make
an unbounded row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from engine.signals import BACKCHANNEL_SECONDS, LEAD_SECONDS

VERSION = 2  # of the computation: a stored result of another version is computed again
BOT_WORDS_PER_SECOND = 2.6  # the prompt voice's pace, near 155 words a minute
MAX_INTERRUPTIONS = 200
MAX_ARC_POINTS = 200  # per side; a longer arc is thinned evenly
MAX_CATEGORY_HITS = 20  # per category
MAX_CATEGORIES = 100
MAX_PHRASES = 200  # per category
MAX_PHRASE_CHARS = 100
MAX_RULES_BYTES = 256 * 1024
# the state whose stretches make each part of the handle time
SPLIT_STATES: Mapping[str, str] = {
    "queued": "queue",
    "active": "bot",
    "bridged": "agent",
    "held": "hold",
}


# -- input -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    """An utterance as stored (engine.store.models.UtteranceRow has these fields)."""

    speaker: str
    start: float
    end: float
    text: str
    words: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True, slots=True)
class Sample:
    """An emotion sample and the side whose voice (or words) it judged."""

    speaker: str
    at: float
    label: str
    valence: float
    arousal: float


@dataclass(frozen=True, slots=True)
class StateChange:
    at: datetime
    state: str
    previous: str


@dataclass(frozen=True, slots=True)
class CallTimes:
    created_at: datetime
    answered_at: datetime | None
    escalated_at: datetime | None
    ended_at: datetime | None
    wrapped_up_at: datetime | None


@dataclass(frozen=True, slots=True)
class Span:
    speaker: str
    start: float
    end: float


# -- output ------------------------------------------------------------------------


class SideTalk(BaseModel):
    # None for a chat: typed lines take no time, so there is no talk to measure
    talk_seconds: float | None
    listen_seconds: float | None
    talk_ratio: float | None = Field(description="talk / listen; None when nobody else spoke")
    share: float | None = Field(description="this side's part of all talk, 0..1")
    turns: int


class NonTalk(BaseModel):
    """Dead air: nobody spoke while the caller was with the bot or a person; the time
    they waited in the queue or on hold is not counted (``excluded_seconds``)."""

    total_seconds: float
    longest_seconds: float
    longest_at: float | None = Field(description="where the longest began (call clock)")
    gaps: int = Field(description="stretches of non-talk of at least a second")
    excluded_seconds: float = Field(0.0, description="silence in the queue or on hold")


class InterruptionOut(BaseModel):
    at: float
    by: str
    of: str
    overlap_seconds: float


class ArcPoint(BaseModel):
    at: float
    valence: float
    arousal: float
    label: str


class SideArc(BaseModel):
    points: list[ArcPoint]
    start_valence: float | None
    end_valence: float | None
    mean_valence: float | None
    change: float | None = Field(description="mean valence of the last third minus the first")


class CategoryHit(BaseModel):
    at: float
    speaker: str
    phrase: str


class CategoryOut(BaseModel):
    name: str
    count: int
    hits: list[CategoryHit]


class HandleSplit(BaseModel):
    queue: float = 0.0
    bot: float = 0.0
    agent: float = 0.0
    hold: float = 0.0
    wrap_up: float = 0.0
    total: float = Field(0.0, description="from start to end, plus wrap-up")


class CallAnalytics(BaseModel):
    version: int = VERSION
    channel: str = "voice"
    log_complete: bool = Field(
        True, description="the handle split was read from the call's whole event log"
    )
    speech_seconds: float = Field(description="first speech to last, call clock")
    talk: dict[str, SideTalk]
    non_talk: NonTalk | None = Field(description="None for a chat")
    interruptions: list[InterruptionOut]
    interruptions_by: dict[str, int]
    sentiment: dict[str, SideArc]
    categories: list[CategoryOut]
    handle: HandleSplit
    queued: bool = Field(description="it waited for a person")
    reached_agent: bool


# -- categories ----------------------------------------------------------------------


class RulesError(ValueError):
    """The category rule file is not usable; says where and why."""


class CategoryRules(BaseModel):
    """``{name: [phrases]}``: a category is found where one of its phrases is said."""

    categories: dict[str, list[str]]

    def compiled(self) -> list[tuple[str, re.Pattern[str], dict[str, str]]]:
        """Per category: one pattern for all its phrases (one scan of a line, not one a
        phrase), and the phrase each normalized match stands for."""
        out = []
        for name, phrases in self.categories.items():
            said: dict[str, str] = {}
            for p in phrases:
                said.setdefault(_normalize(p), p)
            out.append((name, _phrases_pattern(said), said))
        return out


def _normalize(text: str) -> str:
    return " ".join(re.findall(r"[\w']+", text.lower()))


def _phrases_pattern(normalized: Iterable[str]) -> re.Pattern[str]:
    # whole words only ("bill" must not match "billion"); a rule lists the forms it
    # means ("refund", "refunds"), so what matches stays predictable. The longest
    # phrase first: "refund request" is found as itself, not as "refund"
    alternatives = "|".join(re.escape(p) for p in sorted(normalized, key=len, reverse=True))
    return re.compile(r"(?<![\w'])(?:" + alternatives + r")(?![\w'])")


def parse_rules(text: str, where: str = "rules") -> CategoryRules:
    """The rule file's text (YAML, JSON being YAML too) as rules, or RulesError."""
    if len(text.encode()) > MAX_RULES_BYTES:
        raise RulesError(f"{where}: larger than {MAX_RULES_BYTES} bytes")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"{where}: not YAML: {exc}") from None
    if isinstance(data, dict) and "categories" not in data:
        data = {"categories": data}
    try:
        rules = CategoryRules.model_validate(data)
    except ValidationError as exc:
        raise RulesError(f"{where}: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}") from None
    if len(rules.categories) > MAX_CATEGORIES:
        raise RulesError(f"{where}: more than {MAX_CATEGORIES} categories")
    for name, phrases in rules.categories.items():
        if not name.strip() or len(name) > 64:
            raise RulesError(f"{where}: a category needs a name of 1-64 characters")
        if not phrases or len(phrases) > MAX_PHRASES:
            raise RulesError(f"{where}: {name}: 1-{MAX_PHRASES} phrases")
        for p in phrases:
            if not _normalize(p) or len(p) > MAX_PHRASE_CHARS:
                raise RulesError(f"{where}: {name}: phrase {p!r} is empty or too long")
    return rules


def load_rules(path: Path) -> CategoryRules:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: {exc.strerror}") from None
    return parse_rules(text, str(path))


def categorize(lines: Iterable[Line], rules: CategoryRules) -> list[CategoryOut]:
    """The categories whose phrases were said, each with where; in the rules' order."""
    compiled = rules.compiled()
    found: dict[str, CategoryOut] = {}
    for line in sorted(lines, key=lambda u: u.start):
        said = _normalize(line.text)
        if not said:
            continue
        for name, pattern, phrases in compiled:
            for match in pattern.finditer(said):
                out = found.setdefault(name, CategoryOut(name=name, count=0, hits=[]))
                out.count += 1
                if len(out.hits) < MAX_CATEGORY_HITS:
                    phrase = phrases[match.group()]
                    hit = CategoryHit(at=round(line.start, 3), speaker=line.speaker, phrase=phrase)
                    out.hits.append(hit)
    return [found[name] for name, _, _ in compiled if name in found]


# -- speech --------------------------------------------------------------------------


def spans(lines: Iterable[Line]) -> list[Span]:
    """Where each utterance's speech was, in order of start."""
    out = []
    for u in lines:
        times = [
            (float(w["start"]), float(w["end"]))
            for w in u.words
            if isinstance(w.get("start"), int | float) and isinstance(w.get("end"), int | float)
        ]
        start, end = u.start, u.end
        if times and max(t[1] for t in times) > min(t[0] for t in times):
            start, end = min(t[0] for t in times), max(t[1] for t in times)
        if end <= start and u.speaker == "bot":
            end = start + len(u.text.split()) / BOT_WORDS_PER_SECOND
        if end > start:
            out.append(Span(u.speaker, start, end))
    return sorted(out, key=lambda s: (s.start, s.end))


def _union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(intervals: Iterable[tuple[float, float]]) -> float:
    return sum((end - start for start, end in intervals), 0.0)


def chat_talk(lines: Iterable[Line]) -> dict[str, SideTalk]:
    """A chat's sides: their turns; no seconds (typed lines start and end at once)."""
    turns: dict[str, int] = {"caller": 0}
    for u in lines:
        turns[u.speaker] = turns.get(u.speaker, 0) + 1
    return {
        side: SideTalk(talk_seconds=None, listen_seconds=None, talk_ratio=None, share=None, turns=n)
        for side, n in turns.items()
    }


def talk(speech: Sequence[Span]) -> dict[str, SideTalk]:
    """Talk and listen per speaker; the caller always has an entry."""
    by: dict[str, list[tuple[float, float]]] = {}
    for s in speech:
        by.setdefault(s.speaker, []).append((s.start, s.end))
    by.setdefault("caller", [])
    seconds = {side: _length(_union(iv)) for side, iv in by.items()}
    everyone = sum(seconds.values())
    out = {}
    for side, iv in by.items():
        others = _length(_union(x for other, ivs in by.items() if other != side for x in ivs))
        out[side] = SideTalk(
            talk_seconds=round(seconds[side], 3),
            listen_seconds=round(others, 3),
            talk_ratio=round(seconds[side] / others, 3) if others > 0 else None,
            share=round(seconds[side] / everyone, 3) if everyone > 0 else None,
            turns=len(iv),
        )
    return out


def _minus(
    gaps: Iterable[tuple[float, float]], away: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The parts of ``gaps`` outside every ``away`` interval (``away`` merged, sorted)."""
    out = []
    for start, end in gaps:
        at = start
        for a, b in away:
            if b <= at or a >= end:
                continue
            if a > at:
                out.append((at, a))
            at = max(at, b)
        if at < end:
            out.append((at, end))
    return out


def non_talk(speech: Sequence[Span], away: Iterable[tuple[float, float]] = ()) -> NonTalk:
    """Dead air: stretches where nobody spoke between the first speech and the last,
    less the ``away`` stretches (queued, held: on the call clock)."""
    spoken = _union((s.start, s.end) for s in speech)
    gaps = [(a[1], b[0]) for a, b in zip(spoken, spoken[1:], strict=False)]
    dead = _minus(gaps, _union(away))
    longest = max(dead, key=lambda g: g[1] - g[0], default=None)
    return NonTalk(
        total_seconds=round(_length(dead), 3),
        longest_seconds=round(longest[1] - longest[0], 3) if longest else 0.0,
        longest_at=round(longest[0], 3) if longest else None,
        gaps=sum(1 for g in dead if g[1] - g[0] >= 1.0),
        excluded_seconds=round(_length(gaps) - _length(dead), 3),
    )


def interruptions(speech: Sequence[Span]) -> list[InterruptionOut]:
    """Every time one side cut into another's turn, in order (at most MAX_INTERRUPTIONS)."""
    found: list[InterruptionOut] = []
    talking: list[Span] = []  # turns not yet over at the current start
    for s in speech:  # in order of start
        talking = [t for t in talking if t.end > s.start]
        cut = [
            t
            for t in talking
            if t.speaker != s.speaker
            and s.start - t.start >= LEAD_SECONDS
            and not (s.end <= t.end and s.end - s.start < BACKCHANNEL_SECONDS)
        ]
        if cut:
            of = max(cut, key=lambda t: t.end)
            found.append(
                InterruptionOut(
                    at=round(s.start, 3),
                    by=s.speaker,
                    of=of.speaker,
                    overlap_seconds=round(min(of.end, s.end) - s.start, 3),
                )
            )
            if len(found) >= MAX_INTERRUPTIONS:
                break
        talking.append(s)
    return found


# -- sentiment -----------------------------------------------------------------------


def _mean(xs: Sequence[float]) -> float | None:
    return round(sum(xs) / len(xs), 3) if xs else None


def _thin(points: list[ArcPoint]) -> list[ArcPoint]:
    if len(points) <= MAX_ARC_POINTS:
        return points
    step = (len(points) - 1) / (MAX_ARC_POINTS - 1)
    return [points[round(i * step)] for i in range(MAX_ARC_POINTS)]


def sentiment(samples: Iterable[Sample]) -> dict[str, SideArc]:
    """Each side's emotion over the call: its samples' valence in time order."""
    by: dict[str, list[Sample]] = {}
    for s in samples:
        by.setdefault(s.speaker, []).append(s)
    out = {}
    for side, ss in by.items():
        ss.sort(key=lambda s: s.at)
        vals = [s.valence for s in ss]
        third = max(1, len(vals) // 3)
        first, last = _mean(vals[:third]), _mean(vals[-third:])
        out[side] = SideArc(
            points=_thin(
                [
                    ArcPoint(
                        at=round(s.at, 3),
                        valence=round(s.valence, 3),
                        arousal=round(s.arousal, 3),
                        label=s.label,
                    )
                    for s in ss
                ]
            ),
            start_valence=round(vals[0], 3),
            end_valence=round(vals[-1], 3),
            mean_valence=_mean(vals),
            change=round(last - first, 3) if first is not None and last is not None else None,
        )
    return out


# -- handle time ---------------------------------------------------------------------


def log_complete(changes: Sequence[StateChange]) -> bool:
    """The call's state changes from its first (out of "new"): the log was not pruned."""
    return bool(changes) and min(changes, key=lambda c: c.at).previous == "new"


def _clamped(start: datetime, until: datetime, times: CallTimes, end: datetime | None) -> float:
    # a recovered call's last state runs to when its engine was last seen, not beyond:
    # no part of the time may outgrow the call
    lo = max(start, times.created_at)
    hi = min(until, end) if end is not None else until
    return max(0.0, (hi - lo).total_seconds())


def _stretches(
    times: CallTimes, changes: Sequence[StateChange]
) -> list[tuple[str, datetime, datetime]]:
    """(state, from, until) of each state the call was in, per the log."""
    ordered = sorted(changes, key=lambda c: c.at)
    out = []
    for this, after in zip(ordered, [*ordered[1:], None], strict=False):
        until = after.at if after is not None else times.ended_at
        if until is not None:
            out.append((this.state, this.at, until))
    return out


def handle_split(
    times: CallTimes,
    changes: Sequence[StateChange],
    agent_legs: Sequence[tuple[datetime, datetime | None]] = (),
) -> HandleSplit:
    """Seconds in each part of the call, each stretch clamped to the call's own times.

    From the state changes when the log has them all (``log_complete``). With the log
    pruned (CCENGINE_EVENT_RETENTION), from the call's and its agent legs' times: bot
    until escalated (or until the first agent leg), queue from the escalation to the
    first agent leg (or to the end: nobody took it), agent while an agent leg was on
    (legs overlapping counted once); hold is not known then (0)."""
    end = times.ended_at
    split = HandleSplit()
    parts: dict[str, float] = {}
    if log_complete(changes):
        for state, since, until in _stretches(times, changes):
            part = SPLIT_STATES.get(state)
            if part is not None:
                parts[part] = parts.get(part, 0.0) + _clamped(since, until, times, end)
    elif end is not None:
        start = times.answered_at or times.created_at
        legs = [(a, b or end) for a, b in agent_legs]
        first_agent = min((a for a, _ in legs), default=None)
        if times.escalated_at is not None:
            parts["bot"] = _clamped(start, times.escalated_at, times, end)
            parts["queue"] = _clamped(times.escalated_at, first_agent or end, times, end)
        else:
            parts["bot"] = _clamped(start, first_agent or end, times, end)
        # on a clock from the call's start, clamped to it; legs overlapping count once
        secs = [
            ((a - times.created_at).total_seconds(), (b - times.created_at).total_seconds())
            for a, b in legs
        ]
        top = (end - times.created_at).total_seconds()
        parts["agent"] = _length(_union((max(0.0, a), min(b, top)) for a, b in secs if b > a))
    for part, seconds in parts.items():
        setattr(split, part, round(seconds, 3))
    if end is not None and times.wrapped_up_at is not None:
        split.wrap_up = round(max(0.0, (times.wrapped_up_at - end).total_seconds()), 3)
    if end is not None:
        split.total = round(max(0.0, (end - times.created_at).total_seconds()) + split.wrap_up, 3)
    return split


def away_stretches(
    times: CallTimes,
    changes: Sequence[StateChange],
    agent_legs: Sequence[tuple[datetime, datetime | None]] = (),
) -> list[tuple[float, float]]:
    """When the caller waited in the queue or on hold, on the call clock (seconds from
    the answer, or the start: near enough to the caller's first audio, where the
    clock starts). With the log pruned, the queue wait from the call's times."""
    origin = times.answered_at or times.created_at

    def clock(t: datetime) -> float:
        return (t - origin).total_seconds()

    if log_complete(changes):
        return [
            (clock(a), clock(b))
            for state, a, b in _stretches(times, changes)
            if state in ("queued", "held")
        ]
    if times.escalated_at is None or times.ended_at is None:
        return []
    first_agent = min((a for a, _ in agent_legs), default=times.ended_at)
    return [(clock(times.escalated_at), clock(first_agent))]


# -- the whole -----------------------------------------------------------------------


def analyze(
    lines: Sequence[Line],
    samples: Sequence[Sample],
    times: CallTimes,
    changes: Sequence[StateChange],
    rules: CategoryRules | None,
    *,
    channel: str = "voice",
    agent_legs: Sequence[tuple[datetime, datetime | None]] = (),
) -> CallAnalytics:
    """The whole analysis. A chat (``channel`` "chat") has no talk or non-talk seconds
    (None) and no interruptions: its lines are typed, each at one instant."""
    chat = channel == "chat"
    speech = [] if chat else spans(lines)
    # the bot's lines have estimated lengths (BOT_WORDS_PER_SECOND): overlaps with them
    # are guesses, so interruptions are the caller's and the agent's only
    cuts = interruptions([s for s in speech if s.speaker != "bot"])
    by: dict[str, int] = {}
    for i in cuts:
        by[i.by] = by.get(i.by, 0) + 1
    states = {c.state for c in changes}
    handle = handle_split(times, changes, agent_legs)
    return CallAnalytics(
        channel=channel,
        log_complete=log_complete(changes),
        speech_seconds=round(speech[-1].end - speech[0].start, 3) if speech else 0.0,
        talk=chat_talk(lines) if chat else talk(speech),
        non_talk=None if chat else non_talk(speech, away_stretches(times, changes, agent_legs)),
        interruptions=cuts,
        interruptions_by=by,
        sentiment=sentiment(samples),
        categories=categorize(lines, rules) if rules is not None else [],
        handle=handle,
        queued="queued" in states or times.escalated_at is not None,
        reached_agent="bridged" in states or handle.agent > 0,
    )
