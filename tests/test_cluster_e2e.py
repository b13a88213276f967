"""Many engines, one of them dies: two engine processes on one PostgreSQL database and
one Redis, behind one Kamailio edge, a phone caller (SIPp with RTP audio) talking to
one of them. That engine is killed (SIGKILL) mid-call. The survivor sees its heartbeat
stop, ends the call as ``node_lost`` within 30 s, keeps what the caller said, puts the
caller on the callback list (a pending callback and a ``callback.requested`` event on
its stream), and takes the next call through the edge. Everything real: engines,
redis-server, PostgreSQL, Kamailio, SIPp, speech made by piper.

Each engine runs under a host name of its own where the machine allows it (a UTS
namespace), as engines on two machines: the survivor can then tell the death only by
the heartbeat that stopped (the lease), not by the process gone from its own host,
which it would see at its next heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests import sipp, speech
from tests.engine_proc import EngineProcess, hosts_of_their_own
from tests.kamailio import Kamailio
from tests.redisd import RedisServer, prefix

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SAID = "Hi, I am calling about my bill."
CUT_OFF = "15557770042"  # the caller whose engine dies: a number the survivor can call back
NEXT = "15557770043"  # the caller after the death
LEASE = 8  # seconds: a heartbeat every 2 s; an engine silent for 8 s is dead
DETECT = 30  # the acceptance bound from kill to node_lost

T = TypeVar("T")


@pytest.fixture
def cluster(
    tmp_path: Path, pg_url: str, redis_server: RedisServer
) -> Iterator[tuple[Kamailio, list[EngineProcess]]]:
    env = {
        "CCENGINE_REDIS_URL": redis_server.url,
        "CCENGINE_REDIS_PREFIX": prefix(),
        "CCENGINE_ENGINE_LEASE": str(LEASE),
        # the edge is the engines' only SIP peer: it is admitted as a trunk
        "CCENGINE_SIP_TRUNKS": '["127.0.0.1"]',
        # the caller says one sentence and then holds the line in silence: no media
        # timeout may end the call before the engine is killed
        "CCENGINE_MEDIA_TIMEOUT": "120",
        "CCENGINE_IVR_PROMPT": "",
    }
    hosts = ("node-a", "node-b") if hosts_of_their_own() else (None, None)
    engines: list[EngineProcess] = []
    edge: Kamailio | None = None
    try:
        first = EngineProcess(tmp_path / "a", database_url=pg_url, host=hosts[0], **env)
        engines.append(first)
        first.start()
        second = EngineProcess(tmp_path / "b", database_url=pg_url, host=hosts[1], **env)
        second.api_key = first.api_key  # the same database: the same keys
        engines.append(second)
        second.start()
        edge = Kamailio(tmp_path / "kamailio", [e.sip for e in engines]).start()
        yield edge, engines
    finally:
        if edge is not None:
            edge.stop()
        for e in engines:
            e.stop()


async def calls_on(engine: EngineProcess, caller: str) -> list[dict[str, Any]]:
    async with engine.http(timeout=10) as http:
        r = await http.get("/api/v1/calls", params={"channel": "sip", "caller": caller})
    r.raise_for_status()
    return list(r.json()["calls"])


async def call_record(engine: EngineProcess, call_id: str) -> dict[str, Any]:
    async with engine.http(timeout=10) as http:
        r = await http.get(f"/api/v1/calls/{call_id}")
    r.raise_for_status()
    record: dict[str, Any] = r.json()
    return record


async def node(engine: EngineProcess) -> dict[str, Any]:
    """The engine's own view of itself: ``calls_left`` is the calls it runs."""
    async with engine.http(timeout=10) as http:
        r = await http.get("/api/v1/node")
    r.raise_for_status()
    out: dict[str, Any] = r.json()
    return out


def heard(record: dict[str, Any]) -> str:
    return " ".join(u["text"] for u in record["transcript"] if u["speaker"] == "caller")


async def read_events(
    engine: EngineProcess, into: list[dict[str, Any]], ready: asyncio.Event
) -> None:
    """Every event of the engine's ``/api/v1/events`` stream into ``into``, until the
    stream ends or the task is cancelled; ``ready`` once subscribed."""
    async with (
        engine.http(timeout=httpx.Timeout(10, read=None)) as http,
        http.stream("GET", "/api/v1/events") as r,
    ):
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("retry:"):
                ready.set()  # subscribed: what is published from now on comes
            if line.startswith("data: "):
                into.append(json.loads(line[6:]))


@contextlib.asynccontextmanager
async def streams(engines: list[EngineProcess]) -> AsyncIterator[list[list[dict[str, Any]]]]:
    got: list[list[dict[str, Any]]] = [[] for _ in engines]
    ready = [asyncio.Event() for _ in engines]
    tasks = [
        asyncio.create_task(read_events(*reader))
        for reader in zip(engines, got, ready, strict=True)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(flag.wait() for flag in ready)), 10)
        yield got
    finally:
        for task in tasks:
            task.cancel()
        # the killed engine's stream ends with a broken connection: not the test's point
        await asyncio.gather(*tasks, return_exceptions=True)


