"""Automatic call distribution: queues, routing, agent presence. Sans-IO.

Theory of operation
-------------------
The ACD holds waiting calls and agents, and is told what happens with ``now``
(seconds, any monotonic clock). It answers with ``Offer``s (ring this agent for
this call until ``expires_at``) and other actions; it never does I/O, and
``next_timer()`` says when ``tick`` must run next.

Routing order, the contact-center convention:
  1. calls: highest priority first, then the longest waiting;
  2. agents: among those *available* with every skill the call needs (its
     queue's skills plus any the call asked for, e.g. "retention"), the one idle
     longest; an agent who declined a call is not offered it again.
An offer not accepted within ``offer_timeout`` goes to the next agent, and the
agent who let it ring is set *away* (they are probably not at their desk). The
call keeps its place in line throughout. A call transferred to one agent
(``enqueue(..., agent=...)``) rings only that agent; if they decline or let it
ring out, it falls back to its queue, so the caller is never stranded.

Agent presence moves only through ``PRESENCE`` below:

    presence    event        -> presence
    offline     login        -> away
    away        available    -> available
    wrap_up     available    -> available
    available   away         -> away
    wrap_up     away         -> away
    away        away         -> away      another reason (break, lunch ...); the same
                                          reason again changes nothing (no error)
    available   offer        -> ringing
    ringing     accept       -> on_call
    ringing     decline      -> available
    ringing     no_answer    -> away
    on_call     hangup       -> wrap_up
    (any but on_call/ringing) logout -> offline
    available   disconnect   -> away     every client of theirs gone (engine/liveness.py)
    ringing     disconnect   -> away     ... and the offer moves on at once
    wrap_up     disconnect   -> away

After-call work is enforced: an agent whose call ended (``hangup`` with the call's id)
*owes* that call its disposition. While they owe one, "available" is refused (they may
go away, or sign out, and still owe it); ``wrapped_up`` settles it and moves them on.
A disposition saved by a supervisor or admin settles it for whoever owed it, and an
agent in wrap-up for it is made available (``WRAPPED_UP_BY_OTHER``). One saved by
another *agent* (the one a call was transferred to) settles only that agent's own debt:
the first agent still owes their part of the call, deadline and all, so a colleague's
wrap-up cannot wipe out theirs.
With ``wrap_up_limit`` > 0 an owed disposition also has a deadline: when it passes,
``tick`` settles it as ``WrapUpExpired`` (the engine stores "timed-out") and an agent
still in wrap-up is made available, so nobody idles in wrap-up forever.

"away" carries why: one the agent chose (``AWAY_REASONS``), or one
the ACD set: "missed_call" (an offer rang out) or "disconnected" (engine/liveness.py).

An agent in ``absent`` (their desk's streams all closed, engine/liveness.py) keeps
their presence for a short grace, in case the desk comes back, but is offered nothing
and does not count as staffed meanwhile.

Expected wait = (calls ahead of this one + 1) / staffed agents (not absent) x average of the
last ``HANDLE_WINDOW`` handle times (``DEFAULT_HANDLE_TIME`` before there are any).
"""

from __future__ import annotations

import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from engine.inputs import Input

PRESENCE: dict[tuple[str, str], str] = {
    ("offline", "login"): "away",
    ("away", "available"): "available",
    ("wrap_up", "available"): "available",
    ("available", "away"): "away",
    ("wrap_up", "away"): "away",
    ("away", "away"): "away",
    ("available", "offer"): "ringing",
    ("ringing", "accept"): "on_call",
    ("ringing", "decline"): "available",
    ("ringing", "no_answer"): "away",
    ("on_call", "hangup"): "wrap_up",
    ("away", "logout"): "offline",
    ("available", "logout"): "offline",
    ("wrap_up", "logout"): "offline",
    ("available", "disconnect"): "away",
    ("ringing", "disconnect"): "away",
    ("wrap_up", "disconnect"): "away",
}
PRESENCES = ("offline", "available", "ringing", "on_call", "wrap_up", "away")
# why an agent is away: chosen by them, or set by the ACD (a missed offer, a desk gone)
AWAY_REASONS = ("break", "lunch", "meeting", "training", "other")
MISSED_CALL = "missed_call"  # the other, "disconnected", is engine/liveness.py's
STAFFED = frozenset({"available", "ringing", "on_call", "wrap_up"})
HANDLE_WINDOW = 50
DEFAULT_HANDLE_TIME = 180.0


class AcdError(ValueError):
    """A request the ACD cannot honour (unknown agent or call, wrong presence)."""


