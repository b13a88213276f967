"""Post-call analytics, kept: reads a finished call's records, computes its analytics
(engine/callanalytics.py, pure) and stores them (``call_analytics``).

A call is analysed when it ends, and again when it is wrapped up (the wrap-up is part
of its handle time): the analyst follows the bus for ``call.ended`` and
``call.wrapped_up``. By then the call's rows are stored: the event log hands an event
on only once the call writes before it are (``EventLog.earlier_writes``). A call the
analyst missed (it fell behind the bus, or ended before analytics existed) is analysed
when first asked for (``get``) or when a report covers it (``backfill``).

Which engine analyses a call as it ends: the one that ran it (``calls.engine_id``), or
the one that ended it for a dead engine (Recovery tells it, ``ended_here``): engines
sharing a Redis stream each see every engine's ``call.ended``.

The computation is CPU work (a day-long call's 20,000 lines take seconds): it runs in a
worker thread, never on the event loop. Two writers of one call's row (the analyst and
a reader of the call page at hang-up) both upsert it: the last one wins, no error.

A result read from the call's whole event log is kept against one from a pruned log
(the log keeps CCENGINE_EVENT_RETENTION days): a later analysis of the same VERSION,
say at a late wrap-up, takes the stored handle split's queue, bot, agent and hold and
recomputes only the rest. A result of another VERSION is computed again whatever the
log holds (its stored shape is not this version's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
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

if TYPE_CHECKING:
    from engine.eventlog import EventLog

log = logging.getLogger(__name__)

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "deploy" / "analytics-categories.yaml"
MAX_STATE_CHANGES = 1000  # of one call read from the event log
MAX_LINES = 20_000  # utterances of one call read (a day-long call at one every 4 s)
MAX_SAMPLES = 20_000
BACKFILL_PER_REPORT = 200  # calls a report analyses that were not analysed yet
BACKFILL_SECONDS = 2.0  # and for at most this long: the rest wait for the next report
RETRY_AFTER = 600.0  # seconds a call whose analysis failed is left out of backfills
MAX_FAILED = 10_000  # failed calls remembered (the oldest forgotten first)
MAX_MINE = 10_000  # calls this engine ended for dead engines, not yet analysed
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
        event_log: EventLog | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.rules = rules
        # engines sharing a Redis stream each see every engine's events: a call is
        # analysed as it ends by the engine that ran it (any engine when first read)
        self.engine_id = engine_id
        self.event_log = event_log  # to catch up after falling behind the bus
        self.failures = 0
        self.handled = 0  # the last event id followed
        # call id -> monotonic time of its last failed analysis (backfill skips it a while)
        self._failed: OrderedDict[str, float] = OrderedDict()
        self._mine: OrderedDict[str, None] = OrderedDict()  # ended here for a dead engine
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

    def ended_here(self, call_id: str) -> None:
        """This engine ended ``call_id`` for a dead engine (engine/recovery.py): its
        ``call.ended`` is this engine's to analyse, though the row names the dead one."""
        self._mine[call_id] = None
        while len(self._mine) > MAX_MINE:
            self._mine.popitem(last=False)

    async def _follow(self) -> None:
        caught_up = False  # at the start: from now on (older calls are backfilled)
        self.handled = max(self.handled, self.bus.last_id)
        while True:  # a subscription cut off for lagging is taken out again
            sub = self.bus.subscribe()  # before the replay: nothing falls in between
            try:
                if caught_up and self.event_log is not None:
                    async for event_id, body in self.event_log.replay(None, self.handled):
                        self.handled = event_id  # first: a failing event is not retried
                        await self._on(json.loads(body))
                caught_up = True
                async for event in sub:
                    if event.id > self.handled:
                        self.handled = event.id
                        await self._on({"type": getattr(event, "type", None),
                                        "call_id": event.call_id})  # fmt: skip
            except asyncio.CancelledError:
                raise
            except Exception:  # the follower must outlive any one call or event
                log.exception("call analytics: following the events failed; resuming")
            finally:
                sub.close()
            log.warning("call analytics fell behind the events; catching up from the log")
            await asyncio.sleep(1.0)  # never a busy loop, whatever ended the subscription

    async def _on(self, event: dict[str, object]) -> None:
        call_id = event.get("call_id")
        if event.get("type") in TRIGGERS and isinstance(call_id, str) and call_id:
            await self._analyse_quietly(call_id, mine_only=True)

    async def _analyse_quietly(self, call_id: str, *, mine_only: bool = False) -> None:
        try:
            await self.analyse(call_id, mine_only=mine_only)
        except CallNotEnded:
            pass
        except (SQLAlchemyError, OSError, ValueError) as exc:
            # the next read of the call analyses it again; the bus goes on
            self._failed_now(call_id)
            log.error("call %s: analytics not stored: %s", call_id, exc)
        except Exception:  # a bug or records it cannot read: this call only, not the rest
            self._failed_now(call_id)
            log.exception("call %s: analytics failed", call_id)
        else:
            self._failed.pop(call_id, None)

    def _failed_now(self, call_id: str) -> None:
        self.failures += 1
        self._failed[call_id] = time.monotonic()
        self._failed.move_to_end(call_id)
        while len(self._failed) > MAX_FAILED:
            self._failed.popitem(last=False)

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
            if (
                mine_only
                and call.engine_id not in (None, self.engine_id)
                and call_id not in self._mine
            ):
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
            stored = await s.get(CallAnalyticsRow, call_id)
        self._mine.pop(call_id, None)
        roles = {leg.id: leg.role for leg in call.legs}
        agent_legs = [
            (as_utc(leg.created_at), as_utc(leg.ended_at) if leg.ended_at else None)
            for leg in call.legs
            if leg.role == "agent"
        ]
        result = await asyncio.to_thread(  # CPU work: off the event loop
            ca.analyze,
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
            channel=call.channel,
            agent_legs=agent_legs,
        )
        if call.agent_id is not None and not result.reached_agent:
            result.reached_agent = True  # the log was pruned; the call row remembers
        if stored is not None:
            result = _keep_whole_log(stored, result)
        await self._store(call_id, result)
        return Loaded(call, result)

    async def _store(self, call_id: str, result: ca.CallAnalytics) -> None:
        h = result.handle
        caller = result.talk.get("caller")
        caller_talk = caller.talk_seconds if caller is not None else 0.0
        others: float | None = None
        if result.channel != "chat":  # a chat has no talk seconds: None, not 0
            others = round(
                sum(t.talk_seconds or 0.0 for side, t in result.talk.items() if side != "caller"),
                3,
            )
        nt = result.non_talk
        values = dict(
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
            agent_talk_seconds=others,
            non_talk_seconds=nt.total_seconds if nt is not None else None,
            longest_non_talk_seconds=nt.longest_seconds if nt is not None else None,
            caller_interruptions=result.interruptions_by.get("caller", 0),
            agent_interruptions=sum(
                n for side, n in result.interruptions_by.items() if side != "caller"
            ),
            categories=[c.name for c in result.categories],
        )
        # one statement, whoever else writes the row at the same time (a read-then-
        # insert raced into an IntegrityError on PostgreSQL)
        dialect = self.store.engine.dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        stmt = insert(CallAnalyticsRow).values(**values)
        update = {k: stmt.excluded[k] for k in values if k != "call_id"}
        async with self.store.writing() as s:
            await s.execute(stmt.on_conflict_do_update(index_elements=["call_id"], set_=update))

    async def backfill(
        self, since: datetime, until: datetime, budget: float = BACKFILL_SECONDS
    ) -> int:
        """Analyse up to BACKFILL_PER_REPORT ended calls of the period that have no
        current analytics, oldest first, for at most ``budget`` seconds, leaving out
        those that failed in the last RETRY_AFTER seconds; how many were."""
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
            .order_by(CallRow.created_at)
        )
        now = time.monotonic()
        skip = [c for c, failed in self._failed.items() if now - failed < RETRY_AFTER]
        if skip:
            q = q.where(CallRow.id.not_in(skip[-1000:]))  # the latest: bounded statement
        q = q.limit(BACKFILL_PER_REPORT)
        async with self.store.session() as s:
            ids: Sequence[str] = (await s.scalars(q)).all()
        done = 0
        for call_id in ids:
            if time.monotonic() - now >= budget:
                break
            await self._analyse_quietly(call_id)
            done += 1
        return done


def _current(row: CallAnalyticsRow, call: CallRow) -> bool:
    if row.version != ca.VERSION:
        return False
    # wrapped up after it was analysed: the wrap-up is not in it yet
    return call.wrapped_up_at is None or as_utc(row.computed_at) >= as_utc(call.wrapped_up_at)


def _keep_whole_log(stored: CallAnalyticsRow, new: ca.CallAnalytics) -> ca.CallAnalytics:
    """``new``, with the stored result's log-read parts when the stored one read the
    whole log and ``new`` a pruned one (same VERSION only)."""
    if new.log_complete or stored.version != ca.VERSION:
        return new
    try:
        old = ca.CallAnalytics.model_validate(stored.data)
    except ValueError:
        return new
    if not old.log_complete:
        return new
    h = new.handle
    kept = old.handle.model_copy(update={"wrap_up": h.wrap_up, "total": h.total})
    return new.model_copy(
        update={
            "handle": kept,
            "log_complete": True,
            "non_talk": old.non_talk,  # its queue and hold stretches came from the log
            "queued": old.queued,
            "reached_agent": old.reached_agent or new.reached_agent,
        }
    )


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
