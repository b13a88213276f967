"""The shared routing log (engine/routinglog.py) on a real redis-server: engines in one
process, each with its own copy of routing, asking for decisions through the log. The
first engine starts the routing, the next gets a copy from the leader, a caller of one
is offered to the agent of another, refusals come back to whoever asked, the leader
keeps time, and when it stops another engine leads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from engine import routinglog
from engine.acd import AcdError, QueueConfig
from engine.analysis import Emit
from engine.desks import DeskStreams
from engine.events import AgentPresenceChanged, CallOffered, OfferWithdrawn, utcnow
from engine.livecall import Call
from engine.routing import Effect, StopRinging
from engine.routingcopy import CallCard, RoutingCopy
from engine.routinglog import RoutingLog, RoutingUnavailable
from engine.sharedcalls import SharedCalls
from media.asr import ModelChoice
from tests.engine_proc import free_port
from tests.redisd import RedisServer, prefix

QUEUES = [QueueConfig(name="general")]
ANN = {"id": "u-ann", "username": "ann", "skills": [], "role": "agent"}


@dataclass
class Node:
    log: RoutingLog
    effects: list[tuple[Effect, str]] = field(default_factory=list)

    @property
    def copy(self) -> RoutingCopy:
        return self.log.copy

    def events(self, kind: type) -> list[Any]:
        return [
            e.event for e, _o in self.effects if isinstance(e, Emit) and isinstance(e.event, kind)
        ]


async def nothing() -> None:
    pass


def node(
    url: str, keys: str, name: str, peers: int, offer_timeout: float = 20.0,
    disconnect_after: float = 10.0,
) -> Node:  # fmt: skip
    async def no_overrides() -> list[tuple[str, dict[str, Any] | None]]:
        return []

    async def count() -> int:
        return peers

    log = RoutingLog(
        url, keys, name, RoutingCopy(QUEUES, offer_timeout, disconnect_after),
        reset_queues=no_overrides, peers=count,
    )  # fmt: skip
    n = Node(log)

    def applied(effects: list[Effect], op: Mapping[str, Any]) -> asyncio.Task[None]:
        n.effects += [(e, str(op["origin"])) for e in effects]
        return asyncio.get_running_loop().create_task(nothing())

    log.on_effects = applied
    return n


def caller(call_id: str) -> dict[str, Any]:
    call = Call(call_id, "webrtc", "en", ModelChoice("en", None, None), "+15550100", utcnow())
    call.state = "active"
    return CallCard.of(call)


async def until(check: Any, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "not within time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def keys() -> AsyncIterator[str]:
    yield prefix()


async def test_engines_route_as_one(redis_server: RedisServer, keys: str) -> None:
    a = node(redis_server.url, keys, "A", peers=0, offer_timeout=1.0)
    b = node(redis_server.url, keys, "B", peers=1, offer_timeout=1.0)
    c: Node | None = None
    try:
        await a.log.start()  # the first engine: nobody has a copy, it starts the routing
        await until(lambda: a.log.leader)
        await b.log.start()  # the second gets the leader's copy
        assert b.log.synced.is_set() and a.log.snapshots_sent == 1

        # a caller of A is offered to ann, who signs in on B
        await a.log.submit({"op": "escalation", "call": caller("c1"), "skill": None,
                            "to_person": True})  # fmt: skip
        await b.log.submit({"op": "presence", "user": ANN, "event": "login"})
        await b.log.submit({"op": "presence", "user": ANN, "event": "available"})
        await until(lambda: a.copy.routing.acd.agents.get("u-ann") is not None
                    and a.copy.routing.presence_of("u-ann") == "ringing")  # fmt: skip
        for n in (a, b):
            assert n.copy.routing.offered_to("u-ann", "c1")
        [offer] = b.events(CallOffered)  # B's copy made it; A's too, and A sends it
        assert (offer.call_id, offer.agent_id) == ("c1", "u-ann")
        assert [
            o for e, o in a.effects if isinstance(e, Emit) and isinstance(e.event, CallOffered)
        ] == ["B"]

        # what routing refuses comes back to whoever asked, and changes nothing
        with pytest.raises(AcdError, match="not ringing"):
            await a.log.submit({"op": "decline", "user_id": "u-ann", "call_id": "c9"})

        # the leader keeps time: the offer rings out after 1 s on every copy
        await until(lambda: b.copy.routing.presence_of("u-ann") == "away", 5)
        assert a.copy.routing.presence_of("u-ann") == "away"
        assert [w.reason for w in a.events(OfferWithdrawn)] == ["no_answer"]

        # a third engine joins late and is in step with the others
        c = node(redis_server.url, keys, "C", peers=2)
        await c.log.start()
        assert c.copy.snapshot() == a.copy.snapshot() == b.copy.snapshot()

        # the leader stops: another engine takes the lease and keeps time
        await a.log.stop()
        await until(lambda: b.log.leader or c.log.leader, 5)
        await b.log.submit({"op": "presence", "user": ANN, "event": "available"})
        await until(lambda: c.copy.routing.presence_of("u-ann") == "ringing")
        await until(lambda: c.copy.routing.presence_of("u-ann") == "away", 5)
        presence = [p.presence for p in b.events(AgentPresenceChanged)]
        assert presence == ["away", "available", "ringing", "away", "available", "ringing", "away"]
    finally:
        for n in (a, b, c):
            if n is not None:  # promptly: redis-py swallowed the cancel of a blocked read
                await asyncio.wait_for(n.log.stop(), 5)


async def test_a_joiner_waits_for_a_leader_while_other_engines_live(
    redis_server: RedisServer, keys: str
) -> None:
    """No lease, but another engine alive (its leader just died): starting the routing
    again would wipe what the live engines hold. The joiner waits; when an engine starts
    the routing (or a leader hands out a copy) it is in step from there, and the stream
    holds one reset, not two."""
    first = node(redis_server.url, keys, "A", peers=0)
    joiner = node(redis_server.url, keys, "B", peers=1)
    try:
        waiting = asyncio.create_task(joiner.log.start())
        await asyncio.sleep(1.0)
        assert not waiting.done() and not joiner.log.synced.is_set()
        await first.log.start()
        await asyncio.wait_for(waiting, 15)
        assert joiner.log.synced.is_set()
        await first.log.submit({"op": "presence", "user": ANN, "event": "login"})
        await until(lambda: joiner.copy.snapshot() == first.copy.snapshot())
        client = aioredis.Redis.from_url(redis_server.url)
        async with client:
            entries = await client.xrange(f"{keys}:routing")
        kinds = [json.loads(fields[b"op"])["op"] for _id, fields in entries]
        assert kinds.count("reset") == 1
    finally:
        await asyncio.wait_for(joiner.log.stop(), 5)
        await asyncio.wait_for(first.log.stop(), 5)


async def test_a_slow_tick_does_not_cost_the_leader_its_lease(
    redis_server: RedisServer, keys: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (b697810, ``RoutingLog._lease_loop``): the leader renewed its lease in
    the loop that asked for the ticks, after each tick, and a tick waited until this
    engine had applied its effects. Effects slow to apply (a prompt to synthesize, a
    store that hangs) held the renewals back: the lease ran out, another engine took
    it, and the leader's copy went on as if it led. Now the lease is renewed by a task
    of its own and a tick does not wait for its effects: the leader keeps the lease
    (and keeps time) while a tick's effects are stuck. The lease is shortened here to
    ``LEASE`` = 1.5 s (renewed every 0.25 s) so that it would run out within the test."""
    monkeypatch.setattr(routinglog, "LEASE", 1.5)
    monkeypatch.setattr(routinglog, "RENEW", 0.25)
    a = node(redis_server.url, keys, "A", peers=0, offer_timeout=0.5)
    b = node(redis_server.url, keys, "B", peers=1, offer_timeout=0.5)
    fast = a.log.on_effects
    assert fast is not None
    release = asyncio.Event()
    stuck: list[asyncio.Task[None]] = []

    async def held() -> None:
        await release.wait()

    def slow_ticks(effects: list[Effect], op: Mapping[str, Any]) -> asyncio.Task[None]:
        """A's effects of a tick, stuck until the test lets them go."""
        if op["op"] != "tick":
            return fast(effects, op)
        a.effects += [(e, str(op["origin"])) for e in effects]
        stuck.append(task := asyncio.get_running_loop().create_task(held()))
        return task

    a.log.on_effects = slow_ticks
    try:
        await a.log.start()
        await until(lambda: a.log.leader)
        await b.log.start()
        # an offer to ann that rings out after 0.5 s: the leader asks for a tick then
        await b.log.submit({"op": "presence", "user": ANN, "event": "login"})
        await b.log.submit({"op": "presence", "user": ANN, "event": "available"})
        await b.log.submit({"op": "escalation", "call": caller("c1"), "skill": None,
                            "to_person": True})  # fmt: skip
        assert b.copy.routing.presence_of("u-ann") == "ringing"
        await until(lambda: bool(stuck))  # the tick applied on A, its effects stuck
        await until(lambda: b.copy.routing.presence_of("u-ann") == "away")  # rang out

        await keeps_the_lease(a, b, redis_server.url, keys)
        assert not stuck[0].done()  # the effects were stuck all along
    finally:
        release.set()
        for n in (b, a):
            await asyncio.wait_for(n.log.stop(), 5)


