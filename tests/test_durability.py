"""What survives a crash or a storage failure, tested in-process on a real SQLite store:
live streams only hand out stored events, a restarted engine tells everyone which calls
the crash ended (and leaves a live engine's calls alone), and a failed write neither
leaves a ghost call nor loses what a caller said."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

from engine.eventlog import EventLog
from engine.events import DtmfReceived, EventBus, as_utc, utcnow
from engine.recovery import Recovery
from engine.store.db import Store
from engine.store.models import CallRow, EngineRow, LegRow, WebhookRow


async def open_store(path: Path) -> Store:
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.open()
    return store


async def test_live_subscribers_get_only_stored_events(tmp_path: Path) -> None:
    """kill -9 under load lost events that clients had already seen: the bus handed them
    to streams at once and the log wrote them up to 50 ms later. Now a subscriber is
    given an event only once it is in the database, so a crash cannot take it back."""
    store = await open_store(tmp_path / "log.db")
    bus = EventBus()
    log = EventLog(store, bus, retention_days=1)
    await log.start()
    sub = bus.subscribe()
    # another process holds the database's write lock: nothing can be stored for now
    blocker = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        event = bus.publish(DtmfReceived(call_id="a", digit="5", at=1.0))
        await asyncio.sleep(0.3)
        assert sub.queue.empty(), "a subscriber saw an event the database does not hold"
        assert [i async for i, _ in log.replay(None, 0)] == []
        blocker.execute("ROLLBACK")
        got = await asyncio.wait_for(sub.queue.get(), 10)
        assert got is not None and got.id == event.id
        stored = await store.events_after(event.id - 1, None, 10)
        assert [r.id for r in stored] == [event.id]
    finally:
        blocker.close()
        await log.stop()
        await store.close()


async def test_stored_events_still_reach_listeners_at_once(tmp_path: Path) -> None:
    """Waiting for the write must not make live transcripts late: an event is seen well
    within 100 ms of being published."""
    store = await open_store(tmp_path / "log.db")
    bus = EventBus()
    log = EventLog(store, bus, retention_days=1)
    await log.start()
    sub = bus.subscribe()
    delays = []
    try:
        for i in range(10):
            sent = time.monotonic()
            bus.publish(DtmfReceived(call_id="a", digit=str(i), at=float(i)))
            await asyncio.wait_for(sub.queue.get(), 5)
            delays.append(time.monotonic() - sent)
            await asyncio.sleep(0.02)
    finally:
        await log.stop()
        await store.close()
    assert statistics.median(delays) < 0.1, delays


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def call_row(call_id: str, state: str, engine_id: str | None, created: datetime) -> CallRow:
    return CallRow(
        id=call_id, channel="webrtc", state=state, language="en", recognizer=None,
        recognizer_note="", caller=None, created_at=created, engine_id=engine_id,
    )  # fmt: skip


async def test_a_restart_publishes_the_end_of_the_calls_a_crash_cut_off(tmp_path: Path) -> None:
    """After a crash the calls were marked ended at the next start, but no event said
    so: streams and webhooks never learned those calls ended. Now each gets
    ``call.state_changed`` (to ended) and ``call.ended``, kept in the log and queued
    for webhooks; calls that had ended already are left as they were."""
    store = await open_store(tmp_path / "engine.db")
    now = utcnow()
    crashed = EngineRow(
        id="crashed", host=socket.gethostname(), pid=dead_pid(),
        started_at=now - timedelta(minutes=5), heartbeat_at=now - timedelta(seconds=3),
    )  # fmt: skip
    await store.beat(crashed)
    started = now - timedelta(minutes=2)
    await store.add(
        call_row("talking", "active", "crashed", started),
        call_row("with-agent", "bridged", "crashed", started),
        call_row("before-owners", "queued", None, started),  # from before engines were kept
        call_row("done", "ended", "crashed", started),
        LegRow(id="leg", call_id="talking", role="caller", transport="webrtc", codec=None,
               created_at=started),
        WebhookRow(id="hook", url="http://127.0.0.1:9/x", events=["call.ended"], secret="s",
                   description="", created_at=now),
    )  # fmt: skip
    bus = EventBus()
    log = EventLog(store, bus, retention_days=1)
    await log.start()
    recovery = Recovery(store, bus, lease=60)
    try:
        assert await recovery.start() == 3
        await log.flush()
        events = [json.loads(body) for _, body in [x async for x in log.replay(None, 0)]]
        record = await store.get_call("talking")
        deliveries = await store.deliveries("hook", None, 10)
        assert await store.open_call_owners() == set()
    finally:
        await recovery.stop()
        await log.stop()
        await store.close()
    ended = {e["call_id"]: e for e in events if e["type"] == "call.ended"}
    changed = {e["call_id"]: e for e in events if e["type"] == "call.state_changed"}
    assert set(ended) == set(changed) == {"talking", "with-agent", "before-owners"}
    assert changed["with-agent"]["previous"] == "bridged" and changed["talking"]["state"] == "ended"
    assert ended["talking"]["reason"] == "engine_restart"
    # it ended when its engine was last seen running, not when we noticed
    assert abs(ended["talking"]["duration"] - 117) < 1
    assert record is not None and record.call.end_reason == "engine_restart"
    assert record.call.legs[0].ended_at is not None
    assert sorted(d.event_id for d in deliveries) == sorted(e["id"] for e in ended.values())


async def test_a_second_engine_leaves_a_live_engines_calls_alone(tmp_path: Path) -> None:
    """A second engine started on the same database marked the first engine's live calls
    ended. Calls belong to the engine running them: they are ended only once it is dead
    (its heartbeat older than the lease, or its process gone from this host)."""
    store = await open_store(tmp_path / "engine.db")
    now = utcnow()
    alive_here = EngineRow(
        id="alive-here", host=socket.gethostname(), pid=os.getppid(),
        started_at=now, heartbeat_at=now,
    )  # fmt: skip
    elsewhere = EngineRow(
        id="elsewhere", host="another-host", pid=dead_pid(), started_at=now, heartbeat_at=now
    )
    await store.beat(alive_here)
    await store.beat(elsewhere)
    await store.add(
        call_row("a", "active", "alive-here", now), call_row("b", "queued", "elsewhere", now)
    )
    bus = EventBus()
    sub = bus.subscribe()
    second = Recovery(store, bus, lease=30)
    try:
        assert await second.start() == 0
        assert await store.open_call_owners() == {"alive-here", "elsewhere"}
        # the engine elsewhere stops beating: after the lease a survivor ends its calls
        elsewhere.heartbeat_at = now - timedelta(seconds=31)
        await store.beat(elsewhere)
        assert await second.recover("engine_lost") == 1
        assert await store.open_call_owners() == {"alive-here"}
        b = await store.get_call("b")
        assert b is not None and b.call.end_reason == "engine_lost"
        assert as_utc(b.call.ended_at) == elsewhere.heartbeat_at  # type: ignore[arg-type]
    finally:
        await second.stop()
        await store.close()
    published = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    assert [(e.call_id, getattr(e, "type", "")) for e in published] == [
        ("b", "call.state_changed"),
        ("b", "call.ended"),
    ]