async def until(what: str, seconds: float, check: Callable[[], Awaitable[T]]) -> T:
    """Poll ``check()`` until it returns something truthy, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        await asyncio.sleep(0.2)


async def test_a_killed_engines_call_is_ended_called_back_and_the_edge_goes_on(
    cluster: tuple[Kamailio, list[EngineProcess]], tmp_path: Path
) -> None:
    edge, engines = cluster
    wav = speech.piper_script([SAID], tmp_path / "said.wav")
    pcap, _, seconds = sipp.phone_pcap(wav, tmp_path / "said.pcap")
    # says the sentence, then stays on the line (the test kills this SIPp)
    held = sipp.proxied_call_scenario(sipp.play(pcap, seconds + 200), caller=CUT_OFF)
    caller: subprocess.Popen[str] | None = None
    async with streams(engines) as events:
        try:
            caller, base = sipp.start(held, tmp_path / "held", edge.sip, timeout=240)

            async def placed() -> dict[str, Any] | None:
                live = [c for c in await calls_on(engines[0], CUT_OFF) if c["state"] != "ended"]
                assert caller is not None and caller.poll() is None, sipp.finish(caller, base)
                return live[0] if live else None

            # both engines list every call of the database they share: the one running
            # it is the one that has a call left (what a drain would wait for)
            call = await until("the call reaches an engine", 20, placed)
            call_id = call["id"]
            running = [(await node(e))["calls_left"] for e in engines]
            assert sorted(running) == [0, 1], running
            n = running.index(1)
            victim, survivor = engines[n], engines[1 - n]

            async def said() -> dict[str, Any] | None:
                record = await call_record(victim, call_id)
                return record if speech.wer(SAID, heard(record)) < 0.5 else None

            before = await until("the caller's sentence is stored", 45, said)
            assert before["state"] != "ended", before

            async def final_elsewhere() -> list[dict[str, Any]] | None:
                seen = events[1 - n]
                finals = [
                    e for e in seen if e["type"] == "transcript.final" and e["call_id"] == call_id
                ]
                return finals or None

            # the engine's own events of the call reach the other engine's stream through
            # Redis while it lives (waited for: the kill must not race the event's batch,
            # whose write may follow the transcript's; a batch stored but not yet marked
            # when the engine dies is handed out all the same, test_redis_events)
            await until("the final on the survivor's stream", 15, final_elsewhere)

            victim.kill()
            killed = time.monotonic()

            async def ended() -> dict[str, Any] | None:
                record = await call_record(survivor, call_id)
                return record if record["state"] == "ended" else None

            after = await until("the survivor ends the call", DETECT + 5, ended)
            noticed = time.monotonic() - killed
            print(f"kill -9 of {victim.workdir.name} to node_lost: {noticed:.1f} s")
            assert after["end_reason"] == "node_lost", after
            assert noticed < DETECT, noticed
            if victim.host is not None:
                # told by the lease: its last heartbeat (some quarter lease before the
                # kill) had to grow a lease old; a live engine is not taken for dead
                # before (the process check of a survivor on its host takes < 3 s)
                assert noticed > LEASE / 2, noticed
            # what the caller said before the engine died is kept
            assert [(u["speaker"], u["text"]) for u in after["transcript"]] == [
                (u["speaker"], u["text"]) for u in before["transcript"]
            ]
            assert after["ended_at"] is not None

            # the caller, a phone number, is called back
            async with survivor.http(timeout=10) as http:
                r = await http.get("/api/v1/callbacks", params={"status": "pending"})
            r.raise_for_status()
            offered = [cb for cb in r.json() if cb["call_id"] == call_id]
            assert len(offered) == 1, r.json()
            callback = offered[0]
            assert callback["caller"] == CUT_OFF and callback["contact"] == CUT_OFF, callback
            assert callback["status"] == "pending" and "node_lost" in callback["escalation_reason"]

            seen = events[1 - n]

            async def announced() -> list[dict[str, Any]]:
                return [
                    e for e in seen if e["type"] == "callback.requested" and e["call_id"] == call_id
                ]

            told = await until("callback.requested on the survivor's stream", 10, announced)
            assert [e["callback_id"] for e in told] == [callback["id"]], told
            assert told[0]["caller"] == CUT_OFF and told[0]["contact"] == CUT_OFF
            ends = [e for e in seen if e["type"] == "call.ended" and e["call_id"] == call_id]
            assert [e["reason"] for e in ends] == ["node_lost"], ends

            # the cut-off phone has nobody left to talk to
            caller.kill()
            sipp.finish(caller, base, timeout=10)
            caller = None

            # the edge has marked the dead engine down: the next call is the survivor's
            await asyncio.sleep(3 * edge.ping + edge.fr_timer_ms / 1000)
            short = sipp.proxied_call_scenario(sipp.play(pcap, seconds + 1.5), caller=NEXT)
            result = await asyncio.to_thread(
                sipp.run, short, tmp_path / "next", edge.sip, timeout=60
            )
            assert result.ok, result.output + result.errors

            async def served() -> dict[str, Any] | None:
                found = await calls_on(survivor, NEXT)
                if found and found[0]["state"] == "ended":
                    return await call_record(survivor, found[0]["id"])
                return None

            new = await until("the next call is served by the survivor", 20, served)
            assert (await node(survivor))["calls_left"] == 0
            assert new["end_reason"] == "remote_closed", new
            assert speech.wer(SAID, heard(new)) < 0.5, heard(new)
        finally:
            if caller is not None:
                caller.kill()
                caller.wait(10)
    edge.stop()
    for engine in engines:
        engine.stop()
    assert survivor.proc is not None and survivor.proc.returncode == 0, "no clean stop"
    for engine in engines:
        log = engine.log.read_text()
        assert "Traceback" not in log, log[-3000:]
