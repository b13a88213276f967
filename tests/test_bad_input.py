"""Bad input gets a clear error, never a crash, and the engine keeps serving."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.controlplane import ControlPlane
from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller

pytestmark = pytest.mark.integration
CHROMIUM = (Path(__file__).parent / "fixtures" / "chromium_offer.sdp").read_text()


def assert_problem(r: httpx.Response, status: int, detail: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = r.json()
    assert body["status"] == status
    assert detail in str(body["detail"])
    return body


async def test_bad_offers_and_requests(engine: EngineProcess, voices: dict[str, Path]) -> None:
    async with engine.http(timeout=30) as http:
        post = "/api/v1/calls"
        assert_problem(
            await http.post(post, json={"sdp": "garbage"}), 400, "SDP must start with 'v=0'"
        )
        assert_problem(
            await http.post(post, json={"sdp": CHROMIUM.replace("m=audio", "m=video")}),
            400,
            "no audio section",
        )
        # a well-formed but unusable WebRTC offer (no ICE credentials aiortc can use)
        broken = CHROMIUM.replace("a=ice-pwd:", "a=x-ice-pwd:")
        assert_problem(await http.post(post, json={"sdp": broken}), 400, "offer rejected")
        # shapes aiortc's parser raised on (RuntimeError, AssertionError): once a 500
        opus = "a=rtpmap:111 opus/48000/2\n"
        for extra, reason in [
            ("a=fmtp:77 foo=1", "a=fmtp for payload type 77, which this media section does not"),
            ("a=candidate:1 1 udp", "a=candidate needs foundation, component"),
        ]:
            shape = CHROMIUM.replace(opus, f"{opus}{extra}\n")
            assert_problem(await http.post(post, json={"sdp": shape}), 400, reason)
        body = assert_problem(
            await http.post(
                post, content=b"{not json", headers={"content-type": "application/json"}
            ),
            422,
            "",
        )
        assert body["errors"]
        body = assert_problem(
            await http.post(post, json={"type": "offer"}), 422, "sdp: Field required"
        )
        assert body["errors"] == [{"field": "sdp", "message": "Field required"}]
        assert_problem(
            await http.post(post, json={"sdp": CHROMIUM, "language": "12"}), 422, "language"
        )
        big = {"sdp": "v=0\r\n" + "a=x\r\n" * 100_000}
        assert_problem(await http.post(post, json=big), 413, "request body over")
        assert_problem(await http.get("/api/v1/calls/nope"), 404, "no call nope")
        assert_problem(await http.post("/api/v1/calls/nope/hangup"), 404, "no live call nope")
        assert_problem(await http.get("/api/v1/calls", params={"limit": 0}), 422, "limit")
        health = (await http.get("/healthz")).json()
        assert (health["status"], health["active_calls"], health["load"]["calls"]) == ("ok", 0, 0)

    ws_url = engine.url.replace("http", "ws", 1)
    with pytest.raises(ConnectionClosed) as closed:
        async with websockets.connect(
            f"{ws_url}/api/v1/calls/nope/events", additional_headers=engine.headers
        ) as ws:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404

    # after all that, a real caller is still answered and heard
    assert (await Caller(engine.url, voices["calm"]).complete_call())["transcript"]


async def test_chromium_offer_is_answered(engine: EngineProcess) -> None:
    """The golden Chromium offer gets a valid answer (the call then times out: no peer)."""
    async with engine.http(timeout=30) as http:
        r = await http.post("/api/v1/calls", json={"sdp": CHROMIUM, "caller": "golden"})
        assert r.status_code == 201, r.text
        answer = r.json()
        assert answer["sdp"].startswith("v=0")
        assert "a=fingerprint:" in answer["sdp"] and "opus/48000/2" in answer["sdp"]
        for _ in range(60):
            state = (await http.get(f"/api/v1/calls/{answer['call_id']}")).json()
            if state["state"] == "ended":
                break
            await asyncio.sleep(0.5)
    assert state["end_reason"] in {"no_media", "ice_failed"}


async def test_event_stream_resumes_after_last_id(
    engine: EngineProcess, voices: dict[str, Path]
) -> None:
    caller = Caller(engine.url, voices["calm"])
    caller.as_caller = True  # both reads as the caller's page: what is theirs to read
    await caller.complete_call()
    ws_url = engine.url.replace("http", "ws", 1) + f"/api/v1/calls/{caller.call_id}/events"
    middle = caller.events[len(caller.events) // 2]["id"]
    token = {"Authorization": f"Bearer {caller.answer['caller_token']}"}
    async with websockets.connect(f"{ws_url}?after={middle}", additional_headers=token) as ws:
        resumed = []
        while not resumed or resumed[-1]["type"] != "call.ended":
            resumed.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
    assert resumed == [e for e in caller.events if e["id"] > middle]


async def test_a_burst_of_offers_is_all_answered(
    engine: EngineProcess, voices: dict[str, Path]
) -> None:
    """Regression: 16 offers at once got "database is locked" 500s, because aiosqlite
    writers held SQLite's lock across event-loop turns. Every caller must be answered
    and every call stored."""
    callers = [Caller(engine.url, voices["calm"]) for _ in range(16)]
    try:
        answers = await asyncio.gather(*(c.dial() for c in callers), return_exceptions=True)
        assert [type(a).__name__ for a in answers] == ["dict"] * 16
        await asyncio.sleep(2)
        await asyncio.gather(*(c.pc.close() for c in callers))  # everyone hangs up
        await asyncio.gather(*(asyncio.wait_for(c.ended.wait(), 20) for c in callers))
    finally:
        await asyncio.gather(*(c.close() for c in callers))
    async with engine.http() as http:
        stored = (await http.get("/api/v1/calls", params={"limit": 100})).json()["calls"]
    assert {c["id"] for c in stored} == {c.call_id for c in callers}
    assert all(c["state"] == "ended" for c in stored)


def raw_json(text: str) -> dict[str, object]:
    """A body sent as written: clients' JSON encoders refuse lone surrogates and
    Infinity, hostile clients do not."""
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


def refused(r: httpx.Response, field: str) -> None:
    assert_problem(r, 422, field)
    assert field in [e["field"] for e in r.json()["errors"]], r.text  # type: ignore[index]


@pytest.mark.parametrize("control_plane", ["sqlite", "postgresql"], indirect=True)
async def test_bad_values_are_refused_at_the_edge(control_plane: ControlPlane) -> None:
    """A lone surrogate in a rule phrase was stored, then GET /escalation-rules answered
    500 (across restarts too); Infinity in max_wait or seconds was taken and came back
    as null; a 5,000-character call id made recording.wav answer 500. Each is refused
    with 422 naming the field, on every model, and nothing bad is kept."""
    rule = '{"id": "lonely", "kind": "phrase", "actions": ["route_to_human"], %s}'
    async with control_plane.http() as http:  # in-process
        put = "/api/v1/escalation-rules/lonely"
        refused(await http.put(put, **raw_json(rule % '"phrases": ["\\ud800 help"]')), "phrases")
        refused(await http.put(put, **raw_json(rule % '"description": "\\udfff"')), "description")
        silence = (
            '{"id": "quiet", "kind": "silence", "actions": ["alert_supervisor"], "seconds": %s}'
        )
        for number in ("Infinity", "-Infinity", "NaN"):
            r = await http.put("/api/v1/escalation-rules/quiet", **raw_json(silence % number))
            refused(r, "seconds")
            r = await http.put("/api/v1/queues/slow", **raw_json(f'{{"max_wait": {number}}}'))
            refused(r, "max_wait")
        rules = await http.get("/api/v1/escalation-rules")
        assert rules.status_code == 200 and {"lonely", "quiet"}.isdisjoint(
            r["id"] for r in rules.json()
        )
        queues = await http.get("/api/v1/queues")
        assert queues.status_code == 200 and "slow" not in [q["name"] for q in queues.json()]

        long_id = "x" * 5000
        for path in (f"/api/v1/calls/{long_id}/recording.wav", f"/api/v1/calls/{long_id}",
                     f"/api/v1/calls/{long_id}/transcript.txt"):  # fmt: skip
            refused(await http.get(path), "path.call_id")
        refused(await http.post(f"/api/v1/calls/{long_id}/hangup"), "path.call_id")
        refused(await http.get(f"/api/v1/webhooks/{long_id}/deliveries"), "path.webhook_id")
        refused(await http.get(f"/api/v1/knowledge-base/articles/{long_id}"), "path.article_id")

        # the same classes of value on other models
        offer = '{"sdp": "v=0", "caller": "\\ud83d"}'
        refused(await http.post("/api/v1/calls", **raw_json(offer)), "caller")
        article = '{"title": "t", "body": "b", "tags": ["ok", "\\ud800"]}'
        refused(await http.put("/api/v1/knowledge-base/articles/a", **raw_json(article)), "tags")
        hook = '{"url": "http://127.0.0.1:9/x", "events": ["*"], "description": "\\ud800"}'
        refused(await http.post("/api/v1/webhooks", **raw_json(hook)), "description")
        # a valid pair of surrogates is one character, and welcome
        emoji = rule % '"phrases": ["\\ud83d\\ude00 help"]'
        assert (await http.put(put, **raw_json(emoji))).status_code == 200
        assert (await http.get("/api/v1/escalation-rules")).status_code == 200
