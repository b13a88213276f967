"""Several engines, one order of events: each engine's event log appends to one Redis
stream (engine/redisstream.py) and every engine's subscribers get every engine's events.

In-process: two "engines" (each its own bus, event log and Store, on one SQLite file)
and a real redis-server (tests/redisd.py). Without Redis each engine numbered its own
events from a block it reserved, and its subscribers saw only its own: a client moving
to another engine lost or repeated events when it resumed by id.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from engine import eventlog, redisstream
from engine.cli import _redis_unusable
from engine.config import Settings
from engine.eventlog import EventLog
from engine.events import DtmfReceived, EventBase, EventBus, Subscription, utcnow
from engine.redisstream import RedisEventStream, RedisUnavailable, safe_url
from engine.store.db import Store
from engine.store.models import EventRow
from tests.engine_proc import free_port
from tests.redisd import RedisServer, prefix


@dataclass
class Engine:
    store: Store
    bus: EventBus
    log: EventLog
    shared: RedisEventStream

    async def stop(self) -> None:
        await self.log.stop()
        await self.store.close()

    async def replay(self, after: int, call_id: str | None = None) -> list[int]:
        return [i async for i, _ in self.log.replay(call_id, after)]


async def start_engine(db: Path, url: str, keys: str, ring: int = 4_000) -> Engine:
    store = Store(f"sqlite+aiosqlite:///{db}")
    await store.open()
    bus = EventBus(ring_size=ring)
    shared = RedisEventStream(url, keys)
    log = EventLog(store, bus, retention_days=1, shared=shared)
    await log.start()
    return Engine(store, bus, log, shared)


@pytest.fixture
async def pair(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[tuple[Engine, Engine]]:
    keys = prefix()
    a = await start_engine(tmp_path / "shared.db", redis_server.url, keys)
    b = await start_engine(tmp_path / "shared.db", redis_server.url, keys)
    try:
        yield a, b
    finally:
        await b.stop()
        await a.stop()


def dtmf(origin: str, n: int, call_id: str = "c") -> DtmfReceived:
    # the origin and number ride in ``menu`` and ``at``: each event is recognisable
    return DtmfReceived(call_id=call_id, digit=str(n % 10), at=float(n), menu=origin)


async def take(sub: Subscription, n: int, within: float = 10) -> list[EventBase]:
    out = []
    async with asyncio.timeout(within):
        while len(out) < n:
            event = await sub.queue.get()
            assert event is not None, "cut off"
            out.append(event)
    return out


async def until(condition: Callable[[], bool], within: float = 10) -> None:
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.05)


async def publish_concurrently(a: Engine, b: Engine, n: int) -> None:
    """Both engines publish ``n`` events each, in bursts that overlap."""

    async def burst(engine: Engine, origin: str) -> None:
        for i in range(n):
            engine.bus.publish(dtmf(origin, i, call_id=f"call-{i % 3}"))
            if i % 7 == 0:
                await asyncio.sleep(0.003)

    await asyncio.gather(burst(a, "A"), burst(b, "B"))


async def test_every_subscriber_sees_every_event_once_in_one_order(
    pair: tuple[Engine, Engine],
) -> None:
    """Subscribers on either engine get both engines' events, each once, with ids that
    grow, in the very same order; one call's subscribers get that call's, in that order."""
    a, b = pair
    subs = [a.bus.subscribe(), b.bus.subscribe()]
    call_subs = [a.bus.subscribe("call-1"), b.bus.subscribe("call-1")]
    n = 150
    await publish_concurrently(a, b, n)
    seen = [await take(sub, 2 * n) for sub in subs]
    ids = [[e.id for e in got] for got in seen]
    assert ids[0] == ids[1], "the two engines hand out different orders"
    assert ids[0] == sorted(set(ids[0])), "ids repeat or go back"
    origins = [(e.menu, e.at) for e in seen[0]]  # type: ignore[attr-defined]
    assert sorted(origins) == sorted((o, float(i)) for o in "AB" for i in range(n))
    # both engines' events interleave (the bursts overlapped): one order, not two blocks
    switches = sum(1 for x, y in zip(origins, origins[1:], strict=False) if x[0] != y[0])
    assert switches > 2
    per_call = [[e.id for e in await take(sub, len(range(1, n, 3)) * 2)] for sub in call_subs]
    assert per_call[0] == per_call[1] == [e.id for e in seen[0] if e.call_id == "call-1"]
    for sub in subs + call_subs:
        assert sub.queue.empty()  # nothing more: each event once
    # the database holds the same ids, written by both
    stored = [r.id for r in await a.store.events_after(0, None, 10 * n)]
    assert stored == ids[0]


async def test_resume_by_id_is_the_same_on_either_engine(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A client resuming from any id gets the same events from either engine: recent ones
    from memory, older ones (past the ring) from the database."""
    keys = prefix()
    a = await start_engine(tmp_path / "shared.db", redis_server.url, keys, ring=20)
    b = await start_engine(tmp_path / "shared.db", redis_server.url, keys, ring=20)
    try:
        sub = b.bus.subscribe()
        await publish_concurrently(a, b, 60)
        everything = [e.id for e in await take(sub, 120)]
        assert a.bus.oldest_id > everything[0], "the ring should not reach back: the DB must"
        for after in (0, everything[0], everything[30], everything[100], everything[-1]):
            want = [i for i in everything if i > after]
            assert await a.replay(after) == await b.replay(after) == want
        only = await a.replay(0, "call-2")
        assert only == await b.replay(0, "call-2")
        assert only == [e.id for e in await a.store.events_after(0, "call-2", 1000)]
        # an engine started now finds the recent events in its ring, from the stream
        c = await start_engine(tmp_path / "shared.db", redis_server.url, keys, ring=20)
        try:
            assert await c.replay(everything[50]) == everything[51:]
            assert c.bus.oldest_id <= everything[-1]
        finally:
            await c.stop()
    finally:
        await b.stop()
        await a.stop()


