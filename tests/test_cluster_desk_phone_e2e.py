"""A desk phone registered with one engine rings for calls on the other. The phone (SIPp
with RTP audio) registers through the Kamailio edge, which hands the REGISTER to one
engine by a hash of the address of record; that engine shares the binding through Redis
(engine/sipbindings.py). A call on the *other* engine rings the phone from there, through
the edge (which relays an engine's INVITE to the phone's Contact), so the phone's media
goes to the engine that has the call. Before, only the engine holding the registration
could ring the phone: an offer from the other engine never rang it, and dialling the
agent's name there was answered 404. Everything real: two engine processes on one
PostgreSQL database and one redis-server, Kamailio, SIPp, speech made by piper."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests import sipp, speech
from tests.engine_proc import EngineProcess, free_port
from tests.kamailio import Kamailio
from tests.pg import PostgresServer
from tests.redisd import RedisServer, prefix
from tests.rtc_client import Caller
from tests.test_sip_e2e import sip_calls, wait_ended

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@dataclass
class Cluster:
    edge: Kamailio
    holder: EngineProcess  # where the phone registered
    other: EngineProcess  # the engine without the binding
    desk_port: int  # the phone's SIP port on 127.0.0.2


def registered_with(engines: list[EngineProcess], user: str) -> EngineProcess:
    """The engine the edge gave ``user``'s REGISTER to (its log says so)."""
    deadline = time.monotonic() + 10
    while True:
        held = [e for e in engines if f"SIP registered {user} ->" in e.log.read_text()]
        if held or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(held) == 1, [e.log.read_text()[-2000:] for e in engines]
    return held[0]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, postgres: PostgresServer
) -> Iterator[Cluster]:
    """Two engines on one PostgreSQL database and one Redis, behind one Kamailio, and
    desk7's phone registered through it."""
    root = tmp_path_factory.mktemp("desk-cluster")
    db = postgres.new_database()
    env = {
        "CCENGINE_REDIS_URL": redis_server.url,
        "CCENGINE_REDIS_PREFIX": prefix(),
        "CCENGINE_SECRET_KEY_FILE": str(root / "secret"),  # one key for all nodes
        "CCENGINE_SIP_TRUNKS": '["127.0.0.1"]',  # the edge, and the test's callers
        "CCENGINE_SIP_USERS": '{"desk7": "s3cret-pass"}',
        "CCENGINE_IVR_PROMPT": "",
        "CCENGINE_MEDIA_TIMEOUT": "20",
    }
    a = EngineProcess(root / "a", database_url=db, **env).start()
    b = EngineProcess(root / "b", database_url=db, **env)
    b.api_key = a.api_key  # one database: the same keys
    edge: Kamailio | None = None
    try:
        a.add_user("desk7", "pw-desk-7")
        b.start()
        edge = Kamailio(root / "kamailio", [a.sip, b.sip]).start()
        desk_port = free_port()
        reg = sipp.run(
            sipp.register_scenario("desk7", "s3cret-pass", 600), root / "reg",
            edge.sip, local_ip="127.0.0.2", sip_port=desk_port,
        )  # fmt: skip
        assert reg.ok, reg.output + reg.errors
        holder = registered_with([a, b], "desk7")
        yield Cluster(edge, holder, b if holder is a else a, desk_port)
    finally:
        if edge is not None:
            edge.stop()
        b.stop()
        a.stop()
        postgres.drop_database(db)
    for engine in (a, b):
        log = engine.log.read_text()
        assert "Traceback" not in log, log[-3000:]


async def available(cluster: Cluster) -> None:
    """desk7 signs in (if not yet) and is available, on the engine holding the phone:
    the last test's call is wrapped up first, as the desk would (a disposition is owed)."""
    http = await cluster.holder.agent("desk7", "pw-desk-7")
    try:
        me = {a["username"]: a for a in (await http.get("/api/v1/agents")).json()}.get("desk7")
        if me is not None and me["wrap_up_call"] is not None:
            r = await http.post(
                f"/api/v1/calls/{me['wrap_up_call']}/wrap-up",
                json={"disposition": "resolved", "then": "available"},
            )
            assert r.status_code == 204, r.text
            return
        presence = me["presence"] if me is not None else "offline"
        for event in ["login"] * (presence == "offline") + ["available"]:
            r = await http.post("/api/v1/agents/me/presence", json={"event": event})
            assert r.status_code == 200, r.text
    finally:
        await http.aclose()


def desk_phone(cluster: Cluster, pcap: Path, work: Path) -> tuple[subprocess.Popen[str], Path]:
    return sipp.start(
        sipp.desk_phone_scenario(pcap, proxied=True), work, None,
        local_ip="127.0.0.2", sip_port=cluster.desk_port, timeout=90,
    )  # fmt: skip


