"""What one routing for many engines costs (engine/routinglog.py): the time from a
caller's escalation to the agent's offer, decided by one engine alone against decided
through the shared routing log on Redis and seen by the engine of another agent.

    python -m bench.shared_routing [--offers 200]

One engine: ``Routing.escalation`` run in-process until its ``call.offered`` (the
baseline, in the same run). Two engines: engine A asks the log (``submit``) for the
escalation of its caller; the agents are signed in on engine B; the time runs until B's
copy has applied the operation and made the offer. Each offer goes to another agent, so
every escalation is offered at once. Needs /usr/bin/redis-server (started on the
loopback, stopped after). Both engines are in this process, on this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.acd import QueueConfig
from engine.analysis import Emit
from engine.escalation import Decision
from engine.events import CallOffered, utcnow
from engine.livecall import Call
from engine.routing import Effect, Routing
from engine.routingcopy import CallCard, RoutingCopy
from engine.routinglog import RoutingLog
from engine.store.models import UserRow
from media.asr import ModelChoice
from tests.redisd import RedisServer, prefix

QUEUES = [QueueConfig(name="general")]
DECISION = Decision("bench", "asked for a person", ["route_to_human"], 0, None, 0.0, {})


def caller(i: int) -> Call:
    call = Call(f"c{i}", "webrtc", "en", ModelChoice("en", None, None), "+15550100", utcnow())
    call.state = "active"
    return call


def agent(i: int) -> UserRow:
    return UserRow(id=f"u{i}", username=f"agent{i}", skills=[], role="agent")


def ms(samples: list[float]) -> str:
    a = 1000 * np.array(samples)
    return f"{np.percentile(a, 50):.2f} ms / {np.percentile(a, 95):.2f} ms"


def one_engine(n: int) -> list[float]:
    calls: dict[str, Call] = {}
    routing = Routing(QUEUES, 20.0, calls)
    for i in range(n):
        for event in ("login", "available"):
            list(routing.presence(agent(i), event))
    took = []
    for i in range(n):
        call = calls.setdefault(f"c{i}", caller(i))
        t0 = time.perf_counter()
        effects = list(routing.escalation(call, DECISION, to_person=True))
        assert any(isinstance(e, Emit) and isinstance(e.event, CallOffered) for e in effects)
        took.append(time.perf_counter() - t0)
    return took


async def two_engines(url: str, n: int) -> list[float]:
    keys = prefix()
    offered: dict[str, float] = {}
    arrived = asyncio.Event()

    async def none() -> list[tuple[str, dict[str, Any] | None]]:
        return []

    def make(name: str, peers: int) -> RoutingLog:
        async def count() -> int:
            return peers

        log = RoutingLog(url, keys, name, RoutingCopy(QUEUES, 20.0), reset_queues=none, peers=count)

        async def nothing() -> None:
            pass

        def seen(effects: list[Effect], _op: Mapping[str, Any]) -> asyncio.Task[None]:
            if name == "B":
                for e in effects:
                    if isinstance(e, Emit) and isinstance(e.event, CallOffered):
                        offered.setdefault(str(e.event.call_id), time.perf_counter())
                        arrived.set()
            return asyncio.get_running_loop().create_task(nothing())

        log.on_effects = seen
        return log

    a, b = make("A", 0), make("B", 1)
    await a.start()
    await b.start()
    try:
        for i in range(n):
            card = {"id": f"u{i}", "username": f"agent{i}", "skills": [], "role": "agent"}
            for event in ("login", "available"):
                await b.submit({"op": "presence", "user": card, "event": event})
        took = []
        for i in range(n):
            t0 = time.perf_counter()
            op = {"op": "escalation", "call": CallCard.of(caller(i)), "skill": None,
                  "to_person": True}  # fmt: skip
            await a.submit(op)
            while f"c{i}" not in offered:
                await arrived.wait()
                arrived.clear()
            took.append(offered[f"c{i}"] - t0)
        return took
    finally:
        await b.stop()
        await a.stop()


def measure(n: int) -> list[tuple[str, str]]:
    """(path, offer p50 / p95) rows."""
    server = RedisServer().start()
    try:
        shared = asyncio.run(two_engines(server.url, n))
    finally:
        server.stop()
    return [
        ("one engine (in-process)", ms(one_engine(n))),
        ("two engines, shared routing log (Redis)", ms(shared)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--offers", type=int, default=200)
    a = ap.parse_args()
    print("| escalation -> offer | p50 / p95 |\n|---|---|")
    for path, took in measure(a.offers):
        print(f"| {path} | {took} |")


if __name__ == "__main__":
    main()
