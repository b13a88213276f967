"""Post-call analytics, kept: reads a finished call's records, computes its analytics
(engine/callanalytics.py, pure) and stores them (``call_analytics``).

A call is analysed when it ends, and again when it is wrapped up (the wrap-up is part
of its handle time): the analyst follows the bus for ``call.ended`` and
``call.wrapped_up``. By then the call's rows are stored: the event log hands an event
on only once the call writes before it are (``EventLog.earlier_writes``). A call the
analyst missed (it fell behind the bus, or ended before analytics existed) is analysed
when first asked for (``get``) or when a report covers it (``backfill``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import selectinload

from engine import callanalytics as ca
from engine.events import EventBus, as_utc, utcnow
from engine.store.db import Store
from engine.store.models import (
    CallAnalyticsRow,
    CallRow,
    EmotionRow,
    EventRow,
    UtteranceRow,
)

log = logging.getLogger(__name__)

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "deploy" / "analytics-categories.yaml"
MAX_STATE_CHANGES = 1000  # of one call read from the event log
MAX_LINES = 20_000  # utterances of one call read (a day-long call at one every 4 s)
MAX_SAMPLES = 20_000
BACKFILL_PER_REPORT = 200  # calls a report analyses that were not analysed yet
TRIGGERS = frozenset({"call.ended", "call.wrapped_up"})


def rules_from(setting: str | None) -> ca.CategoryRules | None:
    """The category rules a setting names: unset, the shipped file (if it is there);
    empty, none. A bad file stops the engine at start with the reason."""
    if setting == "":
        return None
    path = Path(setting) if setting is not None else DEFAULT_RULES
    if setting is None and not path.is_file():
        return None
    return ca.load_rules(path)


class CallNotEnded(Exception):
    """The call is still going on: it is analysed when it ends."""


@dataclass(frozen=True, slots=True)
class Loaded:
    call: CallRow
    result: ca.CallAnalytics


class Analyst:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        rules: ca.CategoryRules | None,
        engine_id: str | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.rules = rules
        # engines sharing a Redis stream each see every engine's events: a call is
        # analysed as it ends by the engine that ran it (any engine when first read)
        self.engine_id = engine_id
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    # -- the live part -----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="call-analytics")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        while True:  # a subscription cut off for lagging is taken out again
            sub = self.bus.subscribe()
            try:
                async for event in sub:
                    if getattr(event, "type", None) in TRIGGERS and event.call_id:
                        await self._analyse_quietly(event.call_id, mine_only=True)
            finally:
                sub.close()
            log.warning("call analytics fell behind the events; missed calls wait for a read")
            await asyncio.sleep(1.0)  # never a busy loop, whatever ended the subscription

    async def _analyse_quietly(self, call_id: str, *, mine_only: bool = False) -> None:
        try:
            await self.analyse(call_id, mine_only=mine_only)
        except CallNotEnded:
            pass
        except (SQLAlchemyError, OSError, ValueError) as exc:
            # the next read of the call analyses it again; the bus goes on
            self.failures += 1
            log.error("call %s: analytics not stored: %s", call_id, exc)

    # -- reading and computing -----------------------------------------------------------

    async def get(self, call_id: str) -> Loaded | None:
        """The call's analytics: as stored if they are current, else computed now and
        stored. None: no such call; CallNotEnded: it is still going on."""
        async with self.store.session() as s:
            call = await s.get(CallRow, call_id)
            row = await s.get(CallAnalyticsRow, call_id)
        if call is None:
            return None
        if row is not None and _current(row, call):
            return Loaded(call, ca.CallAnalytics.model_validate(row.data))
        return await self.analyse(call_id)

    async def analyse(self, call_id: str, *, mine_only: bool = False) -> Loaded | None:
        """Compute and store the call's analytics. ``mine_only``: not if another engine
        ran the call (it does so itself); None then, as for an unknown call."""
        async with self.store.session() as s:
            call = await s.scalar(
                select(CallRow).where(CallRow.id == call_id).options(selectinload(CallRow.legs))
            )
            if call is None:
                return None
            if mine_only and call.engine_id not in (None, self.engine_id):
                return None
            if call.state != "ended" or call.ended_at is None:
                raise CallNotEnded(call_id)
            utts = (
                await s.scalars(
                    select(UtteranceRow)
                    .where(UtteranceRow.call_id == call_id)
                    .order_by(UtteranceRow.start)
                    .limit(MAX_LINES)
                )
            ).all()
            emos = (
                await s.scalars(
                    select(EmotionRow)
                    .where(EmotionRow.call_id == call_id)
                    .order_by(EmotionRow.id)
                    .limit(MAX_SAMPLES)
                )
            ).all()
            bodies = (
                await s.scalars(
                    select(EventRow.body)
                    .where(EventRow.call_id == call_id, EventRow.type == "call.state_changed")
                    .order_by(EventRow.id)
                    .limit(MAX_STATE_CHANGES)
                )
            ).all()
        roles = {leg.id: leg.role for leg in call.legs}
        result = ca.analyze(
            [ca.Line(u.speaker, u.start, u.end, u.text, u.words or []) for u in utts],
            [
                ca.Sample(roles.get(e.leg_id, "caller"), e.at, e.label, e.valence, e.arousal)
                for e in emos
            ],
            ca.CallTimes(
                call.created_at,
                call.answered_at,
                call.escalated_at,
                call.ended_at,
                call.wrapped_up_at,
            ),  # fmt: skip
            _state_changes(bodies),
            self.rules,
        )
        if call.agent_id is not None and not result.reached_agent:
            result.reached_agent = True  # the log was pruned; the call row remembers
        await self._store(call_id, result)
        return Loaded(call, result)

    async def _store(self, call_id: str, result: ca.CallAnalytics) -> None:
        h = result.handle
        caller_talk = result.talk["caller"].talk_seconds if "caller" in result.talk else 0.0
        others = sum(t.talk_seconds for side, t in result.talk.items() if side != "caller")
        row = CallAnalyticsRow(
            call_id=call_id,
            version=result.version,
            computed_at=utcnow(),
            data=result.model_dump(mode="json"),
            handle_seconds=h.total,
            queue_seconds=h.queue,
            bot_seconds=h.bot,
            agent_seconds=h.agent,
            hold_seconds=h.hold,
            wrap_up_seconds=h.wrap_up,
            caller_talk_seconds=caller_talk,
            agent_talk_seconds=round(others, 3),
            non_talk_seconds=result.non_talk.total_seconds,
            longest_non_talk_seconds=result.non_talk.longest_seconds,
            caller_interruptions=result.interruptions_by.get("caller", 0),
            agent_interruptions=sum(
                n for side, n in result.interruptions_by.items() if side != "caller"
            ),
            categories=[c.name for c in result.categories],
        )
        async with self.store.writing() as s:
            await s.merge(row)

    async def backfill(self, since: datetime, until: datetime) -> int:
        """Analyse up to BACKFILL_PER_REPORT ended calls of the period that have no
        current analytics; how many were."""
        q = (
            select(CallRow.id)
            .outerjoin(CallAnalyticsRow, CallAnalyticsRow.call_id == CallRow.id)
            .where(
                CallRow.created_at >= since,
                CallRow.created_at < until,
                CallRow.state == "ended",
                (CallAnalyticsRow.call_id.is_(None))
                | (CallAnalyticsRow.version != ca.VERSION)
                | (
                    CallRow.wrapped_up_at.is_not(None)
                    & (CallAnalyticsRow.computed_at < CallRow.wrapped_up_at)
                ),
            )
            .limit(BACKFILL_PER_REPORT)
        )
        async with self.store.session() as s:
            ids: Sequence[str] = (await s.scalars(q)).all()
        for call_id in ids:
            await self._analyse_quietly(call_id)
        return len(ids)


def _current(row: CallAnalyticsRow, call: CallRow) -> bool:
    if row.version != ca.VERSION:
        return False
    # wrapped up after it was analysed: the wrap-up is not in it yet
    return call.wrapped_up_at is None or as_utc(row.computed_at) >= as_utc(call.wrapped_up_at)


def _state_changes(bodies: Sequence[str]) -> list[ca.StateChange]:
    out = []
    for body in bodies:
        try:
            e = json.loads(body)
            out.append(
                ca.StateChange(as_utc(datetime.fromisoformat(e["time"])), e["state"], e["previous"])
            )
        except (ValueError, KeyError, TypeError):
            continue  # an event the log could not have written; the rest still tell
    return out
