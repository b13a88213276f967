"""Configuration changed on one engine reaches the others on the same database
(engine/changes.py): two engine apps in this process on one SQLite file and one real
Redis, as two nodes of one contact center."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from engine import changes
from tests import redisd
from tests.controlplane import ControlPlane
from tests.redisd import RedisServer
from tests.test_bot_flows_api import RETURNS
from tests.webhook_receiver import Receiver


async def until(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "the change never arrived"
        await asyncio.sleep(0.05)


@pytest.fixture
async def nodes(
    tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[tuple[ControlPlane, ControlPlane]]:
    shared = {
        "redis_url": redis_server.url,
        "redis_prefix": redisd.prefix(),
        "webhook_allowed_networks": ["127.0.0.0/8"],
    }
    a = await ControlPlane(tmp_path / "a", **shared).start()
    b = ControlPlane(tmp_path / "b", database_url=a.settings.database_url, **shared)
    try:
        await b.start()
        for node in (a, b):  # both listen before anything changes
            await asyncio.wait_for(node.app.state.changes.listening.wait(), 10)  # type: ignore[union-attr]
        yield a, b
    finally:
        await b.stop()
        await a.stop()


async def test_webhooks_rules_articles_flows_and_queues_changed_on_one_node_reach_the_other(
    nodes: tuple[ControlPlane, ControlPlane],
) -> None:
    """Regression: each engine held these in memory, loaded at start: a webhook made on
    node A never got node B's events, and a rule, an article or a queue changed on A did
    not apply on B until B restarted (and a flow, once flows could be changed)."""
    a, b = nodes
    on_a, on_b = a.http(), b.http()
    receiver = Receiver().start()
    try:
        r = await on_a.post(
            "/api/v1/webhooks", json={"url": receiver.url, "events": ["agent.presence_changed"]}
        )
        assert r.status_code == 201, r.text
        rule = {
            "id": "refund_words", "kind": "phrase", "description": "asks for a refund",
            "phrases": ["refund"], "actions": ["route_to_human"],
        }  # fmt: skip
        assert (await on_a.put("/api/v1/escalation-rules/refund_words", json=rule)).is_success
        article = {"title": "Refunds", "body": "Refunds take five days.", "tags": ["billing"]}
        assert (await on_a.put("/api/v1/knowledge-base/articles/refunds", json=article)).is_success
        queue = {"name": "retention", "skills": ["retention"], "priority": 5, "max_wait": 300}
        assert (await on_a.put("/api/v1/queues/retention", json=queue)).is_success
        flow = {"yaml": RETURNS}
        assert (await on_a.put("/api/v1/bot/flows/returns", json=flow)).is_success

        async def on_b_too() -> bool:
            rules = (await on_b.get("/api/v1/escalation-rules")).json()
            arts = (await on_b.get("/api/v1/knowledge-base/articles")).json()
            queues = (await on_b.get("/api/v1/queues")).json()
            flows = (await on_b.get("/api/v1/bot/flows")).json()["flows"]
            return (
                any(r["id"] == "refund_words" for r in rules)
                and any(x["id"] == "refunds" for x in arts)
                and any(q["name"] == "retention" for q in queues)
                and any(f["id"] == "returns" for f in flows)
            )

        await until(on_b_too)
        # the webhook made on A is sent B's events: an agent signs in on B
        await b.add_user("ann", "long-password-1")
        await b.agent("ann", "long-password-1", "login", "available")
        await asyncio.to_thread(receiver.wait, 1, 15)
        assert b"agent.presence_changed" in receiver.got[0][1]

        # removals travel the same way
        assert (await on_a.delete("/api/v1/escalation-rules/refund_words")).status_code == 204
        assert (await on_a.delete("/api/v1/queues/retention")).status_code == 204
        assert (await on_a.delete("/api/v1/bot/flows/returns")).status_code == 204

        async def gone_on_b() -> bool:
            rules = (await on_b.get("/api/v1/escalation-rules")).json()
            queues = (await on_b.get("/api/v1/queues")).json()
            flows = (await on_b.get("/api/v1/bot/flows")).json()["flows"]
            return (
                all(r["id"] != "refund_words" for r in rules)
                and all(q["name"] != "retention" for q in queues)
                and not flows
            )

        await until(gone_on_b)
    finally:
        receiver.stop()


@pytest.fixture
def fast_backstop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the nodes start: their listeners then reload everything every 0.5 s."""
    monkeypatch.setattr(changes, "BACKSTOP", 0.5)


