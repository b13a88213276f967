"""The supervisor's wallboard: queues, agents, live calls and the calls at risk. Sans-IO.

Theory of operation
-------------------
Two parts, both pure:

``Floor`` folds the event stream (every engine's, in the bus's order) into what the
ACD does not keep: each live call's state and since when, its queue, its agent, its
caller's *call-level* mood (``emotion.updated``'s ``call_label`` / ``call_scores`` /
``trend``, caller side only: the agent's utterances never colour the caller's mood),
its escalations, and today's per-queue counters for the service level:

    event                         Floor
    call.started                  a live call (channel, started)
    call.state_changed queued     the call starts waiting (a new queued episode)
    queue.updated                 the queue it waits in
    call.offered                  the agent it rings (taken as its agent once bridged)
    call.state_changed bridged    answered: waited <= threshold counts for the level
    call.state_changed held       on hold since then
    call.transferred              its agent is gone; it waits again (queued follows)
    emotion.updated (caller)      call label, scores, trend (the last ``TRENDS`` kept)
    escalation.raised             its reasons; a repeated request is flagged
    call.state_changed ended      ended while waiting: abandoned, by its reason (below)
    call.ended                    gone (abandoned, if no state change said it ended);
                                  its id kept a while (``RECENT_ENDS``)

An end while waiting is read by its reason: ``callback_requested`` is a callback (the
caller kept their place, counted apart), the engine's own endings (``ENGINE_ENDINGS``:
a shutdown, a dead engine's calls ended by another) are no one's choice and count
nowhere; any other is a caller who gave up (abandoned).

A call can end before its ``call.started`` is told (the caller hangs up while the
engine stores the new call): a ``call.started`` for an id that ended lately is ignored,
or it would stay on the wallboard for ever.

Bounds: at most ``MAX_CALLS`` live calls are followed (the oldest dropped, counted), the
last ``RECENT_ENDS`` ended ids are kept, and the counters are per UTC day (they restart
at midnight UTC; an event of the day before, told late, never takes them back).

``snapshot`` reads the ACD (queues, line, agents and their presence: the same copy
``GET /api/v1/agents`` and queue positions read, one routing for every engine with
Redis) and the ``Floor`` at ``now`` and makes the wallboard, with the AI overlay:
each live call's risks (falling mood, repeated requests, long hold, long wait), each
with the reason in words, and the calls at risk first, the riskiest on top.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from engine.acd import STAFFED, Acd, Waiting

MAX_CALLS = 5_000  # live calls followed at once
RECENT_ENDS = 2_000  # ended ids kept, to ignore a call.started told after its end
CALLBACK = "callback_requested"  # engine/callbacks.py: the caller chose to be called back
# ends no caller chose: the engine stopped (engine/calls.py), or another engine ended a
# dead one's calls (engine/recovery.py; "engine_lost" in rows from before the rename),
# or a chat became a call (the caller goes on waiting, as the new call): not abandoned
ENGINE_ENDINGS = frozenset(
    {"engine_shutdown", "engine_restart", "node_lost", "engine_lost", "upgraded"}
)
TRENDS = 5  # the caller's last trends kept, to see a mood falling
UPSET = ("angry", "frustrated")
# what counts as a risk, and how much it weighs in the order of the list
HOLD_LIMIT = 60.0  # s on hold before it is a risk
# as the default mood_falling rule (engine/escalation.py): a reading or two is not a
# mood yet (a plain "I want a person" can read -0.6 on its own)
MIN_READINGS = 3
FALLING = 0.15  # the trend's drop over the kept readings that reads as falling
LOW_TREND = -0.4  # a trend this low is a risk by itself
HEAT = {"positive": 0.0, "neutral": 0.15, "frustrated": 0.55, "angry": 0.75}
WEIGHTS = {"mood_falling": 3.0, "upset": 2.0, "repeated": 3.0, "long_hold": 2.0, "long_wait": 1.0}


@dataclass
class LiveCall:
    id: str
    channel: str
    started: datetime
    state: str = "new"
    state_since: datetime | None = None
    queue: str | None = None
    queued_at: datetime | None = None
    agent_id: str | None = None
    # after a consult's hand-over: the agent who has the caller now, by username (the
    # consult's events name people; the snapshot knows their ids)
    agent_name: str | None = None
    offered_to: str | None = None
    mood: str | None = None  # the caller's call-level label
    scores: dict[str, float] = field(default_factory=dict)
    trends: deque[float] = field(default_factory=lambda: deque(maxlen=TRENDS))
    escalations: list[str] = field(default_factory=list)  # reasons, in order
    repeated: str | None = None  # the reason of a repeated-request escalation


@dataclass
class QueueDay:
    """One queue's day so far."""

    answered: int = 0
    within: int = 0  # answered within the service-level threshold
    abandoned: int = 0  # the caller left while waiting
    callbacks: int = 0  # the caller asked to be called back while waiting


