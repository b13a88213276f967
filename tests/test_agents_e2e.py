"""Agents sign in, go available, and are offered escalated calls with a preview. Sign-in
and queue changes are checked in-process (tests/controlplane.py); calls on engines."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import speech
from tests.controlplane import ControlPlane
from tests.engine_proc import PAGE_HEADERS, EngineProcess
from tests.rtc_client import Caller

pytestmark = pytest.mark.integration


def add_user(engine: EngineProcess, username: str, password: str, *extra: str) -> str:
    return engine.add_user(username, password, *extra)


async def login(http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    """Sign ``http`` in with a cookie, and have it send X-Requested-With from then on
    as the agent desk does (changes made with a cookie need it)."""
    http.headers.update(PAGE_HEADERS)
    return await http.post("/api/v1/auth/login", json={"username": username, "password": password})


@pytest.mark.parametrize("control_plane", ["sqlite", "postgresql"], indirect=True)
async def test_sign_in_presence_and_auth_errors(control_plane: ControlPlane) -> None:
    engine = control_plane  # in-process; the users come from the real CLI
    added = engine.ccengine(
        "users", "add", "ann", "--skills", "billing, retention", stdin="correct horse\n"
    )
    assert added == "added agent ann (billing, retention)\n"
    await engine.add_user("sue", "supervisor pw", "--role", "supervisor")
    async with engine.anonymous() as http:
        assert (await http.get("/api/v1/agents")).status_code == 401
        wrong = await login(http, "ann", "wrong horse")
        nobody = await login(http, "nobody", "wrong horse")
        assert wrong.status_code == nobody.status_code == 401
        assert wrong.json()["detail"] == nobody.json()["detail"] == "wrong username or password"
        ok = await login(http, "ann", "correct horse")
        assert ok.status_code == 200 and ok.json()["user"]["skills"] == ["billing", "retention"]
        assert "httponly" in ok.headers["set-cookie"].lower()
        assert (await http.get("/api/v1/auth/me")).json()["username"] == "ann"  # cookie
        r = await http.post("/api/v1/agents/me/presence", json={"event": "available"})
        assert r.status_code == 409 and "cannot 'available' while offline" in r.json()["detail"]
        for event in ("login", "available"):
            r = await http.post("/api/v1/agents/me/presence", json={"event": event})
            assert r.status_code == 200, r.text
        assert r.json()["presence"] == "available"
        listed = {a["username"]: a["presence"] for a in (await http.get("/api/v1/agents")).json()}
        assert listed == {"ann": "available"}
        # a supervisor has no presence to set; a bearer token works like the cookie
        token = (await login(http, "sue", "supervisor pw")).json()["token"]
        http.cookies.clear()
        r = await http.post(
            "/api/v1/agents/me/presence",
            json={"event": "login"},
            headers={"authorization": f"Bearer {token}"},
        )
        assert r.status_code == 403
        r = await http.get("/api/v1/agents", headers={"authorization": "Bearer forged"})
        assert r.status_code == 401 and r.json()["detail"] == "invalid token"


async def test_escalated_call_rings_the_agent_with_a_preview(
    tmp_path: Path, voices: dict[str, Path]
) -> None:
    """The angry caller asks for a person: the available agent's phone rings with why,
    how the caller feels and what they said; unanswered, it stops ringing and the agent
    is set away (nobody else is available, so the caller keeps waiting)."""
    engine = EngineProcess(tmp_path / "acd", CCENGINE_OFFER_TIMEOUT="4").start()
    add_user(engine, "ann", "correct horse")
    events: list[dict[str, Any]] = []
    try:
        async with httpx.AsyncClient(base_url=engine.url) as http:
            await login(http, "ann", "correct horse")
            for event in ("login", "available"):
                await http.post("/api/v1/agents/me/presence", json={"event": event})
            watcher = asyncio.create_task(engine.watch_events(events))
            caller = Caller(
                engine.url,
                voices["angry"],
            )
            try:
                await caller.dial()
                await caller.talk_and_hang_up(tail=6.0)
            finally:
                await caller.close()
                watcher.cancel()
            filters = {"queue": "general", "escalated": "true", "channel": "webrtc"}
            by_queue = (await http.get("/api/v1/calls", params=filters)).json()["calls"]
            calm = (await http.get("/api/v1/calls", params={"escalated": "false"})).json()
            elsewhere = (await http.get("/api/v1/calls", params={"queue": "billing"})).json()
    finally:
        engine.stop()
    assert [c["id"] for c in by_queue] == [caller.call_id] and by_queue[0]["queue"] == "general"
    assert calm["calls"] == [] and elsewhere["calls"] == []
    types = [e["type"] for e in events]
    offer = next(e for e in events if e["type"] == "call.offered")
    assert offer["call_id"] == caller.call_id and offer["agent_id"]
    assert offer["escalation_reason"].startswith("caller upset")
    assert offer["emotion"] in {"angry", "frustrated"}
    assert "Caller:" in offer["summary"] and offer["queue"] == "general"
    assert 0 < offer["expires_in"] <= 4
    withdrawn = next(e for e in events if e["type"] == "call.offer_withdrawn")
    assert withdrawn["reason"] == "no_answer"
    # the stream replays what came before (login, available), then the ring and its end
    presence = [e["presence"] for e in events if e["type"] == "agent.presence_changed"]
    assert presence[:4] == ["away", "available", "ringing", "away"]
    assert types.index("call.offered") < types.index("call.offer_withdrawn")


async def test_agent_answers_and_both_sides_hear_each_other(
    tmp_path: Path, voices: dict[str, Path]
) -> None:
    """The heart of the product: the upset caller is put through to Ann, who hears the
    caller, is heard by them, and is transcribed as the agent; hanging up leaves Ann in
    wrap-up."""
    engine = EngineProcess(tmp_path / "bridge").start()
    add_user(engine, "ann", "correct horse", "--name", "Ann Lee")
    agent_wav = speech.piper_script(
        ["Hello, this is Ann from customer care.",
         "I am sorry about the trouble. I can help you with that right now."],
        tmp_path / "ann.wav",
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
            await login(http, "ann", "correct horse")
            for event in ("login", "available"):
                await http.post("/api/v1/agents/me/presence", json={"event": event})
            caller = Caller(engine.url, voices["angry"])
            agent = Caller(engine.url, agent_wav)
            try:
                await caller.dial()
                deadline = asyncio.get_running_loop().time() + 30
                while not any(e["type"] == "call.offered" for e in caller.events):
                    assert asyncio.get_running_loop().time() < deadline, "never offered"
                    await asyncio.sleep(0.2)
                r = await http.post(f"/api/v1/calls/{caller.call_id}/accept", json={"sdp": "v=0"})
                assert r.status_code == 400  # a broken softphone offer: the call keeps ringing
                await agent.accept(http, caller.call_id)
                await caller.talk_and_hang_up(tail=9.0, end_timeout=30)
            finally:
                await asyncio.gather(caller.close(), agent.close())
            record = await caller.call_record()
            ann = {a["username"]: a["presence"] for a in (await http.get("/api/v1/agents")).json()}
            taken = (await http.get("/api/v1/calls", params={"agent": "ann"})).json()["calls"]
    finally:
        engine.stop()
    assert [c["id"] for c in taken] == [caller.call_id]
    states = [e["state"] for e in caller.events if e["type"] == "call.state_changed"]
    assert states == ["connecting", "active", "queued", "bridged", "ended"]
    assert {leg["role"] for leg in record["legs"]} == {"caller", "agent"}
    by_speaker = {
        s: " ".join(u["text"] for u in record["transcript"] if u["speaker"] == s)
        for s in ("caller", "agent")
    }
    print("transcript:", by_speaker)
    assert "help" in by_speaker["agent"] and "ridiculous" in by_speaker["caller"]
    agent_heard = speech.recognise(agent.heard_pcm())
    caller_heard = speech.recognise(caller.heard_pcm())
    print("agent heard:", agent_heard, "| caller heard:", caller_heard)
    assert {"person", "service", "angry"} & set(agent_heard.split())  # the caller's words
    assert "help" in caller_heard.split()  # Ann's words, over the bridge
    assert ann == {"ann": "wrap_up"}


async def test_supervisors_change_queues_and_the_change_survives_a_restart(
    tmp_path: Path,
) -> None:
    async with ControlPlane(tmp_path / "queues") as engine:  # in-process, restarted
        await engine.add_user("sue", "pw-sue-1", "--role", "supervisor")
        await engine.add_user("ann", "pw-ann-1")
        sue = await engine.agent("sue", "pw-sue-1")
        ann = await engine.agent("ann", "pw-ann-1")
        body = {"skills": ["billing"], "priority": 3, "max_wait": 120}
        assert (await ann.put("/api/v1/queues/billing", json=body)).status_code == 403
        r = await sue.put("/api/v1/queues/billing", json=body)
        assert r.status_code == 200 and r.json()["skills"] == ["billing"]
        r = await sue.put("/api/v1/queues/Bad%20Name", json=body)
        assert r.status_code == 422
        r = await sue.put("/api/v1/queues/vip", json={"max_wait": -1})
        assert r.status_code == 422 and "max_wait" in r.json()["detail"]
        assert (await sue.delete("/api/v1/queues/general")).status_code == 204
        assert (await sue.delete("/api/v1/queues/billing")).status_code == 409  # the last

        await engine.restart()
        sue = await engine.agent("sue", "pw-sue-1")
        queues = (await sue.get("/api/v1/queues")).json()
    assert [(q["name"], q["priority"], q["max_wait"]) for q in queues] == [("billing", 3, 120)]
