"""Routing shared by several engines: every engine keeps a copy. Sans-IO.

Theory of operation
-------------------
With several engines (``CCENGINE_REDIS_URL``) the ACD must be one: a caller on one node
is offered to an agent signed in on another, and no agent is offered two calls at once
by two nodes. Here routing (engine/routing.py over the ACD) is *replicated*: every node
keeps a ``RoutingCopy`` and applies the same operations in the same order, the order of
one Redis stream (engine/routinglog.py). Routing is deterministic: the same operations
at the same times (each operation's time is its stream entry's, Redis's clock) make the
same decisions on every copy. So one decision is made once, by all, with no leader to
elect for it and no decision lost when a node dies; a leader only keeps time (it asks
for the timer ticks: offers ringing out, callers waiting their maximum) and hands a
copy to a node that joins.

A node asks for a decision with an operation (``Op``, plain JSON) and waits until its
copy has applied it: what ``Routing`` would have raised (``AcdError``, ``NotAllowed``)
comes back to the one that asked. ``SharedRouting`` is what the node's code talks to: the
same methods as ``Routing``; those that decide yield one ``Replicate`` effect (the
operation) instead of deciding, those that read answer from the node's copy.

Calls are known to the copies by a card (``CallCard``): the fields routing decides by
(state, priority, skill, reason), taken when the operation is asked for. Every copy,
the node running the call included, routes a *shadow* of the call made from its cards,
never the live call: a live call changes between asking and applying, and every copy
must read the same values. Each effect is applied by one node (``owner_of``):

    Announce, Transition, UpdateCall, Ring, StopRinging     the node running the call
    Emit of an event about a call (offers, positions)       the node running the call
    Emit of an event about a person (presence), Record      the node that asked

The node running a call puts its shadow's queue and place on the live call, and fills
an offer with the live call's summary, mood and history as it sends it.

A consult (engine/consulting.py) rings a colleague for a call that is with its agent,
not in line: "consult_offer" makes the call's shadow for that operation alone, long
enough for the offer to be made of it, and the node running the call says who consults
as it sends the offer. The ring is timed like any offer (the leader's ticks); answering,
declining and withdrawing it ("consult_withdraw") are operations too, and so is the call
leaving for good ("leave"), which withdraws a ring still going: when a survivor ends the
call of a dead engine, no one else would (its ``orphan`` makes the survivor tell it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

from engine.acd import AcdError, Agent, QueueConfig, Waiting
from engine.analysis import Emit, summary_of
from engine.callstate import NotAllowed
from engine.escalation import Decision
from engine.events import CallOffered, utcnow
from engine.livecall import Call
from engine.routing import (
    Announce,
    Effect,
    Replicate,
    Ring,
    Routing,
    StopRinging,
    Transition,
    UpdateCall,
)
from engine.store.models import OverrideRow, UserRow
from media.asr import ModelChoice

log = logging.getLogger(__name__)

Op = dict[str, Any]
# 2: enforced wrap-up (the "wrapped_up" operation, agents' debts): an engine of version
# 1 refuses "wrapped_up" and lets an agent who owes a disposition go available, so its
# copy would silently part from the others'. The versions refuse each other's copies
# instead; the engines of a cluster are upgraded together (all stopped, then started).
# 3: consults across engines (the "consult_offer" and "consult_withdraw" operations): an
# engine of version 2 refuses them, leaving the consulted agent available in its copy
# while the others have them ringing, and would offer them a second call.
SNAPSHOT_VERSION = 3
# calls remembered as gone from the line for good (hung up, a callback instead): an
# operation asked for before the call left may be appended after it (two engines, or
# two connections of one), and must not put the call back in line as a ghost
LEFT_KEPT = 10_000
# the reason a call leaves the line when its engine stopped answering (engine/routinglog.py):
# it may come back, so it is not among the calls that left for good
SILENT = "node_silent"


class CallCard:
    """What routing decides a call by, as the node running it saw it when it asked: a
    JSON object with id, channel, caller, state, ended, priority, topic and
    escalation_reason (``_shadow`` reads them)."""

    @staticmethod
    def of(call: Call) -> dict[str, Any]:
        return {
            "id": call.id, "channel": call.channel, "caller": call.caller, "state": call.state,
            "ended": call.ended.is_set(), "priority": call.escalation.priority,
            "topic": call.topic, "escalation_reason": call.escalation_reason,
        }  # fmt: skip

    @staticmethod
    def ended(call_id: str) -> dict[str, Any]:
        """The card of a call that has ended, known by its id alone (its engine died)."""
        return {
            "id": call_id, "channel": "", "caller": None, "state": "ended", "ended": True,
            "priority": 0, "topic": None, "escalation_reason": None,
        }  # fmt: skip


def user_card(user: UserRow) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "skills": list(user.skills or []),
            "role": user.role}  # fmt: skip


def _user(card: Mapping[str, Any]) -> UserRow:
    return UserRow(
        id=card["id"], username=card["username"], skills=list(card["skills"]), role=card["role"]
    )


def _decision(skill: str | None) -> Decision:
    return Decision(rule_id="", reason="", actions=[], priority=0, skill=skill, at=0.0, evidence={})


class RoutingCopy:
    """One node's copy of the contact center's routing: ``apply`` each operation of the
    shared log in its order, with its time."""

    def __init__(
        self,
        queues: list[QueueConfig],
        offer_timeout: float,
        disconnect_after: float = 10.0,
        wrap_up_limit: float = 0.0,
    ) -> None:
        self.queues = queues  # the queues file's, for a reset
        self.offer_timeout = offer_timeout
        self.disconnect_after = disconnect_after
        self.wrap_up_limit = wrap_up_limit
        self.now = 0.0  # the time of the operation being applied (seconds, Redis's clock)
        self.shadows: dict[str, Call] = {}
        # the engine running each waiting call: the one that sent its latest live card
        # (a call's operations come from its engine; call actions are sent on to it)
        self.nodes: dict[str, str] = {}
        self.left: dict[str, None] = {}  # the calls that left the line for good, oldest first
        self.routing = Routing(
            queues, offer_timeout, self.shadows, clock=lambda: self.now,
            disconnect_after=disconnect_after, wrap_up_limit=wrap_up_limit,
        )  # fmt: skip

    # -- operations ---------------------------------------------------------------

    def apply(self, op: Mapping[str, Any], now: float) -> tuple[list[Effect], Exception | None]:
        """Apply ``op`` at ``now``: the effects it made, in order, and the refusal that
        stopped it (the effects before it stand, as they would on one node)."""
        self.now = now
        effects: list[Effect] = []
        error: Exception | None = None
        card = op.get("call")
        if op["op"] != "leave" and isinstance(card, Mapping) and card.get("id") in self.left:
            # asked for before the call left for good: too late (a consult's host is told:
            # no colleague rings for it)
            if op["op"] == "consult_offer":
                return effects, AcdError(f"call {card['id']} has ended")
            return effects, None
        if isinstance(card, Mapping) and not card.get("ended") and op.get("origin"):
            self.nodes[str(card["id"])] = str(op["origin"])
        try:
            for effect in self._run(op):
                effects.append(effect)
        except (AcdError, NotAllowed) as exc:
            error = exc
        except Exception as exc:  # a bug: every copy fails alike, and the asker is told
            log.exception("routing: %s failed in this engine's copy", op["op"])
            error = exc
        finally:
            # a call whose engine went silent may come back (the engine was cut off, not
            # dead): it is not gone for good
            if op["op"] == "leave" and isinstance(card, Mapping) and op["reason"] != SILENT:
                self.left[str(card["id"])] = None
                while len(self.left) > LEFT_KEPT:
                    del self.left[next(iter(self.left))]
            # a shadow lives while its call waits: the decisions routing makes of calls
            # are made of waiting calls (the card of the next operation brings it back)
            for call_id in [c for c in self.shadows if c not in self.routing.acd.waiting]:
                del self.shadows[call_id]
                self.nodes.pop(call_id, None)
        return effects, error

    def _run(self, op: Mapping[str, Any]) -> Iterator[Effect]:
        r = self.routing
        kind = op["op"]
        if kind == "escalation":
            call = self._shadow(op["call"])
            yield from r.escalation(call, _decision(op["skill"]), to_person=op["to_person"])
        elif kind == "requested":
            yield from r.requested(self._shadow(op["call"]), queue=op["queue"], agent=op["agent"])
        elif kind == "enqueue":
            call = self._shadow(op["call"])
            yield from r.enqueue(call, op["skill"], queue=op["queue"], agent=op["agent"])
        elif kind == "sync_priority":
            yield from r.sync_priority(self._shadow(op["call"]))
        elif kind == "leave":
            yield from r.leave(self._shadow(op["call"]), op["reason"])
        elif kind == "queue_changed":
            yield from r.queue_changed(self.shadows.get(op["announce"] or ""))
        elif kind == "presence":
            yield from r.presence(_user(op["user"]), op["event"], op.get("reason"))
        elif kind == "wrapped_up":
            yield from r.wrapped_up(_user(op["user"]), op["call_id"], op["then"])
        elif kind == "user_changed":
            yield from r.user_changed(_user(op["user"]))
        elif kind == "agent_gone":
            yield from r.agent_gone(op["user_id"])
        elif kind == "answered":
            yield from r.answered(op["agent"], op["call_id"])
            yield from r.queue_changed()
        elif kind == "transfer":
            call = self._shadow(op["call"])
            call.queue_name, call.queued_at, call.queue_position = op["queue"], self.now, None
            yield from r.transfer(call, op["queue"], op["agent"], self.now)
        elif kind == "decline":
            yield from r.decline(op["user_id"], op["call_id"])
        elif kind == "consult_offer":
            # the call is with its agent, not in line: its shadow lives for this operation
            # (long enough for the offer to be made of it), and the offer says the queue
            # it came through and no wait (the colleague is asked now)
            call = self._shadow(op["call"])
            call.queue_name, call.queued_at = op.get("queue"), self.now
            yield from r.consult_offer(call, op["agent"])
        elif kind == "consult_withdraw":
            yield from r.consult_withdraw(op["agent"], op["call_id"])
        elif kind == "hung_up":
            took = None if op.get("unknown_length") else op["handle_time"]  # a call cut off
            since = None if took is None else self.now - took
            yield from r.hung_up(op["agent"], since, op.get("call_id"))
        elif kind == "tick":
            yield from r.tick()
        elif kind == "clients":  # the streams the engine that asked holds of an agent
            yield from r.clients(op["user_id"], str(op["origin"]), int(op["streams"]))
        elif kind == "holder_lost":
            yield from r.holder_lost(op["holder"])
        elif kind == "set_queue":
            r.set_queue(QueueConfig.model_validate(op["config"]))
        elif kind == "remove_queue":
            r.remove_queue(op["name"])
        elif kind == "queues":
            rows = [
                OverrideRow(
                    kind="queue", name=name, config=config, updated_by="", updated_at=utcnow()
                )
                for name, config in op["rows"]
            ]
            r.load_overrides(rows)
        else:
            raise AcdError(f"unknown routing operation {kind!r}")

    def _shadow(self, card: Mapping[str, Any]) -> Call:
        """The call's shadow, made or brought up to date from its card."""
        call = self.shadows.get(card["id"])
        if call is None:
            call = Call(
                card["id"], card["channel"], "en", ModelChoice("en", None, None), card["caller"],
                utcnow(),
            )  # fmt: skip
            self.shadows[call.id] = call
        call.state = card["state"]
        call.escalation.priority = card["priority"]
        call.topic = card["topic"]
        call.escalation_reason = card["escalation_reason"]
        if card["ended"]:
            call.ended.set()
        return call

    # -- a copy for a node that joins ---------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The copy as plain data, for a node that joins (``restore``)."""
        acd, r = self.routing.acd, self.routing
        return {
            "version": SNAPSHOT_VERSION,
            "offer_timeout": acd.offer_timeout,
            "wrap_up_limit": acd.wrap_up_limit,
            "queues": [q.model_dump() for q in acd.queues.values()],
            "closing": [q.model_dump() for q in acd.closing.values()],
            "agents": [
                {
                    "id": a.id,
                    "skills": sorted(a.skills),
                    "presence": a.presence,
                    "idle_since": a.idle_since,
                    "offered": a.offered,
                    "since": a.since,
                    "away_reason": a.away_reason,
                    "owes": a.owes,
                    "wrap_until": a.wrap_until,
                }
                for a in acd.agents.values()
            ],  # fmt: skip
            "waiting": [
                {
                    "call_id": w.call_id,
                    "queue": w.queue,
                    "priority": w.priority,
                    "enqueued_at": w.enqueued_at,
                    "skills": sorted(w.skills),
                    "declined_by": sorted(w.declined_by),
                    "offered_to": w.offered_to,
                    "max_wait_signalled": w.max_wait_signalled,
                    "target": w.target,
                }
                for w in acd.waiting.values()
            ],  # fmt: skip
            "offers": {c: [a, exp] for c, (a, exp) in acd._offers.items()},
            "handle_times": list(acd._handle_times),
            "usernames": dict(r._usernames),
            "liveness": r.liveness.snapshot(),
            "left": list(self.left),
            "shadows": [
                CallCard.of(c)
                | {
                    "queue_name": c.queue_name,
                    "queue_position": c.queue_position,
                    "queued_priority": c.queued_priority,
                    "queued_at": c.queued_at,
                    "node": self.nodes.get(c.id),
                }
                for c in self.shadows.values()
            ],  # fmt: skip
        }

    def restore(self, snap: Mapping[str, Any]) -> None:
        """Become the copy ``snapshot`` made."""
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"routing snapshot version {snap.get('version')} is not this engine's "
                f"({SNAPSHOT_VERSION}): engines of another version share this routing log; "
                "stop them all and start them on one version"
            )
        self.reset([QueueConfig.model_validate(q) for q in snap["queues"]], snap["offer_timeout"])
        acd, r = self.routing.acd, self.routing
        acd.closing = {q["name"]: QueueConfig.model_validate(q) for q in snap["closing"]}
        for a in snap["agents"]:
            acd.agents[a["id"]] = Agent(
                a["id"],
                frozenset(a["skills"]),
                a["presence"],
                a["idle_since"],
                a["offered"],
                a.get("since"),  # not in a snapshot of an older engine's
                a.get("away_reason"),
                a.get("owes"),
                a.get("wrap_until"),  # these three: not in a snapshot of an older engine's
            )
        acd.wrap_up_limit = float(snap.get("wrap_up_limit", acd.wrap_up_limit))
        for w in snap["waiting"]:
            acd.waiting[w["call_id"]] = Waiting(
                w["call_id"], w["queue"], w["priority"], w["enqueued_at"], frozenset(w["skills"]),
                set(w["declined_by"]), w["offered_to"], w["max_wait_signalled"], w["target"],
            )  # fmt: skip
        acd._offers = {c: (a, float(exp)) for c, (a, exp) in snap["offers"].items()}
        acd._handle_times.extend(snap["handle_times"])
        r._usernames.update(snap["usernames"])
        if "liveness" in snap:  # not in a snapshot of an older engine's
            r.liveness.restore(snap["liveness"])
            acd.absent = {a for a in acd.agents if r.liveness.away_from_desk(a)}
        self.left = dict.fromkeys(snap["left"])
        for card in snap["shadows"]:
            call = self._shadow(card)
            call.queue_name, call.queue_position = card["queue_name"], card["queue_position"]
            call.queued_priority, call.queued_at = card["queued_priority"], card["queued_at"]
            if card.get("node"):  # not in a snapshot of an older engine's
                self.nodes[call.id] = card["node"]

    def reset(
        self,
        queues: list[QueueConfig] | None = None,
        offer_timeout: float | None = None,
        disconnect_after: float | None = None,
        wrap_up_limit: float | None = None,
    ) -> None:
        """Start again from nobody waiting and nobody signed in (a cluster's first node),
        with the queues and offer timeout of the engine that started it: every copy must
        time offers alike."""
        self.shadows.clear()
        self.nodes.clear()
        self.left.clear()
        r = self.routing
        r.acd.offer_timeout = self.offer_timeout if offer_timeout is None else offer_timeout
        r.acd.wrap_up_limit = self.wrap_up_limit if wrap_up_limit is None else wrap_up_limit
        # the same Acd stays: SharedRouting reads it
        r.acd.queues = {q.name: q for q in queues or self.queues}
        r.acd.closing = {}
        r.acd.agents.clear()
        r.acd.waiting.clear()
        r.acd._offers.clear()
        r.acd._handle_times.clear()
        r.acd.absent.clear()
        r._usernames.clear()
        r._since.clear()
        r._owed.clear()
        r.liveness.clear()
        r.liveness.grace = self.disconnect_after if disconnect_after is None else disconnect_after


