"""The shared routing log: one Redis stream of routing operations, in the order every
engine's copy of routing applies them (engine/routingcopy.py).

Theory of operation
-------------------
Asking. ``submit(op)`` appends the operation (XADD, naming the engine that asks and a
request id) and waits until this engine's reader has applied it and this engine has
applied the effects that fall to it; then it returns, or raises what routing refused
(``AcdError``, ``NotAllowed``), as a call into ``Routing`` would on one engine.

Reading. One task reads the stream in order (XREAD) and applies each entry to the copy
at the entry's time: its id's milliseconds, Redis's clock, the same for every engine and
never going back within the stream. The effects that fall to this engine are handed to
``on_effects`` (engine/calls.py applies them in a task of their own, in order for each
call): the reader never waits for a prompt to be spoken.

Joining. An engine that starts while a leader holds the lease asks for a copy: it
appends "sync"; the leader, applying that entry, appends a "snapshot" of its copy as of
that entry; the joiner restores it and applies what it read after its "sync". With no
leader and no other engine alive (the cluster's first engine, or every engine
restarted) the engine appends "reset": every engine applying it starts again from
nobody waiting and nobody signed in, with the resetting engine's queues and offer
timeout; each engine puts its own waiting callers back in line (``on_reset``), and agents
sign in again. Other engines alive but no leader (it just died): one of them takes the
lease within ``RENEW`` s, and the joiner waits for it (at most ``START_WITHIN`` s: the
heartbeats it counts may be those of engines that died with the leader).

The leader. A lease in Redis (``LEASE`` s, renewed every ``RENEW`` s by a task of its
own) held by one engine whose copy is in step. It keeps time: when the copy's next timer
is due (an offer ringing out, a caller who waited the queue's maximum) it appends "tick",
which every copy applies at the tick's time; and it hands copies to joiners. Any engine
in step takes the lease when it runs out, so a leader that dies costs at most ``LEASE`` s
of timers.

Redis away: operations cannot be asked for (``RoutingUnavailable``: the API answers 503)
and the reader tries again every second; nothing decided is lost, since nothing is
decided without the log. The stream keeps the last ``MAXLEN`` operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from engine.acd import AcdError, QueueConfig
from engine.callstate import NotAllowed
from engine.routing import Effect
from engine.routingcopy import SILENT, CallCard, RoutingCopy

log = logging.getLogger(__name__)

MAXLEN = 100_000  # operations kept in the stream (a joiner needs those after its sync)
LEASE = 10.0  # seconds a leader's lease lasts unless renewed
RENEW = 2.0  # seconds between renewals (and attempts to take a lease that ran out)
TICK_EVERY = 0.2  # seconds between the leader's looks at the copy's next timer
ANSWER_WITHIN = 10.0  # seconds an operation may take to be applied before giving up
SYNC_WITHIN = 5.0  # seconds a joiner waits for a snapshot before asking again
# seconds a starting engine waits for a copy while other engines are alive before it
# starts the routing again anyway (their heartbeats may be those of engines just dead)
START_WITHIN = 90.0
TIMEOUT = 5.0  # seconds for a Redis command (a read blocks BLOCK_MS on top)
BLOCK_MS = 1000
# seconds an engine's liveness key lasts: refreshed every RENEW s and with each operation
# it appends; the leader takes the waiting callers of an engine silent this long out of
# the line (their engine is dead, or cut off from Redis and so from routing)
ALIVE_FOR = 1.5 * LEASE
KNOWN_FOR = 86_400  # seconds an engine is known to keep a liveness key (older ones do not)

# the lease: renewed only by its holder
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RoutingUnavailable(RuntimeError):
    """The shared routing log cannot be reached (Redis away): ask again later."""


def unreachable(exc: Exception) -> RoutingUnavailable:
    return RoutingUnavailable(f"the shared routing log cannot be reached: {exc}")


def entry_time(entry_id: bytes) -> float:
    """An entry's time: the milliseconds of its stream id, in seconds."""
    return int(entry_id.split(b"-", 1)[0]) / 1000


# the effects that fall to this engine, applied in a task: it is what ``on_effects`` gives
# (engine/sharedcalls.py ``SharedCalls.effects``), given the operation that made them
EffectsApplied = Callable[[list[Effect], Mapping[str, Any]], "asyncio.Task[None]"]
# an operation applied: the task applying its effects here, and what routing refused
Outcome = tuple["asyncio.Task[None] | None", Exception | None]
# stream entries as redis-py hands them back: (id, {field: value})
Entries = list[tuple[bytes, dict[bytes, bytes]]]