class Floor:
    """Live calls and today's counters, from the event stream (see the module doc)."""

    def __init__(self, threshold: float = 20.0) -> None:
        self.threshold = threshold
        self.calls: OrderedDict[str, LiveCall] = OrderedDict()
        self.day: date | None = None
        self.queues: dict[str, QueueDay] = {}
        self.dropped = 0  # live calls no longer followed (over MAX_CALLS)
        self._ended: deque[str] = deque()  # the last RECENT_ENDS ended ids, oldest first
        self._ended_set: set[str] = set()

    def _today(self, when: datetime) -> None:
        # forward only: an event of yesterday told after today's first (another engine's,
        # late) must not wipe today's counters
        if self.day is None or when.date() > self.day:
            self.day, self.queues = when.date(), {}

    def counters(self, day: date) -> dict[str, QueueDay]:
        """The queues' counters of ``day``: none if the floor has not seen that day (a
        snapshot just after midnight, before the day's first event)."""
        return self.queues if self.day == day else {}

    def _ends(self, call_id: str) -> None:
        if call_id in self._ended_set:
            return
        self._ended.append(call_id)
        self._ended_set.add(call_id)
        if len(self._ended) > RECENT_ENDS:
            self._ended_set.discard(self._ended.popleft())

    def _left_line(self, call: LiveCall, reason: object, today: bool) -> None:
        """``call`` ended while waiting: a callback, an engine's ending, or abandoned."""
        if not today:
            return  # yesterday's, told late: its day's counters are gone
        q = self._queue(call.queue)
        if reason == CALLBACK:
            q.callbacks += 1
        elif reason not in ENGINE_ENDINGS:  # the engine's endings are nobody's choice
            q.abandoned += 1

    def restore(
        self, call_id: str, channel: str, started: datetime, state: str, queue: str | None
    ) -> None:
        """A live call known from the store only (its events are gone): followed from
        what its record says, unless it is followed already."""
        if call_id in self.calls or call_id in self._ended_set:
            return
        call = LiveCall(call_id, channel, started, state=state, state_since=started, queue=queue)
        if state == "queued":
            call.queued_at = started
        self.calls[call_id] = call
        self._bound()

    def _bound(self) -> None:
        while len(self.calls) > MAX_CALLS:
            self.calls.popitem(last=False)
            self.dropped += 1

    def _queue(self, name: str | None) -> QueueDay:
        return self.queues.setdefault(name or "?", QueueDay())

    def feed(self, ev: Mapping[str, Any]) -> None:
        """One event, as its JSON object (``time`` a datetime or ISO text)."""
        kind, call_id = ev.get("type"), ev.get("call_id")
        if not isinstance(call_id, str):
            return
        when = ev.get("time")
        if isinstance(when, str):
            when = datetime.fromisoformat(when)
        if not isinstance(when, datetime):
            return
        self._today(when)
        today = when.date() == self.day
        ends = kind == "call.ended" or (kind == "call.state_changed" and ev.get("state") == "ended")
        if ends:
            self._ends(call_id)
        if kind == "call.started":
            if call_id in self._ended_set:
                return  # told after its end (see the module doc)
            self.calls[call_id] = LiveCall(call_id, str(ev.get("channel", "")), when)
            self.calls[call_id].state_since = when
            self._bound()
            return
        call = self.calls.get(call_id)
        if call is None:
            return
        if kind == "call.state_changed":
            state = str(ev.get("state"))
            answered = state == "bridged" and call.state == "queued"
            if answered and call.queued_at is not None and today:
                q = self._queue(call.queue)
                q.answered += 1
                if (when - call.queued_at).total_seconds() <= self.threshold:
                    q.within += 1
            # the agent who answered from the line: a colleague offered the call for a
            # consult (it is held, not queued) is not the call's agent
            if answered and call.offered_to is not None:
                call.agent_id, call.offered_to, call.agent_name = call.offered_to, None, None
            if state == "queued":
                call.queued_at, call.agent_id, call.agent_name = when, None, None
            if state == "ended" and call.state == "queued":  # told before call.ended
                self._left_line(call, ev.get("reason"), today)
            call.state, call.state_since = state, when
        elif kind == "queue.updated":
            call.queue = str(ev.get("queue"))
        elif kind == "call.offered":
            call.offered_to = str(ev.get("agent_id"))
        elif kind == "call.transferred":
            call.agent_id = call.agent_name = None
        elif kind in ("call.consult_completed", "call.conference_left"):
            # the caller is with the colleague now (a warm transfer), or with whoever
            # stayed in the conference
            who = ev.get("guest") if kind == "call.consult_completed" else ev.get("remaining")
            call.agent_id, call.agent_name = None, str(who) if who else None
        elif kind == "emotion.updated" and ev.get("speaker", "caller") == "caller":
            call.mood = str(ev.get("call_label")) if ev.get("call_label") else call.mood
            scores = ev.get("call_scores")
            if isinstance(scores, dict):
                call.scores = {str(k): float(v) for k, v in scores.items()}
            trend = ev.get("trend")
            if isinstance(trend, int | float):
                call.trends.append(float(trend))
        elif kind == "escalation.raised":
            reason = str(ev.get("reason", ""))
            call.escalations.append(reason)
            del call.escalations[:-10]  # the latest few: a bound, not a history
            evidence = ev.get("evidence")
            repeat = ev.get("rule") == "repeats_request" or (
                isinstance(evidence, dict) and ("similarity" in evidence or "marker" in evidence)
            )
            if repeat:
                call.repeated = reason
        elif kind == "call.ended":
            if call.state == "queued":
                self._left_line(call, ev.get("reason"), today)
            del self.calls[call_id]