# -- who applies an effect ----------------------------------------------------------


def effect_call(effect: Effect) -> str | None:
    """The call an effect is about (None: about a person)."""
    if isinstance(effect, (Announce, Transition)):
        return effect.call.id
    if isinstance(effect, (UpdateCall, Ring, StopRinging)):
        return effect.call_id
    if isinstance(effect, Emit):
        return effect.event.call_id
    return None


def owner_of(
    effect: Effect, op: Mapping[str, Any], me: str, live: Mapping[str, Call]
) -> Call | bool:
    """Whether this node (``me``) applies ``effect`` of the operation ``op``: the live
    call it is about, True (about a person, and we asked; or about a call whose engine
    died, ``op["orphan"]``, and we tell it in its place), or False."""
    call_id = effect_call(effect)
    mine = op.get("origin") == me
    if call_id is None:
        return mine
    if call_id == op.get("orphan"):  # no live call to move or speak to: only told
        return mine and isinstance(effect, (Emit, StopRinging))
    return live.get(call_id) or False


def on_live_call(effect: Effect, call: Call) -> Effect:
    """``effect`` of a shadow, for the live ``call``: the prompt and the move go to the
    live call, and an offer carries what the live call knows now."""
    if isinstance(effect, Announce):
        return Announce(call, effect.text, effect.while_state)
    if isinstance(effect, Transition):
        return Transition(call, effect.event, effect.reason, effect.values)
    if isinstance(effect, Emit) and isinstance(effect.event, CallOffered):
        fresh = effect.event.model_copy(
            update={
                "caller": call.caller, "channel": call.channel, "emotion": call.mood,
                "summary": summary_of(call), "escalation_reason": call.escalation_reason,
                "previous_calls": call.previous_calls, "transferred_by": call.transferred_by,
                "transfer_note": call.transfer_note, "intent": call.intent,
                "customer_id": call.customer_id, "verified_by": call.verified_by,
                "attestation": call.attestation,
                # a consult's ring: the shadow has no Consult, the live call knows the host
                "consult_from": call.consult.host if call.consult is not None else None,
            }
        )  # fmt: skip
        return Emit(fresh)
    return effect


