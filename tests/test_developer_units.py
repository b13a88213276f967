"""Pure logic behind the developer API: keys, scopes, rate limits, webhook signatures
and backoff, and the event log's replay across its database and its ring."""

from __future__ import annotations

import random

import pytest

from engine.eventlog import EventLog
from engine.events import DtmfReceived, EventBus
from engine.keys import expand, new_key, parse_key, role_scopes, secret_matches
from engine.ratelimit import RateLimiter, retry_after
from engine.store.db import Store
from engine.webhooks import backoff, safe_target, sign, verify


def test_keys_round_trip_and_refuse_lookalikes() -> None:
    key = new_key()
    assert parse_key(key.token) == (key.id, key.secret)
    assert secret_matches(key.secret, key.secret_hash)
    assert not secret_matches(key.secret[:-1] + "x", key.secret_hash)
    assert key.secret not in key.secret_hash
    for bad in ("", "cck_", key.token + "x", key.token.replace("cck_", "ck_"), "cck_A" * 12):
        assert parse_key(bad) is None


def test_scopes_nest() -> None:
    assert expand(["read"]) == {"read"}
    assert expand(["control"]) == {"read", "control"}
    assert expand(["admin"]) == {"read", "control", "admin"}
    assert role_scopes("agent") == role_scopes("supervisor") == {"read", "control"}
    assert role_scopes("admin") == {"read", "control", "admin"}


def test_rate_limiter_bursts_then_paces() -> None:
    limiter = RateLimiter()
    assert [limiter.take("k", 60, 0.0) for _ in range(60)] == [0.0] * 60
    wait = limiter.take("k", 60, 0.0)
    assert wait == pytest.approx(1.0)  # one a second at 60 a minute
    assert retry_after(wait) == "1" and retry_after(0.01) == "1" and retry_after(2.2) == "3"
    assert limiter.take("k", 60, 0.5) == pytest.approx(0.5)
    assert limiter.take("k", 60, 1.01) == 0.0
    assert limiter.take("other", 60, 1.01) == 0.0  # buckets are per client


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(max_clients=10)
    for i in range(10):
        limiter.take(f"c{i}", 5, 0.0)
    limiter.take("late", 5, 61.0)  # the others are full again: forgotten
    assert len(limiter._buckets) == 1


def test_signature_verifies_and_refuses_tampering() -> None:
    body = b'{"id":7,"type":"call.ended"}'
    header = sign("whsec_s", 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=")
    assert verify("whsec_s", header, body, now=1_700_000_100)
    assert not verify("whsec_s", header, body + b" ", now=1_700_000_100)
    assert not verify("whsec_other", header, body, now=1_700_000_100)
    assert not verify("whsec_s", header, body, now=1_700_000_000 + 301)  # a replay
    assert not verify("whsec_s", header.replace("t=1700000000", "t=1700000001"), body, 1.7e9)
    assert not verify("whsec_s", "garbage", body, now=1_700_000_000)


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    delays = [backoff(n, 2.0, 60.0, rng) for n in range(1, 9)]
    for n, d in enumerate(delays, start=1):
        ceiling = min(60.0, 2.0 * 2 ** (n - 1))
        assert ceiling / 2 <= d <= ceiling
    assert len({round(backoff(3, 2.0, 60.0, rng), 6) for _ in range(20)}) > 1


def test_safe_target_keeps_no_secrets() -> None:
    assert safe_target("https://u:p@hooks.example.com:8443/x?token=s") == (
        "https://hooks.example.com:8443"
    )


async def test_replay_spans_database_and_ring_and_ids_survive_a_crash(db_url: str) -> None:
    store = Store(db_url)
    await store.open()
    try:
        bus = EventBus(ring_size=5)
        log = EventLog(store, bus, retention_days=1)
        await log.start()
        for i in range(20):
            bus.publish(DtmfReceived(call_id="a" if i % 2 else "b", digit=str(i % 10), at=i))
        await log.flush()
        assert bus.oldest_id == 16  # the ring holds the newest five
        got = [i async for i, _ in log.replay(None, 3)]
        assert got == list(range(4, 21))
        only_a = [i async for i, _ in log.replay("a", 0)]
        assert only_a == list(range(2, 21, 2))
        unflushed = bus.publish(DtmfReceived(call_id="a", digit="9", at=99))
        # not stored yet, so nobody is given it: a crash now must not take back an id
        assert [i async for i, _ in log.replay("a", 18)] == [20]
        await log.flush()
        assert [i async for i, _ in log.replay("a", 18)] == [20, unflushed.id]
        await log.stop()  # stops the tasks and writes what is pending

        # a crash: events published but never written. A new run must not reuse their ids.
        crashed_bus = EventBus()
        crashed = EventLog(store, crashed_bus, retention_days=1)
        await crashed.start()
        lost = crashed_bus.publish(DtmfReceived(call_id="a", digit="1", at=0))
        assert crashed._task is not None and crashed._pruner is not None
        crashed._task.cancel()
        crashed._pruner.cancel()

        bus2 = EventBus()
        log2 = EventLog(store, bus2, retention_days=1)
        await log2.start()
        after_restart = bus2.publish(DtmfReceived(call_id="a", digit="2", at=0))
        assert after_restart.id > lost.id > unflushed.id
        await log2.flush()
        assert [i async for i, _ in log2.replay("a", 18)] == [20, unflushed.id, after_restart.id]
        await log2.stop()
    finally:
        await store.close()


def test_times_without_a_zone_are_taken_as_utc() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from engine.events import as_utc

    naive = datetime(2026, 11, 23, 9, 30)
    assert as_utc(naive) == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    paris = datetime(2026, 11, 23, 10, 30, tzinfo=timezone(timedelta(hours=1)))
    assert as_utc(paris).tzinfo is UTC and as_utc(paris).hour == 9
