"""Rate limits shared by engines through Redis (engine/ratelimit_redis.py), on a real
redis-server: a client's requests count the same on every engine. With buckets in each
process, a client spreading its requests over two engines got twice its allowance."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine import ratelimit_redis
from engine.ratelimit_redis import RedisLimiter
from tests.engine_proc import free_port
from tests.redisd import RedisServer, prefix


async def test_two_engines_count_a_client_in_one_bucket(redis_server: RedisServer) -> None:
    keys = prefix()
    one, two = RedisLimiter(redis_server.url, keys), RedisLimiter(redis_server.url, keys)
    try:
        waits = [await (one, two)[i % 2].take("key:k1", 10) for i in range(14)]
        assert waits[:10] == [0.0] * 10, "a minute's worth may go at once"
        assert all(0 < w <= 60 for w in waits[10:]), "then refused, on either engine"
        assert await two.take("key:other", 10) == 0.0  # buckets are per client
    finally:
        await one.close()
        await two.close()


async def test_rate_limits_go_on_in_each_engine_while_redis_is_away(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis away must not refuse every request (nor let every request through): each
    engine counts in its own buckets until Redis is back."""
    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
    try:
        waits = [await limiter.take("ip:1.2.3.4", 5) for _ in range(7)]
        assert waits[:5] == [0.0] * 5 and all(w > 0 for w in waits[5:])
        assert limiter.failing
        assert sum("counting in this engine alone" in r.message for r in caplog.records) == 1
    finally:
        await limiter.close()


async def test_one_request_alone_tries_a_failing_redis_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After RETRY, every concurrent request used to try Redis again: a Redis that hangs
    then held each of them ~2 x TIMEOUT. One request tries it; the others count here."""
    monkeypatch.setattr(ratelimit_redis, "TIMEOUT", 0.5)
    accepted: list[asyncio.StreamWriter] = []

    async def hang(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # answers nothing, ever

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0")
    limiter.failing = True  # Redis failed a while ago: time to try it again
    try:

        async def timed() -> float:
            start = time.monotonic()
            await limiter.take("ip:1.2.3.4", 100)
            return time.monotonic() - start

        took = sorted(await asyncio.gather(*(timed() for _ in range(10))))
        assert took[-1] >= 0.4, "one request tried the hanging Redis"
        assert took[-2] < 0.2, "the others did not wait on it"
        assert limiter.failing
    finally:
        await limiter.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