def follow_shadows(copy: RoutingCopy, live: Mapping[str, Call]) -> None:
    """The node's live calls take their shadows' place in line."""
    for call_id, shadow in copy.shadows.items():
        call = live.get(call_id)
        if call is not None:
            call.queue_name, call.queue_position = shadow.queue_name, shadow.queue_position
            call.queued_priority = shadow.queued_priority


# -- what the node's code talks to -----------------------------------------------------


class SharedRouting(Routing):
    """``Routing``'s methods for a node of several: those that read answer from the
    node's copy (they share its ACD), those that decide ask the shared log for the
    decision (one ``Replicate`` effect: engine/calls.py applies it). ``clock`` stays
    this process's monotonic clock, which the desk's own times are on."""

    def __init__(self, copy: RoutingCopy) -> None:  # noqa: D107 (the copy's state is shared)
        self.copy = copy
        self.acd = copy.routing.acd
        self.calls = copy.shadows
        self.clock = time.monotonic
        self._usernames = copy.routing._usernames
        self._since = copy.routing._since
        self._owed = copy.routing._owed
        self.liveness = copy.routing.liveness

    # reads are inherited; what follows decides

    def escalation(self, call: Call, decision: Decision, *, to_person: bool) -> Iterator[Effect]:
        op = {"op": "escalation", "call": CallCard.of(call), "skill": decision.skill,
              "to_person": to_person}  # fmt: skip
        yield Replicate(op)

    def requested(
        self, call: Call, *, queue: str | None = None, agent: str | None = None
    ) -> Iterator[Effect]:
        yield Replicate(
            {"op": "requested", "call": CallCard.of(call), "queue": queue, "agent": agent}
        )

    def enqueue(
        self, call: Call, skill: str | None, *, queue: str | None = None, agent: str | None = None
    ) -> Iterator[Effect]:
        op = {"op": "enqueue", "call": CallCard.of(call), "skill": skill, "queue": queue,
              "agent": agent}  # fmt: skip
        yield Replicate(op)

    def sync_priority(self, call: Call) -> Iterator[Effect]:
        yield Replicate({"op": "sync_priority", "call": CallCard.of(call)})

    def leave(self, call: Call, reason: str) -> Iterator[Effect]:
        yield Replicate({"op": "leave", "call": CallCard.of(call), "reason": reason})

    def queue_changed(self, announce: Call | None = None) -> Iterator[Effect]:
        yield Replicate({"op": "queue_changed", "announce": announce.id if announce else None})

    def presence(self, user: UserRow, event: str, reason: str | None = None) -> Iterator[Effect]:
        op = {"op": "presence", "user": user_card(user), "event": event, "reason": reason}
        yield Replicate(op)

    def wrapped_up(self, user: UserRow, call_id: str, then: str) -> Iterator[Effect]:
        op = {"op": "wrapped_up", "user": user_card(user), "call_id": call_id, "then": then}
        yield Replicate(op)

    def user_changed(self, user: UserRow) -> Iterator[Effect]:
        if user.id in self.acd.agents:
            yield Replicate({"op": "user_changed", "user": user_card(user)})

    def agent_gone(self, user_id: str) -> Iterator[Effect]:
        yield Replicate({"op": "agent_gone", "user_id": user_id})  # the copy says if not now

    def answered(self, agent_id: str, call_id: str) -> Iterator[Effect]:
        yield Replicate({"op": "answered", "agent": agent_id, "call_id": call_id})

    def transfer(
        self, call: Call, queue: str, agent_id: str | None, since: float
    ) -> Iterator[Effect]:
        op = {"op": "transfer", "call": CallCard.of(call), "queue": queue, "agent": agent_id}
        yield Replicate(op)

    def decline(self, user_id: str, call_id: str) -> Iterator[Effect]:
        yield Replicate({"op": "decline", "user_id": user_id, "call_id": call_id})

    def consult_offer(self, call: Call, agent_id: str) -> Iterator[Effect]:
        op = {"op": "consult_offer", "call": CallCard.of(call), "agent": agent_id,
              "queue": call.queue_name}  # fmt: skip
        yield Replicate(op)

    def consult_withdraw(self, agent_id: str, call_id: str) -> Iterator[Effect]:
        yield Replicate({"op": "consult_withdraw", "agent": agent_id, "call_id": call_id})

    def clients(self, user_id: str, holder: str, streams: int) -> Iterator[Effect]:
        # the holder is the engine that asks (the operation's origin)
        yield Replicate({"op": "clients", "user_id": user_id, "streams": streams})

    def holder_lost(self, holder: str) -> Iterator[Effect]:
        yield Replicate({"op": "holder_lost", "holder": holder})

    def hung_up(
        self, agent_id: str | None, since: float | None, call_id: str | None = None
    ) -> Iterator[Effect]:
        if agent_id is not None:
            op: dict[str, Any] = {"op": "hung_up", "agent": agent_id, "handle_time": 0.0,
                                  "call_id": call_id}  # fmt: skip
            if since is None:
                op["unknown_length"] = True
            else:
                op["handle_time"] = time.monotonic() - since
            yield Replicate(op)

    def tick(self) -> Iterator[Effect]:
        return iter(())  # the log's leader asks for the ticks (engine/routinglog.py)

    def offer_callback(self, call_id: str) -> Iterator[Effect]:
        return iter(())  # made by the copies, in a tick

    def set_queue(self, config: QueueConfig) -> None:
        raise NotImplementedError("several engines: engine/calls.py asks the log")

    def remove_queue(self, name: str) -> None:
        raise NotImplementedError("several engines: engine/calls.py asks the log")

    def load_overrides(self, rows: Iterable[OverrideRow]) -> None:
        raise NotImplementedError("several engines: engine/calls.py asks the log")


def queue_rows(rows: Iterable[OverrideRow]) -> list[tuple[str, dict[str, Any] | None]]:
    """The queues changed through the API, as a ``queues`` operation carries them."""
    return [(row.name, cast(dict[str, Any] | None, row.config)) for row in rows]
