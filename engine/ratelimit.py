"""Token buckets per client: a key, a person, a call, or an address.

Each bucket holds up to ``per_minute`` requests and refills at ``per_minute / 60`` a
second, so a client may burst a minute's worth and then goes at the steady rate. Pure
logic with ``now`` passed in; buckets that have refilled are forgotten, so memory is
bounded by the clients active in the last minute.

``Limiter`` is what the API asks; ``LocalLimiter`` keeps the buckets in this process
(one engine), engine/ratelimit_redis.py in Redis, shared by every engine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    def __init__(self, max_clients: int = 100_000) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._max_clients = max_clients

    def take(self, client: str, per_minute: int, now: float) -> float:
        """0 if the request may go ahead, else the seconds until it may (Retry-After)."""
        rate = per_minute / 60.0
        b = self._buckets.get(client)
        if b is None:
            if len(self._buckets) >= self._max_clients:
                self._forget_full(now)
            b = self._buckets[client] = _Bucket(float(per_minute), now)
        else:
            b.tokens = min(float(per_minute), b.tokens + (now - b.at) * rate)
            b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / rate

    def _forget_full(self, now: float) -> None:
        # a bucket idle for a minute is full again: dropping it changes nothing
        for client, b in list(self._buckets.items()):
            if now - b.at >= 60.0:
                del self._buckets[client]
        if len(self._buckets) >= self._max_clients:  # all busy: refuse no one for memory
            self._buckets.clear()


class Limiter(Protocol):
    async def take(self, client: str, per_minute: int) -> float:
        """0 if ``client``'s request may go ahead, else the seconds until it may."""
        ...

    async def close(self) -> None: ...


class LocalLimiter:
    """Buckets in this process, on its monotonic clock."""

    def __init__(self, max_clients: int = 100_000) -> None:
        self.buckets = RateLimiter(max_clients)

    async def take(self, client: str, per_minute: int) -> float:
        return self.buckets.take(client, per_minute, time.monotonic())

    async def close(self) -> None:
        pass


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
