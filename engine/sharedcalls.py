"""This engine's part in the one routing of many engines: the effects of the shared
routing log that fall to it, a call's last steps, calls a dead engine left, a restart.

Theory of operation
-------------------
With Redis every engine keeps a copy of one routing (engine/routingcopy.py) and applies
the operations of one log (engine/routinglog.py) in its order. Each operation's effects
fall to one engine (``owner_of``): the call's engine speaks to its caller and rings its
agent; the engine that asked tells the presence changes. ``SharedCalls`` is the glue
between the log and this engine's live calls (``CallManager``):

    the log says                       SharedCalls
    an operation's effects             ``effects``: this engine's share, in a task that
                                       runs after the call's earlier ones (a call's
                                       effects keep the log's order)
    a call ends here                   ``leave``: each step asked on its own (one
                                       refused does not keep the call in line); the
                                       log away: asked again in the background
    calls of a dead engine, ended      ``calls_lost``: they leave the line (a colleague
    here (engine/recovery.py)          rung for a consult stops ringing), every agent on
                                       them goes to wrap-up, and this engine tells what
                                       the dead one cannot (``orphan``)
    the routing started afresh         ``reset``: this engine's waiting callers go back
                                       in line, in their queue
    this engine's caller taken out of  ``effects`` puts it back: this engine was cut off
    line for its silence (``SILENT``)  from Redis or stalled, not dead
    the agents' streams this engine    ``effects`` tells them again (``retell_streams``),
    holds dropped for its silence, or  for the same reason; after a reset, so that the
    the routing started afresh         agents at a desk here are known to be: each
                                       agent's count as it is when sent, through the
                                       one path that tells each change and tries again
                                       until told (engine/desks.py)

``apply`` is the manager's way of carrying out one routing effect (``apply_routing``):
the effects are the same on one engine and on many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

from engine.acd import AcdError
from engine.callstate import InvalidTransition, NotAllowed
from engine.livecall import Call
from engine.routing import Effect as RoutingEffect
from engine.routing import StopRinging, Transition
from engine.routingcopy import (
    SILENT,
    CallCard,
    RoutingCopy,
    effect_call,
    follow_shadows,
    on_live_call,
    owner_of,
)
from engine.routinglog import RoutingLog, RoutingUnavailable

log = logging.getLogger(__name__)

RETRY = 2.0  # s between tries to tell the log a call's end while it cannot be reached


class SharedCalls:
    def __init__(
        self,
        routing_log: RoutingLog,
        copy: RoutingCopy,
        engine_id: str,
        calls: dict[str, Call],
        apply: Callable[[RoutingEffect], Awaitable[None]],
    ) -> None:
        """``calls``: this engine's live calls (the manager's, read, never changed);
        ``apply``: carries out one routing effect on this engine."""
        self.log = routing_log
        self.copy = copy
        self.engine_id = engine_id
        self.calls = calls
        self._apply_one = apply
        # the task applying each call's effects, the last one (the next waits for it)
        self._tails: dict[str, asyncio.Task[None]] = {}
        self.background: set[asyncio.Task[None]] = set()  # kept until done (asyncio's advice)
        # tells the shared routing again every agent's desk streams open on this engine,
        # each count as it is when sent, until it is told (engine/desks.py ``retell``)
        self.retell_streams: Callable[[], None] = lambda: None

    def effects(self, effects: list[RoutingEffect], op: Mapping[str, object]) -> asyncio.Task[None]:
        """An operation of the shared log was applied to this engine's copy: apply the
        effects that fall to this engine (``owner_of``) in a task, after those still
        being applied for the same calls."""
        follow_shadows(self.copy, self.calls)
        mine: list[RoutingEffect] = []
        if op.get("op") == "holder_lost" and op.get("holder") == self.engine_id:
            log.warning("routing: this engine was silent; telling the agents' streams again")
            self.retell_streams()
        if op.get("op") == "leave" and op.get("reason") == SILENT:
            call = self.calls.get(str(op.get("orphan")))
            if call is not None and not call.ended.is_set():
                # taken out of line while this engine was cut off from Redis: the desk
                # phone this engine rang for it stops (the leader could not), and the
                # caller goes back in line
                mine.append(StopRinging(call.id))
                if call.state == "queued":
                    log.warning("routing: call %s was taken out of line (this engine "
                                "was silent); putting it back", call.id)  # fmt: skip
                    self._background(self._back_in_line(call))
        for effect in effects:
            who = owner_of(effect, op, self.engine_id, self.calls)
            if who is not False:
                mine.append(on_live_call(effect, who) if isinstance(who, Call) else effect)
        calls = {c for e in mine if (c := effect_call(e)) is not None}
        before = [t for c in calls if (t := self._tails.get(c)) is not None]
        task = asyncio.create_task(self._apply(mine, before), name="routing-effects")
        for c in calls:
            self._tails[c] = task

        def done(_t: asyncio.Task[None]) -> None:
            for c in calls:
                if self._tails.get(c) is task:
                    del self._tails[c]

        task.add_done_callback(done)
        return task

    async def _apply(self, effects: list[RoutingEffect], before: list[asyncio.Task[None]]) -> None:
        if before:
            await asyncio.gather(*before, return_exceptions=True)
        for effect in effects:
            if isinstance(effect, Transition):
                try:  # the call may have moved on meanwhile (hung up, or in line already:
                    # put back after a reset of the routing, or after its engine was silent)
                    effect.call.next_state(effect.event)
                except (NotAllowed, InvalidTransition):
                    continue
            try:
                await self._apply_one(effect)
            except Exception:  # one effect failing must not keep the others from the call
                log.exception("routing: applying %s failed", type(effect).__name__)

    async def leave(
        self,
        effects: list[RoutingEffect],
        tries: int = 150,
        unless: Callable[[], bool] = lambda: False,
    ) -> None:
        """A call's last routing (its agent to wrap-up, out of the line), through the
        shared log, each step on its own: one refused (the agent signed out and in
        again meanwhile) must not keep the call from leaving the line. While the log
        cannot be reached, the steps left are asked again every ``RETRY`` s in the
        background (at most ``tries`` times), so the call's end is not held up. Also a
        consult's ring taken back and a colleague freed (engine/consulting.py), which
        must not wait for the log either; ``unless``: true once asking again would undo
        what came since (the same colleague rung again for the call)."""
        left = list(effects)

        async def go_on() -> None:
            while left:
                with contextlib.suppress(AcdError, NotAllowed):
                    await self._apply_one(left[0])
                left.pop(0)

        try:
            await go_on()
            return
        except RoutingUnavailable as exc:
            log.warning("routing: a call's end waits for the shared routing log: %s", exc)

        async def again() -> None:
            for _ in range(tries):
                await asyncio.sleep(RETRY)
                if unless():
                    return
                with contextlib.suppress(RoutingUnavailable):
                    await go_on()
                    return
            log.error("routing: gave up telling the shared routing log that a call ended")

        self._background(again())

    def calls_lost(self, cut: list[tuple[str, tuple[str, ...]]]) -> None:
        """Calls a dead engine ran, ended by this one (engine/recovery.py), each with
        every agent on it: they leave the shared routing's line (an agent they rang,
        in line or for a consult, is freed and told), and each agent on one goes to
        wrap-up: its agent, and a consulted colleague with a leg on it, who is not the
        call's agent and would stay on a call for good. This engine tells what the
        dead one can no longer (``orphan``: the operation's events about the call are
        this engine's to send)."""

        async def lost(call_id: str, agents: tuple[str, ...]) -> None:
            await self.log.synced.wait()
            card = CallCard.ended(call_id)
            ops: list[dict[str, object]] = [
                {"op": "leave", "call": card, "reason": "node_lost", "orphan": call_id}
            ]
            for agent_id in dict.fromkeys(agents):
                # how long it lasted is not known: not learned as a 0 s call (the
                # 0.0 is what an engine of an older version reads, and learns)
                # the call's id: the agent owes it a disposition, with its deadline, as
                # for any call of theirs that ended
                ops.append({"op": "hung_up", "agent": agent_id, "handle_time": 0.0,
                            "unknown_length": True, "call_id": call_id})  # fmt: skip
            for op in ops:
                # refused (the agent moved on meanwhile): nothing to do; the log away:
                # its next reset forgets the call
                with contextlib.suppress(AcdError, NotAllowed, RoutingUnavailable):
                    await self.log.submit(op)

        for call_id, agents in cut:
            self._background(lost(call_id, agents))

    def reset(self) -> None:
        """The shared routing started again (engine/routinglog.py): this engine's waiting
        callers go back in line, in the queue they waited in."""
        for call in list(self.calls.values()):
            if call.state == "queued":
                self._background(self._back_in_line(call))
        self.retell_streams()

    async def _back_in_line(self, call: Call) -> None:
        op = {"op": "requested", "call": CallCard.of(call), "queue": call.queue_name,
              "agent": None}  # fmt: skip
        with contextlib.suppress(Exception):  # the log away: the caller waits on
            await self.log.submit(op)

    def _background(self, work: Awaitable[None]) -> None:
        """Run ``work`` on its own, kept until done (the loop only holds weak references)."""
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def settle(self, within: float) -> None:
        """At shutdown: the last words for this engine's calls (the log still runs), for
        at most ``within`` s; what is left then is cancelled."""
        pending = [*self.background, *self._tails.values()]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=within)
            for task in late:
                task.cancel()
