"""One contact center over two engines: a caller on one engine is put through to an agent
signed in on the other. Two engine processes on one database and one Redis (the shared
routing log, engine/routinglog.py); the agent's desk talks only to its own engine, whose
accept is sent on to the engine running the call (engine/api/forward.py), and the media
flows between the agent and that engine. Without the shared routing the caller waited
for an agent signed in on its own engine, forever.

Then a warm transfer across engines: Ann consults Bob, signed in on her engine too; the
consult, Bob's answer and Ann's hand-over are sent on to the call's engine, the ring and
the answer decided in the shared routing log; the caller then hears Bob. (Consults were
refused on a cluster: "consults work on a single engine for now".)"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import pytest

from media.wavtrack import WavFileTrack
from tests import speech
from tests.engine_proc import PAGE_HEADERS, EngineProcess, sign_in
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
    calls.add_user("bob", "battery staple", "--name", "Bob Roy")
    agent_wav = speech.piper_script(
        ["Hello, this is Ann from customer care.",
         "I am sorry about the trouble. I can help you with that right now."],
        tmp_path / "ann.wav",
    )  # fmt: skip
    bob_wav = speech.piper_script(
        ["This is Bob from the billing team.", "Your refund will arrive on Friday."],
        tmp_path / "bob.wav",
    )
    caller = Caller(calls.url, voices["angry"])
    agent = Caller(desk.url, agent_wav)
    # Bob starts speaking a while after he answers: once Ann has handed the caller over
    bob_phone = Caller(desk.url, None, mic=WavFileTrack(str(bob_wav), lead_silence=1.5))
    bob = httpx.AsyncClient(base_url=desk.url, timeout=30, headers=PAGE_HEADERS)  # his desk
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
            assert listed == {"ann": "available", "bob": "offline"}

            await caller.dial()  # on the other engine; the angry caller is put in line
            offered = await caller.wait_for("call.offered", 45)
            asked = time.monotonic()
            assert offered["agent_id"] and "Caller:" in offered["summary"]
            await agent.accept(http, caller.call_id)  # on her own engine, sent on
            accepted = time.monotonic() - asked
            cid = caller.call_id
            assert isinstance(agent.track, WavFileTrack)
            await agent.track.finished.wait()  # Ann has said all she says to the caller

            # the warm transfer: every request to Ann's and Bob's engine, sent on
            await sign_in(bob, "bob", "battery staple", "login", "available")
            consulted = time.monotonic()
            r = await http.post(f"/api/v1/calls/{cid}/consult", json={"agent": "bob"})
            assert r.status_code == 202, r.text
            bob_id = (await bob.get("/api/v1/auth/me")).json()["id"]
            ring = await caller.wait_for("call.offered", 15, agent_id=bob_id)
            assert ring["consult_from"] == "ann"
            await bob_phone.accept(bob, cid)
            await caller.wait_for("call.consult_answered", 15)
            r = await http.post(f"/api/v1/calls/{cid}/consult/complete")
            assert r.status_code == 204, r.text
            handed = time.monotonic() - consulted
            heard_from = len(caller.heard)  # the caller hears Bob from here
            assert isinstance(bob_phone.track, WavFileTrack)
            await bob_phone.track.finished.wait()
            await caller.talk_and_hang_up(tail=1.0, end_timeout=30)
            record = await caller.call_record()
            presence = {
                a["username"]: a["presence"] for a in (await http.get("/api/v1/agents")).json()
            }
    finally:
        await asyncio.gather(caller.close(), agent.close(), bob_phone.close(), bob.aclose())
        desk.stop()
        calls.stop()
    print(f"accepted across engines in {accepted:.2f} s; consult to hand-over {handed:.2f} s")
    states = [e["state"] for e in caller.events if e["type"] == "call.state_changed"]
    # held for the consult, bridged again once handed over
    assert states == ["connecting", "active", "queued", "bridged", "held", "bridged", "ended"]
    assert {leg["role"] for leg in record["legs"]} == {"caller", "agent"}
    assert len([leg for leg in record["legs"] if leg["role"] == "agent"]) == 2
    agent_heard = speech.recognise(agent.heard_pcm())
    caller_heard = speech.recognise(caller.heard_pcm(0, heard_from))
    caller_heard_bob = speech.recognise(caller.heard_pcm(heard_from))
    print("agent heard:", agent_heard, "| caller heard:", caller_heard, "| then:", caller_heard_bob)
    assert {"person", "service", "angry"} & set(agent_heard.split())  # the caller, to Ann
    assert "help" in caller_heard.split()  # Ann, to the caller, through the call's engine
    # Bob, to the caller, once Ann handed the call over (through the call's engine too)
    bob_words = set(re.findall(r"[a-z]+", caller_heard_bob.lower()))
    assert {"refund", "billing", "friday"} & bob_words
    assert "help" not in bob_words  # Ann is off the line
    by_speaker = " ".join(u["text"] for u in record["transcript"] if u["speaker"] == "agent")
    assert "help" in by_speaker
    assert record["agent_id"] == bob_id  # the call is Bob's now
    audit = [e["type"] for e in caller.events if e["type"].startswith("call.consult")]
    assert audit == ["call.consult_started", "call.consult_answered", "call.consult_completed"]
    # on their engine, from the call's: Ann from the hand-over, Bob from the hang-up
    assert presence == {"ann": "wrap_up", "bob": "wrap_up"}
    for engine in (calls, desk):
        log = engine.log.read_text()
        assert "Traceback" not in log, log[-3000:]
