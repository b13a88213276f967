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
At start, the ``Floor`` is filled from today's stored events (at most ``SEED_MAX``),
and alerts whose call ended while no engine was following (a crash) are closed. At a
stop, the events delivered so far are followed first (for a second at most): the calls
the shutdown ended close their alerts then.

A store that fails drops that alert's change (logged), never the follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from engine.eventlog import EventLog
from engine.events import AlertAcknowledged, AlertClosed, EventBase, EventBus, utcnow
from engine.store.db import Store
from engine.store.models import AlertRow, CallRow, EventRow
from engine.wallboard import Floor

log = logging.getLogger(__name__)

SEED_MAX = 200_000  # today's events read at start, at most
SEED_PAGE = 2_000
SEED_TYPES = (
    "call.started", "call.state_changed", "queue.updated", "call.offered",
    "call.transferred", "emotion.updated", "escalation.raised", "call.ended",
)  # fmt: skip
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
    def __init__(self, store: Store, bus: EventBus, event_log: EventLog, threshold: float) -> None:
        self.store = store
        self.bus = bus
        self.event_log = event_log
        self.floor = Floor(threshold)
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # alert changes the store refused (logged)
        self.handled = 0  # the id of the last event followed

    async def start(self) -> None:
        last = self.handled = self.bus.delivered_to
        await self._seed(last)
        await self._sweep()
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
        midnight = datetime.combine(utcnow().date(), time(), UTC)
        after, read = 0, 0
        while read < SEED_MAX:
            async with self.store.session() as s:
                q = (
                    select(EventRow.id, EventRow.body)
                    .where(EventRow.time >= midnight, EventRow.id > after, EventRow.id <= upto)
                    .where(EventRow.type.in_(SEED_TYPES))
                    .order_by(EventRow.id)
                    .limit(SEED_PAGE)
                )
                rows = (await s.execute(q)).all()
            for event_id, body in rows:
                self.floor.feed(json.loads(body))
                after = int(event_id)
            read += len(rows)
            if len(rows) < SEED_PAGE:
                return
        log.warning("wallboard: only today's first %d events read at start", SEED_MAX)

    async def _follow(self, last: int) -> None:
        while True:
            sub = self.bus.subscribe()  # before the replay: nothing falls in between
            try:
                async for event_id, body in self.event_log.replay(None, last):
                    await self._handle(json.loads(body))
                    last = self.handled = event_id
                async for event in sub:
                    if event.id > last:
                        if getattr(event, "type", None) in FOLLOWED:
                            await self._handle(event.model_dump())
                        last = self.handled = event.id
            except asyncio.CancelledError:
                raise
            except Exception:  # the follower must outlive any one event
                log.exception("supervision: following the events failed; resuming")
                await asyncio.sleep(1.0)
            finally:
                sub.close()

    async def _handle(self, ev: dict[str, Any]) -> None:
        self.floor.feed(ev)
        kind, call_id = ev.get("type"), ev.get("call_id")
        if kind == "supervisor.alert" and isinstance(call_id, str):
            await self._raised(ev, call_id)
        elif kind == "call.ended" and isinstance(call_id, str):
            await self._close([call_id])

    async def _raised(self, ev: dict[str, Any], call_id: str) -> None:
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