# -- the snapshot ---------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    id: str
    username: str
    display_name: str


def heat(call: LiveCall) -> float:
    """0 (calm) .. 1 (boiling): the caller's call-level mood first (what the badge
    says), then how much of the call's scores are upset, then a falling trend once it
    is a mood (``MIN_READINGS``). Not the scores alone: a chat's plain "I want a
    person" scores angry 0.56 while its call label is still neutral."""
    upset = sum(call.scores.get(label, 0.0) for label in UPSET)
    trend = call.trends[-1] if len(call.trends) >= MIN_READINGS else 0.0
    value = HEAT.get(call.mood or "", 0.0) + 0.15 * upset + 0.1 * min(1.0, max(0.0, -trend))
    return round(min(1.0, value), 3)


def risks(call: LiveCall, at: datetime, threshold: float) -> list[dict[str, str]]:
    """Why this call needs a supervisor's eyes now, each as kind and reason."""
    out: list[dict[str, str]] = []
    trends = list(call.trends)
    if len(trends) >= MIN_READINGS:
        if trends[0] - trends[-1] >= FALLING and trends[-1] < 0:
            why = f"mood falling: trend {trends[0]:+.2f} to {trends[-1]:+.2f}"
            out.append({"kind": "mood_falling", "reason": why})
        elif trends[-1] <= LOW_TREND:
            out.append({"kind": "mood_falling", "reason": f"mood low: trend {trends[-1]:+.2f}"})
    if call.mood in UPSET:
        out.append({"kind": "upset", "reason": f"caller {call.mood}"})
    if call.repeated:
        out.append({"kind": "repeated", "reason": call.repeated})
    since = (at - call.state_since).total_seconds() if call.state_since else 0.0
    if call.state == "held" and since >= HOLD_LIMIT:
        out.append({"kind": "long_hold", "reason": f"on hold {_span(since)}"})
    if call.state == "queued" and call.queued_at is not None:
        waited = (at - call.queued_at).total_seconds()
        if waited > threshold:
            why = f"waiting {_span(waited)} (service level {_span(threshold)})"
            out.append({"kind": "long_wait", "reason": why})
    return out


def _span(seconds: float) -> str:
    s = int(seconds)
    return f"{s} s" if s < 120 else f"{s // 60} min"


def _queue_wait(acd: Acd, name: str, line: list[Waiting]) -> float | None:
    """What a caller joining ``name`` now would be told, in seconds (None: nobody
    staffed for it): ``Acd.expected_wait``'s sum for one more caller, behind everyone
    waiting at the queue's priority or higher (not the last waiting caller's own wait,
    which is one place shorter)."""
    config = acd.queues.get(name) or acd.closing.get(name)
    skills = frozenset(config.skills) if config else frozenset()
    priority = config.priority if config else 0
    staffed = [
        a
        for a in acd.agents.values()
        if a.presence in STAFFED and a.id not in acd.absent and skills <= a.skills
    ]
    if not staffed:
        return None
    position = 1 + sum(1 for w in line if w.priority >= priority)
    if position == 1 and any(a.presence == "available" for a in staffed):
        return 0.0
    return position / len(staffed) * acd.average_handle_time