async def test_the_lease_is_renewed_while_the_leader_waits_for_a_tick(
    redis_server: RedisServer, keys: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (b697810, ``RoutingLog._lease_loop``), the renewals alone: the leader
    asked for the ticks and renewed the lease in one loop, so while it waited for a tick
    (its ``submit`` may wait up to ``ANSWER_WITHIN`` = 10 s for the log to answer) the
    lease ran out and another engine led too. A real Redis cannot hold up a tick
    without holding up the renewals as well, so here the tick is a stand-in, A's
    ``_tick_if_due``, that waits until the test lets it go; everything else is real.
    ``LEASE`` is shortened to 1.5 s (renewed every 0.25 s) so that it would run out
    within the test."""
    monkeypatch.setattr(routinglog, "LEASE", 1.5)
    monkeypatch.setattr(routinglog, "RENEW", 0.25)
    a = node(redis_server.url, keys, "A", peers=0)
    b = node(redis_server.url, keys, "B", peers=1)
    asked, release = asyncio.Event(), asyncio.Event()

    async def slow_tick() -> None:
        asked.set()
        await release.wait()

    monkeypatch.setattr(a.log, "_tick_if_due", slow_tick)
    try:
        await a.log.start()
        await until(lambda: a.log.leader)
        await b.log.start()
        await asyncio.wait_for(asked.wait(), 5)  # A leads and waits for its tick
        await keeps_the_lease(a, b, redis_server.url, keys)
    finally:
        release.set()
        for n in (b, a):
            await asyncio.wait_for(n.log.stop(), 5)


async def keeps_the_lease(a: Node, b: Node, url: str, keys: str) -> None:
    """For twice the lease, A holds it and B never takes it."""
    loop = asyncio.get_running_loop()
    until_then = loop.time() + 2 * routinglog.LEASE
    while loop.time() < until_then:
        assert not b.log.leader, "B took the lease while A was held up"
        assert a.log.leader
        await asyncio.sleep(0.05)
    client = aioredis.Redis.from_url(url)
    async with client:
        assert await client.get(f"{keys}:routing:leader") == b"A"


async def test_without_redis_routing_cannot_start(keys: str) -> None:
    gone = node(f"redis://127.0.0.1:{free_port()}/0", keys, "A", peers=0)
    with pytest.raises(RoutingUnavailable, match="cannot be reached"):
        await gone.log.start()
    await gone.log.stop()


async def leader_and_ann(a: Node, b: Node) -> None:
    """A starts the routing and leads, B joins, and ann is available on A."""
    await a.log.start()
    await until(lambda: a.log.leader)
    await b.log.start()
    for event in ("login", "available"):
        await a.log.submit({"op": "presence", "user": ANN, "event": event})


async def test_a_silent_engines_callers_leave_the_line_and_free_the_agents(
    redis_server: RedisServer, keys: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine dies (kill -9: nothing said) with a caller in line, offered to ann on
    another engine. Only the dead engine could show ann that offer, so it rang out
    unseen and set her away, and the caller went on to the next agent, and the next,
    until a survivor ended the dead engine's calls, up to CCENGINE_ENGINE_LEASE (60 s).
    Now its liveness key runs out within ALIVE_FOR, the leader takes its callers out of
    line, and ann is told the offer is withdrawn and stays available."""
    monkeypatch.setattr(routinglog, "ALIVE_FOR", 1.0)
    monkeypatch.setattr(routinglog, "RENEW", 0.25)
    a = node(redis_server.url, keys, "A", peers=0, offer_timeout=60.0)
    b = node(redis_server.url, keys, "B", peers=1, offer_timeout=60.0)
    try:
        await leader_and_ann(a, b)
        await b.log.submit({"op": "escalation", "call": caller("c1"), "skill": None,
                            "to_person": True})  # fmt: skip
        await until(lambda: a.copy.routing.offered_to("u-ann", "c1"))
        assert a.copy.nodes == {"c1": "B"}

        await b.log.stop()  # as dead: its liveness key is left to run out
        await until(lambda: "c1" not in a.copy.routing.acd.waiting, 5)
        assert a.copy.routing.presence_of("u-ann") == "available"
        [withdrawn] = a.events(OfferWithdrawn)
        assert (withdrawn.call_id, withdrawn.reason) == ("c1", "node_silent")
        told = [o for e, o in a.effects if isinstance(e, Emit) and e.event is withdrawn]
        assert told == ["A"]  # A tells it: B cannot
        assert "c1" not in a.copy.left  # its engine may come back for it
    finally:
        for n in (a, b):
            await asyncio.wait_for(n.log.stop(), 5)


async def test_an_agents_desks_on_two_engines_keep_her_there_until_both_are_gone(
    redis_server: RedisServer, keys: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16 with several engines: ann's desk streams to A and her phone to B. The
    desk closing leaves her there (the phone is); B dying takes the phone's stream with
    it (nothing said: the leader finds B silent), and after the grace every copy has her
    away, saying why, told once (by the leader, whose tick it was)."""
    monkeypatch.setattr(routinglog, "ALIVE_FOR", 1.0)
    monkeypatch.setattr(routinglog, "RENEW", 0.25)
    a = node(redis_server.url, keys, "A", peers=0, disconnect_after=0.5)
    b = node(redis_server.url, keys, "B", peers=1, disconnect_after=0.5)
    try:
        await leader_and_ann(a, b)
        await a.log.submit({"op": "clients", "user_id": "u-ann", "streams": 1})
        await b.log.submit({"op": "clients", "user_id": "u-ann", "streams": 1})
        await a.log.submit({"op": "clients", "user_id": "u-ann", "streams": 0})
        await asyncio.sleep(1.0)  # twice the grace: the phone on B keeps her there
        assert a.copy.routing.presence_of("u-ann") == "available"
        assert a.copy.routing.liveness.state("u-ann") == "present"

        await b.log.stop()  # as dead: its liveness key is left to run out
        await until(lambda: a.copy.routing.presence_of("u-ann") == "away", 5)
        [changed] = [e for e in a.events(AgentPresenceChanged) if e.reason == "disconnected"]
        assert (changed.presence, changed.previous) == ("away", "available")
        told = [o for e, o in a.effects if isinstance(e, Emit) and e.event is changed]
        assert told == ["A"]
        assert a.copy.routing.liveness.state("u-ann") is None  # dealt with: untracked
    finally:
        for n in (a, b):
            await asyncio.wait_for(n.log.stop(), 5)


async def test_an_engine_cut_off_from_redis_tells_its_agents_streams_again(
    redis_server: RedisServer, keys: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine alive but silent has the agents' streams it holds dropped by the leader,
    as if it had died; it sees that and tells them again, so ann, whose desk is open on
    it all along, is never set away."""
    monkeypatch.setattr(routinglog, "ALIVE_FOR", 1.0)
    monkeypatch.setattr(routinglog, "RENEW", 0.25)
    a = node(redis_server.url, keys, "A", peers=0, disconnect_after=3.0)
    b = node(redis_server.url, keys, "B", peers=1, disconnect_after=3.0)

    async def apply(_effect: Effect) -> None:
        pass

    shared = SharedCalls(b.log, b.copy, "B", {}, apply)
    asked: list[bool] = []

    async def tell(user_id: str, streams: int) -> None:
        await b.log.submit({"op": "clients", "user_id": user_id, "streams": streams})

    desks = DeskStreams(tell)

    def retell() -> None:
        asked.append(True)
        desks.retell()

    shared.retell_streams = retell
    b.log.on_effects = shared.effects
    try:
        await leader_and_ann(a, b)
        desks.opened("u-ann")  # her desk, open on B
        await until(lambda: a.copy.routing.liveness.state("u-ann") == "present", 5)
        silent = b.log._alive
        monkeypatch.setattr(b.log, "_alive", lambda pipe: None)  # B says nothing
        client = aioredis.Redis.from_url(redis_server.url)
        async with client:
            await client.delete(f"{keys}:routing:alive:B")
        await until(lambda: bool(asked), 5)  # B saw its streams dropped
        monkeypatch.setattr(b.log, "_alive", silent)  # heard from again
        await asyncio.sleep(4.0)  # more than the grace
        for n in (a, b):
            assert n.copy.routing.presence_of("u-ann") == "available"
            assert n.copy.routing.liveness.state("u-ann") == "present"
    finally:
        await desks.close()
        for n in (a, b):
            await asyncio.wait_for(n.log.stop(), 5)
        await shared.settle(5)


async def test_an_engine_cut_off_from_redis_puts_its_callers_back_in_line(
    redis_server: RedisServer, keys: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine alive but silent (its liveness key not refreshed: cut off from Redis,
    or stalled) has its caller taken out of line; the engine sees that and puts the
    caller back (engine/sharedcalls.py), who is offered again once it is heard from."""
    monkeypatch.setattr(routinglog, "ALIVE_FOR", 1.0)
    monkeypatch.setattr(routinglog, "RENEW", 0.25)
    a = node(redis_server.url, keys, "A", peers=0, offer_timeout=60.0)
    b = node(redis_server.url, keys, "B", peers=1, offer_timeout=60.0)
    live = Call("c1", "webrtc", "en", ModelChoice("en", None, None), "+15550100", utcnow())
    live.state = "queued"
    applied: list[Effect] = []

    async def apply(effect: Effect) -> None:
        applied.append(effect)

    shared = SharedCalls(b.log, b.copy, "B", {"c1": live}, apply)
    b.log.on_effects = shared.effects
    try:
        await leader_and_ann(a, b)
        await b.log.submit({"op": "requested", "call": CallCard.of(live), "queue": "general",
                            "agent": None})  # fmt: skip
        await until(lambda: a.copy.routing.offered_to("u-ann", "c1"))

        silent = b.log._alive
        monkeypatch.setattr(b.log, "_alive", lambda pipe: None)  # B says nothing
        client = aioredis.Redis.from_url(redis_server.url)
        async with client:
            await client.delete(f"{keys}:routing:alive:B")
        await until(lambda: any(w.reason == "node_silent" for w in a.events(OfferWithdrawn)), 5)
        # B stops the desk phone it rang for c1 (the leader, who told the withdrawal,
        # could not)
        await until(lambda: any(isinstance(e, StopRinging) and e.call_id == "c1"
                                for e in applied), 5)  # fmt: skip
        monkeypatch.setattr(b.log, "_alive", silent)  # heard from again
        # B put its caller back, and it is offered to ann again
        await until(lambda: a.copy.routing.offered_to("u-ann", "c1"), 5)
        await asyncio.sleep(1.5)  # more than ALIVE_FOR: B is alive, the caller stays
        assert a.copy.routing.offered_to("u-ann", "c1")
        assert b.copy.routing.offered_to("u-ann", "c1")
    finally:
        for n in (a, b):
            await asyncio.wait_for(n.log.stop(), 5)
        await shared.settle(5)
