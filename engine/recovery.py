"""Crash recovery: which engine runs each call, and ending the calls of an engine that died.

Theory of operation
-------------------
Every engine process registers itself in the database (table ``engines``) under a
random id and refreshes its heartbeat every quarter of ``CCENGINE_ENGINE_LEASE``; every
call row names the engine that runs it. An engine is dead when

    its heartbeat is older than the lease                 (any host)
    it ran on this host and its process is gone           (a restart after kill -9
                                                           ends its calls at once)
    it has no row, or the call names no engine            (rows from before this)

At start and with every heartbeat, an engine ends the open calls of dead engines, as
one transaction that ends each call once even when two survivors try, and publishes
what a live end publishes: ``call.state_changed`` to ``ended`` and ``call.ended``, so
streams and webhooks learn that those calls are over. A call's end time is the dead
engine's last heartbeat (when it was last known to run). A live engine's calls are
never touched: several engines may share one database. The webhook deliveries a dead
engine had claimed (engine/webhooks.py) are freed first, so a live engine sends them at
once rather than when the claims run out; a dead engine with no calls left is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from engine.events import (
    CallbackRequested,
    CallEnded,
    CallStateChanged,
    EventBus,
    as_utc,
    utcnow,
)
from engine.store.db import Store
from engine.store.models import EngineRow

log = logging.getLogger(__name__)

RESTART = "engine_restart"  # ended by an engine starting up
# ended by a live engine that saw the owner's heartbeat stop (the name for it;
# rows ended before the rename say "engine_lost", and are read as they are)
LOST = "node_lost"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def dead_owners(
    owners: Iterable[str | None],
    engines: Iterable[EngineRow],
    *,
    me: str,
    now: datetime,
    lease: float,
    host: str,
    alive: Callable[[int], bool] = process_alive,
) -> dict[str | None, datetime]:
    """Of the engines that own open calls, those that are dead, each with the time it
    was last known to run (``now`` when nothing says)."""
    known = {e.id: e for e in engines}
    dead: dict[str | None, datetime] = {}
    for owner in owners:
        if owner == me:
            continue
        row = known.get(owner) if owner is not None else None
        if row is None:
            dead[owner] = now
            continue
        last = as_utc(row.heartbeat_at)
        stale = now - last > timedelta(seconds=lease)
        # our own pid can only be a previous engine of this process's host and pid
        gone = row.host == host and (row.pid == os.getpid() or not alive(row.pid))
        if stale or gone:
            dead[owner] = min(last, now)
    return dead


class Recovery:
    def __init__(self, store: Store, bus: EventBus, lease: float, url: str | None = None) -> None:
        self.store = store
        self.url = url  # where the other engines reach this one's API
        self.bus = bus
        self.lease = lease
        self.id = str(uuid.uuid4())
        self.host = socket.gethostname()
        self._started = utcnow()
        self._task: asyncio.Task[None] | None = None
        # told when deliveries a dead engine had claimed are free (wakes the sender)
        self.on_released: Callable[[], None] = lambda: None
        # a call this engine ended for a dead one: its analytics are this engine's to make
        self.on_ended: Callable[[str], None] = lambda _call_id: None
        # told which calls of dead engines it ended, each with every agent on it (they
        # leave the shared routing, and their agents go to wrap-up)
        self.on_calls_ended: Callable[[list[tuple[str, tuple[str, ...]]]], None] = lambda cut: None

    async def start(self) -> int:
        """Register, end what dead engines left open, then keep the heartbeat going."""
        await self._beat()
        try:
            ended = await self.recover(RESTART)
        except SQLAlchemyError as exc:  # another engine recovering too: the next beat retries
            log.warning("could not end the calls of dead engines yet: %s", exc)
            ended = 0
        self._task = asyncio.create_task(self._run(), name="engine-heartbeat")
        return ended

    async def _beat(self) -> None:
        # heartbeats are written and judged by the database server's clock: by this
        # host's, one a lease behind the others' would have its calls ended as lost
        await self.store.sync_clock()
        row = EngineRow(
            id=self.id, host=self.host, pid=os.getpid(),
            started_at=self._started, heartbeat_at=self.store.now(), url=self.url,
        )  # fmt: skip
        await self.store.beat(row)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 4)
            try:
                await self._beat()
                await self.recover(LOST)
            except SQLAlchemyError as exc:  # storage comes back; so does the next beat
                log.warning("engine heartbeat failed: %s", exc)

    async def recover(self, reason: str) -> int:
        """End the open calls of dead engines and publish their end; how many. First
        the webhook deliveries a dead engine had claimed are freed: another engine
        sends them now, not once the claims run out."""
        now = self.store.now()
        engines = await self.store.engines()
        gone = dead_owners(
            [e.id for e in engines], engines, me=self.id, now=now, lease=self.lease,
            host=self.host,
        )  # fmt: skip
        freed = 0
        for engine_id in gone:
            if engine_id is not None:
                freed += await self.store.release_deliveries(engine_id)
        if freed:
            log.warning("%d webhook deliveries claimed by engines that stopped running "
                        "are sent again", freed)  # fmt: skip
            self.on_released()
        owners = await self.store.open_call_owners()
        owners.discard(self.id)
        for engine_id in set(gone) - owners:  # dead, with no calls left to end
            if engine_id is not None:
                await self.store.drop_engine(engine_id)
        if not owners:
            return 0
        dead = dead_owners(owners, engines, me=self.id, now=now, lease=self.lease, host=self.host)
        count = 0
        ended: list[tuple[str, tuple[str, ...]]] = []
        for owner, last_seen in dead.items():
            for cut in await self.store.end_calls_of(owner, last_seen, reason):
                call_id = cut.call_id
                # the call's agent and every other agent with a leg still on it (a
                # consulted colleague): each is on the call in the shared routing
                agents = (cut.agent_id, *cut.agents) if cut.agent_id else cut.agents
                ended.append((call_id, tuple(dict.fromkeys(agents))))
                lasted = round(max(0.0, (last_seen - as_utc(cut.created_at)).total_seconds()), 3)
                self.bus.publish(
                    CallStateChanged(
                        call_id=call_id, state="ended", previous=cut.previous, reason=reason
                    )
                )
                self.on_ended(call_id)
                self.bus.publish(CallEnded(call_id=call_id, reason=reason, duration=lasted))
                if (cb := cut.callback) is not None:  # on the agents' callback list now
                    self.bus.publish(
                        CallbackRequested(
                            call_id=call_id, callback_id=cb.id, queue=cb.queue,
                            caller=cb.caller, contact=cb.contact, summary=cb.summary,
                        )
                    )  # fmt: skip
                count += 1
        if count:
            log.warning("ended %d calls left open by %d engines that stopped running: %s",
                        count, len(dead), reason)  # fmt: skip
            self.on_calls_ended(ended)
        return count

    async def live_peers(self) -> int:
        """How many other engines are alive (a heartbeat within the lease)."""
        now = self.store.now()
        return sum(
            1
            for e in await self.store.engines()
            if e.id != self.id and now - as_utc(e.heartbeat_at) <= timedelta(seconds=self.lease)
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(SQLAlchemyError):
            await self.store.drop_engine(self.id)
