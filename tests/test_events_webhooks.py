"""The durable event log on a real engine: streams that resume by id (WebSocket and
Server-Sent Events, across a restart too) and signed webhooks that survive failures
and a crash of the engine."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller
from tests.webhook_receiver import Receiver


async def sse(
    engine: EngineProcess, path: str, *, last_id: int | None = None, until: str = "call.ended"
) -> list[dict[str, Any]]:
    """Events from an SSE stream, read like EventSource does, until ``until`` arrives."""
    headers = dict(engine.headers)
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    out: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=engine.url, timeout=30) as http,
        http.stream("GET", path, headers=headers) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        event_id = None
        async for line in r.aiter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["id"] == event_id  # the SSE id is the event's id
                out.append(event)
                if event["type"] == until:
                    return out
    return out


async def test_streams_resume_without_gaps_or_repeats(
    tmp_path: Path, voices: dict[str, Path]
) -> None:
    engine = EngineProcess(tmp_path / "engine", CCENGINE_MEDIA_TIMEOUT="6").start()
    restarted: EngineProcess | None = None
    caller = Caller(engine.url, voices["calm"])
    try:
        await caller.dial()
        ws_url = engine.url.replace("http", "ws", 1) + f"/api/v1/calls/{caller.call_id}/events"
        # a listener that drops off after the first finished utterance...
        first_part: list[dict[str, Any]] = []
        async with websockets.connect(ws_url, additional_headers=engine.headers) as ws:
            while not any(e["type"] == "transcript.final" for e in first_part):
                first_part.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        await asyncio.sleep(3)  # ...misses a few seconds of the call...
        last = first_part[-1]["id"]
        second_part = []
        async with websockets.connect(
            f"{ws_url}?after={last}", additional_headers=engine.headers
        ) as ws:  # ...and comes back with its last id
            while not second_part or second_part[-1]["type"] != "call.ended":
                if not second_part:
                    await caller.talk_and_hang_up()
                second_part.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        everything = caller.events  # the caller's own stream, never interrupted
        assert first_part + second_part == everything
        assert len({e["id"] for e in everything}) == len(everything)
        assert [e["id"] for e in everything] == sorted(e["id"] for e in everything)
        missed = [e for e in everything if e["id"] > last]
        assert any(e["type"] == "transcript.final" for e in missed)

        # the same through SSE, from the header EventSource sends when it reconnects
        path = f"/api/v1/calls/{caller.call_id}/events"
        assert await sse(engine, path, last_id=last) == missed
        assert await sse(engine, path) == everything
        engine.stop()

        # after a restart the log still has the call, and new ids continue above it
        restarted = EngineProcess(tmp_path / "engine", CCENGINE_MEDIA_TIMEOUT="6").start()
        assert await sse(restarted, path, last_id=last) == missed
        middle = everything[len(everything) // 2]["id"]
        resumed = await sse(restarted, f"/api/v1/events?after={middle}", until="call.ended")
        assert resumed == [e for e in everything if e["id"] > middle]
        fresh = Caller(restarted.url, voices["calm"])
        try:
            await fresh.dial()
            started = await fresh.wait_for("call.started")
        finally:
            await fresh.close()
        assert started["id"] > everything[-1]["id"]
    finally:
        await caller.close()
        engine.stop()
        if restarted is not None:
            restarted.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([500, 500], "/hooks/ccengine?team=7").start()  # fails twice, then takes it
    try:
        yield r
    finally:
        r.stop()


def verified(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The README's verification recipe, written out with the standard library."""
    parts = dict(p.split("=", 1) for p in headers["Ccengine-Signature"].split(","))
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256)
    fresh = abs(time.time() - int(parts["t"])) < 300
    return fresh and hmac.compare_digest(expected.hexdigest(), parts["v1"])


async def test_webhook_retries_survive_a_crash(tmp_path: Path, receiver: Receiver) -> None:
    env = {
        # the first retry waits 1-2 s: time to see the first try recorded and kill
        "CCENGINE_WEBHOOK_RETRY_BASE": "2",
        "CCENGINE_WEBHOOK_MAX_ATTEMPTS": "5",
        # the receiver is on the loopback, which webhooks may not reach by default
        "CCENGINE_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.1/32"]',
    }
    engine = EngineProcess(tmp_path / "engine", **env).start()
    restarted: EngineProcess | None = None
    try:
        async with engine.http(timeout=30) as http:
            r = await http.post(
                "/api/v1/webhooks",
                json={"url": receiver.url, "events": ["agent.presence_changed"]},
            )
            assert r.status_code == 201, r.text
            hook = r.json()
            r = await http.post("/api/v1/webhooks", json={"url": "ftp://x", "events": ["*"]})
            assert r.status_code == 422 and r.json()["errors"][0]["field"] == "url"
            r = await http.post("/api/v1/webhooks", json={"url": receiver.url, "events": ["x"]})
            assert r.status_code == 422 and "unknown event types" in r.text
            listed = (await http.get("/api/v1/webhooks")).json()
            assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
        engine.add_user("ann", "pw-ann-123")
        ann = await engine.agent("ann", "pw-ann-123", "login")  # one event: offline -> away
        await ann.aclose()
        await asyncio.to_thread(receiver.wait, 1, 20)
        # a crash between the first (failed) try and the next; not before the engine has
        # recorded the first: killed mid-try, it sends that try again (at least once), and
        # the tries would not be the ones this test counts
        async with engine.http(timeout=30) as http:
            for _ in range(200):
                log = (await http.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).json()
                if log and log[0]["attempts"] == 1:
                    break
                await asyncio.sleep(0.02)
            assert log[0]["attempts"] == 1 and log[0]["status"] == "pending", log
        engine.kill()

        restarted = EngineProcess(tmp_path / "engine", **env).start()
        await asyncio.to_thread(receiver.wait, 3, 30)
        async with restarted.http(timeout=30) as http:
            log = (await http.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).json()
    finally:
        engine.kill()
        if restarted is not None:
            restarted.stop()
    assert [status for _h, _b, status, _t in receiver.got] == [500, 500, 200]
    ids = {h["Ccengine-Delivery"] for h, _b, _s, _t in receiver.got}
    assert len(ids) == 1, "every try of one delivery carries the same idempotency id"
    bodies = {b for _h, b, _s, _t in receiver.got}
    assert len(bodies) == 1
    event = json.loads(bodies.pop())
    assert event["type"] == "agent.presence_changed" and event["presence"] == "away"
    for headers, body, _s, _t in receiver.got:
        assert verified(hook["secret"], headers, body)
        assert not verified("whsec_wrong", headers, body)
        assert headers["Ccengine-Event"] == "agent.presence_changed"
    gaps = [b[3] - a[3] for a, b in zip(receiver.got, receiver.got[1:], strict=False)]
    assert gaps[1] >= 2.0, "the third try waits out the backoff (2 s x 2^1, half jittered)"
    assert len(log) == 1
    assert log[0]["id"] in ids and log[0]["status"] == "delivered"
    assert log[0]["attempts"] == 3 and log[0]["last_status_code"] == 200
    assert log[0]["event_id"] == event["id"]
    text = (engine.log.read_text() + restarted.log.read_text()) if restarted else ""
    assert hook["secret"] not in text and "team=7" not in text  # no secret, no query
