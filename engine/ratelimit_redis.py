"""Rate limits shared by every engine on one Redis (CCENGINE_REDIS_URL): a client
spreading its requests over engines behind a load balancer gets one allowance, not one
per engine.

The counting is the ``limits`` library's sliding-window counter (two counters a client
in Redis, expiring by themselves): up to ``per_minute`` requests in a minute, weighted
across the minute before, so as with the in-process buckets (engine/ratelimit.py) a
client may burst a minute's worth and then goes at about the steady rate.

Redis away must not take the API down with it: while it fails, each engine counts in its
own buckets again (each engine then allows the full rate) and says so once in the log;
Redis is tried again ``RETRY`` seconds later, so requests don't each wait on it.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

from engine.ratelimit import LocalLimiter

log = logging.getLogger(__name__)

TIMEOUT = 1.0  # seconds for a count: a request waits on it
RETRY = 5.0  # seconds after a failure before Redis is tried again (requests don't wait)
# connections to Redis at most: a burst of requests waits (up to TIMEOUT) for one rather
# than open a connection each
MAX_CONNECTIONS = 32


def limits_uri(url: str) -> str:
    """``limits``' name for a redis-py URL (redis://, rediss://, unix://)."""
    if url.startswith("unix://"):
        return "async+redis+unix://" + url.removeprefix("unix://")
    return "async+" + url


class RedisLimiter:
    def __init__(self, url: str, prefix: str = "ccengine") -> None:
        # our own pool, handed to limits: we can close it
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            max_connections=MAX_CONNECTIONS,
            timeout=TIMEOUT,
        )
        storage = RedisStorage(
            limits_uri(url),
            implementation="redispy",
            key_prefix=f"{prefix}:limits",
            wrap_exceptions=True,
            # limits types its options as scalars; it hands them to redis-py as they are
            connection_pool=self._pool,  # type: ignore[arg-type]
        )
        self._window = SlidingWindowCounterRateLimiter(storage)
        self.fallback = LocalLimiter()
        self.failing = False  # counting locally while Redis fails
        self._retry_at = 0.0  # monotonic time to try Redis again

    async def take(self, client: str, per_minute: int) -> float:
        if self.failing:
            if time.monotonic() < self._retry_at:
                return await self.fallback.take(client, per_minute)
            # this request alone tries Redis again: the others go on counting here
            # meanwhile, rather than each wait on a Redis that may hang
            self._retry_at = time.monotonic() + RETRY + 2 * TIMEOUT
        item = RateLimitItemPerMinute(per_minute)
        try:
            if await self._window.hit(item, client):
                wait = 0.0
            else:
                stats = await self._window.get_window_stats(item, client)
                wait = max(0.001, stats.reset_time - time.time())
        except (StorageError, RedisError, OSError) as exc:
            if not self.failing:
                log.error("rate limits: Redis fails (%s); counting in this engine alone", exc)
                self.failing = True
            self._retry_at = time.monotonic() + RETRY
            return await self.fallback.take(client, per_minute)
        if self.failing:
            log.warning("rate limits: Redis is back; counting across engines again")
            self.failing = False
        return wait

    async def close(self) -> None:
        await self._pool.disconnect()