def sent_by(result: sipp.SippResult, engine: EngineProcess, edge: Kamailio) -> None:
    """The phone's INVITE came from ``engine``, relayed (and record-routed) by the edge."""
    invite = result.messages.split("INVITE sip:desk7@127.0.0.2", 1)[1].split("\n\n", 1)[0]
    vias = re.findall(r"^Via: .*$", invite, re.MULTILINE | re.IGNORECASE)
    assert f"127.0.0.1:{edge.port}" in vias[0] and f"127.0.0.1:{engine.sip_port}" in vias[1]
    assert "Record-Route" in invite


async def test_an_offer_on_the_other_engine_rings_the_desk_phone(
    cluster: Cluster, tmp_path: Path, voices: dict[str, Path]
) -> None:
    """An angry in-app caller on the engine without the binding is offered to desk7;
    the phone rings, the agent answers and each hears the other."""
    agent_wav = speech.piper_script(
        ["Hello, this is the billing desk.", "I can see your order and I will fix it."],
        tmp_path / "desk7.wav",
    )  # fmt: skip
    pcap, _, _ = sipp.phone_pcap(agent_wav, tmp_path / "desk7.pcap")
    desk, desk_base = desk_phone(cluster, pcap, tmp_path / "desk")
    await available(cluster)
    caller = Caller(cluster.other.url, voices["angry"])
    try:
        await caller.dial()  # put in line and offered to desk7, who has only the phone
        offered = await caller.wait_for("call.offered", 45)
        await caller.wait_for("call.state_changed", 30, state="bridged")
        await caller.talk_and_hang_up(tail=9.0, end_timeout=30)
        record = await caller.call_record()
    finally:
        await caller.close()
        result = sipp.finish(desk, desk_base)
    assert result.ok, result.output + result.errors
    sent_by(result, cluster.other, cluster.edge)
    assert offered["agent_id"]
    legs = {leg["role"]: leg for leg in record["legs"]}
    assert legs["agent"]["transport"] == "sip"
    caller_heard = speech.recognise(caller.heard_pcm())
    by_agent = " ".join(u["text"] for u in record["transcript"] if u["speaker"] == "agent")
    print("caller heard:", caller_heard, "| transcribed as the agent:", by_agent)
    # the phone's audio reached the call's engine and the caller
    assert {"order", "fix", "billing", "desk"} & set(caller_heard.split())
    assert {"order", "fix", "billing", "desk"} & set(by_agent.split())


async def test_dialling_the_agent_on_the_other_engine_rings_the_desk_phone(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A caller dials ``desk7`` on the engine without the binding: the phone rings from
    there (it was 404: no such phone on that engine)."""
    await available(cluster)
    quiet = np.zeros(8000 * 12, dtype=np.int16)
    tone = sipp.write_pcap(tmp_path / "quiet.pcap", sipp.g711_packets(quiet)[0])
    desk, desk_base = desk_phone(cluster, tone, tmp_path / "desk")
    try:
        dialled = sipp.run(
            sipp.call_scenario(sipp.play(tone, 8.0)), tmp_path / "caller", cluster.other.sip,
            service="desk7", timeout=60,
        )  # fmt: skip
    finally:
        result = sipp.finish(desk, desk_base)
    assert dialled.ok, dialled.output + dialled.errors
    assert result.ok, result.output + result.errors
    sent_by(result, cluster.other, cluster.edge)
    [call] = sip_calls(cluster.other)
    detail = wait_ended(cluster.other, call["id"])
    assert detail["escalation_reason"] == "dialled desk7 directly"


def test_wrong_passwords_through_the_edge_count_against_the_phone(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Every REGISTER reaches the engines from the edge's address; the edge says where it
    came from (``X-Ccengine-Source``), so a phone guessing passwords is locked out by its
    own address and user, not the edge's (which would lock out every phone behind it)."""
    for n in range(5):
        guess = sipp.run(
            sipp.register_scenario("desk9", f"guess-{n}", 120, expect=403), tmp_path / f"g{n}",
            cluster.edge.sip, local_ip="127.0.0.2",
        )  # fmt: skip
        assert guess.ok, guess.output + guess.errors
    deadline = time.monotonic() + 10
    while True:
        logs = [e.log.read_text() for e in (cluster.holder, cluster.other)]
        alarms = [line for log in logs for line in log.splitlines() if "SIP brute force?" in line]
        if alarms or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(alarms) == 1 and "'desk9'" in alarms[0], alarms
    assert "(the last from 127.0.0.2)" in alarms[0], alarms
