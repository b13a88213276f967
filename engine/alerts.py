"""Supervisor alerts kept, and the wallboard's view of the floor, from the event stream.

Theory of operation
-------------------
``Supervision`` follows the event bus (every engine's events with Redis, in one order)
from the durable log, resuming by id after a lag (engine/eventlog.py ``replay``), and:

    event               Supervision
    supervisor.alert    stores the alert (its id is the escalation's: each engine that
                        sees it stores it once, the others find it there)
    call.ended          closes the call's open alerts; the engine whose update closed
                        one tells it (``alert.closed``): one engine of many does
    any                 the wallboard's ``Floor`` (engine/wallboard.py) folds it in

``ack`` marks an alert acknowledged (who, when) and tells it (``alert.acknowledged``).

At start, the ``Floor`` is filled from the stored events older than the bus's ring
(the rest the follower reads, as ``EventLog.replay`` does: the database, then the ring):

1. the calls still live (no end in their record, their engine's heartbeat fresh) that
   began before midnight: their own events, whatever the day;
2. today's call events, every page of them (the queues' counters need them all; a
   mood or an escalation is only read for the calls still live, step 3);
3. the moods and escalations of the calls live after step 2;
4. a live call whose events are gone (pruned) is followed from its record.

Then alerts whose call ended while no engine was following (a crash) are closed. At a
stop, the events delivered so far are followed first (for a second at most): the calls
the shutdown ended close their alerts then.

A store that fails drops that alert's change (logged), never the follower nor the
start. An event the follower cannot take (it raises) is logged, counted (``skipped``)
and passed: one bad event must not stall the alerts for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from engine.eventlog import EventLog
from engine.events import AlertAcknowledged, AlertClosed, EventBase, EventBus, utcnow
from engine.store.db import Store
from engine.store.models import AlertRow, CallRow, EngineRow, EventRow
from engine.wallboard import MAX_CALLS, Floor

log = logging.getLogger(__name__)

SEED_PAGE = 2_000  # events read at start per query
IDS_PER_QUERY = 500  # call ids per query at start
# what the floor's calls and counters are made of: a handful per call
STATE_TYPES = (
    "call.started", "call.state_changed", "queue.updated", "call.offered",
    "call.transferred", "call.ended",
)  # fmt: skip
MOOD_TYPES = ("emotion.updated", "escalation.raised")  # many per call: live calls' only
SEED_TYPES = (*STATE_TYPES, *MOOD_TYPES)
ENDED = "call_ended"
# what the floor and the alerts read: other events (transcripts, partials above all)
# are passed over before being turned into a dict
FOLLOWED = frozenset({*SEED_TYPES, "supervisor.alert"})


class AlertError(Exception):
    """An alert that cannot be acknowledged: ``status`` 404 (none) or 409 (done)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Supervision:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        event_log: EventLog,
        threshold: float,
        lease: float = 60.0,
    ) -> None:
        self.store = store
        self.bus = bus
        self.event_log = event_log
        self.floor = Floor(threshold)
        self.lease = lease  # an engine silent longer is dead (settings.engine_lease)
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # alert changes the store refused (logged)
        self.skipped = 0  # events that could not be followed (logged, passed)
        self.handled = 0  # the id of the last event followed

    async def start(self) -> None:
        # older than the ring is in the database (as EventLog.replay trusts); the ring's
        # the follower reads, with what comes while the floor is filled
        last = self.handled = self.bus.oldest_id - 1
        try:
            await self._seed(last)
        except Exception:  # a wallboard short of the past, rather than no engine
            self.failures += 1
            log.exception("wallboard: the floor not filled from the stored events")
        try:
            await self._sweep()
        except Exception:
            self.failures += 1
            log.exception("alerts: those of calls ended while nobody followed not closed")
        self._task = asyncio.create_task(self._follow(last), name="supervision")

    async def stop(self, settle: float = 1.0) -> None:
        """Stop following, once the events delivered so far are handled (at most
        ``settle`` s): the calls shutdown ended close their alerts now, not at the next
        start's sweep."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle
        while self._task is not None and not self._task.done() and loop.time() < deadline:
            if self.handled >= self.bus.delivered_to:
                break
            await asyncio.sleep(0.02)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- following the stream -----------------------------------------------------------

    async def _seed(self, upto: int) -> None:
        """Fill the floor from the stored events up to ``upto`` (see the module doc)."""
        midnight = datetime.combine(utcnow().date(), time(), UTC)
        live = await self._live_calls()
        # 1. the live calls that began before midnight: their story so far
        early = [row.id for row in live if row.created_at < midnight]
        await self._feed_calls(early, SEED_TYPES, upto, before=midnight)
        # 2. today's call events, all of them, from the day's first id on
        async with self.store.session() as s:
            # min over the time index: not a scan of the days before
            todays = select(func.min(EventRow.id)).where(EventRow.time >= midnight)
            first = (await s.scalars(todays.where(EventRow.id <= upto))).first()
        read = 0
        if first is not None:
            after = int(first) - 1
            while True:
                async with self.store.session() as s:
                    q = (
                        select(EventRow.id, EventRow.body)
                        .where(EventRow.id > after, EventRow.id <= upto)
                        .where(EventRow.time >= midnight, EventRow.type.in_(STATE_TYPES))
                        .order_by(EventRow.id)
                        .limit(SEED_PAGE)
                    )
                    rows = (await s.execute(q)).all()
                for event_id, body in rows:
                    self._feed(int(event_id), body)
                    after = int(event_id)
                read += len(rows)
                if len(rows) < SEED_PAGE:
                    break
        # 3. the moods and escalations of the calls live now
        await self._feed_calls(list(self.floor.calls), MOOD_TYPES, upto, since=midnight)
        # 4. live, and no events to tell it: from its record
        for row in live:
            self.floor.restore(row.id, row.channel, row.created_at, row.state, row.queue)
        log.info("wallboard: %d of today's call events read, %d live calls",
                 read, len(self.floor.calls))  # fmt: skip

    async def _live_calls(self) -> Sequence[Any]:
        """The calls with no end in their record whose engine still runs (the others
        are ended by engine/recovery.py, which tells it), the newest ``MAX_CALLS``."""
        fresh = utcnow() - timedelta(seconds=self.lease)
        q = (
            select(CallRow.id, CallRow.channel, CallRow.created_at, CallRow.state, CallRow.queue)
            .join(EngineRow, EngineRow.id == CallRow.engine_id)
            .where(CallRow.ended_at.is_(None), EngineRow.heartbeat_at >= fresh)
            .order_by(CallRow.created_at.desc())
            .limit(MAX_CALLS)
        )
        async with self.store.session() as s:
            rows = (await s.execute(q)).all()
        return rows[::-1]  # the oldest first, as the floor drops the oldest over its bound

    async def _feed_calls(
        self,
        call_ids: Sequence[str],
        types: Sequence[str],
        upto: int,
        *,
        before: datetime | None = None,
        since: datetime | None = None,
    ) -> None:
        """Feed the floor these calls' stored events of ``types``, in order per call."""
        for at in range(0, len(call_ids), IDS_PER_QUERY):
            chunk = call_ids[at : at + IDS_PER_QUERY]
            after = 0
            while True:
                q = (
                    select(EventRow.id, EventRow.body)
                    .where(EventRow.call_id.in_(chunk), EventRow.type.in_(types))
                    .where(EventRow.id > after, EventRow.id <= upto)
                )
                if before is not None:
                    q = q.where(EventRow.time < before)
                if since is not None:
                    q = q.where(EventRow.time >= since)
                async with self.store.session() as s:
                    rows = (await s.execute(q.order_by(EventRow.id).limit(SEED_PAGE))).all()
                for event_id, body in rows:
                    self._feed(int(event_id), body)
                    after = int(event_id)
                if len(rows) < SEED_PAGE:
                    break

    def _feed(self, event_id: int, body: str) -> None:
        """One stored event into the floor; one it cannot take is passed (counted)."""
        try:
            self.floor.feed(json.loads(body))
        except Exception:
            self.skipped += 1
            log.exception("wallboard: event %d passed over", event_id)

    async def _follow(self, last: int) -> None:
        while True:
            sub = self.bus.subscribe()  # before the replay: nothing falls in between
            try:
                async for event_id, body in self.event_log.replay(None, last):
                    await self._take(event_id, body)
                    last = self.handled = event_id
                async for event in sub:
                    if event.id > last:
                        if getattr(event, "type", None) in FOLLOWED:
                            await self._take(event.id, event)
                        last = self.handled = event.id
            except asyncio.CancelledError:
                raise
            except Exception:  # the follower must outlive any one event
                log.exception("supervision: following the events failed; resuming")
                await asyncio.sleep(1.0)
            finally:
                sub.close()

    async def _take(self, event_id: int, event: str | EventBase) -> None:
        """Follow one event; one that raises is logged, counted and passed, not tried
        again for ever (the follower would resume at it after each failure)."""
        try:
            ev = json.loads(event) if isinstance(event, str) else event.model_dump()
            await self._handle(ev)
        except Exception:
            self.skipped += 1
            log.exception("supervision: event %d not followed; passed over", event_id)

    async def _handle(self, ev: Mapping[str, Any]) -> None:
        self.floor.feed(ev)
        kind, call_id = ev.get("type"), ev.get("call_id")
        if kind == "supervisor.alert" and isinstance(call_id, str):
            await self._raised(ev, call_id)
        elif kind == "call.ended" and isinstance(call_id, str):
            await self._close([call_id])

    async def _raised(self, ev: Mapping[str, Any], call_id: str) -> None:
        when = ev.get("time")
        raised = datetime.fromisoformat(when) if isinstance(when, str) else when
        row = AlertRow(
            id=str(ev["escalation_id"]), call_id=call_id, reason=str(ev.get("reason", "")),
            priority=int(ev.get("priority", 0)),
            raised_at=raised if isinstance(raised, datetime) else utcnow(),
        )  # fmt: skip
        try:
            async with self.store.writing() as s:
                s.add(row)
        except IntegrityError:
            pass  # another engine stored it first
        except Exception:
            self.failures += 1
            log.exception("alert %s not stored", row.id)

    async def _close(self, call_ids: Sequence[str]) -> None:
        """Close the open alerts of these calls; tell those this engine closed."""
        try:
            async with self.store.session() as s:
                q = select(AlertRow.id, AlertRow.call_id).where(
                    AlertRow.call_id.in_(call_ids), AlertRow.closed_at.is_(None)
                )
                found = (await s.execute(q)).all()
            for alert_id, call_id in found:
                async with self.store.writing() as s:
                    done = await s.execute(
                        update(AlertRow)
                        .where(AlertRow.id == alert_id, AlertRow.closed_at.is_(None))
                        .values(closed_at=utcnow(), closed_reason=ENDED)
                    )
                if getattr(done, "rowcount", 0) == 1:  # this engine's update closed it
                    self._publish(AlertClosed(alert_id=alert_id, about=call_id, reason=ENDED))
        except Exception:
            self.failures += 1
            log.exception("alerts of calls %s not closed", list(call_ids)[:5])

    async def _sweep(self) -> None:
        """Close the alerts whose call ended while nobody followed (a crash)."""
        async with self.store.session() as s:
            q = (
                select(AlertRow.call_id)
                .join(CallRow, CallRow.id == AlertRow.call_id)
                .where(AlertRow.closed_at.is_(None), CallRow.ended_at.is_not(None))
                .distinct()
                .limit(10_000)
            )
            ended = list((await s.scalars(q)).all())
        if ended:
            await self._close(ended)

    def _publish(self, event: EventBase) -> None:
        self.bus.publish(event)

    # -- the API's ----------------------------------------------------------------------

    async def alerts(
        self, *, open_only: bool, call_id: str | None, limit: int
    ) -> Sequence[AlertRow]:
        q = select(AlertRow).order_by(AlertRow.raised_at.desc()).limit(limit)
        if open_only:
            q = q.where(AlertRow.closed_at.is_(None))
        if call_id is not None:
            q = q.where(AlertRow.call_id == call_id)
        async with self.store.session() as s:
            return (await s.scalars(q)).all()

    async def ack(self, alert_id: str, by: str) -> AlertRow:
        now = utcnow()
        async with self.store.writing() as s:
            done = await s.execute(
                update(AlertRow)
                .where(AlertRow.id == alert_id, AlertRow.acked_at.is_(None))
                .values(acked_at=now, acked_by=by)
            )
        async with self.store.session() as s:
            row = await s.get(AlertRow, alert_id)
        if row is None:
            raise AlertError(404, f"no alert {alert_id}")
        if getattr(done, "rowcount", 0) != 1:
            raise AlertError(409, f"alert {alert_id} was acknowledged by {row.acked_by}")
        self._publish(AlertAcknowledged(alert_id=alert_id, about=row.call_id, by=by, acked_at=now))
        return row
