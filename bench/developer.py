"""What the developer API costs: the durable event log, webhook delivery, and checking
credentials on every request, each against a baseline measured in the same run.

    python -m bench.developer [--events 20000] [--hooks 300] [--requests 500]

1. Event log: N events published on the bus alone (the baseline), then through the bus
   with the log writing them to SQLite in batches; events a second, and the ratio.
   Then the whole log replayed from the database, as a client resuming from id 0.
2. Webhooks: an engine with one subscription to a local receiver (answers 200); each
   agent presence change is one delivery; the time from the API call that caused the
   event to the receiver holding it, p50 / p95, and deliveries a second.
3. Credentials: sequential GETs of /healthz (no credential) and of /api/v1/queues with
   an API key, a person's token and no credential (refused), on one engine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx

from bench.calls import OUT, percentile
from engine.eventlog import EventLog
from engine.events import DtmfReceived, EventBus
from engine.store.db import Store
from tests.engine_proc import EngineProcess
from tests.webhook_receiver import Receiver


async def event_log(workdir: Path, n: int) -> list[str]:
    def burst(bus: EventBus) -> float:
        start = time.perf_counter()
        for i in range(n):
            bus.publish(DtmfReceived(call_id=f"call-{i % 50}", digit=str(i % 10), at=i))
        return time.perf_counter() - start

    bare = burst(EventBus())
    store = Store(f"sqlite+aiosqlite:///{workdir / 'log.db'}")
    await store.open()
    try:
        bus = EventBus()
        log = EventLog(store, bus, retention_days=1)
        await log.start()
        start = time.perf_counter()
        burst(bus)
        await log.flush()
        logged = time.perf_counter() - start
        await log.stop()
        fresh = EventLog(store, EventBus(), retention_days=1)  # as after a restart
        await fresh.start()
        start = time.perf_counter()
        replayed = sum([1 async for _ in fresh.replay(None, 0)])
        replay = time.perf_counter() - start
        one_call = sum([1 async for _ in fresh.replay("call-7", 0)])
        await fresh.stop()
    finally:
        await store.close()
    assert replayed == n and one_call == n // 50
    return [
        f"| bus only (baseline) | {n} | {n / bare:,.0f} /s | 1.0 |",
        f"| bus + durable log (SQLite, written) | {n} | {n / logged:,.0f} /s | "
        f"{logged / bare:.1f}x |",
        f"| replay from the database, id 0 | {replayed} | {replayed / replay:,.0f} /s | - |",
    ]


async def webhooks(engine: EngineProcess, n: int) -> str:
    receiver = Receiver().start()
    url = receiver.url
    try:
        async with engine.http(timeout=30) as admin:
            r = await admin.post(
                "/api/v1/webhooks", json={"url": url, "events": ["agent.presence_changed"]}
            )
            r.raise_for_status()
        engine.add_user("bench-agent", "bench-pw-1")
        agent = await engine.agent("bench-agent", "bench-pw-1", "login")
        sent: list[float] = []
        try:
            for i in range(n):
                sent.append(time.monotonic())
                event = "available" if i % 2 == 0 else "away"
                (
                    await agent.post("/api/v1/agents/me/presence", json={"event": event})
                ).raise_for_status()
                await asyncio.sleep(0.01)
        finally:
            await agent.aclose()
        for _ in range(1200):  # up to a minute for the last deliveries
            if len(receiver.got) >= n + 1:
                break
            await asyncio.sleep(0.05)
    finally:
        receiver.stop()
    arrivals = [t for _h, _b, _s, t in receiver.got[1:]]  # the first: the login's change
    latency = [a - s for s, a in zip(sent, arrivals, strict=False)]
    span = arrivals[-1] - sent[0] if arrivals else float("nan")
    return (
        f"| {n} | {len(arrivals)} | {percentile(latency, 50) * 1000:.0f} ms | "
        f"{percentile(latency, 95) * 1000:.0f} ms | {len(arrivals) / span:.0f} /s |"
    )


async def credentials(engine: EngineProcess, n: int) -> list[str]:
    engine.add_user("bench-sup", "bench-pw-1", "--role", "supervisor")
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
        r = await http.post(
            "/api/v1/auth/login", json={"username": "bench-sup", "password": "bench-pw-1"}
        )
        token = r.json()["token"]
        http.cookies.clear()
        cases = [
            ("GET /healthz, no credential (baseline)", "/healthz", {}),
            ("GET /api/v1/queues, API key", "/api/v1/queues", engine.headers),
            (
                "GET /api/v1/queues, person's token",
                "/api/v1/queues",
                {"Authorization": f"Bearer {token}"},
            ),
            ("GET /api/v1/queues, none (401)", "/api/v1/queues", {}),
        ]
        rows, base = [], 0.0
        for name, path, headers in cases:
            times = []
            for _ in range(n):
                start = time.perf_counter()
                await http.get(path, headers=headers)
                times.append(time.perf_counter() - start)
            p50 = percentile(times, 50)
            base = base or p50
            rows.append(
                f"| {name} | {n} | {p50 * 1000:.2f} ms | {percentile(times, 95) * 1000:.2f} ms "
                f"| {p50 / base:.2f}x |"
            )
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--hooks", type=int, default=300)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        log_rows = await event_log(workdir, args.events)
        engine = EngineProcess(
            workdir / "engine", CCENGINE_SIP_ENABLED="false", CCENGINE_RATE_PER_MINUTE="1000000",
            CCENGINE_WEBHOOK_ALLOWED_NETWORKS='["127.0.0.1/32"]',  # the receiver's
        ).start()  # fmt: skip
        try:
            hook_row = await webhooks(engine, args.hooks)
            auth_rows = await credentials(engine, args.requests)
        finally:
            engine.stop()
    text = "\n".join(
        [
            f"developer API costs; {os.cpu_count()} CPUs, SQLite\n",
            "| event log | events | rate | time vs bus only |",
            "|---|---|---|---|",
            *log_rows,
            "",
            "| webhook deliveries | received | cause -> receiver p50 | p95 | rate |",
            "|---|---|---|---|---|",
            hook_row,
            "",
            "| request | n | p50 | p95 | p50 vs /healthz |",
            "|---|---|---|---|---|",
            *auth_rows,
        ]
    )
    (OUT / "developer.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    asyncio.run(main())
