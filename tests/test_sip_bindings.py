"""Desk phones' bindings shared between engines through Redis (engine/sipbindings.py):
what one engine's registrar holds, the others can ring. Real redis-server, in-process
engines (a dict stands for each registrar)."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis

from engine.sipbindings import SharedBindings
from media.sip.events import Peer
from tests.engine_proc import free_port
from tests.redisd import RedisServer, prefix

EDGE = Peer("UDP", "10.0.0.5", 5060)
PHONE = "sip:desk7@10.0.0.7:5060"


class Registrar:
    """What a registrar holds: (aor, contact) -> (where it came from, seconds left)."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, str], tuple[Peer, float]] = {}

    def get(self, aor: str, contact: str) -> tuple[Peer, float] | None:
        return self.held.get((aor, contact))


async def settled(*nodes: SharedBindings) -> None:
    for node in nodes:
        if node._task is not None:
            await asyncio.wait_for(asyncio.shield(node._task), 10)


async def test_one_engines_binding_is_found_by_the_others_until_it_ends(
    redis_server: RedisServer,
) -> None:
    p = prefix()
    reg_a, reg_b = Registrar(), Registrar()
    a = SharedBindings(redis_server.url, p, "engine-a", reg_a.get)
    b = SharedBindings(redis_server.url, p, "engine-b", reg_b.get)
    try:
        reg_a.held[("desk7", PHONE)] = (Peer("TCP", "10.0.0.5", 5060, conn=7), 600)
        a.changed("desk7", PHONE)
        await settled(a)
        [found] = await b.lookup("desk7")
        assert found.contact == PHONE and found.node == "engine-a"
        assert found.peer == Peer("TCP", "10.0.0.5", 5060)  # not the connection's number
        assert await a.lookup("desk7") == []  # its own registrar answers for it
        assert await b.lookup("desk8") == []

        # the phone moves to engine b (a drains); then a's old binding runs out: b's stays
        reg_b.held[("desk7", PHONE)] = (EDGE, 600)
        b.changed("desk7", PHONE)
        await settled(b)
        del reg_a.held[("desk7", PHONE)]
        a.changed("desk7", PHONE)
        await settled(a)
        [moved] = await a.lookup("desk7")
        assert moved.node == "engine-b" and moved.peer == EDGE

        # an unregister on b removes it; a quick register and unregister ends unbound
        del reg_b.held[("desk7", PHONE)]
        b.changed("desk7", PHONE)
        reg_b.held[("desk7", PHONE)] = (EDGE, 600)
        b.changed("desk7", PHONE)
        del reg_b.held[("desk7", PHONE)]
        b.changed("desk7", PHONE)
        await settled(b)
        assert await a.lookup("desk7") == []
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_expired_and_unreadable_records_are_skipped(redis_server: RedisServer) -> None:
    p = prefix()
    reg = Registrar()
    a = SharedBindings(redis_server.url, p, "engine-a", reg.get)
    b = SharedBindings(redis_server.url, p, "engine-b", Registrar().get)
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        reg.held[("desk7", PHONE)] = (EDGE, 0.5)
        a.changed("desk7", PHONE)
        await settled(a)
        assert len(await b.lookup("desk7")) == 1
        await r.hset(b.key("desk7"), "junk", "{not json")
        await r.hset(b.key("desk7"), "odd", json.dumps({"contact": PHONE}))
        await asyncio.sleep(0.6)
        assert await b.lookup("desk7") == []  # ran out; the junk is not a binding
        assert await r.ttl(b.key("desk7")) > 3000  # the hash goes too, in time
    finally:
        await r.aclose()
        await asyncio.gather(a.close(), b.close())


async def test_redis_away_finds_nothing_and_writes_again_when_back() -> None:
    server = RedisServer(port=free_port())
    reg = Registrar()
    a = SharedBindings(server.url, prefix(), "engine-a", reg.get)
    b = SharedBindings(server.url, a._prefix, "engine-b", Registrar().get)
    try:
        assert await b.lookup("desk7") == []  # nothing listens: none, not an error
        reg.held[("desk7", PHONE)] = (EDGE, 600)
        a.changed("desk7", PHONE)
        await asyncio.sleep(0.5)
        assert a.failures >= 1
        server.start()
        await settled(a)
        assert [x.contact for x in await b.lookup("desk7")] == [PHONE]
    finally:
        await asyncio.gather(a.close(), b.close())
        server.stop()
