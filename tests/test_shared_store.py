"""Several engines on one database (PostgreSQL, and SQLite for good measure): event ids
never handed out twice, each webhook delivery sent by exactly one engine, a claim an
engine died holding taken over, and one slow receiver delaying no other.

Each engine here is what an engine process has of it: its own ``Store`` (its own
connection pool), event bus, event log and webhook sender, on the one database."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from engine import eventlog
from engine.egress import TargetPolicy
from engine.eventlog import EventLog
from engine.events import DtmfReceived, EventBus, as_utc, utcnow
from engine.recovery import LOST, Recovery
from engine.store.db import Store
from engine.store.models import CallRow, DeliveryRow, EngineRow, WebhookRow
from engine.webhooks import PER_WEBHOOK, WebhookSender
from tests.engine_proc import ROOT
from tests.test_durability import call_row, dead_pid
from tests.webhook_receiver import Receiver

LOOPBACK = TargetPolicy(["127.0.0.1/32"])  # the receivers here are on it


@contextlib.asynccontextmanager
async def stores(url: str, count: int = 2) -> AsyncIterator[list[Store]]:
    opened = [Store(url) for _ in range(count)]
    try:
        for store in opened:
            await store.open()
        yield opened
    finally:
        for store in opened:
            await store.close()


def overlaps(blocks: Sequence[tuple[int, int]]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    ordered = sorted(blocks)
    return [(a, b) for a, b in zip(ordered, ordered[1:], strict=False) if b[0] <= a[1]]


async def test_engines_reserving_event_ids_at_once_never_share_one(db_url: str) -> None:
    """Reserving a block of event ids read the sequence and wrote it back: two engines
    on PostgreSQL reserving at the same moment both read the same end and were handed
    the same block, so their events collided in the log (or one engine's write failed
    on the primary key). Now one UPDATE moves the sequence and returns where to."""
    got: list[tuple[int, int]] = []
    async with stores(db_url) as (a, b):
        for _ in range(25):
            got += await asyncio.gather(
                *(store.reserve_event_ids(100) for store in (a, b, a, b, a, b))
            )
    assert overlaps(got) == []
    assert all(last - first == 99 for first, last in got)


async def test_event_logs_of_two_engines_never_share_an_id(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine's log stretched its own reservation once half of it was used, over the
    block another engine had reserved meanwhile: from then on both numbered events with
    the same ids. Now a log reserves its next block wherever the sequence is and jumps
    to it when its block runs out; each engine's ids still grow."""
    monkeypatch.setattr(eventlog, "ID_BLOCK", 10)  # blocks run out within the test
    async with stores(db_url) as (store_a, store_b):
        logs = [EventLog(store, EventBus(), retention_days=1) for store in (store_a, store_b)]
        ids: list[list[int]] = [[], []]
        try:
            for log in logs:
                await log.start()
            for _ in range(12):
                for n, log in enumerate(logs):
                    for i in range(3 + n):  # unevenly: the blocks interleave
                        event = log.bus.publish(DtmfReceived(call_id="c", digit="1", at=i))
                        ids[n].append(event.id)
                    await log.flush()  # as the write loop does, every few milliseconds
            for log in logs:
                await log.flush()
            stored = await store_a.events_after(0, None, 1000)
        finally:
            for log in logs:
                await log.stop()
    assert set(ids[0]).isdisjoint(ids[1])
    assert all(i == sorted(i) for i in ids)
    assert sorted(r.id for r in stored) == sorted(ids[0] + ids[1])


