"""What survives a crash or a storage failure, tested in-process on a real store, once on
SQLite and once on PostgreSQL (the ``db_url`` fixture): live streams only hand out
stored events, a restarted engine tells everyone which calls the crash ended (and leaves
a live engine's calls alone), and a failed write neither leaves a ghost call nor loses
what a caller said."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import sqlite3
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from aiortc import RTCPeerConnection
from sqlalchemy import event as sa_event
from sqlalchemy.exc import OperationalError

from engine.calls import CallManager
from engine.config import Settings
from engine.content import ARTICLE, QUEUE, RULE
from engine.eventlog import EventLog
from engine.events import DtmfReceived, EventBus, as_utc, utcnow
from engine.metrics import Metrics
from engine.recovery import LOST, Recovery
from engine.spool import WriteSpool
from engine.store.db import Store, sqlite_file
from engine.store.models import CallRow, EngineRow, LegRow, WebhookRow
from media import events as me


async def open_store(url: str) -> Store:
    store = Store(url)
    await store.open()
    return store


@contextlib.asynccontextmanager
async def event_writes_held(url: str) -> AsyncIterator[None]:
    """Another process holds what writing events needs, until the block ends: SQLite's
    write lock, or on PostgreSQL a lock on the events table that lets readers by."""
    path = sqlite_file(url)
    if path is not None:
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            yield
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        return
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        yield
        await tx.rollback()
    finally:
        await conn.close()


async def test_live_subscribers_get_only_stored_events(db_url: str) -> None:
    """kill -9 under load lost events that clients had already seen: the bus handed them
    to streams at once and the log wrote them up to 50 ms later. Now a subscriber is
    given an event only once it is in the database, so a crash cannot take it back."""
    store = await open_store(db_url)
    bus = EventBus()
    log = EventLog(store, bus, retention_days=1)
    await log.start()
    sub = bus.subscribe()
    try:
        # another process holds the database's locks: nothing can be stored for now
        async with event_writes_held(db_url):
            event = bus.publish(DtmfReceived(call_id="a", digit="5", at=1.0))
            await asyncio.sleep(0.3)
            assert sub.queue.empty(), "a subscriber saw an event the database does not hold"
            assert [i async for i, _ in log.replay(None, 0)] == []
        got = await asyncio.wait_for(sub.queue.get(), 10)
        assert got is not None and got.id == event.id
        stored = await store.events_after(event.id - 1, None, 10)
        assert [r.id for r in stored] == [event.id]
    finally:
        await log.stop()
        await store.close()


async def test_stored_events_still_reach_listeners_at_once(db_url: str) -> None:
    """Waiting for the write must not make live transcripts late: an event is seen well
    within 100 ms of being published."""
    store = await open_store(db_url)
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


async def test_events_wait_for_the_call_writes_before_them(db_url: str) -> None:
    """With the disk full, a final and the end of a call were kept in the call spool and
    their events in the log; storage came back, the log (retrying every second) handed
    out ``call.ended`` first, and a client that then fetched the call found no
    transcript. Now the log writes a batch only once the spool has nothing kept."""
    store = await open_store(db_url)
    bus = EventBus()
    log = EventLog(store, bus, retention_days=1)
    spool = WriteSpool(retry_base=0.05, retry_cap=0.05)
    log.earlier_writes = spool.drained
    await log.start()
    sub = bus.subscribe()
    storage_back = asyncio.Event()
    stored: list[str] = []

    async def final() -> None:
        if not storage_back.is_set():
            raise OperationalError("INSERT", {}, Exception("database or disk is full"))
        stored.append("final")

    try:
        assert not await spool.write("call a final", final)  # kept: storage is failing
        bus.publish(DtmfReceived(call_id="a", digit="5", at=1.0))
        await asyncio.sleep(0.5)
        assert sub.queue.empty(), "an event went out before the write it follows"
        storage_back.set()
        got = await asyncio.wait_for(sub.queue.get(), 10)
        assert got is not None and stored == ["final"]
    finally:
        await log.stop()
        await store.close()


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


async def test_a_restart_publishes_the_end_of_the_calls_a_crash_cut_off(db_url: str) -> None:
    """After a crash the calls were marked ended at the next start, but no event said
    so: streams and webhooks never learned those calls ended. Now each gets
    ``call.state_changed`` (to ended) and ``call.ended``, kept in the log and queued
    for webhooks; calls that had ended already are left as they were."""
    store = await open_store(db_url)
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


async def test_phone_callers_a_dead_engine_cut_off_are_offered_a_callback(db_url: str) -> None:
    """A node killed mid-call left its phone callers to dial again (and wait in line
    again). The survivor that ends those calls now puts each caller it can reach (a
    phone number) on the agents' callback list, with what the call had said so far,
    and publishes it; in-app callers and named SIP users get none."""
    store = await open_store(db_url)
    now = utcnow()
    dead = EngineRow(
        id="dead", host="another-host", pid=dead_pid(),
        started_at=now - timedelta(minutes=5), heartbeat_at=now - timedelta(seconds=31),
    )  # fmt: skip
    await store.beat(dead)
    phone = call_row("phone", "queued", "dead", now)
    phone.channel, phone.caller, phone.queue = "sip", "+15550001234", "billing"
    phone.summary, phone.priority = "Caller was charged twice.", 3
    desk = call_row("desk", "active", "dead", now)
    desk.channel, desk.caller = "sip", "deskphone7"
    await store.add(phone, desk, call_row("in-app", "active", "dead", now))
    bus = EventBus()
    sub = bus.subscribe()
    survivor = Recovery(store, bus, lease=30)
    try:
        await survivor.start()
        assert await survivor.recover(LOST) == 0  # the start ended them (restart)
        [callback] = await store.callbacks("pending")
    finally:
        await survivor.stop()
        await store.close()
    assert (callback.call_id, callback.contact, callback.queue) == (
        "phone",
        "+15550001234",
        "billing",
    )
    assert callback.summary == "Caller was charged twice." and callback.priority == 3
    published = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    requested = [e for e in published if getattr(e, "type", "") == "callback.requested"]
    assert [(e.call_id, e.callback_id) for e in requested] == [("phone", callback.id)]


async def test_a_second_engine_leaves_a_live_engines_calls_alone(db_url: str) -> None:
    """A second engine started on the same database marked the first engine's live calls
    ended. Calls belong to the engine running them: they are ended only once it is dead
    (its heartbeat older than the lease, or its process gone from this host)."""
    store = await open_store(db_url)
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
        assert await second.recover(LOST) == 1
        assert await store.open_call_owners() == {"alive-here"}
        b = await store.get_call("b")
        assert b is not None and b.call.end_reason == "node_lost"
        assert as_utc(b.call.ended_at) == elsewhere.heartbeat_at  # type: ignore[arg-type]
    finally:
        await second.stop()
        await store.close()
    published = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    assert [(e.call_id, getattr(e, "type", "")) for e in published] == [
        ("b", "call.state_changed"),
        ("b", "call.ended"),
    ]


class Disk:
    """A database whose disk fills up on demand: every write fails as the database's
    driver fails on a full disk, reads still work (the fault is injected under
    SQLAlchemy, so everything of ours above it runs as in production)."""

    def __init__(self, store: Store) -> None:
        self.full = False
        self._error = store.engine.dialect.loaded_dbapi.OperationalError
        sa_event.listen(store.engine.sync_engine, "before_cursor_execute", self._write)

    def _write(self, _conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if self.full and statement.lstrip().split(" ", 1)[0].upper() in WRITES:
            raise self._error("database or disk is full")


WRITES = {"INSERT", "UPDATE", "DELETE"}


async def browser_offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def open_sockets() -> set[str]:
    """This process's UDP sockets (a peer's ICE transports), not its files nor its TCP
    connections: the store's pool may open another connection to the database (a file
    on SQLite, a TCP socket on PostgreSQL) meanwhile."""
    udp = set()
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        with contextlib.suppress(OSError), open(table) as f:
            udp.update(f"socket:[{line.split()[9]}]" for line in list(f)[1:])
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing
            continue
        if target in udp:
            out.add(target)
    return out


async def manager_on(store: Store, tmp_path: Path) -> tuple[CallManager, EventBus, EventLog]:
    settings = Settings(
        _env_file=None, model_dirs=[], media_timeout=120, asr_workers=1,
        recordings_dir=str(tmp_path / "recordings"), ivr_prompt="",
    )  # fmt: skip
    bus = EventBus()
    log = EventLog(store, bus, retention_days=1)
    await log.start()
    return CallManager(settings, store, bus, Metrics()), bus, log


async def test_a_full_disk_leaves_no_ghost_call_and_loses_no_final(
    db_url: str, tmp_path: Path
) -> None:
    """With the disk full, a new call failed to be stored but stayed counted in
    active_calls forever with its peer alive; a final transcript said meanwhile was
    dropped. Now the failed call is undone (slot freed, peer closed, the error raised
    for the API's 503); a final said while the disk is full, and the end of a call,
    are written once storage is back, and the final reaches listeners then."""
    store = await open_store(db_url)
    disk = Disk(store)
    manager, bus, log = await manager_on(store, tmp_path)
    client, sdp = await browser_offer()
    try:
        # 1. a call offered while the disk is full
        disk.full = True
        before = open_sockets()
        with pytest.raises(OperationalError, match="disk is full"):
            await manager.create_webrtc_call(sdp, "en", "ghost")
        assert manager.calls == {}
        assert manager.metrics.registry.get_sample_value("ccengine_active_calls") == 0
        # a closed transport lets its socket go on a later turn of the loop: give the
        # loop a few turns. Sockets, not all descriptors: two full-suite runs counted
        # two more descriptors after the refusal, with or without waiting
        for _ in range(40):
            if not open_sockets() - before:
                break
            await asyncio.sleep(0.05)
        left = open_sockets() - before
        assert not left, f"the refused call's peer still holds its sockets: {left}"

        # 2. a call in progress when the disk fills up
        disk.full = False
        await client.close()
        client, sdp = await browser_offer()
        call, _answer = await manager.create_webrtc_call(sdp, "en", "talker")
        sub = bus.subscribe(call.id)
        disk.full = True
        said = me.TranscriptFinal(
            leg_id=call.caller_leg().id, index=0, text="my order never came", start=0.5,
            end=1.9, words=[me.Word("my", 0.5, 0.7, 1.0)], asr_latency=0.2, cut=False,
            end_rule="sure",
        )  # fmt: skip
        call.events.put_nowait(said)
        await asyncio.sleep(0.5)
        await manager.end_call(call.id, "hangup")  # the caller hangs up, disk still full
        assert manager.calls == {}
        assert manager.metrics.registry.get_sample_value("ccengine_active_calls") == 0
        assert manager.spool.pending > 0
        disk.full = False  # storage is back
        deadline = time.monotonic() + 15
        while manager.spool.pending or log._pending:
            assert time.monotonic() < deadline, "the kept writes never reached the database"
            await asyncio.sleep(0.1)
        record = await store.get_call(call.id)
        seen = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    finally:
        await client.close()
        await manager.shutdown()
        await log.stop()
        await store.close()
    assert record is not None
    assert [u.text for u in record.utterances] == ["my order never came"]
    assert record.call.state == "ended" and record.call.end_reason == "hangup"
    assert all(leg.ended_at is not None for leg in record.call.legs)
    assert [getattr(e, "type", "") for e in seen if e is not None][-2:] == [
        "call.state_changed",
        "call.ended",
    ]
    assert any(getattr(e, "text", "") == "my order never came" for e in seen if e is not None)


async def test_bad_values_an_older_version_kept_are_left_out_at_start(tmp_path: Path) -> None:
    """Before values were checked at the edge, a rule phrase with a lone surrogate, an
    article title with one and a queue waiting Infinity seconds could be stored: at
    every start they came back, and served as 500 or null. Now they are left out (with
    a log line) and the engine starts with everything else. SQLite only: PostgreSQL's
    JSON refuses such values, so no older version could have stored them there."""
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}")
    now = utcnow()
    lonely = {"kind": "phrase", "actions": ["route_to_human"], "phrases": ["\ud800 help"]}
    await store.save_override(RULE, "lonely", lonely, "old", now)
    await store.save_override(RULE, "fine", {**lonely, "phrases": ["help"]}, "old", now)
    await store.save_override(
        ARTICLE, "bad", {"title": "\udfff", "body": "b", "tags": []}, "old", now
    )
    await store.save_override(QUEUE, "slow", {"name": "slow", "max_wait": math.inf}, "old", now)
    manager, _bus, log = await manager_on(store, tmp_path)
    try:
        await manager.content.load()
        await manager.load_queue_changes()
    finally:
        await manager.shutdown()
        await log.stop()
        await store.close()
    ids = [r.id for r in manager.content.rules]
    assert "fine" in ids and "lonely" not in ids
    assert manager.content.article("bad") is None
    assert "slow" not in manager.acd.queues and manager.acd.queues
