"""The durable event log: every published event written to the database, in order.

Streams resume from it (``after`` = the last id a client saw, even one from before a
restart) and webhook deliveries are queued from it in the same transaction as the
events themselves (the outbox), so nothing published is lost between the two.

Events are written in small batches, off the publishing path: ``publish`` stays a
synchronous append, and a burst of transcript partials costs one transaction. Only once
a batch is committed do its events reach live subscribers (WebSocket, SSE): whatever a
client has seen survives a crash (kill -9), so its last id always resumes without a gap.
The price is one short gather window plus one write, a few milliseconds, before an event
is seen. Ids come from a block reserved in the database, so a run that dies with events
unwritten never sees its ids handed out again; nobody saw those events. Several engines
share one database (PostgreSQL), so a block is only ever this engine's: halfway through
one the log reserves the next, wherever the sequence then is, and the bus jumps to it
when the current block runs out (ids still grow, with a gap where another engine's
block lies).

While the database cannot be written (a full disk), events wait in memory and are tried
again every second, after the call writes that came before them (``earlier_writes``);
past ``MAX_PENDING`` waiting events, transcript partials are dropped (they are
superseded by the final anyway), everything else keeps waiting.

With a stream shared by several engines (``shared``, engine/redisstream.py) ids come
from it instead of the reservation: a batch is numbered as it is appended to the stream,
before it is written, and ``publish`` leaves ids at 0 until then. Events reach
subscribers from the stream's reader, which hands out every engine's events in one order
once their engine has stored them. While Redis cannot be reached, events wait as they
do for the database, numbered or not, and are tried again every second; a backlog then
goes one batch (``APPEND_MAX``) at a time, each appended, written and marked before the
next is appended. Events still waiting at a stop with Redis away are lost (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from engine.events import EventBase, EventBus, utcnow
from engine.redisstream import (
    APPEND_MAX,
    LOSS_MARGIN,
    RedisEventStream,
    cancelled,
    with_id,
)
from engine.store.db import Store
from engine.store.models import DeliveryRow, EventRow, WebhookRow

log = logging.getLogger(__name__)

ID_BLOCK = 1_000_000
# seconds a batch gathers events: latency of every live event, so kept short; under load
# batches grow on their own while the previous one is being written
GATHER = 0.01
MAX_PENDING = 10_000
PAGE = 500
PRUNE_EVERY = 3600.0
STOP_WAIT = 30.0  # seconds stop() waits for the writer (a write under way, a busy database)


def wants(hook: WebhookRow, event_type: str) -> bool:
    return "*" in hook.events or event_type in hook.events


class EventLog:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        retention_days: float,
        shared: RedisEventStream | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.shared = shared
        # a batch being numbered by the shared stream: its token and size, kept until the
        # append succeeds, so a retry after a lost reply is not appended twice
        self._numbering: tuple[str, int] | None = None
        self._marked = 0  # the newest id the shared stream has been told is stored
        self.retention = timedelta(days=retention_days)
        self._pending: list[tuple[EventRow, EventBase]] = []
        self.dropped_partials = 0  # while the database could not be written
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._pruner: asyncio.Task[None] | None = None
        self._block_end = 0  # the last id of the block the bus is numbering from
        self._next_block: tuple[int, int] | None = None  # reserved, not yet in use
        self._overran = False
        # shared: the sequence's high-water mark, which Redis' ids go on from if it
        # loses them (engine/redisstream.py)
        self._reserved_to = 0
        self._hooks: list[WebhookRow] = []
        self.written_to = 0  # the newest id in the database
        self.on_deliveries: Callable[[], None] = lambda: None  # wakes the webhook sender
        # awaited before each batch: the call writes these events report on (the call
        # spool, engine/spool.py) are stored first, so a client told "call.ended" or
        # handed a final that it then looks up finds it in the database
        self.earlier_writes: Callable[[], Awaitable[object]] | None = None

    @property
    def pending(self) -> int:
        """Events not yet in the database (waiting for the next batch, or for storage)."""
        return len(self._pending)

    async def start(self) -> None:
        if self.shared is not None:
            # ids come from the shared stream, whose counter never falls below ours
            self.bus.numbers_events = False
            self.written_to = self._marked = await self._highest_id()
            self.shared.floor_after_loss = self._floor_after_loss
            self.shared.stored_ids = self.store.stored_event_ids
            await self.shared.start(self.bus, self.written_to)
        else:
            first, self._block_end = await self.store.reserve_event_ids(ID_BLOCK, self.bus.last_id)
            self._next_block = None
            self.bus.continue_from(first)
            self.written_to = first - 1
        await self.reload_webhooks()
        self.bus.store_first = self._append
        self._task = asyncio.create_task(self._write_loop(), name="event-log")
        self._pruner = asyncio.create_task(self._prune_loop(), name="event-prune")

    async def _floor_after_loss(self) -> int:
        """Where the shared stream's ids go on after Redis lost its counter: above every
        id handed out before (the database's, the high-water mark reserved in it as ids
        were used, this engine's own) by more than every engine's batch in flight, which
        may have been appended to the lost stream and not stored yet. Kept as the new
        high-water mark: a second loss, even with the events table emptied (pruned),
        goes on above it."""
        assert self.shared is not None
        known = max(self.written_to, self.shared.highest)
        _first, self._reserved_to = await self.store.reserve_event_ids(LOSS_MARGIN, known)
        return self._reserved_to

    async def _highest_id(self) -> int:
        async with self.store.session() as s:
            return int(await s.scalar(select(func.max(EventRow.id))) or 0)

    async def reload_webhooks(self) -> None:
        self._hooks = list(await self.store.webhooks())

    def _append(self, event: EventBase) -> None:
        # numbered already: the next one gets the new block (shared: ids come later)
        if self.shared is None and event.id >= self._block_end:
            self._next_ids()
        event_type = getattr(event, "type", "unknown")
        if len(self._pending) >= MAX_PENDING and event_type == "transcript.partial":
            if not self.dropped_partials:
                log.error("event log: %d events wait for the database; dropping partials",
                          len(self._pending))  # fmt: skip
            self.dropped_partials += 1
            return
        # serialised now: the body is frozen as subscribers will see it. Not numbered
        # yet (shared stream): id 0, and the body without its id until it has one
        numbered = self.shared is None
        row = EventRow(
            id=event.id,
            type=event_type,
            call_id=event.call_id,
            time=event.time,
            body=event.model_dump_json() if numbered else event.model_dump_json(exclude={"id"}),
        )
        self._pending.append((row, event))
        self._wake.set()

    def _next_ids(self) -> None:
        """The block ran out: number the next event from the block reserved next."""
        if self._next_block is None:  # half a block of events could not be written
            if not self._overran:
                log.error("event log: id block used up before the next was reserved; "
                          "ids may repeat another engine's")  # fmt: skip
            self._overran = True
            return
        (first, self._block_end), self._next_block = self._next_block, None
        self._overran = False
        if first > self.bus.last_id + 1:  # another engine's block lies between
            self.bus.continue_from(first)
        # else the ids numbered past the old block's end (overran: the reservation came
        # late) are already in this one, reserved above them: numbering goes straight on
        # (continue_from would refuse ids that do not grow: the next publish raised)

    async def _write_loop(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            await asyncio.sleep(GATHER)
            if self.earlier_writes is not None:
                await self.earlier_writes()
            try:
                await self.flush()
            except (SQLAlchemyError, RedisError, OSError) as exc:  # kept in memory; tried again
                if cancelled():  # stopping: redis-py may have turned that into an error
                    raise asyncio.CancelledError from exc
                log.error("event log: write failed, will retry: %s", exc)
                await asyncio.sleep(1.0)

    async def flush(self) -> None:
        """Write what is pending, then hand it to subscribers (or, with a shared stream,
        tell its readers it is stored: they hand it out)."""
        self._wake.clear()
        if self.shared is not None:
            await self._mark()  # a marker owed from the last round goes before any append
        batch, self._pending = self._pending, []
        if self.shared is not None and batch:
            # One batch appended, written and marked at a time, of APPEND_MAX events at
            # most: the stream holds one unstored batch of ours at most, and readers
            # wait on no more than that (a backlog appended whole before one write and
            # one marker, after Redis was away, had readers give up on a healthy engine).
            # A batch numbered, then not stored (the database failed) is written first
            # and alone.
            numbered = sum(1 for row, _ in batch if row.id) if batch[0][0].id else 0
            cut = numbered or APPEND_MAX
            if len(batch) > cut:
                batch, self._pending = batch[:cut], batch[cut:]
                self._wake.set()
        if batch:
            await self._write(batch)
        if self.shared is not None:
            await self._mark()

    async def _mark(self) -> None:
        """Tell the shared stream's readers what this engine has stored."""
        assert self.shared is not None
        if self._marked < self.written_to:
            try:
                await self.shared.stored(self.written_to)
            except BaseException:
                self._wake.set()  # stored, not yet said: say it on the next round
                raise
            self._marked = self.written_to

    async def _number(self, batch: list[tuple[EventRow, EventBase]]) -> None:
        """Give the batch's events not yet numbered their ids from the shared stream."""
        assert self.shared is not None
        todo = [(row, event) for row, event in batch if row.id == 0]
        while todo:
            if self._numbering is None:
                # in pieces: a backlog appended at once would outrun the readers
                self._numbering = (uuid.uuid4().hex, min(len(todo), APPEND_MAX))
            token, count = self._numbering
            part, todo = todo[:count], todo[count:]
            first = await self.shared.append([row.body for row, _ in part], token, self.written_to)
            self._numbering = None
            for i, (row, event) in enumerate(part):
                row.id = event.id = first + i
                row.body = with_id(row.id, row.body)

    async def _write(self, batch: list[tuple[EventRow, EventBase]]) -> None:
        try:
            if self.shared is not None:
                await self._number(batch)
        except BaseException:
            self._pending[:0] = batch  # keep order; nothing is lost
            self._wake.set()
            raise
        now = utcnow()
        rows = [row for row, _ in batch]
        deliveries = [
            DeliveryRow(
                id=str(uuid.uuid4()),
                webhook_id=hook.id,
                event_id=row.id,
                event_type=row.type,
                body=row.body,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
            for row in rows
            for hook in self._hooks
            if wants(hook, row.type)
        ]
        try:
            await self.store.write_events(rows, deliveries)
        except BaseException:
            self._pending[:0] = batch  # keep order; nothing is lost
            self._wake.set()
            raise
        self.written_to = rows[-1].id
        if self.dropped_partials:
            log.warning("event log: writing again; %d partials were dropped",
                        self.dropped_partials)  # fmt: skip
            self.dropped_partials = 0
        if self.shared is None:
            for row, event in batch:
                self.bus.deliver(event, row.body)
        if deliveries:
            self.on_deliveries()
        if self.shared is None:
            if self._next_block is None and self.bus.last_id >= self._block_end - ID_BLOCK // 2:
                # above every id numbered so far, written or not (overran: past the block)
                self._next_block = await self.store.reserve_event_ids(ID_BLOCK, self.bus.last_id)
        elif self.written_to > self._reserved_to - ID_BLOCK // 2:
            # the high-water mark Redis' ids go on from if it loses them
            _first, self._reserved_to = await self.store.reserve_event_ids(
                ID_BLOCK, self.written_to
            )

    async def _prune_loop(self) -> None:
        while True:
            try:
                if n := await self.store.prune_events(utcnow() - self.retention):
                    log.info("event log: pruned %d events older than %s", n, self.retention)
            except SQLAlchemyError as exc:
                log.warning("event log: prune failed: %s", exc)
            await asyncio.sleep(PRUNE_EVERY)

    async def stop(self) -> None:
        # the flag ends the writer too if a Redis command swallowed its cancellation
        self._stopping = True
        self._wake.set()
        tasks = [task for task in (self._task, self._pruner) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=STOP_WAIT)
            for task in late:  # nothing waits forever
                log.error("event log: %s did not stop", task.get_name())
        with contextlib.suppress(SQLAlchemyError, RedisError, OSError):
            await self.flush()
            while self._pending:  # a shared stream's batches go one at a time
                await self.flush()
        if self._pending:
            # Redis or the database failing at the stop: these events were never stored
            # (nor numbered, or their ids were never stored: skipped by every reader)
            log.error("event log: stopping with %d events not stored; they are lost",
                      len(self._pending))  # fmt: skip
        if self.bus.store_first == self._append:
            self.bus.store_first = None
        if self.shared is not None:
            await self.shared.stop()

    async def replay(self, call_id: str | None, after: int) -> AsyncIterator[tuple[int, str]]:
        """(id, JSON) of every event after ``after``, oldest first: from the database
        while the in-memory ring does not reach back that far, then from the ring."""
        last = after
        while last + 1 < self.bus.oldest_id:
            rows = await self.store.events_after(last, call_id, PAGE)
            for row in rows:
                if row.id >= self.bus.oldest_id:
                    break
                yield row.id, row.body
                last = row.id
            else:
                if len(rows) == PAGE:
                    continue
            break
        # the ring, and the ids within its reach it lacks because readers gave up on
        # their engine's batch (dead or stuck): stored after all, they are in the database
        recent = [(r.id, r.body) for r in self.bus.replay(call_id, last)]
        if skipped := self.bus.skipped_after(last):
            recent = sorted(recent + await self._stored_among(skipped, call_id))
        for event_id, body in recent:
            yield event_id, body

    async def _stored_among(self, ids: list[int], call_id: str | None) -> list[tuple[int, str]]:
        found = []
        async with self.store.session() as s:
            for at in range(0, len(ids), PAGE):
                q = select(EventRow.id, EventRow.body).where(EventRow.id.in_(ids[at : at + PAGE]))
                if call_id is not None:
                    q = q.where(EventRow.call_id == call_id)
                found += [(int(i), str(body)) for i, body in (await s.execute(q)).all()]
        return found