class WrapUpOwed(AcdError):
    """The agent asked to be available while a call of theirs waits for its disposition."""

    def __init__(self, agent_id: str, call_id: str) -> None:
        super().__init__(
            f"call {call_id} needs a disposition first: save its wrap-up, then you are available"
        )
        self.agent_id = agent_id
        self.call_id = call_id


class QueueConfig(Input):
    name: str = Field(pattern=r"^[a-z0-9_\-]{1,64}$")
    skills: list[str] = Field(default_factory=list)
    priority: int = Field(0, ge=0, le=100, description="base priority of calls in this queue")
    max_wait: float = Field(600.0, gt=0, description="seconds before a callback is offered")
    announcement: str = "Thank you for calling. An agent will be with you shortly."


class QueueFile(Input):
    queues: list[QueueConfig] = Field(min_length=1)


DEFAULT_QUEUES = [QueueConfig(name="general")]


def load_queues(path: Path | str | None) -> list[QueueConfig]:
    """Queues from a TOML or YAML file (``queues:`` list / ``[[queues]]`` tables)."""
    if path is None:
        return list(DEFAULT_QUEUES)
    with open(path, "rb") as f:
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(f)
        else:
            data = tomllib.load(f)
    return QueueFile.model_validate(data).queues


@dataclass
class Agent:
    id: str
    skills: frozenset[str]
    presence: str = "offline"
    idle_since: float = 0.0
    offered: str | None = None  # call id ringing on this agent
    since: float | None = None  # when the presence last changed (the wallboard's time in state)
    away_reason: str | None = None  # while away: AWAY_REASONS, MISSED_CALL or "disconnected"
    owes: str | None = None  # the call whose disposition they have not given yet
    wrap_until: float | None = None  # when ``owes`` times out (``wrap_up_limit``)


@dataclass
class Waiting:
    call_id: str
    queue: str
    priority: int
    enqueued_at: float
    skills: frozenset[str]
    declined_by: set[str] = field(default_factory=set)
    offered_to: str | None = None
    max_wait_signalled: bool = False
    target: str | None = None  # only this agent, until they decline or let it ring out


@dataclass(frozen=True)
class Offer:
    agent_id: str
    call_id: str
    expires_at: float


@dataclass(frozen=True)
class OfferExpired:
    agent_id: str
    call_id: str
    reason: str = "no_answer"  # or "disconnected": the agent's desk went away


@dataclass(frozen=True)
class PresenceChanged:
    agent_id: str
    presence: str
    previous: str
    reason: str | None = None  # "disconnected" when their clients went away


@dataclass(frozen=True)
class MaxWaitReached:
    call_id: str
    queue: str


@dataclass(frozen=True)
class WrapUpExpired:
    """The agent gave no disposition for ``call_id`` within ``wrap_up_limit``: the
    engine stores "timed-out" for it."""

    agent_id: str
    call_id: str


WRAP_UP_TIMED_OUT = "wrap_up_timed_out"  # the reason of the presence change that follows
# the reason an agent in wrap-up is made available when a supervisor saved it for them
WRAPPED_UP_BY_OTHER = "wrapped_up_by_supervisor"

Action = Offer | OfferExpired | PresenceChanged | MaxWaitReached | WrapUpExpired