def snapshot(
    acd: Acd,
    now: float,
    floor: Floor,
    at: datetime,
    people: Iterable[Person],
    threshold: float,
    agent_calls: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The wallboard at ``now`` (the ACD's clock) and ``at`` (wall clock, UTC):
    plain JSON-able data, what ``GET /api/v1/wallboard`` answers. ``agent_calls``:
    agent -> the call they are on, for this engine's calls (known before the events
    that tell it reach the floor)."""
    agent_calls = agent_calls or {}
    line = acd.line()
    names = list(acd.queues) + [q for q in acd.closing if q not in acd.queues]
    names += sorted({w.queue for w in line} - set(names))
    counters = floor.counters(at.date())  # none yet today: nothing counted today
    queues = []
    for name in names:
        waiting = [w for w in line if w.queue == name]
        day = counters.get(name, QueueDay())
        handled = day.answered + day.abandoned
        wait = _queue_wait(acd, name, line)
        queues.append({
            "name": name,
            "waiting": len(waiting),
            # never below 0: with several engines, the ACD's clock is each one's wall clock
            "longest_wait": round(max([0.0, *(now - w.enqueued_at for w in waiting)]), 1),
            "expected_wait": None if wait is None else round(wait, 1),
            "answered_today": day.answered,
            "answered_within": day.within,
            "abandoned_today": day.abandoned,
            "callbacks_today": day.callbacks,
            # answered within the threshold, of all who waited and left the line today
            # (answered or abandoned); None before anyone has
            "service_level": round(day.within / handled, 3) if handled else None,
        })  # fmt: skip
    ids = {p.username: p.id for p in people}

    def agent_of(c: LiveCall) -> str | None:
        return c.agent_id or (ids.get(c.agent_name) if c.agent_name else None)

    on_call = {a: c.id for c in floor.calls.values() if (a := agent_of(c)) is not None}
    on_call.update(agent_calls)  # this engine's own calls know their agent first
    agents = []
    for person in people:
        agent = acd.agents.get(person.id)
        presence = agent.presence if agent else "offline"
        since = agent.since if agent else None
        current = on_call.get(person.id) if presence == "on_call" else None
        call = floor.calls.get(current) if current else None
        ringing = agent.offered if agent else None
        agents.append({
            "id": person.id,
            "username": person.username,
            "display_name": person.display_name,
            "presence": presence,
            "absent": bool(agent and agent.id in acd.absent),
            "time_in_state": None if since is None else round(max(0.0, now - since), 1),
            "call_id": current or ringing,
            "caller_mood": call.mood if call else None,
        })  # fmt: skip
    position = {w.call_id: i for i, w in enumerate(line, 1)}
    ranked: list[tuple[float, float, dict[str, Any]]] = []
    for c in floor.calls.values():
        found = risks(c, at, threshold)
        risk = round(sum(WEIGHTS[r["kind"]] for r in found) + heat(c), 3) if found else 0.0
        since = round((at - (c.state_since or c.started)).total_seconds(), 1)
        ranked.append((risk, since, {
            "id": c.id,
            "channel": c.channel,
            "state": c.state,
            "queue": c.queue,
            "position": position.get(c.id),
            "agent_id": agent_of(c),
            "since": since,
            "mood": c.mood,
            "heat": heat(c),
            "trend": c.trends[-1] if c.trends else None,
            "escalated": bool(c.escalations),
            "escalations": list(c.escalations),
            "risk": risk,
            "risks": found,
        }))  # fmt: skip
    # the calls at risk first, the riskiest on top; then the rest; the oldest first in each
    ranked.sort(key=lambda r: (-r[0], -r[1]))
    calls = [c for _, _, c in ranked]
    at_risk = [c["id"] for risk, _, c in ranked if risk]
    totals = {
        "waiting": len(line),
        "agents": {p: sum(1 for a in agents if a["presence"] == p) for p in _PRESENCES},
        "live_calls": len(calls),
    }
    return {"time": at.isoformat(), "threshold": threshold, "totals": totals, "queues": queues,
            "agents": agents, "calls": calls, "at_risk": at_risk}  # fmt: skip


_PRESENCES = ("available", "ringing", "on_call", "wrap_up", "away", "offline")
