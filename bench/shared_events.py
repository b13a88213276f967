"""What sharing events through Redis costs (engine/redisstream.py), against the
in-process bus measured in the same run; both write to SQLite.

    python -m bench.shared_events [--events 5000] [--rate 200]

1. Latency: one engine alone (in-process bus) and two engines on one Redis and one
   database file, each publishing ``--rate`` events a second; the time from ``publish``
   to a subscriber holding the event (on the other engine, for Redis), p50 / p95 / max.
2. Throughput: ``--events`` published as fast as they go, 100 at a time (split between
   the two engines for Redis); seconds until every subscriber has them all.
Needs /usr/bin/redis-server (started on the loopback, stopped after).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.calls import percentile
from engine.eventlog import EventLog
from engine.events import DtmfReceived, EventBus
from engine.redisstream import RedisEventStream
from engine.store.db import Store
from tests.redisd import RedisServer, prefix


async def engines(db: Path, url: str | None, keys: str, n: int) -> list[tuple[Store, EventLog]]:
    out = []
    for _ in range(n):
        store = Store(f"sqlite+aiosqlite:///{db}")
        await store.open()
        shared = RedisEventStream(url, keys) if url else None
        log = EventLog(store, EventBus(), retention_days=1, shared=shared)
        await log.start()
        out.append((store, log))
    return out


async def stop(running: list[tuple[Store, EventLog]]) -> None:
    for store, log in running:
        await log.stop()
        await store.close()


async def latency(running: list[tuple[Store, EventLog]], rate: float, seconds: float) -> str:
    sub = running[-1][1].bus.subscribe()  # the last engine listens, all publish
    sent: dict[float, float] = {}
    delays: list[float] = []

    async def listen() -> None:
        while (event := await sub.queue.get()) is not None:
            at = getattr(event, "at", None)
            if at in sent:
                delays.append(time.perf_counter() - sent.pop(at))

    listener = asyncio.create_task(listen())
    count = int(rate * seconds)
    for i in range(count):
        _store, log = running[i % len(running)]
        sent[float(i)] = time.perf_counter()
        log.bus.publish(DtmfReceived(call_id="c", digit="1", at=float(i)))
        await asyncio.sleep(1 / rate)
    await asyncio.sleep(1.0)
    listener.cancel()
    sub.close()
    ms = sorted(d * 1000 for d in delays)
    return (
        f"{len(ms)}/{count} events, publish -> subscriber ms: p50 {percentile(ms, 50):.1f} "
        f"p95 {percentile(ms, 95):.1f} max {ms[-1]:.1f}"
    )


async def throughput(running: list[tuple[Store, EventLog]], n: int) -> str:
    subs = [log.bus.subscribe() for _, log in running]
    got = [0] * len(subs)

    async def drain(i: int) -> None:
        while got[i] < n:
            if await subs[i].queue.get() is None:
                raise RuntimeError("subscriber cut off")
            got[i] += 1

    drains = [asyncio.create_task(drain(i)) for i in range(len(subs))]
    start = time.perf_counter()
    for i in range(n):
        running[i % len(running)][1].bus.publish(DtmfReceived(call_id="c", digit="1", at=0.0))
        if i % 100 == 99:
            # publishers are calls: they yield now and then (and a burst bigger than a
            # subscriber's queue would cut it off, as it should)
            await asyncio.sleep(0.002)
    await asyncio.wait_for(asyncio.gather(*drains), 120)
    took = time.perf_counter() - start
    for sub in subs:
        sub.close()
    return f"{n} events to {len(subs)} subscriber(s) in {took:.2f} s: {n / took:,.0f} a second"


async def measure(events: int, rate: float, seconds: float) -> list[tuple[str, str, str]]:
    """(bus, publish->subscriber latency, throughput) for the in-process bus and for
    Redis shared by two engines, in one run (bench/cluster.py prints them too)."""
    rows = []
    server = RedisServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, url, n in (("in-process, 1 engine", None, 1),
                                 ("redis, 2 engines", server.url, 2)):  # fmt: skip
                running = await engines(Path(tmp) / f"{n}.db", url, prefix(), n)
                try:
                    lat = await latency(running, rate, seconds)
                    rows.append((name, lat, await throughput(running, events)))
                finally:
                    await stop(running)
    finally:
        server.stop()
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    for name, lat, thr in await measure(args.events, args.rate, args.seconds):
        print(f"{name}: latency: {lat}")
        print(f"{name}: throughput: {thr}")


if __name__ == "__main__":
    asyncio.run(main())