class RoutingLog:
    def __init__(
        self,
        url: str,
        prefix: str,
        engine_id: str,
        copy: RoutingCopy,
        *,
        reset_queues: Callable[[], Awaitable[list[tuple[str, dict[str, Any] | None]]]],
        peers: Callable[[], Awaitable[int]],
    ) -> None:
        """``reset_queues``: the queues changed through the API (from the database), put
        in a "reset" this engine appends. ``peers``: how many other engines are alive
        (their heartbeats, engine/recovery.py): with none, there is no copy to wait for."""
        self.url = url
        self.me = engine_id
        self.copy = copy
        self._key = f"{prefix}:routing"
        self._lease_key = f"{prefix}:routing:leader"
        self._reset_queues = reset_queues
        self._peers = peers
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )
        self._alive_prefix = f"{prefix}:routing:alive:"
        self._known_prefix = f"{prefix}:routing:known:"
        self._renew = self._redis.register_script(RENEW_SCRIPT)
        self._release = self._redis.register_script(RELEASE_SCRIPT)
        # engine/calls.py: applies the effects of an entry that fall to this engine
        self.on_effects: EffectsApplied | None = None
        # engine/calls.py: after a reset, this engine's waiting callers back in line
        self.on_reset: Callable[[], None] = lambda: None
        self.synced = asyncio.Event()
        self.leader = False
        self._last = b"0-0"  # the stream id after which the reader reads
        self._sync_rid: str | None = None  # this engine's sync, while it waits for a copy
        self._sync_entry: bytes | None = None  # ... and where it is in the stream
        self._buffer: list[tuple[bytes, dict[str, Any]]] = []  # read after our sync
        self._waiting: dict[str, asyncio.Future[Outcome]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # redis-py may swallow the cancellation of a blocking read: the loops look here
        self._stopping = False
        self.applied = 0  # operations applied (metrics, tests)
        self.snapshots_sent = 0

    # -- asking ---------------------------------------------------------------------

    async def submit(self, op: Mapping[str, Any], *, effects: bool = True) -> None:
        """Append ``op``, wait until it is applied here (and, with ``effects``, until
        this engine has applied its effects); raise what routing refused.
        RoutingUnavailable if the log cannot be reached."""
        rid = uuid.uuid4().hex
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = done
        try:
            await self._append({**op, "origin": self.me, "rid": rid})
            try:
                applied, error = await asyncio.wait_for(asyncio.shield(done), ANSWER_WITHIN)
            except TimeoutError:
                raise RoutingUnavailable("the shared routing log did not answer in time") from None
        finally:
            self._waiting.pop(rid, None)
        if applied is not None and effects:
            await asyncio.shield(applied)
        if error is not None:
            raise error

    async def _append(self, op: Mapping[str, Any]) -> bytes:
        try:
            # whoever appends is alive: a call put back in line after its engine was
            # silent must not be taken out again before the next refresh
            async with self._redis.pipeline(transaction=False) as pipe:
                self._alive(pipe)
                pipe.xadd(self._key, {"op": json.dumps(op)}, maxlen=MAXLEN, approximate=True)
                *_, entry = await pipe.execute()
            return cast(bytes, entry)
        except (RedisError, OSError) as exc:
            raise unreachable(exc) from exc

    def _alive(self, pipe: Pipeline) -> None:
        pipe.set(self._alive_prefix + self.me, "1", px=int(ALIVE_FOR * 1000))
        pipe.set(self._known_prefix + self.me, "1", ex=KNOWN_FOR)

    # -- starting and stopping ------------------------------------------------------

    async def start(self) -> None:
        """Read from the stream's end, get in step (a copy from the leader, else a
        reset), then keep reading and, when the lease is free, lead. Raises
        RoutingUnavailable."""
        try:
            newest = cast(Entries, await self._redis.xrevrange(self._key, count=1))
            self._last = newest[0][0] if newest else b"0-0"
        except (RedisError, OSError) as exc:
            raise unreachable(exc) from exc
        self._tasks.append(asyncio.create_task(self._read_loop(), name="routing-log"))
        loop = asyncio.get_running_loop()
        give_up = loop.time() + START_WITHIN
        while not self.synced.is_set():
            try:
                leader = bool(await self._redis.exists(self._lease_key))
            except (RedisError, OSError) as exc:
                raise unreachable(exc) from exc
            late = loop.time() > give_up
            if leader and not late:
                await self._ask_for_copy()
            elif late or not await self._peers():
                # nobody else alive (the cluster's first engine, or all of them
                # restarted): nothing to wait for. Other engines alive: one of them takes
                # the lease within RENEW s, and a reset now would wipe what they hold;
                # past START_WITHIN nobody answered, and this engine must serve
                await self.reset()
                try:
                    await asyncio.wait_for(self.synced.wait(), ANSWER_WITHIN)
                except TimeoutError:
                    raise RoutingUnavailable("the shared routing log did not answer") from None
            else:
                await asyncio.sleep(RENEW / 4)
        self._tasks.append(asyncio.create_task(self._lease_loop(), name="routing-lease"))
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="routing-ticks"))

    async def _ask_for_copy(self) -> None:
        """Append "sync" and wait a while for the leader's snapshot."""
        self._sync_rid = uuid.uuid4().hex
        self._sync_entry, self._buffer = None, []
        await self._append({"op": "sync", "origin": self.me, "rid": self._sync_rid})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.synced.wait(), SYNC_WITHIN)
            return
        log.warning("routing: no copy came from the leader within %.0f s; asking again",
                    SYNC_WITHIN)  # fmt: skip

    async def reset(self) -> None:
        """Start the contact center's routing again (nobody waiting, nobody signed in)
        with this engine's queues."""
        rows = await self._reset_queues()
        queues = [q.model_dump() for q in self.copy.queues]
        log.warning("routing: starting the shared routing again (no engine had a copy)")
        timeout = self.copy.offer_timeout
        await self._append(
            {"op": "reset", "origin": self.me, "rid": "", "queues": queues, "rows": rows,
             "offer_timeout": timeout, "disconnect_after": self.copy.disconnect_after,
             "wrap_up_limit": self.copy.wrap_up_limit}
        )  # fmt: skip

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.leader:  # the next engine need not wait the lease out
            with contextlib.suppress(RedisError, OSError):
                await self._release(keys=[self._lease_key], args=[self.me])
        # not the liveness key: a stopping engine's calls end through it, and it may be
        # draining them still
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    # -- reading ---------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while not self._stopping:
            try:
                got = cast(
                    list[tuple[bytes, Entries]],
                    await self._redis.xread({self._key: self._last}, count=200, block=BLOCK_MS),
                )
            except (RedisError, OSError) as exc:
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                log.warning("routing: cannot read the shared routing log: %s", exc)
                await asyncio.sleep(1.0)
                continue
            for _stream, entries in got or []:
                for entry_id, fields in entries:
                    self._last = entry_id
                    try:
                        op = json.loads(fields[b"op"])
                    except (KeyError, ValueError):
                        log.error("routing: unreadable entry %s skipped", entry_id)
                        continue
                    try:
                        self._take(self._last, op)
                    except Exception:  # one bad entry must not stop routing
                        log.exception("routing: entry %s (%s) failed", entry_id, op.get("op"))

    def _take(self, entry_id: bytes, op: dict[str, Any]) -> None:
        kind = op.get("op")
        if not self.synced.is_set():
            self._catch_up(entry_id, op)
            return
        if kind == "sync":
            if self.leader and op.get("origin") != self.me:
                self._send_snapshot(str(op["rid"]), self.copy.snapshot())
            return
        if kind == "snapshot":
            return
        if kind == "reset":
            self._reset_copy(op)
            self.on_reset()
            return
        self._apply(entry_id, op)

    def _catch_up(self, entry_id: bytes, op: dict[str, Any]) -> None:
        """Not in step yet: wait for our sync and its snapshot, or a reset."""
        kind = op.get("op")
        if kind == "reset":
            self._reset_copy(op)
            self._in_step()
            return
        if kind == "sync" and op.get("rid") == self._sync_rid:
            self._sync_entry = entry_id
            return
        if self._sync_entry is None:
            return  # before our sync: the snapshot will hold it
        if kind == "snapshot" and op.get("for") == self._sync_rid:
            self.copy.restore(op["state"])
            acd = self.copy.routing.acd
            log.info("routing: copy received (%d waiting, %d agents); in step",
                     len(acd.waiting), len(acd.agents))  # fmt: skip
            buffered, self._buffer = self._buffer, []
            self._in_step()
            for earlier_id, earlier in buffered:
                self._take(earlier_id, earlier)
            return
        self._buffer.append((entry_id, op))

    def _in_step(self) -> None:
        self._sync_rid, self._sync_entry = None, None
        self.synced.set()

    def _reset_copy(self, op: Mapping[str, Any]) -> None:
        queues = [QueueConfig.model_validate(q) for q in op["queues"]]
        self.copy.reset(
            queues,
            float(op.get("offer_timeout", self.copy.offer_timeout)),
            float(op.get("disconnect_after", self.copy.disconnect_after)),
            float(op.get("wrap_up_limit", self.copy.wrap_up_limit)),
        )
        self.copy.apply({"op": "queues", "rows": op["rows"]}, self.copy.now)

    def _apply(self, entry_id: bytes, op: dict[str, Any]) -> None:
        effects, error = self.copy.apply(op, entry_time(entry_id))
        self.applied += 1
        origin = str(op.get("origin", ""))
        applied = self.on_effects(effects, op) if self.on_effects is not None else None
        if origin == self.me and (done := self._waiting.get(str(op.get("rid")))) is not None:
            if not done.done():
                done.set_result((applied, error))
        elif error is not None and origin == self.me:
            log.info("routing: %s refused: %s", op.get("op"), error)

    def _send_snapshot(self, rid: str, state: dict[str, Any]) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]  # the snapshots sent before

        async def send() -> None:
            with contextlib.suppress(RoutingUnavailable):
                await self._append(
                    {"op": "snapshot", "origin": self.me, "for": rid, "state": state}
                )
                self.snapshots_sent += 1

        self._tasks.append(asyncio.create_task(send(), name="routing-snapshot"))

    # -- leading ---------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        """Hold the lease, or take it when it is free, and say this engine is alive; on
        its own, so that nothing the leader waits for (a tick's effects) makes it miss a
        renewal."""
        while not self._stopping:
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    self._alive(pipe)
                    await pipe.execute()
                await self._hold_lease()
            except (RedisError, OSError) as exc:
                if self.leader:
                    log.warning("routing: lost touch with the lease: %s", exc)
                self.leader = False
            await asyncio.sleep(RENEW)

    async def _tick_loop(self) -> None:
        looked = 0.0
        while not self._stopping:
            if self.leader:
                try:
                    await self._tick_if_due()
                    if time.monotonic() - looked >= RENEW:
                        looked = time.monotonic()
                        await self._out_of_line_if_silent()
                except (RedisError, OSError, RoutingUnavailable):
                    pass  # the log away: the next round tries again
                except Exception:  # never the end of the cluster's clock
                    log.exception("routing: the leader's tick failed")
            await asyncio.sleep(TICK_EVERY)

    async def _out_of_line_if_silent(self) -> None:
        """Waiting callers of an engine whose liveness key ran out leave the line: its
        death would otherwise leave them there, offered to agent after agent (none sees
        an offer that only their dead engine could tell, and each is set away when it
        rings out) until a survivor ends its calls, up to ``CCENGINE_ENGINE_LEASE``. An
        engine that was only cut off puts them back (engine/sharedcalls.py). Engines of
        a version without liveness keys are never taken for silent. The agents' event
        streams a silent engine held count no more (engine/liveness.py): an agent whose
        desk was there alone is made away unless it reconnects elsewhere."""
        waiting, nodes = self.copy.routing.acd.waiting, self.copy.nodes
        holders = self.copy.routing.liveness.holders()  # agents' streams (engine/liveness.py)
        owners = sorted(({n for c, n in nodes.items() if c in waiting} | holders) - {self.me})
        if not owners:
            return
        alive = await self._redis.mget([self._alive_prefix + n for n in owners])
        known = await self._redis.mget([self._known_prefix + n for n in owners])
        silent = [n for n, a, k in zip(owners, alive, known, strict=True) if a is None and k]
        for owner in silent:
            # asked again just before: an engine that put a call back since has a fresh
            # liveness key (appending refreshes it), and keeps its callers in line
            if await self._redis.exists(self._alive_prefix + owner):
                continue
            await self._out_of_line(owner)
            if owner in holders:  # the agents' streams it held are gone with it
                with contextlib.suppress(AcdError, NotAllowed):
                    await self.submit({"op": "holder_lost", "holder": owner}, effects=False)

    async def _out_of_line(self, owner: str) -> None:
        waiting, nodes = self.copy.routing.acd.waiting, self.copy.nodes
        # each is out of line once applied here (submit waits for that)
        for call_id in [c for c in waiting if nodes.get(c) == owner]:
            log.warning("routing: engine %s is silent; its caller %s leaves the line",
                        nodes[call_id], call_id)  # fmt: skip
            op = {"op": "leave", "call": CallCard.ended(call_id), "reason": SILENT,
                  "orphan": call_id}  # fmt: skip
            with contextlib.suppress(AcdError, NotAllowed):
                await self.submit(op, effects=False)

    async def _hold_lease(self) -> None:
        ms = int(LEASE * 1000)
        if self.leader:
            self.leader = bool(await self._renew(keys=[self._lease_key], args=[self.me, ms]))
            if not self.leader:
                log.warning("routing: the lease ran out; another engine leads")
            return
        if await self._redis.set(self._lease_key, self.me, nx=True, px=ms):
            self.leader = True
            log.info("routing: this engine leads (timers, copies for joiners)")

    async def _tick_if_due(self) -> None:
        due = self.copy.routing.next_timer()
        if due is None:
            return
        seconds, micros = await self._redis.time()
        if seconds + micros / 1e6 >= due:  # applied once read; its effects are not waited for
            await self.submit({"op": "tick"}, effects=False)
