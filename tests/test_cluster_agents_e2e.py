"""One contact center over two engines: a caller on one engine is put through to an agent
signed in on the other. Two engine processes on one database and one Redis (the shared
routing log, engine/routinglog.py); the agent's desk talks only to its own engine, whose
accept is sent on to the engine running the call (engine/api/forward.py), and the media
flows between the agent and that engine. Without the shared routing the caller waited
for an agent signed in on its own engine, forever."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests import speech
from tests.engine_proc import PAGE_HEADERS, EngineProcess
from tests.redisd import RedisServer, prefix
from tests.rtc_client import Caller

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def test_a_caller_on_one_engine_reaches_an_agent_on_the_other(
    tmp_path: Path, voices: dict[str, Path], redis_server: RedisServer
) -> None:
    env = {
        "CCENGINE_REDIS_URL": redis_server.url,
        "CCENGINE_REDIS_PREFIX": prefix(),
        "CCENGINE_SIP_ENABLED": "false",
        "CCENGINE_SECRET_KEY_FILE": str(tmp_path / "secret"),  # one key for all nodes
    }
    calls = EngineProcess(tmp_path / "calls", **env).start()  # the caller's engine
    desk = EngineProcess(tmp_path / "desk", **env)  # the agent's engine
    desk.db, desk.api_key = calls.db, calls.api_key  # one database
    calls.add_user("ann", "correct horse", "--name", "Ann Lee")
    agent_wav = speech.piper_script(
        ["Hello, this is Ann from customer care.",
         "I am sorry about the trouble. I can help you with that right now."],
        tmp_path / "ann.wav",
    )  # fmt: skip
    caller = Caller(calls.url, voices["angry"])
    agent = Caller(desk.url, agent_wav)
    try:
        desk.start()
        async with httpx.AsyncClient(base_url=desk.url, timeout=30, headers=PAGE_HEADERS) as http:
            r = await http.post(
                "/api/v1/auth/login", json={"username": "ann", "password": "correct horse"}
            )
            assert r.status_code == 200, r.text
            for event in ("login", "available"):
                r = await http.post("/api/v1/agents/me/presence", json={"event": event})
                assert r.status_code == 200, r.text
            assert r.json()["presence"] == "available"
            async with calls.http() as other:  # the caller's engine knows her as available
                listed = {
                    a["username"]: a["presence"] for a in (await other.get("/api/v1/agents")).json()
                }
            assert listed == {"ann": "available"}

            await caller.dial()  # on the other engine; the angry caller is put in line
            offered = await caller.wait_for("call.offered", 45)
            asked = time.monotonic()
            assert offered["agent_id"] and "Caller:" in offered["summary"]
            await agent.accept(http, caller.call_id)  # on her own engine, sent on
            accepted = time.monotonic() - asked
            await caller.talk_and_hang_up(tail=9.0, end_timeout=30)
            record = await caller.call_record()
            presence = {
                a["username"]: a["presence"] for a in (await http.get("/api/v1/agents")).json()
            }
    finally:
        await asyncio.gather(caller.close(), agent.close())
        desk.stop()
        calls.stop()
    print(f"accepted across engines in {accepted:.2f} s")
    states = [e["state"] for e in caller.events if e["type"] == "call.state_changed"]
    assert states == ["connecting", "active", "queued", "bridged", "ended"]
    assert {leg["role"] for leg in record["legs"]} == {"caller", "agent"}
    agent_heard = speech.recognise(agent.heard_pcm())
    caller_heard = speech.recognise(caller.heard_pcm())
    print("agent heard:", agent_heard, "| caller heard:", caller_heard)
    assert {"person", "service", "angry"} & set(agent_heard.split())  # the caller, to Ann
    assert "help" in caller_heard.split()  # Ann, to the caller, through the call's engine
    by_speaker = " ".join(u["text"] for u in record["transcript"] if u["speaker"] == "agent")
    assert "help" in by_speaker
    assert presence == {"ann": "wrap_up"}  # on her engine, from the call's hang-up
    for engine in (calls, desk):
        log = engine.log.read_text()
        assert "Traceback" not in log, log[-3000:]
