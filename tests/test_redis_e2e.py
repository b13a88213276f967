"""Two real engine processes on one database and one Redis (CCENGINE_REDIS_URL): an
event stream on either carries both engines' events, in one order with growing ids, and
resuming by id on either gives the same events. Without Redis each engine's stream
carried its own events only, numbered from its own block of ids; and each counted a
client's requests alone, so two engines gave it twice its rate limit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engine_proc import EngineProcess, free_port
from tests.redisd import RedisServer, prefix

pytestmark = pytest.mark.integration


async def sse(
    engine: EngineProcess,
    until: int,
    *,
    after: int | None = None,
    ready: asyncio.Event | None = None,
) -> list[dict[str, Any]]:
    """Every event from ``/api/v1/events`` until ``until`` presence changes have come."""
    headers = dict(engine.headers)
    if after is not None:
        headers["Last-Event-ID"] = str(after)
    out: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=engine.url, timeout=30) as http,
        http.stream("GET", "/api/v1/events", headers=headers) as r,
    ):
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("retry:") and ready is not None:
                ready.set()  # subscribed: what is published from now on comes
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
                if sum(e["type"] == "agent.presence_changed" for e in out) == until:
                    return out
    return out


async def test_two_engines_stream_each_others_events_in_one_order(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = {
        "CCENGINE_REDIS_URL": redis_server.url,
        "CCENGINE_REDIS_PREFIX": prefix(),
        "CCENGINE_SIP_ENABLED": "false",
    }
    one = EngineProcess(tmp_path / "one", **env).start()
    two = EngineProcess(tmp_path / "two", **env)
    two.db, two.api_key = one.db, one.api_key  # the same database
    try:
        two.start()
        one.add_user("ann", "pw-ann-1234")
        one.add_user("bob", "pw-bob-1234")
        ready = [asyncio.Event(), asyncio.Event()]
        readers = [
            asyncio.create_task(sse(engine, 8, ready=flag))
            for engine, flag in zip((one, two), ready, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(flag.wait() for flag in ready)), 10)
        # ann on one engine, bob on the other, at once: 4 presence changes each
        moves = ("login", "available", "away", "available")
        ann = await one.agent("ann", "pw-ann-1234")
        bob = await two.agent("bob", "pw-bob-1234")
        try:
            for move in moves:
                await asyncio.gather(
                    ann.post("/api/v1/agents/me/presence", json={"event": move}),
                    bob.post("/api/v1/agents/me/presence", json={"event": move}),
                )
        finally:
            await ann.aclose()
            await bob.aclose()
        on_one, on_two = await asyncio.wait_for(asyncio.gather(*readers), 30)
        assert on_one == on_two, "the two engines stream different events or orders"
        ids = [e["id"] for e in on_one]
        assert ids == sorted(set(ids))
        who = [e["username"] for e in on_one if e["type"] == "agent.presence_changed"]
        assert sorted(who) == ["ann"] * 4 + ["bob"] * 4

        # a client resuming by id gets the same events from either engine
        middle = ids[len(ids) // 2]
        resumed = [e for e in on_one if e["id"] > middle]
        presence = sum(e["type"] == "agent.presence_changed" for e in resumed)
        for engine in (one, two):
            assert await asyncio.wait_for(sse(engine, presence, after=middle), 30) == resumed

        # one allowance for a key, whichever engine its requests go to
        key = one.ccengine(
            "keys", "create", "limited", "--scope", "read", "--rate", "10", "--quiet"
        )
        headers = {"Authorization": f"Bearer {key.strip()}"}
        codes = []
        for i in range(14):
            async with httpx.AsyncClient(base_url=(one, two)[i % 2].url, timeout=10) as http:
                codes.append((await http.get("/api/v1/calls", headers=headers)).status_code)
        assert codes == [200] * 10 + [429] * 4

        async with one.http() as http:  # the stream's reader reports on itself
            text = (await http.get("/metrics")).text
        assert 'ccengine_shared_events{what="held"} 0.0' in text
        assert 'ccengine_shared_events{what="restarts"} 0.0' in text
        for what in ("unreadable", "unknown_type", "reader_failures"):
            assert f'ccengine_shared_events{{what="{what}"}} 0.0' in text
        assert 'ccengine_shared_events{what="counter_resets"}' in text
    finally:
        two.stop()
        one.stop()


def test_an_engine_with_a_wrong_redis_url_does_not_start(tmp_path: Path) -> None:
    """A typo in CCENGINE_REDIS_URL stops the start with one line naming it, not an
    engine that runs alone while its peers think it shares their stream."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    engine = EngineProcess(tmp_path / "engine", CCENGINE_REDIS_URL=url)
    with pytest.raises(RuntimeError, match=f"cannot use Redis at {url}"):
        engine.start(timeout=30)
    assert engine.proc is not None and engine.proc.returncode == 69