async def test_a_change_missed_while_away_arrives_by_the_backstop(
    fast_backstop: None,
    nodes: tuple[ControlPlane, ControlPlane],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pub/sub keeps nothing for a node that was not listening: a change whose message
    was lost still reaches the other node, by the periodic reload."""
    a, b = nodes

    async def lost(_kind: str) -> None:  # the message never goes out
        pass

    monkeypatch.setattr(a.app.state.changes, "changed", lost)  # type: ignore[union-attr]
    article = {"title": "Hours", "body": "We are open nine to five.", "tags": []}
    assert (await a.http().put("/api/v1/knowledge-base/articles/hours", json=article)).is_success

    async def arrived() -> bool:
        arts = (await b.http().get("/api/v1/knowledge-base/articles")).json()
        return any(x["id"] == "hours" for x in arts)

    await until(arrived)


Counts = dict[str, dict[changes.Kind, int]]


def counting(counts: Counts, node: str) -> dict[changes.Kind, Callable[[], Awaitable[None]]]:
    """Reloads (or, not awaited, announced hooks) that count their calls per kind."""
    counts[node] = dict.fromkeys(changes.KINDS, 0)

    def reload(kind: changes.Kind) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            counts[node][kind] += 1

        return run

    return {kind: reload(kind) for kind in changes.KINDS}


def announced_hooks(counts: Counts, node: str) -> dict[changes.Kind, Callable[[], object]]:
    counts[node] = dict.fromkeys(changes.KINDS, 0)

    def hook(kind: changes.Kind) -> Callable[[], object]:
        return lambda: counts[node].__setitem__(kind, counts[node][kind] + 1)

    return {kind: hook(kind) for kind in changes.KINDS}


async def test_people_announced_by_one_engine_are_rechecked_by_another(
    redis_server: RedisServer,
) -> None:
    """The kind "people" (someone signed out, changed or removed: engine/app.py rechecks
    the supervisor legs, and, announced, tells the open streams) travels like the
    others: announced on A, reloaded on B alone, and not on A (which applied it
    already); B's announced hook runs for it, and not for the reload of everything
    that starting to listen does. Each engine then announces a sentinel kind the other
    waits for: Redis keeps a channel's order, so by then everything before it came."""
    prefix = redisd.prefix()
    counts: Counts = {}
    told: Counts = {}
    a = changes.Changes(counting(counts, "a"), redis_server.url, prefix, announced_hooks(told, "a"))
    b = changes.Changes(counting(counts, "b"), redis_server.url, prefix, announced_hooks(told, "b"))
    a.start()
    b.start()
    try:
        for node in (a, b):
            await asyncio.wait_for(node.listening.wait(), 10)

        async def started() -> bool:
            # listening begins with a reload of everything (what was missed meanwhile)
            return all(n == 1 for each in counts.values() for n in each.values())

        await until(started)
        await a.changed("people")
        await a.changed("content")  # sentinel for B
        await b.changed("flows")  # sentinel for A, after A's own two

        async def sentinels() -> bool:
            return counts["b"]["content"] == 2 and counts["a"]["flows"] == 2

        await until(sentinels)
        once = dict.fromkeys(changes.KINDS, 1)
        assert counts["b"] == {**once, "people": 2, "content": 2}
        assert counts["a"] == {**once, "flows": 2}
        none = dict.fromkeys(changes.KINDS, 0)
        assert told == {"a": {**none, "flows": 1}, "b": {**none, "people": 1, "content": 1}}
    finally:
        await a.stop()
        await b.stop()


async def test_the_backstop_reloads_without_the_announced_hooks(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (cost): the reload of "people" at every minute's backstop told every
    open stream of every engine to check its credentials, all at the same instant. The
    backstop (and a new subscription) reloads every kind, and runs no announced hook:
    only another engine's announcement does."""
    monkeypatch.setattr(changes, "BACKSTOP", 0.2)
    counts: Counts = {}
    told: Counts = {}
    node = changes.Changes(
        counting(counts, "a"), redis_server.url, redisd.prefix(), announced_hooks(told, "a")
    )
    node.start()
    try:

        async def backstopped() -> bool:
            return all(n >= 3 for n in counts["a"].values())  # subscribed, then twice

        await until(backstopped)
        assert told["a"] == dict.fromkeys(changes.KINDS, 0)
    finally:
        await node.stop()
