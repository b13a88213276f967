"""Configuration changed on one engine, reloaded by all: webhooks, escalation rules,
knowledge-base articles and queues.

Theory of operation
-------------------
Each of these is kept in the database and held in memory by every engine (the event
log's webhook list, ``Content``'s rules and articles, the ACD's queues). A change made
through one engine's API is written to the database and applied there at once; the
other engines on the same database must reload it, or a webhook created on node A would
never be sent the events of node B, and a rule or queue changed on A would not apply to
calls on B.

With Redis (``CCENGINE_REDIS_URL``) the engine that made the change publishes the kind
of change on one channel (``<prefix>:changed``); every other engine listens and reloads
that kind from the database. Pub/sub messages are not kept for an engine that is not
listening at that moment (reconnecting to Redis, say), so every engine also reloads all
kinds when its subscription starts or comes back, and every ``BACKSTOP`` seconds: a
missed message is late, never lost. Without Redis there is one engine and nothing to
tell: ``changed`` does nothing.

    kind        reloads
    webhooks    EventLog.reload_webhooks
    content     Content.load (rules and articles)
    queues      CallManager.load_queue_changes
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

Kind = Literal["webhooks", "content", "queues"]
KINDS: tuple[Kind, ...] = ("webhooks", "content", "queues")
BACKSTOP = 60.0  # s between reloads of everything, for a message missed while away
RETRY = 2.0  # s before listening again after Redis went away


class Changes:
    """Publishes this engine's configuration changes and reloads the others'."""

    def __init__(
        self,
        reload: Mapping[Kind, Callable[[], Awaitable[object]]],
        redis_url: str = "",
        prefix: str = "ccengine",
    ) -> None:
        self._reload = reload
        self._redis: Redis | None = Redis.from_url(redis_url) if redis_url else None
        self.channel = f"{prefix}:changed"
        self.origin = uuid.uuid4().hex  # this engine's own messages are not reloaded
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0  # reloads done for other engines' changes (and the backstop)
        self.listening = asyncio.Event()  # set while subscribed: tests wait on it

    async def changed(self, kind: Kind) -> None:
        """This engine changed ``kind`` (stored and applied here already): tell the
        others. A failure to tell is logged, not raised: the change is made, and the
        others reload it within ``BACKSTOP`` seconds anyway."""
        if self._redis is None:
            return
        try:
            await self._redis.publish(self.channel, f"{kind} {self.origin}")
        except (RedisError, OSError) as exc:
            log.warning("could not tell other engines that %s changed: %s", kind, exc)

    def start(self) -> None:
        if self._redis is not None:
            self._task = asyncio.create_task(self._listen(), name="config-changes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._redis is not None:
            await self._redis.aclose()

    async def _reload_kinds(self, kinds: tuple[Kind, ...]) -> None:
        for kind in kinds:
            try:
                await self._reload[kind]()
                self.reloads += 1
            except Exception:  # a bad row or the database away: the next try may work
                log.exception("reloading %s failed", kind)

    async def _listen(self) -> None:
        assert self._redis is not None
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.listening.set()
                    # whatever changed while this engine was not listening
                    await self._reload_kinds(KINDS)
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=BACKSTOP
                        )
                        if message is None:
                            await self._reload_kinds(KINDS)
                            continue
                        data = message.get("data")
                        text = data.decode() if isinstance(data, bytes) else str(data)
                        kind, _, origin = text.partition(" ")
                        if origin == self.origin:
                            continue  # made here: applied already
                        if kind in KINDS:
                            await self._reload_kinds((kind,))
                        else:
                            log.warning("unknown configuration change %r ignored", kind)
            except (RedisError, OSError) as exc:
                self.listening.clear()
                log.warning("configuration changes: Redis away (%s); listening again", exc)
                await asyncio.sleep(RETRY)
