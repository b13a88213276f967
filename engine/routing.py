"""Routing: what the contact center does with a call that needs a person. Sans-IO.

Theory of operation
-------------------
``Routing`` owns the ACD (engine/acd.py) and drives it: which queue a call goes to
(the queue of its skill, else the first), the priority it waits with, the positions
its line is told, what agents' presence changes mean (stored, published), what an
offer carries to the agent and to their desk phone, and what a declined, expired or
withdrawn offer, a caller who leaves or an agent who goes means for everyone else.

Every decision is a generator of effects, the pattern of engine/analysis.py:

    Emit        an event for the bus (offers, withdrawn offers, positions, presence)
    Record      a row the engine must not lose (an agent's presence change)
    UpdateCall  values set on a call's record (the queue it waits in)
    Announce    a prompt to a waiting caller (their place in line, a callback offer)
    Transition  the call's state machine moves (engine/callstate.py: ``queue``)
    Ring        ring the agent's desk phone along with their browser (engine/sip.py)
    StopRinging the desk phone stops: the offer was answered, declined or withdrawn
    Replicate   several engines: the decision is made in the shared routing log
                (engine/routingcopy.py, engine/routinglog.py), never here
    WrapUpTimedOut  an agent gave no disposition in time: "timed-out" is stored with
                the call and told, as a wrap-up would be (about the agent: the engine
                that asked applies it, since the call may have ended on any)

Routing never does IO. The engine applies each effect before it asks for the next
(``CallManager._route``), so a decision goes on from the state the effect left,
exactly as when the call manager did it inline: a prompt is synthesised and the line
may have moved meanwhile. An ``AcdError`` (an agent signed out, a call no longer
waiting) comes out of the generator as it came out of the ACD. Tests drive it with a
fake clock and lists (tests/test_routing.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import assert_never

from pydantic import ValidationError

from engine.acd import (
    DEFAULT_QUEUES,
    Acd,
    AcdError,
    MaxWaitReached,
    Offer,
    OfferExpired,
    PresenceChanged,
    QueueConfig,
    WrapUpExpired,
)
from engine.acd import Action as AcdAction
from engine.analysis import Emit, summary_of
from engine.callstate import MAX_WAIT_PROMPT, NotAllowed, queue_announcement
from engine.escalation import Decision
from engine.events import (
    AgentPresenceChanged,
    CallOffered,
    OfferWithdrawn,
    QueueUpdated,
    utcnow,
)
from engine.livecall import Call
from engine.liveness import DISCONNECTED, Liveness
from engine.store.models import Base, OverrideRow, PresenceRow, UserRow

log = logging.getLogger(__name__)


# -- what routing asks to be done -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """A row the engine must not lose: written now or once storage is back."""

    what: str  # for the log, if storage fails and it waits in the spool
    row: Base  # an agent's presence change; a transfer's note, a new leg (engine/controls.py)


@dataclass(frozen=True, slots=True)
class UpdateCall:
    """Values set on a call's record, kept like ``Record``."""

    what: str
    call_id: str
    values: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Announce:
    """Say ``text`` to the caller if, once it is synthesised, the call is still in one
    of ``while_state`` (an agent may answer meanwhile)."""

    call: Call
    text: str
    while_state: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Transition:
    call: Call
    event: str
    reason: str | None
    values: Mapping[str, object] = field(default_factory=dict)  # set on the record with it


@dataclass(frozen=True, slots=True)
class Ring:
    """The agent's desk phone rings with the call, if they have one."""

    agent_id: str
    username: str
    call_id: str
    caller: str | None


@dataclass(frozen=True, slots=True)
class StopRinging:
    call_id: str


@dataclass(frozen=True, slots=True)
class Replicate:
    """With several engines: this decision is made by every engine's copy of routing,
    in the one order of the shared routing log (engine/routingcopy.py); the engine asks
    for it there and applies what falls to it. ``op``: the decision as plain data."""

    op: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class WrapUpTimedOut:
    """The agent owed ``call_id`` a disposition past the wrap-up limit: the engine
    stores and tells ``TIMED_OUT`` as that call's wrap-up, by ``username``, unless a
    wrap-up was saved for the call since ``since`` (when they began to owe it; None:
    not known here, as in a copy of routing restored from another engine's): the
    agent's own save may be written just before routing hears of it."""

    agent_id: str
    username: str
    call_id: str
    since: datetime | None = None