async def add_deliveries(store: Store, url: str, hooks: int, each: int) -> list[str]:
    """``hooks`` webhooks to ``url``, each with ``each`` deliveries due now; their ids."""
    now = utcnow()
    rows: list[object] = []
    ids = []
    for h in range(hooks):
        hook = WebhookRow(
            id=f"hook-{h}", url=url, events=["*"], secret="s", description="", created_at=now
        )
        await store.add(hook)  # first: the deliveries name it
        for e in range(each):
            delivery = DeliveryRow(
                id=str(uuid.uuid4()), webhook_id=hook.id, event_id=h * 1000 + e,
                event_type="dtmf.received", body=f'{{"id": {h * 1000 + e}}}', status="pending",
                attempts=0, next_attempt_at=now, created_at=now,
            )  # fmt: skip
            rows.append(delivery)
            ids.append(delivery.id)
    await store.add(*rows)
    return ids


def sender(store: Store, engine_id: str, timeout: float = 10) -> WebhookSender:
    return WebhookSender(
        store, engine_id=engine_id, max_attempts=3, retry_base=1, retry_cap=1,
        timeout=timeout, policy=LOOPBACK,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def running(*senders: WebhookSender) -> AsyncIterator[None]:
    for s in senders:
        s.start()
    try:
        yield
    finally:
        for s in senders:
            await s.stop()


async def wait_for(receiver: Receiver, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while len(receiver.got) < count:
        assert time.monotonic() < deadline, f"{len(receiver.got)} of {count} deliveries came"
        await asyncio.sleep(0.02)


async def test_two_engines_send_each_delivery_exactly_once(db_url: str, receiver: Receiver) -> None:
    """Engines sharing a database each read the outbox and sent what was due: every
    receiver got every delivery once per engine. Now an engine claims what it sends,
    and the other passes claimed rows by."""
    async with stores(db_url) as (a, b):
        ids = await add_deliveries(a, receiver.url, hooks=3, each=25)
        async with running(sender(a, "engine-a"), sender(b, "engine-b")):
            await wait_for(receiver, len(ids), within=30)
            await asyncio.sleep(0.5)  # time for a second copy to arrive, if one would
        log = [d for h in range(3) for d in await a.deliveries(f"hook-{h}", None, 100)]
    sent = [headers["Ccengine-Delivery"] for headers, _b, _s, _t in receiver.got]
    assert len(sent) == len(ids)
    assert sorted(sent) == sorted(ids)
    assert {d.status for d in log} == {"delivered"} and {d.attempts for d in log} == {1}
    assert {d.claimed_by for d in log} == {None}  # a claim ends with its try


async def test_a_claim_that_ran_out_is_taken_over(db_url: str) -> None:
    """An engine that died mid-send holds its claims only until their lease runs out:
    then another engine claims those deliveries and sends them. A live claim is left
    alone."""
    async with stores(db_url) as (a, b):
        ids = await add_deliveries(a, "http://127.0.0.1:9/hook", hooks=2, each=3)
        now = utcnow()
        first = await a.claim_deliveries("engine-a", now, PER_WEBHOOK, lease=30)
        assert sorted(d.id for d in first) == sorted(ids)
        assert await b.claim_deliveries("engine-b", now + timedelta(seconds=5), 10, 30) == []
        # engine-a is never heard of again; past the lease its deliveries are free
        later = now + timedelta(seconds=31)
        assert as_utc(await b.next_delivery_at()) == now + timedelta(seconds=30)  # type: ignore[arg-type]
        taken = await b.claim_deliveries("engine-b", later, PER_WEBHOOK, lease=30)
        assert sorted(d.id for d in taken) == sorted(ids)
        assert await a.claim_deliveries("engine-a", later, PER_WEBHOOK, lease=30) == []
        # a stopping engine gives back what it claimed
        await b.release_deliveries("engine-b")
        again = await a.claim_deliveries("engine-a", later, PER_WEBHOOK, lease=30)
        assert sorted(d.id for d in again) == sorted(ids)
        # at most ``limit`` of each webhook at once, and none of those excluded
        await a.release_deliveries("engine-a")
        some = await a.claim_deliveries("engine-a", later, 2, 30, exclude={"hook-1"})
        assert [d.webhook_id for d in some] == ["hook-0", "hook-0"]


async def test_one_slow_receiver_delays_no_other(db_url: str, receiver: Receiver) -> None:
    """The sender sent what was due all at once and waited for every answer before
    reading the outbox again: one receiver taking seconds to answer held every other
    receiver's deliveries back that long. Now each webhook is sent to on its own."""
    slow = Receiver(delay=3.0).start()
    try:
        async with stores(db_url, 1) as (store,):
            await add_deliveries(store, slow.url, hooks=1, each=2)
            fast_ids = [str(uuid.uuid4()) for _ in range(3 * PER_WEBHOOK)]  # 3 rounds
            now = utcnow()
            await store.add(
                WebhookRow(id="fast", url=receiver.url, events=["*"], secret="s",
                           description="", created_at=now)
            )  # fmt: skip
            await store.add(
                *[
                    DeliveryRow(id=i, webhook_id="fast", event_id=5000 + n,
                                event_type="dtmf.received", body="{}", status="pending",
                                attempts=0, next_attempt_at=now, created_at=now)
                    for n, i in enumerate(fast_ids)
                ],
            )  # fmt: skip
            async with running(sender(store, "engine-a")):
                await wait_for(receiver, len(fast_ids), within=2.0)
                assert slow.got == [], "the slow receiver answered already: nothing shown"
                await asyncio.to_thread(slow.wait, 2, 10)
    finally:
        slow.stop()


def test_engines_starting_together_on_a_new_database_all_start(pg_url: str) -> None:
    """Engines started at once on one empty PostgreSQL database each ran the migrations:
    all but the first failed on tables that existed by then. Now one migrates and the
    others wait for it. (Processes, as engines are: alembic keeps its state in globals.)"""
    probe = (
        "import asyncio\n"
        "from engine.store.db import Store\n"
        "async def main():\n"
        f"    store = Store({pg_url!r})\n"
        "    await store.open()\n"
        "    print(len(await store.engines()))\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    engines = [
        subprocess.Popen(
            [sys.executable, "-c", probe],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(3)
    ]
    results = [(p.communicate(timeout=60), p.returncode) for p in engines]
    assert [(out.strip(), rc) for (out, _err), rc in results] == [("0", 0)] * 3, [
        err[-2000:] for (_out, err), _rc in results
    ]


async def test_what_postgresql_refuses_is_stored_anyway(db_url: str) -> None:
    """PostgreSQL refuses NUL in text and NaN in JSON where SQLite keeps both: a caller
    identity with a NUL (an API client may send "\\u0000") failed the call's write on
    PostgreSQL, so the call was never stored, and so did features with a NaN. Now
    PostgreSQL is given U+FFFD for the NUL, and null for the NaN."""
    features = {"pitch": math.nan, "energy": [1.5, math.inf]}
    async with stores(db_url, 1) as (store,):
        await store.add(
            CallRow(id="c", channel="webrtc", state="active", language="en", recognizer=None,
                    recognizer_note="", caller="bob\x00", created_at=utcnow()),
        )  # fmt: skip
        await store.update_call("c", summary="said \x00 twice \x00", facts=[features])
        record = await store.get_call("c")
    assert record is not None
    if db_url.startswith("sqlite"):
        assert record.call.caller == "bob\x00"
        assert math.isnan(record.call.facts[0]["pitch"])
    else:
        assert record.call.caller == "bob\ufffd"
        assert record.call.summary == "said \ufffd twice \ufffd"
        assert record.call.facts == [{"pitch": None, "energy": [1.5, None]}]


async def test_deliveries_a_dead_engine_claimed_are_sent_again_at_once(db_url: str) -> None:
    """After a kill -9 the deliveries the engine had claimed waited out their lease
    (50 s) before the restarted engine sent them. Now recovery frees the claims of
    engines it finds dead, and wakes the sender."""
    async with stores(db_url, 1) as (store,):
        ids = await add_deliveries(store, "http://127.0.0.1:9/hook", hooks=1, each=3)
        now = utcnow()
        crashed = EngineRow(
            id="crashed", host=socket.gethostname(), pid=dead_pid(), started_at=now,
            heartbeat_at=now,
        )  # fmt: skip
        await store.beat(crashed)
        assert len(await store.claim_deliveries("crashed", now, PER_WEBHOOK, lease=300)) == 3
        recovery = Recovery(store, EventBus(), lease=60)
        woken: list[bool] = []
        recovery.on_released = lambda: woken.append(True)
        try:
            await recovery.start()
            taken = await store.claim_deliveries(recovery.id, utcnow(), PER_WEBHOOK, lease=30)
            engines = {e.id for e in await store.engines()}
        finally:
            await recovery.stop()
    assert sorted(d.id for d in taken) == sorted(ids)
    assert woken == [True]
    assert engines == {recovery.id}  # the dead engine, with no calls left, is forgotten


async def test_a_late_outcome_does_not_undo_the_engine_that_took_the_delivery_over(
    db_url: str,
) -> None:
    """Engine A's try outlived its claim; engine B took the delivery over and sent it.
    A's late outcome wrote "pending" over B's "delivered" and freed B's claim (the
    delivery went out a third time). Now an outcome counts only under its own claim."""
    async with stores(db_url) as (a, b):
        [delivery] = await add_deliveries(a, "http://127.0.0.1:9/hook", hooks=1, each=1)
        now = utcnow()
        assert await a.claim_deliveries("engine-a", now, PER_WEBHOOK, lease=30)
        later = now + timedelta(seconds=31)
        assert await b.claim_deliveries("engine-b", later, PER_WEBHOOK, lease=30)
        assert await b.record_attempt(delivery, "engine-b", status="delivered", attempts=1)
        assert not await a.record_attempt(delivery, "engine-a", status="pending", attempts=1)
        [row] = await a.deliveries("hook-0", None, 10)
        assert (row.status, row.claimed_by) == ("delivered", None)


async def test_an_id_block_used_up_before_the_next_is_reserved(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes failed long enough for the bus to number past its block before the next
    was reserved: once storage came back the new block started below ids already
    handed out, and the next publish raised "event ids must grow" (the event lost, the
    publisher's call broken). Now the next block is reserved above every id numbered,
    and numbering goes straight on."""
    from tests.test_durability import Disk

    monkeypatch.setattr(eventlog, "ID_BLOCK", 10)
    async with stores(db_url, count=1) as (store,):
        log = EventLog(store, EventBus(), retention_days=1)
        disk = Disk(store)
        await log.start()
        ids: list[int] = []
        try:
            disk.full = True
            for i in range(12):  # past the block: the next could not be reserved
                ids.append(log.bus.publish(DtmfReceived(call_id="c", digit="1", at=i)).id)
                with contextlib.suppress(Exception):
                    await log.flush()
            disk.full = False
            await log.flush()  # storage back: written, and the next block reserved
            for i in range(12):
                ids.append(log.bus.publish(DtmfReceived(call_id="c", digit="2", at=i)).id)
                await log.flush()
            stored = await store.events_after(0, None, 1000)
        finally:
            await log.stop()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert sorted(r.id for r in stored) == ids


async def test_a_database_server_gone_is_a_database_error(postgres: object) -> None:
    """asyncpg lets a refused connection out as the socket's OSError, which SQLAlchemy
    does not wrap: the heartbeat and the webhook sender, which outlive an outage by
    catching SQLAlchemyError, died with PostgreSQL stopped for a moment, and other
    engines then took this live one for dead. Now the store says OperationalError."""
    from sqlalchemy.exc import OperationalError

    from tests.pg import PostgresServer

    server = PostgresServer().start()
    try:
        url = server.new_database()
        store = Store(url)
        await store.open()
        await store.engines()
        server.stop()
        with pytest.raises(OperationalError):
            await store.engines()
        await store.close()
    finally:
        server.stop()


async def test_an_engine_opens_no_more_database_connections_than_it_may(pg_url: str) -> None:
    """``CCENGINE_DATABASE_MAX_CONNECTIONS``: several engines share the server's
    ``max_connections``, so each keeps to its own share; writers beyond it wait for a
    connection rather than fail."""
    store = Store(pg_url, max_connections=2)
    await store.open()
    try:
        seen: list[int] = []

        async def busy() -> None:
            async with store.session() as s:
                await s.execute(text("SELECT pg_sleep(0.2)"))
                seen.append(
                    int(
                        await s.scalar(
                            text(
                                "SELECT count(*) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> 0"
                            )
                        )
                        or 0
                    )
                )

        await asyncio.gather(*(busy() for _ in range(6)))
        assert len(seen) == 6, "every writer got its turn"
        assert max(seen) == 2, seen
    finally:
        await store.close()


async def test_a_node_whose_clock_is_slow_is_not_taken_for_dead(pg_url: str) -> None:
    """Heartbeats were written and judged by each host's own clock: a node whose clock
    was a lease behind the others' had its live calls ended as ``node_lost`` by the
    first survivor that looked. Now both go by the database server's clock. (In one
    process the hosts' clocks are the ``wall`` each store is given: the old code read
    the process's clock, which this cannot make wrong for one store only.)"""
    fast = Store(pg_url)
    slow = Store(pg_url, wall=lambda: time.time() - 120)  # two minutes behind
    await fast.open()
    await slow.open()
    slow_node = Recovery(slow, EventBus(), lease=30)
    slow_node.host = "another-host"  # two engines in one process: not each other's pid
    survivor = Recovery(fast, EventBus(), lease=30)
    try:
        await slow_node.start()
        await slow.add(call_row("c", "active", slow_node.id, slow.now()))
        assert await survivor.start() == 0
        assert await survivor.recover(LOST) == 0
        assert await fast.open_call_owners() == {slow_node.id}
        assert abs(slow.clock_offset - 120) < 5 and abs(fast.clock_offset) < 5
        beats = {e.id: as_utc(e.heartbeat_at) for e in await fast.engines()}
        assert abs((beats[slow_node.id] - fast.now()).total_seconds()) < 5
    finally:
        await survivor.stop()
        await slow_node.stop()
        await slow.close()
        await fast.close()


async def test_a_claim_made_by_a_slow_clock_holds(pg_url: str) -> None:
    """A claim ran until its engine's clock said so: one engine two minutes slow made
    claims the others read as long expired, and they sent its deliveries again while it
    was sending them. Claims now go by the database server's clock."""
    slow_receiver = Receiver(delay=2.0).start()
    fast = Store(pg_url)
    slow = Store(pg_url, wall=lambda: time.time() - 120)
    try:
        await fast.open()
        await slow.open()
        await slow.sync_clock()
        ids = await add_deliveries(fast, slow_receiver.url, hooks=1, each=3)
        async with fast.session() as s:  # due for a while: due by either clock
            await s.execute(
                DeliveryRow.__table__.update().values(
                    next_attempt_at=utcnow() - timedelta(minutes=10)
                )
            )
            await s.commit()
        async with running(sender(slow, "engine-slow")):
            await wait_until_claimed(fast, len(ids))
            async with running(sender(fast, "engine-fast")):
                await wait_for(slow_receiver, len(ids), within=30)
                await asyncio.sleep(1.0)  # time for a second copy to arrive, if one would
        sent = sorted(h["Ccengine-Delivery"] for h, _b, _s, _t in slow_receiver.got)
        assert sent == sorted(ids), "each delivery sent once, by the engine that claimed it"
    finally:
        slow_receiver.stop()
        await slow.close()
        await fast.close()


async def wait_until_claimed(store: Store, count: int) -> None:
    for _ in range(500):
        async with store.session() as s:
            claimed = await s.scalar(
                select(func.count()).where(DeliveryRow.claimed_by.is_not(None))
            )
        if claimed == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{claimed} of {count} deliveries claimed")