class Acd:
    def __init__(
        self, queues: list[QueueConfig], offer_timeout: float = 20.0, wrap_up_limit: float = 0.0
    ) -> None:
        self.queues = {q.name: q for q in queues}
        # queues removed (on another engine) while callers wait in them here: they take
        # no new callers, and go once the last one has left the line
        self.closing: dict[str, QueueConfig] = {}
        self.offer_timeout = offer_timeout
        self.wrap_up_limit = wrap_up_limit  # seconds to give a disposition; 0: no limit
        self.agents: dict[str, Agent] = {}
        self.waiting: dict[str, Waiting] = {}
        self._offers: dict[str, tuple[str, float]] = {}  # call -> (agent, expires_at)
        self._handle_times: deque[float] = deque(maxlen=HANDLE_WINDOW)
        # agents whose every client is gone, for now (engine/liveness.py keeps who):
        # offered nothing, not counted as staffed
        self.absent: set[str] = set()

    # -- queues -------------------------------------------------------------

    def set_queue(self, config: QueueConfig) -> None:
        """Add a queue or change one; calls already waiting keep their priority."""
        self.closing.pop(config.name, None)
        self.queues[config.name] = config

    def close_queue(self, name: str) -> None:
        """A queue removed elsewhere: gone now if nobody waits in it, else closed to new
        callers until the last of them leaves the line. Unlike ``remove_queue`` it
        cannot be refused: the removal has happened (engine/routing.py puts the default
        queue in if it was the last)."""
        config = self.queues.get(name)
        if config is None:
            return
        del self.queues[name]
        if any(w.queue == name for w in self.waiting.values()):
            self.closing[name] = config

    def _config(self, queue: str) -> QueueConfig:
        return self.queues.get(queue) or self.closing[queue]

    def _left(self, w: Waiting | None) -> None:
        """A call left the line: a closing queue it was the last caller of goes."""
        if w is not None and w.queue in self.closing:
            if not any(o.queue == w.queue for o in self.waiting.values()):
                del self.closing[w.queue]

    def remove_queue(self, name: str) -> None:
        if name not in self.queues:
            raise AcdError(f"unknown queue {name}")
        if any(w.queue == name for w in self.waiting.values()):
            raise AcdError(f"calls are waiting in queue {name}")
        if len(self.queues) == 1:
            raise AcdError("the last queue cannot be removed")
        del self.queues[name]

    # -- agents -------------------------------------------------------------

    def add_agent(self, agent_id: str, skills: set[str] | frozenset[str] = frozenset()) -> None:
        if agent_id not in self.agents:
            self.agents[agent_id] = Agent(agent_id, frozenset(skills))
        else:
            self.agents[agent_id].skills = frozenset(skills)

    def _agent(self, agent_id: str) -> Agent:
        try:
            return self.agents[agent_id]
        except KeyError:
            raise AcdError(f"unknown agent {agent_id}") from None

    def _move(
        self, agent: Agent, event: str, now: float, reason: str | None = None
    ) -> PresenceChanged:
        try:
            new = PRESENCE[(agent.presence, event)]
        except KeyError:
            raise AcdError(f"agent {agent.id} cannot '{event}' while {agent.presence}") from None
        if new == "available" and agent.owes is not None:
            raise WrapUpOwed(agent.id, agent.owes)
        if agent.presence == new == "away" and agent.away_reason == reason:
            raise AcdError(f"agent {agent.id} is away ({reason or 'no reason given'}) already")
        previous, agent.presence = agent.presence, new
        agent.since = now
        agent.away_reason = reason if new == "away" else None
        if new == "available":
            agent.idle_since = now
        return PresenceChanged(agent.id, new, previous, reason)

    def presence(
        self, agent_id: str, event: str, now: float, reason: str | None = None
    ) -> list[Action]:
        """login / available / away / logout (offers and calls move agents themselves);
        "away" with one of ``AWAY_REASONS`` (or none). ``WrapUpOwed`` for "available"
        while the agent owes a call its disposition."""
        if event not in ("login", "available", "away", "logout"):
            raise AcdError(f"'{event}' is not something an agent asks for")
        if reason is not None and (event != "away" or reason not in AWAY_REASONS):
            raise AcdError(f"'{reason}' is not a reason to be away")
        agent = self._agent(agent_id)
        if event == "away" and agent.presence == "away" and agent.away_reason == reason:
            return []  # pressed twice, or on two desks: already so, nothing to change
        out: list[Action] = [self._move(agent, event, now, reason)]
        return out + self.dispatch(now)

    def disconnect(self, agent_id: str, now: float, reason: str) -> list[Action]:
        """Every client of the agent is gone: away, and a call ringing them goes to the
        next agent at once (AcdError unless available, ringing or in wrap-up)."""
        agent = self._agent(agent_id)
        if (agent.presence, "disconnect") not in PRESENCE:
            raise AcdError(f"agent {agent_id} cannot '{reason}' while {agent.presence}")
        out: list[Action] = []
        if agent.offered is not None:
            call_id = agent.offered
            self._withdraw(agent, call_id)
            out.append(OfferExpired(agent_id, call_id, reason))
        out.append(self._move(agent, "disconnect", now, reason))
        return out + self.dispatch(now)

    def set_absent(self, agent_id: str, absent: bool, now: float) -> list[Action]:
        """The agent's clients are all gone (``absent``) or one is back: offers follow."""
        if absent:
            self.absent.add(agent_id)
            return []
        self.absent.discard(agent_id)
        return self.dispatch(now)

    # -- calls --------------------------------------------------------------

    def enqueue(
        self,
        call_id: str,
        queue: str,
        now: float,
        *,
        priority: int = 0,
        skills: set[str] | frozenset[str] = frozenset(),
        agent: str | None = None,
    ) -> list[Action]:
        if queue not in self.queues:
            raise AcdError(f"unknown queue {queue}")
        if call_id in self.waiting:
            raise AcdError(f"call {call_id} is already waiting")
        if agent is not None and self._agent(agent).presence == "offline":
            raise AcdError(f"agent {agent} is offline")
        q = self.queues[queue]
        self.waiting[call_id] = Waiting(
            call_id,
            queue,
            q.priority + priority,
            now,
            frozenset(q.skills) | frozenset(skills),
            target=agent,
        )
        return self.dispatch(now)

    def raise_priority(self, call_id: str, by: int, now: float) -> list[Action]:
        self._waiting(call_id).priority += by
        return self.dispatch(now)

    def _waiting(self, call_id: str) -> Waiting:
        try:
            return self.waiting[call_id]
        except KeyError:
            raise AcdError(f"call {call_id} is not waiting") from None

    def remove(self, call_id: str, now: float) -> list[Action]:
        """The caller hung up or chose a callback: leave the line, free a ringing agent."""
        w = self.waiting.pop(call_id, None)
        self._left(w)
        out: list[Action] = []
        if w is not None and w.offered_to is not None:
            agent = self.agents[w.offered_to]
            agent.offered = None
            self._offers.pop(call_id, None)
            out.append(self._move(agent, "decline", now))
        return out + self.dispatch(now)

    def ringing(self, agent_id: str, call_id: str) -> Agent:
        """The agent, if ``call_id`` is ringing on them; AcdError otherwise."""
        agent = self.agents.get(agent_id)
        if agent is None or agent.offered != call_id:
            raise AcdError(f"call {call_id} is not ringing on agent {agent_id}")
        return agent

    def accept(self, agent_id: str, call_id: str, now: float) -> list[Action]:
        agent = self.ringing(agent_id, call_id)
        agent.offered = None
        self._offers.pop(call_id, None)
        self._left(self.waiting.pop(call_id, None))
        return [self._move(agent, "accept", now)]

    def decline(self, agent_id: str, call_id: str, now: float) -> list[Action]:
        agent = self.ringing(agent_id, call_id)
        self._withdraw(agent, call_id)
        if call_id in self.waiting:  # not so for a consult (``offer_to``)
            self.waiting[call_id].declined_by.add(agent_id)
        return [self._move(agent, "decline", now), *self.dispatch(now)]

    def offer_to(self, agent_id: str, call_id: str, now: float) -> list[Action]:
        """Ring one available agent for a call that is not waiting (a consult,
        engine/consult.py: the call stays with its agent); it rings out like any offer,
        and ``accept``, ``decline`` and ``withdraw`` end it."""
        agent = self._agent(agent_id)
        if agent.presence != "available" or agent_id in self.absent:
            raise AcdError(f"agent {agent_id} is not available")
        out: list[Action] = [self._move(agent, "offer", now)]
        agent.offered = call_id
        expires = now + self.offer_timeout
        self._offers[call_id] = (agent_id, expires)
        return [*out, Offer(agent_id, call_id, expires)]

    def withdraw(self, agent_id: str, call_id: str, now: float) -> list[Action]:
        """An offer of ``offer_to`` taken back before it was answered."""
        agent = self.agents.get(agent_id)
        if agent is None or agent.offered != call_id:
            return []
        self._withdraw(agent, call_id)
        return [OfferExpired(agent_id, call_id, "cancelled"), self._move(agent, "decline", now)]

    def _withdraw(self, agent: Agent, call_id: str) -> None:
        agent.offered = None
        self._offers.pop(call_id, None)
        if call_id in self.waiting:
            self.waiting[call_id].offered_to = None
            self.waiting[call_id].target = None  # back to the queue

    def hangup(
        self, agent_id: str, now: float, handle_time: float | None, call_id: str | None = None
    ) -> list[Action]:
        """The agent's call ended: wrap-up, and learn how long calls take (``None``: not
        known, as for a call its engine's death cut off; it does not count). With
        ``call_id`` the agent owes that call its disposition (``wrapped_up``)."""
        if handle_time is not None:
            self._handle_times.append(max(0.0, handle_time))
        agent = self._agent(agent_id)
        out: list[Action] = [self._move(agent, "hangup", now)]
        if call_id is not None:
            agent.owes = call_id
            agent.wrap_until = now + self.wrap_up_limit if self.wrap_up_limit > 0 else None
        return out

    def wrapped_up(
        self, agent_id: str, call_id: str, now: float, then: str, *, for_all: bool = False
    ) -> list[Action]:
        """A disposition was given for ``call_id`` by ``agent_id``: if they owed it they
        owe nothing now; one in wrap-up goes on to ``then`` ("available" or "away"), and
        one who went away while owing it is available again if ``then`` says so.
        ``for_all`` (a supervisor's or admin's save): whoever else owed it owes nothing
        either, and one in wrap-up for it is made available. Without it another agent's
        debt for the same call (the first agent of a transfer) stands."""
        out: list[Action] = []
        if for_all:
            for other in self.agents.values():
                if other.id != agent_id and other.owes == call_id:
                    other.owes = other.wrap_until = None
                    if other.presence == "wrap_up":
                        out.append(self._move(other, "available", now, WRAPPED_UP_BY_OTHER))
        agent = self.agents.get(agent_id)
        if agent is None:  # not an agent who takes calls
            return out + self.dispatch(now)
        settled = agent.owes == call_id
        if settled:
            agent.owes = agent.wrap_until = None
        if agent.owes is None and (
            agent.presence == "wrap_up"
            or (settled and agent.presence == "away" and then == "available")
        ):
            out.append(self._move(agent, then, now))
        return out + self.dispatch(now)

    # -- routing ------------------------------------------------------------

    def line(self) -> list[Waiting]:
        """Waiting calls in the order they will be served."""
        return sorted(self.waiting.values(), key=lambda w: (-w.priority, w.enqueued_at))

    def dispatch(self, now: float) -> list[Action]:
        out: list[Action] = []
        for w in self.line():
            if w.offered_to is not None:
                continue
            candidates = [
                a
                for a in self.agents.values()
                if a.presence == "available"
                and a.id not in self.absent
                and a.id not in w.declined_by
                and (a.id == w.target if w.target else w.skills <= a.skills)
            ]
            if not candidates:
                continue
            agent = min(candidates, key=lambda a: (a.idle_since, a.id))
            out.append(self._move(agent, "offer", now))
            agent.offered = w.call_id
            w.offered_to = agent.id
            expires = now + self.offer_timeout
            self._offers[w.call_id] = (agent.id, expires)
            out.append(Offer(agent.id, w.call_id, expires))
        return out

    def next_timer(self) -> float | None:
        times = [exp for _, exp in self._offers.values()]
        times += [
            w.enqueued_at + self._config(w.queue).max_wait
            for w in self.waiting.values()
            if not w.max_wait_signalled
        ]
        times += [a.wrap_until for a in self.agents.values() if a.wrap_until is not None]
        return min(times) if times else None

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        for call_id, (agent_id, expires) in list(self._offers.items()):
            if now >= expires:
                agent = self.agents[agent_id]
                self._withdraw(agent, call_id)
                out.append(OfferExpired(agent_id, call_id))
                out.append(self._move(agent, "no_answer", now, MISSED_CALL))
        for w in self.waiting.values():
            if not w.max_wait_signalled and now - w.enqueued_at >= self._config(w.queue).max_wait:
                w.max_wait_signalled = True
                out.append(MaxWaitReached(w.call_id, w.queue))
        for agent in self.agents.values():
            if agent.wrap_until is not None and agent.owes is not None and now >= agent.wrap_until:
                out.append(WrapUpExpired(agent.id, agent.owes))
                agent.owes = agent.wrap_until = None
                if agent.presence == "wrap_up":
                    out.append(self._move(agent, "available", now, WRAP_UP_TIMED_OUT))
        return out + self.dispatch(now)

    # -- what a caller is told ------------------------------------------------

    def position(self, call_id: str) -> int:
        """1 for the next call to be served."""
        self._waiting(call_id)
        return next(i for i, w in enumerate(self.line(), 1) if w.call_id == call_id)

    @property
    def average_handle_time(self) -> float:
        if not self._handle_times:
            return DEFAULT_HANDLE_TIME
        return sum(self._handle_times) / len(self._handle_times)

    def expected_wait(self, call_id: str) -> float | None:
        """Seconds until an agent is likely free; None when no agent is staffed (an agent
        whose clients are all gone is not: they may not be there)."""
        w = self._waiting(call_id)
        staffed = [
            a
            for a in self.agents.values()
            if a.presence in STAFFED
            and a.id not in self.absent
            and (a.id == w.target if w.target else w.skills <= a.skills)
        ]
        if not staffed:
            return None
        if w.offered_to is not None:
            return 0.0  # ringing an agent right now
        if any(a.presence == "available" for a in staffed) and self.position(call_id) == 1:
            return 0.0
        return self.position(call_id) / len(staffed) * self.average_handle_time