TIMED_OUT = "timed-out"  # the disposition the engine gives when the agent did not

Effect = (
    Emit | Record | UpdateCall | Announce | Transition | Ring | StopRinging | Replicate
    | WrapUpTimedOut
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """What the desk shows of an agent, besides who they are: wall-clock times, for
    people (the ACD's own clock is monotonic, and with several engines Redis's)."""

    presence: str
    away_reason: str | None = None
    since: datetime | None = None  # in this presence since
    wrap_up_call: str | None = None  # the call waiting for their disposition
    wrap_up_since: datetime | None = None
    wrap_up_ends_at: datetime | None = None  # when the engine gives "timed-out"


def escalated(call: Call, reason: str, *, at: bool = True) -> UpdateCall:
    """Why ``call`` goes to a person, set on the call; the update that keeps it with its
    record (with the time, unless ``at`` is False)."""
    call.escalation_reason = reason
    values: dict[str, object] = {"escalation_reason": reason}
    if at:
        values["escalated_at"] = utcnow()
    return UpdateCall(f"call {call.id} escalation", call.id, values)


class Routing:
    """The ACD and the decisions around it, for the calls of ``calls`` (the engine's
    live calls, read only: the same mapping object for the engine's life). ``clock``:
    monotonic seconds, what the ACD runs on. ``disconnect_after``: seconds an agent whose
    every client has gone keeps their presence before they are made away
    (engine/liveness.py).

    Each decision is a generator that updates the ACD and the live call as it goes and
    yields the effects for the engine to apply: run every one to its end (the engine's
    ``_route`` does); one stopped early leaves a decision half made."""

    def __init__(
        self,
        queues: list[QueueConfig],
        offer_timeout: float,
        calls: Mapping[str, Call],
        clock: Callable[[], float] = time.monotonic,
        disconnect_after: float = 10.0,
        wrap_up_limit: float = 0.0,
    ) -> None:
        self.acd = Acd(queues, offer_timeout, wrap_up_limit)
        self.liveness = Liveness(disconnect_after)
        self.calls = calls
        self.clock = clock
        # the agents who have signed in, for events and desk phones (the ACD knows ids)
        self._usernames: dict[str, str] = {}
        # for the desk, in wall-clock time: since when each agent is in their presence,
        # and since when they owe which call its disposition (the ACD decides; this shows)
        self._since: dict[str, datetime] = {}
        self._owed: dict[str, tuple[str, datetime]] = {}

    # -- queues ---------------------------------------------------------------------

    def load_overrides(self, rows: Iterable[OverrideRow]) -> None:
        """Queues changed through the API win over the queues file (``config`` None:
        removed)."""
        for row in rows:
            if row.config is None:  # removed
                if row.name in self.acd.queues:
                    self.acd.close_queue(row.name)  # its callers here are still served
                    if row.name in self.acd.closing:
                        log.info("queue %s removed elsewhere: closed to new callers, "
                                 "gone once those waiting here are served", row.name)  # fmt: skip
                continue
            try:
                self.acd.set_queue(QueueConfig.model_validate(row.config))
            except ValidationError as exc:  # kept by an older version that let it in
                log.error("queue %s in the database is not valid, left out: %s", row.name, exc)
        if not self.acd.queues:  # never start without a queue to put callers in
            self.acd.set_queue(DEFAULT_QUEUES[0])

    def queue_for(self, skill: str | None) -> str:
        """The first queue with ``skill``; without one, the first queue."""
        if skill:
            for q in self.acd.queues.values():
                if skill in q.skills:
                    return q.name
        return next(iter(self.acd.queues))

    # -- agents: what they are --------------------------------------------------------

    def presence_of(self, user_id: str) -> str:
        agent = self.acd.agents.get(user_id)
        return agent.presence if agent else "offline"

    def status(self, user_id: str) -> AgentStatus:
        """The agent's presence, why they are away, since when, and the call they owe a
        disposition with its wrap-up deadline."""
        agent = self.acd.agents.get(user_id)
        if agent is None:
            return AgentStatus("offline")
        owed = self._owed.get(user_id)
        wrap_since = owed[1] if owed is not None and owed[0] == agent.owes else None
        ends = None
        if wrap_since is not None and self.acd.wrap_up_limit > 0:
            ends = wrap_since + timedelta(seconds=self.acd.wrap_up_limit)
        return AgentStatus(
            agent.presence, agent.away_reason, self._since.get(user_id), agent.owes,
            wrap_since, ends,
        )  # fmt: skip

    def offered_to(self, user_id: str, call_id: str) -> bool:
        agent = self.acd.agents.get(user_id)
        return agent is not None and agent.offered == call_id

    def agent_named(self, username: str) -> str | None:
        """The id of the signed-in agent with this username, if any."""
        return next((uid for uid, name in self._usernames.items() if name == username), None)

    def username(self, agent_id: str, default: str = "") -> str:
        return self._usernames.get(agent_id, default)

    # -- calls that need a person -----------------------------------------------------

    def escalation(self, call: Call, decision: Decision, *, to_person: bool) -> Iterator[Effect]:
        """An escalation decision, already stored and told: the first that routes to a
        human puts an active call in the queue; any other raises a waiting call's
        place in it, if the rule raised its priority."""
        if to_person and call.state == "active":
            yield from self.enqueue(call, decision.skill or call.topic)
        elif call.id in self.acd.waiting:
            yield from self.sync_priority(call)

    def requested(
        self, call: Call, *, queue: str | None = None, agent: str | None = None
    ) -> Iterator[Effect]:
        """A call for a named queue or agent (a call link, a dialled agent): a queue
        removed since goes to the default queue, and an agent who signed out since
        leaves the call to whoever is free in the queue."""
        if queue is not None and queue not in self.acd.queues:
            queue = None
        try:
            yield from self.enqueue(call, None, queue=queue, agent=agent)
        except AcdError:
            yield from self.enqueue(call, None, queue=queue)

    def enqueue(
        self,
        call: Call,
        skill: str | None,
        *,
        queue: str | None = None,
        agent: str | None = None,
    ) -> Iterator[Effect]:
        """Put the call in line for ``queue`` (else the queue of ``skill``), for
        ``agent`` alone if given; ``AcdError`` if that agent is offline."""
        queue = queue if queue in self.acd.queues else self.queue_for(skill)
        # no queue for that skill: wait in the default queue for an agent who has it
        skills = {skill} if skill and skill not in self.acd.queues[queue].skills else set()
        call.queue_name, call.queued_at = queue, self.clock()
        # for listing calls by queue; a failing disk must not keep the caller from a person
        yield UpdateCall(f"call {call.id} queue", call.id, {"queue": queue})
        if call.ended.is_set():
            # the caller hung up (a call's last words are handled as it ends): end_call
            # has left the queue already, and nothing else would take it out again
            return
        # the call's whole priority so far, including rules that fired before routing
        call.queued_priority = call.escalation.priority
        actions = self.acd.enqueue(
            call.id, queue, call.queued_at, priority=call.queued_priority, skills=skills,
            agent=agent,
        )  # fmt: skip
        yield Transition(call, "queue", queue)
        # ring an agent before speaking to the caller: the prompt's synthesis takes a
        # moment that the agent should not wait for
        yield from self.actions(actions)
        yield from self.queue_changed(announce=call)

    def sync_priority(self, call: Call) -> Iterator[Effect]:
        """Bring the ACD up to the call's priority (rules may raise it while it waits)."""
        raised = call.escalation.priority - call.queued_priority
        if raised > 0:
            call.queued_priority = call.escalation.priority
            actions = self.acd.raise_priority(call.id, raised, self.clock())
            yield from self.queue_changed()
            yield from self.actions(actions)

    def leave(self, call: Call, reason: str) -> Iterator[Effect]:
        """The caller leaves the line (hung up, chose a callback): an agent it rang is
        told why and freed, and the callers behind move up. A call not in line may
        still ring a colleague for a consult (engine/consulting.py): that ring is
        withdrawn, so that the call's end frees them whoever tells it (with several
        engines, a survivor ending the call of a dead one: its ``orphan``)."""
        if (waiting := self.acd.waiting.get(call.id)) is None:
            if (offer := self.acd._offers.get(call.id)) is not None:
                yield from self._withdraw_consult(offer[0], call.id, reason)
            return
        if waiting.offered_to is not None:
            yield Emit(OfferWithdrawn(call_id=call.id, agent_id=waiting.offered_to, reason=reason))
            yield StopRinging(call.id)
        yield from self.actions(self.acd.remove(call.id, self.clock()))
        yield from self.queue_changed()

    def queue_changed(self, announce: Call | None = None) -> Iterator[Effect]:
        """Tell every waiting caller whose place changed where they stand; say it to
        ``announce``."""
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
                yield Announce(call, text, ("queued",))
            yield Emit(
                QueueUpdated(
                    call_id=call.id,
                    queue=waiting.queue,
                    position=position,
                    priority=waiting.priority,
                    expected_wait=None if wait is None else round(wait, 1),
                    announcement=text,
                )
            )

    # -- agents: what they do ---------------------------------------------------------

    def presence(self, user: UserRow, event: str, reason: str | None = None) -> Iterator[Effect]:
        """An agent asks to log in, go available or away (``reason``: why), or log out;
        "available" is refused while they owe a call its disposition (``WrapUpOwed``)."""
        self._usernames[user.id] = user.username
        self.acd.add_agent(user.id, set(user.skills))
        if self.liveness.away_from_desk(user.id):  # a click from a desk that has gone since
            self.acd.absent.add(user.id)
        yield from self.actions(self.acd.presence(user.id, event, self.clock(), reason))

    def wrapped_up(self, user: UserRow, call_id: str, then: str) -> Iterator[Effect]:
        """``user`` gave ``call_id`` its disposition (stored already): if they owed it
        they owe nothing now, and from wrap-up they go on to ``then``. A supervisor's or
        admin's save settles it for every agent who owed it; another agent's, only
        their own (engine/acd.py)."""
        if user.id in self.acd.agents:
            self._usernames[user.id] = user.username
        for_all = user.role != "agent"
        actions = self.acd.wrapped_up(user.id, call_id, self.clock(), then, for_all=for_all)
        yield from self.actions(actions)

    def user_changed(self, user: UserRow) -> Iterator[Effect]:
        """Skills changed take effect for the next offer; a removed role stops offers."""
        if user.id in self.acd.agents:
            if user.role == "agent":
                self.acd.add_agent(user.id, set(user.skills))
            else:
                yield from self.agent_gone(user.id)

    def agent_gone(self, user_id: str) -> Iterator[Effect]:
        """The person can no longer take calls (removed, or no longer an agent)."""
        agent = self.acd.agents.get(user_id)
        if agent is None:
            return
        if agent.presence in ("ringing", "on_call"):
            raise NotAllowed("this agent is ringing or on a call; try again after it")
        if agent.presence != "offline":
            yield from self.actions(self.acd.presence(user_id, "logout", self.clock()))
        del self.acd.agents[user_id]

    def has_queue(self, name: str) -> bool:
        return name in self.acd.queues

    def set_queue(self, config: QueueConfig) -> None:
        self.acd.set_queue(config)

    def remove_queue(self, name: str) -> None:
        self.acd.remove_queue(name)

    def check_ringing(self, agent_id: str, call_id: str) -> None:
        """``AcdError`` unless the call rings for that agent now: checked before an
        answer's media work starts."""
        self.acd.ringing(agent_id, call_id)

    def answered(self, agent_id: str, call_id: str) -> Iterator[Effect]:
        """The agent answered the offer. The ACD is told at once, so an offer that
        stopped ringing meanwhile (timed out, the caller left) raises ``AcdError``
        here, before the caller commits the answer; the effects follow."""
        return self.actions(self.acd.accept(agent_id, call_id, self.clock()))

    def transfer(
        self, call: Call, queue: str, agent_id: str | None, since: float
    ) -> Iterator[Effect]:
        """A transferred call waits again in ``queue`` from ``since`` (when the agent
        let go of it), for ``agent_id`` alone if given (falling back to the queue if
        they decline or let it ring out)."""
        call.queued_priority = call.escalation.priority
        actions = self.acd.enqueue(
            call.id, queue, since, priority=call.queued_priority, agent=agent_id
        )
        yield from self.queue_changed()
        yield from self.actions(actions)

    def consult_offer(self, call: Call, agent_id: str) -> Iterator[Effect]:
        """Ring ``agent_id`` for a consult on ``call`` (engine/consult.py): the call
        stays with its agent, and is not queued."""
        yield from self.actions(self.acd.offer_to(agent_id, call.id, self.clock()))

    def consult_withdraw(self, agent_id: str, call_id: str) -> Iterator[Effect]:
        """A consult's ring taken back (the host cancelled, the caller hung up)."""
        yield from self._withdraw_consult(agent_id, call_id, "cancelled")

    def _withdraw_consult(self, agent_id: str, call_id: str, reason: str) -> Iterator[Effect]:
        """The colleague's ring for ``call_id`` ends (``reason``, told to their desk)
        and they are available: a caller waiting in line is offered to them now, not
        at the next change."""
        now = self.clock()
        withdrawn = self.acd.withdraw(agent_id, call_id, now)
        if not withdrawn:
            return  # not ringing them (answered, declined or rung out already)
        told = [
            OfferExpired(a.agent_id, a.call_id, reason) if isinstance(a, OfferExpired) else a
            for a in withdrawn
        ]
        yield from self.actions([*told, *self.acd.dispatch(now)])

    def default_queue(self) -> str:
        return next(iter(self.acd.queues))

    def decline(self, user_id: str, call_id: str) -> Iterator[Effect]:
        """The agent turned the call down: the next agent is offered it."""
        actions = self.acd.decline(user_id, call_id, self.clock())
        yield StopRinging(call_id)
        yield Emit(OfferWithdrawn(call_id=call_id, agent_id=user_id, reason="declined"))
        yield from self.actions(actions)

    def hung_up(
        self, agent_id: str | None, since: float | None, call_id: str | None = None
    ) -> Iterator[Effect]:
        """The agent's part of a call bridged at ``since`` ended: on to wrap-up
        (``since`` None: when is not known, and the call's length is not learned), owing
        ``call_id`` its disposition."""
        if agent_id is not None and agent_id in self.acd.agents:
            now = self.clock()
            took = None if since is None else now - since
            yield from self.actions(self.acd.hangup(agent_id, now, took, call_id))
            if self.liveness.state(agent_id) == "vanished":  # their desk went during it
                yield from self._vanished(agent_id)

    # -- agents: whether they are there (engine/liveness.py) --------------------------

    def clients(self, user_id: str, holder: str, streams: int) -> Iterator[Effect]:
        """``holder`` (an engine) now holds ``streams`` open event streams of the agent:
        with none left anywhere they are offered nothing, and made away once
        ``disconnect_after`` s pass without one (``tick``)."""
        now = self.clock()
        self.liveness.count(user_id, holder, streams, now)
        yield from self._follow_liveness(now)

    def holder_lost(self, holder: str) -> Iterator[Effect]:
        """An engine died: the streams it held are gone (engine/routinglog.py)."""
        now = self.clock()
        self.liveness.holder_lost(holder, now)
        yield from self._follow_liveness(now)

    def _follow_liveness(self, now: float) -> Iterator[Effect]:
        """The ACD's absent agents made to agree with liveness (a few agents: all looked at)."""
        for agent_id in list(self.acd.agents):
            absent = self.liveness.away_from_desk(agent_id)
            if absent != (agent_id in self.acd.absent):
                yield from self.actions(self.acd.set_absent(agent_id, absent, now))

    def _vanished(self, agent_id: str) -> Iterator[Effect]:
        """Every client of the agent gone for ``disconnect_after`` s: away now, and a call
        ringing them goes on to the next agent; on a call, after it (``hung_up``)."""
        agent = self.acd.agents.get(agent_id)
        if agent is not None and agent.presence == "on_call":
            return  # the call's own media tells whether it goes on
        self.liveness.forget(agent_id)
        self.acd.absent.discard(agent_id)
        if agent is None or agent.presence not in ("available", "ringing", "wrap_up"):
            return  # away or signed out already: nothing to change
        log.info("agent %s: every desk of theirs is gone; set away", agent_id)
        yield from self.actions(self.acd.disconnect(agent_id, self.clock(), DISCONNECTED))

    # -- the ACD's timers and actions -------------------------------------------------

    def next_timer(self) -> float | None:
        times = [t for t in (self.acd.next_timer(), self.liveness.next_timer()) if t is not None]
        return min(times) if times else None

    def tick(self) -> Iterator[Effect]:
        """Agents whose desks are gone, offers that rang out, callers who waited the
        queue's maximum."""
        for agent_id in self.liveness.due(self.clock()):
            yield from self._vanished(agent_id)
        yield from self.actions(self.acd.tick(self.clock()))

    def actions(self, actions: Iterable[AcdAction]) -> Iterator[Effect]:
        """What the ACD decided, told: presence kept and published, offers to the agent
        and their desk phone, expired offers withdrawn, long waits offered a callback."""
        for a in actions:
            if isinstance(a, PresenceChanged):
                at = utcnow()
                self._since[a.agent_id] = at
                agent = self.acd.agents.get(a.agent_id)
                if agent is not None and agent.owes is not None:
                    if self._owed.get(a.agent_id, ("",))[0] != agent.owes:
                        self._owed[a.agent_id] = (agent.owes, at)
                else:
                    self._owed.pop(a.agent_id, None)
                # kept, not raised: a failing disk must not stop the routing half-done
                row = PresenceRow(
                    user_id=a.agent_id, presence=a.presence, previous=a.previous, at=at,
                    reason=a.reason,
                )  # fmt: skip
                yield Record(f"agent {a.agent_id} presence", row)
                yield Emit(
                    AgentPresenceChanged(
                        agent_id=a.agent_id,
                        username=self._usernames.get(a.agent_id, ""),
                        presence=a.presence,
                        previous=a.previous,
                        reason=a.reason,
                    )
                )
            elif isinstance(a, Offer):
                offered = self.offered(a)
                yield Emit(offered)
                username = self._usernames.get(a.agent_id, "")
                yield Ring(a.agent_id, username, a.call_id, offered.caller)
            elif isinstance(a, OfferExpired):
                yield StopRinging(a.call_id)
                yield Emit(OfferWithdrawn(call_id=a.call_id, agent_id=a.agent_id, reason=a.reason))
            elif isinstance(a, MaxWaitReached):  # a callback instead of more waiting
                yield from self.offer_callback(a.call_id)
            elif isinstance(a, WrapUpExpired):
                owed = self._owed.pop(a.agent_id, None)
                since = owed[1] if owed is not None and owed[0] == a.call_id else None
                username = self._usernames.get(a.agent_id, "")
                yield WrapUpTimedOut(a.agent_id, username, a.call_id, since)
            else:
                assert_never(a)

    def offered(self, offer: Offer) -> CallOffered:
        """What the agent sees while the call rings: everything so far."""
        call = self.calls[offer.call_id]
        now = self.clock()
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
            summary=summary_of(call),
            previous_calls=call.previous_calls,
            transferred_by=call.transferred_by,
            transfer_note=call.transfer_note,
            intent=call.intent,
            customer_id=call.customer_id,
            verified_by=call.verified_by,
            attestation=call.attestation,
            consult_from=call.consult.host if call.consult is not None else None,
        )

    def offer_callback(self, call_id: str) -> Iterator[Effect]:
        call = self.calls.get(call_id)
        waiting = self.acd.waiting.get(call_id)
        if call is None or waiting is None:
            return
        log.info("call %s has waited the queue's maximum: offering a callback", call_id)
        yield Announce(call, MAX_WAIT_PROMPT, ("queued",))
        yield Emit(
            QueueUpdated(
                call_id=call.id,
                queue=waiting.queue,
                position=self.acd.position(call_id),
                priority=waiting.priority,
                expected_wait=self.acd.expected_wait(call_id),
                announcement=MAX_WAIT_PROMPT,
                callback_offered=True,
            )
        )