async def test_a_restarted_engine_continues_the_ids_and_nobody_misses_anything(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """One engine stops and a new one starts on the same database and Redis: its ids go on
    upward, and a client of the other engine resuming from its last id misses nothing.
    Even with Redis' keys gone (a Redis restarted empty) ids never fall back below the
    database's."""
    keys = prefix()
    db = tmp_path / "shared.db"
    a = await start_engine(db, redis_server.url, keys)
    b = await start_engine(db, redis_server.url, keys)
    try:
        sub = b.bus.subscribe()
        await publish_concurrently(a, b, 20)
        before = await take(sub, 40)
        last = before[-1].id
        sub.close()  # the client goes away
        await a.stop()
        a = await start_engine(db, redis_server.url, keys)
        for i in range(20, 30):
            a.bus.publish(dtmf("A", i))
        b.bus.publish(dtmf("B", 99))
        sub = b.bus.subscribe()  # the client comes back: replay, then live
        got = await b.replay(last)
        got += [e.id for e in await take(sub, 11 - len(got))]
        assert len(got) == 11 and got == sorted(got) and got[0] > last
        stored = await a.store.events_after(last, None, 100)
        assert [r.id for r in stored] == got

        # Redis loses its data; the next engine raises the counter to the database's ids
        await b.stop()
        await a.stop()
        client = aioredis.Redis.from_url(redis_server.url)
        async with client:
            assert await client.delete(f"{keys}:events", f"{keys}:events:counter") == 2
        a = await start_engine(db, redis_server.url, keys)
        b = await start_engine(db, redis_server.url, keys)
        sub = b.bus.subscribe()
        event = a.bus.publish(dtmf("A", 1000))
        assert (await take(sub, 1))[0].id == event.id > got[-1]
    finally:
        await b.stop()
        await a.stop()


async def test_ids_are_given_when_the_batch_is_appended(pair: tuple[Engine, Engine]) -> None:
    """``publish`` leaves the id at 0 with a shared stream: the number comes from Redis,
    when the log appends the batch, before anyone is given the event."""
    a, _b = pair
    sub = a.bus.subscribe()
    event = a.bus.publish(dtmf("A", 1))
    assert event.id == 0
    got = (await take(sub, 1))[0]
    assert event.id == got.id > 0


async def test_subscribers_get_only_stored_events_on_every_engine(
    tmp_path: Path, pair: tuple[Engine, Engine]
) -> None:
    """An event appended to the stream but not yet in the database is shown to nobody, on
    no engine: a crash then cannot take back an id a client has seen."""
    a, b = pair
    subs = [a.bus.subscribe(), b.bus.subscribe()]
    blocker = sqlite3.connect(tmp_path / "shared.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        event = a.bus.publish(dtmf("A", 5))
        # both readers have read it (not a fixed sleep: a slow machine proved nothing)
        await until(lambda: a.shared.held == b.shared.held == 1)
        assert event.id > 0, "numbered by Redis"
        assert all(sub.queue.empty() for sub in subs), "seen before it was stored"
        # while that batch waits for the database, new events are not appended: readers
        # never wait on more than one unstored batch of an engine
        later = a.bus.publish(dtmf("A", 6))
        await asyncio.sleep(1.5)
        client = aioredis.Redis.from_url(a.shared.url)
        async with client:
            assert await client.xlen(a.shared._stream) == 1 and later.id == 0
        blocker.execute("ROLLBACK")
        for sub in subs:
            assert [e.id for e in await take(sub, 2, within=20)] == [event.id, event.id + 1]
    finally:
        blocker.close()


async def test_an_engine_that_died_before_storing_holds_nobody_up(
    pair: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine killed between its append and its write would hold every reader up
    forever; once its liveness key is gone, readers skip what it never stored (every
    reader the same events) and go on."""
    monkeypatch.setattr(redisstream, "SUSPECT_AFTER", 0.3)
    a, b = pair
    subs = [a.bus.subscribe(), b.bus.subscribe()]
    # a third engine appends and dies before writing: no stored marker will ever come
    dead = RedisEventStream(a.shared.url, a.shared._stream.rsplit(":", 1)[0])
    await dead._keep_alive_once()
    lost = await dead.append(['{"type":"dtmf.received","digit":"1","at":0.0}'], "t", 0)
    after = b.bus.publish(dtmf("B", 7))
    await asyncio.sleep(1.0)
    assert all(sub.queue.empty() for sub in subs), "the dead engine's event is still waited for"
    await dead._redis.delete(dead._alive_key(dead.engine))  # its key times out
    await dead._redis.aclose()
    for sub in subs:
        got = await take(sub, 1)
        assert [e.id for e in got] == [after.id] and after.id > lost
    assert a.shared.dropped == b.shared.dropped == 1


async def test_a_killed_engines_stored_events_are_handed_out_not_skipped(
    pair: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine killed (kill -9) after writing its batch to the database but before
    appending its stored marker: its events are in the log for good, yet every reader
    skipped them, and live clients on every engine missed them (a caller's last final,
    say). Now the readers look them up in the database when the engine is found dead,
    and hand out those stored, in their place in the order."""
    monkeypatch.setattr(redisstream, "SUSPECT_AFTER", 0.3)
    a, b = pair
    subs = [a.bus.subscribe(), b.bus.subscribe()]
    dead = RedisEventStream(a.shared.url, a.shared._stream.rsplit(":", 1)[0])
    await dead._keep_alive_once()
    said = dtmf("X", 3)
    body = said.model_dump_json(exclude={"id"})
    [first, second] = ['{"type":"dtmf.received","digit":"1","at":0.0}', body]
    last = await dead.append([first, second], "t", 0) + 1  # the ids of the two follow on
    # it stored only the second before it died (the first was in a batch it lost)
    row = EventRow(id=last, type=said.type, call_id=said.call_id, time=said.time, body=body)
    await a.store.write_events([row], [])
    after = b.bus.publish(dtmf("B", 8))
    await asyncio.sleep(1.0)
    assert all(sub.queue.empty() for sub in subs), "the dead engine's batch is still waited for"
    await dead._redis.delete(dead._alive_key(dead.engine))  # its key times out
    await dead._redis.aclose()
    for sub in subs:
        got = await take(sub, 2)
        assert [e.id for e in got] == [last, after.id]  # was [after.id]: the stored one lost
        assert got[0].menu == "X"  # type: ignore[attr-defined]
    assert a.shared.recovered == b.shared.recovered == 1
    assert a.shared.dropped == b.shared.dropped == 1  # the unstored one, as before


async def test_events_wait_while_redis_is_away_and_none_is_lost(tmp_path: Path) -> None:
    """Redis stops (a restart, empty): events published meanwhile wait in memory, as for
    the database, and reach the stream and the database once it is back, numbered above
    everything before, and resuming clients."""
    port = free_port()
    server = RedisServer(port).start()
    keys = prefix()
    a = await start_engine(tmp_path / "shared.db", server.url, keys)
    try:
        sub = a.bus.subscribe()
        for i in range(5):
            a.bus.publish(dtmf("A", i))
        first = [e.id for e in await take(sub, 5)]
        server.stop()
        for i in range(5, 10):
            a.bus.publish(dtmf("A", i))
        await asyncio.sleep(1.5)
        assert a.log.pending == 5 and sub.queue.empty()
        server = RedisServer(port).start()
        # the counter was lost: ids go on well above the old ones (other engines' batches
        # in flight may have been appended to the lost stream), and the jump cuts the
        # subscriber off: it resumes by id
        async with asyncio.timeout(30):
            assert await sub.queue.get() is None and sub.lagged
        rest = await a.replay(first[-1])
        assert rest == list(range(rest[0], rest[0] + 5))
        assert rest[0] > first[-1] + redisstream.LOSS_MARGIN
        stored = await a.store.events_after(0, None, 100)
        assert [r.id for r in stored] == first + rest
    finally:
        await a.stop()
        server.stop()


async def test_a_wrong_redis_url_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}")
    await store.open()
    log = EventLog(store, EventBus(), retention_days=1, shared=RedisEventStream(url))
    try:
        with pytest.raises(RedisUnavailable, match=f"cannot use Redis at {url}"):
            await log.start()
    finally:
        await store.close()
    why = _redis_unusable(Settings(redis_url=url.replace("//", "//user:sekrit@")))
    assert why is not None and "CCENGINE_REDIS_URL" in why and "sekrit" not in why
    assert _redis_unusable(Settings(redis_url="")) is None


async def test_an_append_retried_after_a_lost_reply_is_not_made_twice(
    pair: tuple[Engine, Engine],
) -> None:
    a, _b = pair
    body = '{"type":"dtmf.received","digit":"1","at":0.0}'
    first = await a.shared.append([body, body], "token-1", 0)
    assert await a.shared.append([body, body], "token-1", 0) == first  # the reply was lost
    assert await a.shared.append([body], "token-2", 0) == first + 2
    client = aioredis.Redis.from_url(a.shared.url)
    async with client:
        assert await client.xlen(a.shared._stream) == 3


async def test_a_reader_that_fell_behind_the_stream_cuts_its_clients_off_to_resume(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A reader that falls further behind than the stream keeps would hand out a hole
    (events trimmed before it read them): instead its subscribers are cut off, and
    resuming from their last id, from the database, gives them every event."""
    keys = prefix()
    a = await start_engine(tmp_path / "shared.db", redis_server.url, keys)
    b = await start_engine(tmp_path / "shared.db", redis_server.url, keys)
    a.shared.maxlen = 10  # trimmed (in whole nodes of 100) long before b reads again
    try:
        sub = b.bus.subscribe()
        a.bus.publish(dtmf("A", 0))
        last = (await take(sub, 1))[0].id
        reader = b.shared._tasks[0]
        reader.cancel()  # b's reader stalls...
        for i in range(1, 400):
            a.bus.publish(dtmf("A", i))
            if i % 50 == 0:
                await asyncio.sleep(0.05)  # batches of their own
        async with asyncio.timeout(20):  # all stored
            while True:
                if len(await a.store.events_after(last, None, 1000)) == 399:
                    break
                await asyncio.sleep(0.1)
        b.shared._tasks[0] = asyncio.create_task(b.shared._read_loop(b.bus))  # ...and goes on
        got = []
        async with asyncio.timeout(10):
            while (event := await sub.queue.get()) is not None:
                got.append(event.id)
        assert sub.lagged and b.shared.gaps >= 1
        assert got == list(range(last + 1, last + 1 + len(got))), "a hole in the stream"
        assert len(got) < 399, "nothing was trimmed: the test proves nothing"
        resumed = await b.replay(got[-1] if got else last)
        assert (got + resumed)[:399] == list(range(last + 1, last + 400))
    finally:
        await b.stop()
        await a.stop()


async def test_a_reader_waits_behind_a_stuck_engine_only_so_long(
    pair: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine alive but unable to store holds every reader up, and each reader keeps
    what comes meanwhile: past ``MAX_HELD`` events it skips the stuck engine's unstored
    events, as for a dead one, rather than grow, and the others' events go on."""
    monkeypatch.setattr(redisstream, "MAX_HELD", 5)
    monkeypatch.setattr(redisstream, "SUSPECT_AFTER", 0.3)
    a, b = pair
    subs = [a.bus.subscribe(), b.bus.subscribe()]
    stuck = RedisEventStream(a.shared.url, a.shared._stream.rsplit(":", 1)[0])
    await stuck._keep_alive_once()  # alive, and never storing
    try:
        await stuck.append(['{"type":"dtmf.received","digit":"1","at":0.0}'], "t", 0)
        published = [b.bus.publish(dtmf("B", i)) for i in range(3)]
        await asyncio.sleep(0.6)  # waited long: the next events go past the bound
        assert all(sub.queue.empty() for sub in subs)
        published += [b.bus.publish(dtmf("B", i)) for i in range(3, 8)]
        for sub in subs:
            assert [e.id for e in await take(sub, 8)] == [e.id for e in published]
        assert a.shared.dropped == b.shared.dropped == 1
        assert a.shared.held == b.shared.held == 0
    finally:
        await stuck._redis.delete(stuck._alive_key(stuck.engine))
        await stuck._redis.aclose()


async def test_an_event_of_an_unknown_type_or_a_bad_entry_stops_no_reader(
    pair: tuple[Engine, Engine],
) -> None:
    """In a rolling upgrade a newer engine publishes a type older ones do not know; and
    an entry may be malformed. Each reader hands the unknown event on as it came (ring,
    replay, subscribers), skips what cannot be read at all, and goes on: it used to die
    on the first one, silently, and its subscribers never got another event."""
    a, b = pair
    subs = [a.bus.subscribe(), b.bus.subscribe()]
    newer = RedisEventStream(a.shared.url, a.shared._stream.rsplit(":", 1)[0])
    try:
        future = '{"time":"2026-01-01T00:00:00Z","call_id":"c","type":"call.future","x":[1]}'
        first = await newer.append([future, "not json"], "t1", 0)
        await newer.stored(first + 1)
        await newer._redis.xadd(newer._stream, {"junk": "1"}, id=f"{first + 1}-*")
        later = b.bus.publish(dtmf("B", 7))
        for engine, sub in zip((a, b), subs, strict=True):
            got = await take(sub, 2)
            assert [e.id for e in got] == [first, later.id]
            assert got[0].type == "call.future" and got[0].x == [1]  # type: ignore[attr-defined]
            assert engine.shared.unknown == 1 and engine.shared.bad == 2
            assert '"x":[1]' in next(r.body for r in engine.bus.replay() if r.id == first)
            assert not engine.shared._tasks[0].done()
        assert await a.replay(first - 1) == [first, later.id]
    finally:
        await newer._redis.aclose()


async def test_the_reader_survives_an_unexpected_error(
    pair: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever fails in the reader (a bug), it goes on after a pause; and if its task
    ends anyway, it is started again."""
    a, _b = pair
    sub = a.bus.subscribe()
    calls = 0
    failed_over = asyncio.Event()
    real = RedisEventStream._suspect

    async def failing(self: RedisEventStream) -> None:
        nonlocal calls
        if self is a.shared:
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug")
            failed_over.set()  # the loop went on after the error
        await real(self)

    monkeypatch.setattr(RedisEventStream, "_suspect", failing)
    await asyncio.wait_for(failed_over.wait(), 5)
    event = a.bus.publish(dtmf("A", 1))
    assert [e.id for e in await take(sub, 1)] == [event.id]

    class Ended(BaseException):  # nothing in the loop catches it
        pass

    ended = False

    async def ending(self: RedisEventStream) -> None:
        nonlocal ended
        if self is a.shared and not ended:
            ended = True
            raise Ended
        await real(self)

    monkeypatch.setattr(RedisEventStream, "_suspect", ending)
    reader = a.shared._tasks[0]
    await asyncio.wait([reader], timeout=5)
    await asyncio.sleep(0)
    assert a.shared.restarts == 1 and not a.shared._tasks[0].done()
    event = a.bus.publish(dtmf("A", 2))
    assert [e.id for e in await take(sub, 1)] == [event.id]


async def test_events_skipped_by_the_readers_then_stored_are_replayed(
    pair: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers give up on a stuck engine's batch, which is then stored after all: live
    clients miss it, but a client resuming by id from before it gets it, in order. The
    ring had a hole there and replay trusted the ring for every id from its oldest on."""
    monkeypatch.setattr(redisstream, "MAX_HELD", 2)
    monkeypatch.setattr(redisstream, "SUSPECT_AFTER", 0.3)
    a, b = pair
    sub = a.bus.subscribe()
    before = a.bus.publish(dtmf("A", 0))
    await take(sub, 1)
    stuck = RedisEventStream(a.shared.url, a.shared._stream.rsplit(":", 1)[0])
    await stuck._keep_alive_once()  # alive, and not storing yet
    try:
        body = '{"call_id":"c","type":"dtmf.received","digit":"1","at":0.0}'
        late = await stuck.append([body], "t", 0)
        published = [b.bus.publish(dtmf("B", 1, "d"))]
        await asyncio.sleep(0.6)
        published += [b.bus.publish(dtmf("B", i, "d")) for i in range(2, 5)]
        assert [e.id for e in await take(sub, 4)] == [e.id for e in published]
        assert a.shared.dropped == 1
        # ...and now it is stored after all
        await a.store.write_events(
            [EventRow(id=late, type="dtmf.received", call_id="c", time=utcnow(),
                      body=redisstream.with_id(late, body))], [])  # fmt: skip
        await stuck.stored(late)
        want = [late] + [e.id for e in published]
        for engine in (a, b):
            assert engine.bus.oldest_id <= before.id, "the ring reaches back: it is trusted"
            assert await engine.replay(before.id) == want
            assert await engine.replay(before.id, "c") == [late]
            assert await engine.replay(late) == want[1:]
    finally:
        await stuck._redis.delete(stuck._alive_key(stuck.engine))
        await stuck._redis.aclose()


async def test_after_redis_lost_its_data_no_id_is_handed_out_twice(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """B's events are stored, A's reader has not read them yet, and Redis loses its data:
    A used to number from its own highest id, the ids B had used (an IntegrityError on
    every retry, its writer wedged). Now the lost counter is set above the database's
    ids, every reader goes on with the new ids, and marks are seen again."""
    keys = prefix()
    db = tmp_path / "shared.db"
    a = await start_engine(db, redis_server.url, keys)
    b = await start_engine(db, redis_server.url, keys)
    try:
        a.shared._tasks[0].cancel()  # A's reader is behind: it never sees B's events
        sub = b.bus.subscribe()
        from_b = [b.bus.publish(dtmf("B", i)) for i in range(10)]
        await take(sub, 10)
        assert a.shared.highest < from_b[-1].id
        client = aioredis.Redis.from_url(redis_server.url)
        async with client:  # Redis restarted empty
            await client.delete(*await client.keys(f"{keys}:*"))
        a.shared._tasks[0] = a.shared._start_reader(a.bus)
        assert a.shared.resets == 0, "a new Redis at the start is no loss"
        event = a.bus.publish(dtmf("A", 1))
        await until(lambda: not a.log.pending and event.id > 0)  # stored, not wedged
        assert a.shared.resets == 1, "lost while running: counted (the metric) and warned"
        assert event.id > from_b[-1].id
        stored = await a.store.events_after(0, None, 100)
        assert [r.id for r in stored] == [e.id for e in from_b] + [event.id]
        # both readers take the new ids, and its stored mark is seen
        await until(lambda: a.bus.delivered_to == b.bus.delivered_to == event.id)
    finally:
        await b.stop()
        await a.stop()


async def test_ids_never_start_again_with_an_emptied_table_and_an_empty_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The events table pruned empty and Redis restarted empty: ids used to start at 1
    again. The high-water mark kept in the database (as with one engine) prevents it."""
    keys = prefix()
    db = tmp_path / "shared.db"
    a = await start_engine(db, redis_server.url, keys)
    sub = a.bus.subscribe()
    old = a.bus.publish(dtmf("A", 1))
    await take(sub, 1)
    await a.stop()
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM events")
    client = aioredis.Redis.from_url(redis_server.url)
    async with client:
        await client.delete(*await client.keys(f"{keys}:*"))
    a = await start_engine(db, redis_server.url, keys)
    try:
        sub = a.bus.subscribe()
        new = a.bus.publish(dtmf("A", 2))
        await take(sub, 1)
        assert new.id > old.id
    finally:
        await a.stop()


async def test_a_backlog_is_appended_one_stored_batch_at_a_time(
    pair: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog (Redis was away) used to be appended whole, in pieces, before its one
    database write and marker: readers then saw more unstored events of one engine than
    MAX_HELD and skipped a healthy engine's batches. Each batch is now appended, written
    and marked before the next is appended."""
    monkeypatch.setattr(eventlog, "APPEND_MAX", 3)
    a, _b = pair
    sub = a.bus.subscribe()
    published = [a.bus.publish(dtmf("A", i)) for i in range(10)]  # one round's backlog
    assert [e.id for e in await take(sub, 10)] == [e.id for e in published]
    client = aioredis.Redis.from_url(a.shared.url)
    async with client:
        entries = await client.xrange(a.shared._stream)
    unmarked = 0
    for raw_id, fields in entries:
        if raw_id.endswith(b"-0"):
            unmarked += 1
            assert unmarked <= 3, "more than one batch appended before its marker"
        elif b"s" in fields:
            unmarked = 0
    assert unmarked == 0


async def test_stopping_while_redis_is_away_says_what_was_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Events waiting for Redis at a stop cannot be numbered safely: they are lost, and
    the log says how many (it used to say nothing)."""
    server = RedisServer().start()
    a = await start_engine(tmp_path / "shared.db", server.url, prefix())
    try:
        server.stop()
        for i in range(3):
            a.bus.publish(dtmf("A", i))
    finally:
        await a.stop()
    assert any("stopping with 3 events not stored" in r.message for r in caplog.records)


def test_safe_url_hides_every_password() -> None:
    """A password in the query (``?password=``, which redis-py reads) was logged as is."""
    assert safe_url("redis://u:sekrit@h:6379/0") == "redis://u:***@h:6379/0"
    assert safe_url("redis://:sekrit@h/0") == "redis://:***@h/0"
    assert safe_url("redis://h/0?password=sekrit&db=1") == "redis://h/0?password=***&db=1"
    assert "sekrit" not in safe_url("rediss://h/0?Password=sekrit")
    assert safe_url("unix:///run/redis.sock?db=2") == "unix:///run/redis.sock?db=2"
    assert safe_url("redis://h:6379/0") == "redis://h:6379/0"


async def test_a_dropped_marker_never_drops_a_batch_appended_after_it_was_decided(
    pair: tuple[Engine, Engine],
) -> None:
    """A reader found an engine's key gone while waiting on its batch; meanwhile the
    engine came back, stored that batch and appended another. The appending refreshes its
    key in the same step (the reader's check then finds it alive); and a marker decided
    on the old batch skips only up to it: the new batch is still handed out once stored."""
    a, b = pair
    subs = [a.bus.subscribe(), b.bus.subscribe()]
    body = '{"call_id":"c","type":"dtmf.received","digit":"1","at":0.0}'
    back = RedisEventStream(a.shared.url, a.shared._stream.rsplit(":", 1)[0])
    try:
        old = await back.append([body], "t1", 0)
        await back._redis.delete(back._alive_key(back.engine))  # its key times out...
        await back.stored(old)  # ...it comes back and stores
        assert await back._redis.exists(back._alive_key(back.engine)), "stored: alive"
        await back._redis.delete(back._alive_key(back.engine))
        new = await back.append([body], "t2", 0)
        assert await back._redis.exists(back._alive_key(back.engine)), "appended: alive"
        # the reader's marker for the old batch, had the key been gone at that moment
        await back._redis.delete(back._alive_key(back.engine))
        assert await a.shared._dropped(
            keys=[a.shared._counter, a.shared._stream, a.shared._alive_key(back.engine)],
            args=[a.shared.maxlen, back.engine, old, "0"],
        )
        await back.stored(new)
        for sub in subs:
            assert [e.id for e in await take(sub, 2)] == [old, new]
        assert a.shared.dropped == b.shared.dropped == 0
    finally:
        await back._redis.aclose()


async def test_an_engine_alive_but_not_storing_holds_readers_up_only_so_long(
    pair: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine alive but unable to store used to stall every engine's streams until
    MAX_HELD (20,000) events piled up behind it, and that give-up was each reader's own
    decision. Past STUCK_FOR a reader appends a given-up marker: every reader skips the
    same batch at the same point, and the others' events go on."""
    monkeypatch.setattr(redisstream, "SUSPECT_AFTER", 0.2)
    monkeypatch.setattr(redisstream, "STUCK_FOR", 0.8)
    a, b = pair
    subs = [a.bus.subscribe(), b.bus.subscribe()]
    stuck = RedisEventStream(a.shared.url, a.shared._stream.rsplit(":", 1)[0])
    await stuck._keep_alive_once()  # alive, and never storing
    try:
        body = '{"call_id":"c","type":"dtmf.received","digit":"1","at":0.0}'
        skipped = await stuck.append([body, body], "t", 0)
        after = b.bus.publish(dtmf("B", 1))
        for sub in subs:
            assert [e.id for e in await take(sub, 1, within=5)] == [after.id]
        assert a.shared.dropped == b.shared.dropped == 2
        assert a.bus.skipped == b.bus.skipped == {skipped, skipped + 1}
        client = aioredis.Redis.from_url(a.shared.url)
        async with client:
            marks = [f for _i, f in await client.xrange(a.shared._stream) if b"x" in f]
        assert marks and all(m[b"u"] == str(skipped + 1).encode() for m in marks)
    finally:
        await stuck._redis.delete(stuck._alive_key(stuck.engine))
        await stuck._redis.aclose()


async def test_no_batch_is_given_up_while_every_engine_waits_for_the_database(
    pair: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database away for everyone holds every engine alike, and not for ever (each
    has one batch out): past STUCK_FOR nothing is skipped, nor when it is back and one
    engine stores before the other (STUCK_FOR counts from then), and every event goes
    out live."""
    monkeypatch.setattr(redisstream, "SUSPECT_AFTER", 0.2)
    monkeypatch.setattr(redisstream, "STUCK_FOR", 3.0)  # > a write's retry after the lock
    a, b = pair
    sub = a.bus.subscribe()
    blocker = sqlite3.connect(a.store.url.split(":///", 1)[1], isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the database is away for both engines
        published = [a.bus.publish(dtmf("A", 1)), b.bus.publish(dtmf("B", 1))]
        await until(lambda: a.shared.held == 2)
        await asyncio.sleep(3.5)  # longer than STUCK_FOR
        blocker.execute("ROLLBACK")
        got = [e.id for e in await take(sub, 2, within=20)]
        assert sorted(got) == sorted(e.id for e in published)
        assert a.shared.dropped == b.shared.dropped == 0
    finally:
        blocker.close()
