"""Desk phones' registrations, known to every engine: a call on one node rings a desk
phone that registered with another.

Theory of operation
-------------------
A desk phone registers with one engine (behind the Kamailio edge, the one a hash of its
address of record picks). That engine's registrar (media/sip/registrar.py) holds the
binding and answers the phone; with Redis (``CCENGINE_REDIS_URL``) it also copies the
binding into one hash per address of record, ``<prefix>:sip:aor:<user>``, a field per
contact::

    {"contact": "sip:desk7@10.0.0.7:5060", "transport": "UDP", "host": "10.0.0.5",
     "port": 5060, "expires": 1795000000.0, "node": "<engine id>"}

``host``/``port`` are where the REGISTER came from: the edge, when there is one, which
relays an engine's INVITE to the Contact (deploy/kamailio/kamailio.cfg); the phone
itself otherwise. The call's engine rings the phone itself (the routing's effects for a
call are carried out on the call's node, engine/routingcopy.py), so the phone's media
goes to the engine that has the call, as a browser agent's does.

Writes are coalesced: a change marks the contact dirty and one writer task copies what
the registrar holds *now* (the binding, or its absence), so a register and an
unregister in quick succession cannot land in Redis in the wrong order. An absence is
written as a delete that only removes a record this engine wrote: after the edge moved a
phone to another engine (this one drained, say), this engine's old binding running out
must not remove the newer one. ``expires`` is wall-clock time (the engines' clocks are
NTP-synchronised; a record a few seconds late to expire only means one more ring that
the phone does not answer); the hash itself expires an hour after its last write.

A TCP binding is copied without its connection: another engine opens one of its own to
the address, which a phone behind NAT will not accept (it then rings in the browser
only). Redis away: the registrar's own bindings still ring for this node's calls; a
lookup that fails is logged and finds nothing.

Why not Kamailio as registrar (usrloc, auth_db)? The engines own the SIP users and their
passwords (``CCENGINE_SIP_USERS``), the digest throttle and the agent each phone
belongs to; a second registrar would need them copied into Kamailio's database and kept
in step, and the engines would still need to learn where each phone is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from media.sip.events import Peer
from media.sip.registrar import MAX_CONTACTS, MAX_EXPIRES

log = logging.getLogger(__name__)

TIMEOUT = 2.0  # s a Redis command may take
KEEP = MAX_EXPIRES  # s a hash outlives its last write (the longest binding)
MAX_DIRTY = 10_000  # contacts waiting to be written; more is a flood, and is dropped

# Delete a contact only if this engine wrote it (a newer registration elsewhere stays),
# or if it cannot be read (no engine could use it).
_DELETE_MINE = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local ok, r = pcall(cjson.decode, v)
if not ok or type(r) ~= 'table' or r['node'] == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])  -- this engine's, or unreadable
end
return 0
"""


@dataclass(frozen=True, slots=True)
class SharedBinding:
    """A binding held by another engine: where to send the INVITE, until when."""

    contact: str
    peer: Peer
    expires: float  # wall-clock time
    node: str


class SharedBindings:
    """This engine's bindings copied to Redis, and every engine's read back."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        node: str,
        local: Callable[[str, str], tuple[Peer, float] | None],
    ) -> None:
        """``local(aor, contact)``: the registrar's binding now, as (where the REGISTER
        came from, seconds left), or None once it is gone."""
        self._redis = Redis.from_url(
            redis_url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )
        self._prefix = prefix
        self.node = node
        self._local = local
        self._delete_mine = self._redis.register_script(_DELETE_MINE)
        self._dirty: dict[tuple[str, str], None] = {}  # insertion-ordered set
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # writes that Redis refused or timed out

    def key(self, aor: str) -> str:
        return f"{self._prefix}:sip:aor:{aor}"

    def changed(self, aor: str, contact: str) -> None:
        """The registrar bound or unbound ``contact``: copy it (soon, in order)."""
        if len(self._dirty) >= MAX_DIRTY and (aor, contact) not in self._dirty:
            log.warning("desk phone bindings: %d waiting to be shared; dropped %r",
                        len(self._dirty), aor)  # fmt: skip
            return
        self._dirty[(aor, contact)] = None
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._write_all(), name="sip-bindings")

    async def _write_all(self) -> None:
        while self._dirty:
            aor, contact = next(iter(self._dirty))
            del self._dirty[(aor, contact)]
            try:
                async with asyncio.timeout(TIMEOUT):
                    await self._write(aor, contact)
            except (RedisError, OSError) as exc:  # TimeoutError is an OSError
                self.failures += 1
                log.warning("desk phone binding %r not shared: %s; trying again", aor, exc)
                self._dirty.setdefault((aor, contact), None)
                await asyncio.sleep(1.0)

    async def _write(self, aor: str, contact: str) -> None:
        now = self._local(aor, contact)
        key = self.key(aor)
        if now is None:
            await self._delete_mine(keys=[key], args=[contact, self.node])
            return
        peer, left = now
        record = {
            "contact": contact,
            "transport": peer.transport,
            "host": peer.host,
            "port": peer.port,
            "expires": time.time() + left,
            "node": self.node,
        }
        async with self._redis.pipeline(transaction=True) as p:
            p.hset(key, contact, json.dumps(record))
            p.expire(key, KEEP + 60)
            await p.execute()

    async def lookup(self, aor: str) -> list[SharedBinding]:
        """The bindings of ``aor`` that other engines hold and have not run out, the
        longest-lasting last. Redis away: none (logged)."""
        try:
            async with asyncio.timeout(TIMEOUT):
                raw = await self._redis.hgetall(self.key(aor))
        except (RedisError, OSError) as exc:
            log.warning("desk phone bindings of %r unknown: %s", aor, exc)
            return []
        now = time.time()
        found = []
        for value in list(raw.values())[: MAX_CONTACTS * 4]:
            try:
                r = json.loads(value)
                b = SharedBinding(
                    str(r["contact"]),
                    Peer(str(r["transport"]), str(r["host"]), int(r["port"])),
                    float(r["expires"]),
                    str(r["node"]),
                )
            except (ValueError, KeyError, TypeError):
                continue  # not ours to read: skipped, not fatal
            if b.node != self.node and b.expires > now and b.peer.transport in ("UDP", "TCP"):
                found.append(b)
        return sorted(found, key=lambda b: b.expires)

    async def close(self) -> None:
        if self._task is not None:
            # what is waiting is written first (a stopping engine's phones stay reachable
            # through the others), for at most a few seconds
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), 3 * TIMEOUT)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()
