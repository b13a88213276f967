"""Configuration changed on one engine, reloaded by all: webhooks, escalation rules,
knowledge-base articles, the virtual agent's flows and queues; and people signed out,
changed or removed.

Theory of operation
-------------------
Each of these is kept in the database and held in memory by every engine (the event
log's webhook list, ``Content``'s rules and articles, ``FlowSet``'s flows, the ACD's
queues). A change made through one engine's API is written to the database and applied
there at once; the other engines on the same database must reload it, or a webhook
created on node A would never be sent the events of node B, and a rule, a flow or a
queue changed on A would not apply to calls on B. People are read from the database
on every request already; what the others must act on is what they hold open for a
person: a supervisor signed out on A kept listening to a call on B, and B's streams
noticed the sign-out only at their next periodic check.

With Redis (``CCENGINE_REDIS_URL``) the engine that made the change publishes the kind
of change on one channel (``<prefix>:changed``); every other engine listens and reloads
that kind from the database. Pub/sub messages are not kept for an engine that is not
listening at that moment (reconnecting to Redis, say), so every engine also reloads all
kinds when its subscription starts or comes back, and every ``BACKSTOP`` seconds: a
missed message is late, never lost. Without Redis there is one engine and nothing to
tell: ``changed`` does nothing.

A kind may also have an ``announced`` hook: what to do only when another engine says
it changed, not at those periodic reloads, because it costs more than a reload when
nothing changed (waking every open stream of every engine at once).

    kind        reloads
    webhooks    EventLog.reload_webhooks
    content     Content.load (rules and articles)
    flows       FlowSet.load (the virtual agent's flows; engine/bot/flowset.py)
    queues      CallManager.load_queue_changes
    people      Monitors.recheck (supervisor legs of people signed out, removed or
                demoted end); announced: auth.tokens_revoked (open streams check
                their credentials now, not at their own next RECHECK); engine/app.py
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

Kind = Literal["webhooks", "content", "flows", "queues", "people"]
KINDS: tuple[Kind, ...] = ("webhooks", "content", "flows", "queues", "people")
BACKSTOP = 60.0  # s between reloads of everything, for a message missed while away
RETRY = 2.0  # s before listening again after Redis went away
TIMEOUT = 2.0  # s a Redis command may take
GATHER = 0.2  # s announcements are gathered for one reload of each kind they name


class Changes:
    """Publishes this engine's configuration changes and reloads the others'."""

    def __init__(
        self,
        reload: Mapping[Kind, Callable[[], Awaitable[object]]],
        redis_url: str = "",
        prefix: str = "ccengine",
        announced: Mapping[Kind, Callable[[], object]] | None = None,
    ) -> None:
        self._reload = reload
        self._announced = announced or {}
        # as engine/redisstream.py's: a Redis that stops answering must not hold an API
        # request (the change is stored already) nor leave a dead subscription unnoticed
        self._redis: Redis | None = (
            Redis.from_url(
                redis_url,
                socket_timeout=TIMEOUT,
                socket_connect_timeout=TIMEOUT,
                health_check_interval=30,
            )  # fmt: skip
            if redis_url
            else None
        )
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
            async with asyncio.timeout(TIMEOUT):
                await self._redis.publish(self.channel, f"{kind} {self.origin}")
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            log.warning("could not tell other engines that %s changed: %s", kind, exc)

    def start(self) -> None:
        if self._redis is not None:
            self._task = asyncio.create_task(self._listen(), name="config-changes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.aclose()

    async def apply(self, kinds: tuple[Kind, ...], *, announced: bool) -> None:
        """Reload ``kinds``; when another engine ``announced`` them (not the backstop's
        nor a new subscription's reload of everything), their announced hooks first."""
        if announced:
            for kind in kinds:
                hook = self._announced.get(kind)
                try:
                    if hook is not None:
                        hook()
                except Exception:
                    log.exception("acting on the announced %s failed", kind)
        await self._reload_kinds(kinds)

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
                    await self.apply(KINDS, announced=False)
                    await self._follow(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("configuration changes: Redis away (%s); listening again", exc)
            except Exception:  # never a silent end: the next subscription reloads all
                log.exception("configuration changes: listener failed; listening again")
            self.listening.clear()
            await asyncio.sleep(RETRY)

    async def _follow(self, pubsub: PubSub) -> None:
        """Reload what the other engines announce, gathered: a burst of announcements
        (a bulk import of articles) is one reload of each kind it names, not one each
        (an article reload rebuilds the whole search index). Everything is reloaded
        every ``BACKSTOP`` seconds by the clock, however busy the channel."""
        backstop = time.monotonic() + BACKSTOP
        while True:
            kinds: set[Kind] = set()
            gather_until: float | None = None
            while True:
                deadline = backstop if gather_until is None else min(backstop, gather_until)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                if message is None or message.get("type") != "message":
                    continue
                kind = self._kind(message.get("data"))
                if kind is not None:
                    kinds.add(kind)
                    if gather_until is None:
                        gather_until = time.monotonic() + GATHER
            if time.monotonic() >= backstop:
                # announced meanwhile too: their hooks, with the reload of everything
                await self.apply(tuple(k for k in KINDS if k in kinds), announced=True)
                await self.apply(tuple(k for k in KINDS if k not in kinds), announced=False)
                backstop = time.monotonic() + BACKSTOP
            else:
                await self.apply(tuple(k for k in KINDS if k in kinds), announced=True)

    def _kind(self, data: object) -> Kind | None:
        """The kind an announcement names; None for this engine's own, or garbage."""
        text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        kind, _, origin = text.partition(" ")
        if origin == self.origin:
            return None  # made here: applied already
        for known in KINDS:
            if kind == known:
                return known
        log.warning("unknown configuration change %r ignored", text[:80])
        return None
