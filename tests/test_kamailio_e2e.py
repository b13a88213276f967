"""The SIP edge: phones call one Kamailio (deploy/kamailio/kamailio.cfg), which spreads
calls over two engine processes by Call-ID and takes an engine out of the set while it
drains or stops answering its health checks, and back when it answers again. Real
Kamailio, real engines, SIPp with RTP audio."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import sipp, speech
from tests.engine_proc import EngineProcess
from tests.kamailio import Kamailio

pytestmark = pytest.mark.timeout(300)

SAID = "Hi, I am calling about my bill."


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    d = tmp_path_factory.mktemp("edge-speech")
    wav = speech.piper_script([SAID], d / "said.wav")
    pcap, _, seconds = sipp.phone_pcap(wav, d / "said.pcap")
    return pcap, seconds


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Kamailio, list[EngineProcess]]]:
    root = tmp_path_factory.mktemp("edge")
    engines: list[EngineProcess] = []
    edge: Kamailio | None = None
    try:
        for name in ("a", "b"):
            engines.append(
                EngineProcess(
                    root / name,
                    # the edge is the engines' only SIP peer: it is admitted as a trunk
                    CCENGINE_SIP_TRUNKS='["127.0.0.1"]',
                    CCENGINE_MEDIA_TIMEOUT="8",
                    CCENGINE_IVR_PROMPT="",
                ).start()
            )
        edge = Kamailio(root / "kamailio", [e.sip for e in engines]).start()
        yield edge, engines
    finally:
        if edge is not None:
            edge.stop()
        for e in engines:
            e.stop()


def calls_on(engine: EngineProcess) -> list[dict[str, Any]]:
    params = {"channel": "sip", "limit": 500}
    r = httpx.get(f"{engine.url}/api/v1/calls", params=params, headers=engine.headers)
    r.raise_for_status()
    return list(r.json()["calls"])


def place(edge: Kamailio, line: tuple[Path, float], work: Path, n: int) -> list[sipp.SippResult]:
    """``n`` calls at once through the edge, each saying SAID and hanging up."""
    pcap, seconds = line
    scenario = sipp.proxied_call_scenario(sipp.play(pcap, seconds + 1.5))
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        runs = [
            pool.submit(sipp.run, scenario, work / f"call{i}", edge.sip, timeout=60)
            for i in range(n)
        ]
        return [r.result() for r in runs]


def wait_all_ended(engines: list[EngineProcess], timeout: float = 30) -> list[list[dict[str, Any]]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [calls_on(e) for e in engines]
        if all(c["state"] == "ended" for calls in found for c in calls):
            return found
        assert time.monotonic() < deadline, f"calls still live: {found}"
        time.sleep(0.3)


def test_calls_through_the_edge_spread_drain_and_fail_over(
    cluster: tuple[Kamailio, list[EngineProcess]], line: tuple[Path, float], tmp_path: Path
) -> None:
    edge, engines = cluster
    # Call-ID hashing spreads calls: a round of 8 all on one engine is 1 in 128, three
    # rounds in a row 1 in 2 million
    placed = 0
    for i in range(3):
        results = place(edge, line, tmp_path / f"spread{i}", 8)
        assert all(r.ok for r in results), [r.output + r.errors for r in results if not r.ok]
        placed += 8
        per_engine = wait_all_ended(engines)
        counts = [len(c) for c in per_engine]
        assert sum(counts) == placed, counts
        if min(counts) >= 1:
            break
    assert min(counts) >= 1, counts
    for calls in per_engine:
        for call in calls:
            # the caller's BYE came back through the edge along the Record-Route
            assert call["end_reason"] == "remote_closed", call
    # media went straight to the engine that answered: it heard the caller
    for engine, calls in zip(engines, per_engine, strict=True):
        detail = httpx.get(
            f"{engine.url}/api/v1/calls/{calls[0]['id']}", headers=engine.headers
        ).json()
        heard = " ".join(u["text"] for u in detail["transcript"] if u["speaker"] == "caller")
        assert speech.wer(SAID, heard) < 0.5, heard

    # a draining engine answers the edge's health checks 503: new calls go to the other
    # while its own call goes on, and it exits once that call is over
    wav = speech.piper_script([SAID], tmp_path / "long.wav")
    pcap, _, seconds = sipp.phone_pcap(wav, tmp_path / "long.pcap", repeat=5)  # ~17 s
    long_call = sipp.call_scenario(sipp.play(pcap, seconds))
    proc, base = sipp.start(long_call, tmp_path / "long", engines[1].sip, timeout=60)
    deadline = time.monotonic() + 10
    while not [c for c in calls_on(engines[1]) if c["state"] != "ended"]:
        assert time.monotonic() < deadline, "the long call did not start"
        time.sleep(0.2)
    r = httpx.post(f"{engines[1].url}/api/v1/node/drain", headers=engines[1].headers)
    assert r.status_code == 202, r.text
    time.sleep(3 * edge.ping)
    before = [len(calls_on(e)) for e in engines]
    results = place(edge, line, tmp_path / "drained", 4)
    assert all(r.ok for r in results), [r.output + r.errors for r in results if not r.ok]
    assert [len(calls_on(e)) for e in engines] == [before[0] + 4, before[1]]
    assert engines[1].proc is not None and engines[1].proc.poll() is None  # still serving it
    assert sipp.finish(proc, base).ok
    assert engines[1].proc.wait(30) == 0

    # started again, it answers 200 and takes calls again
    engines[1].start()
    time.sleep(3 * edge.ping)
    on_b = len(calls_on(engines[1]))
    for i in range(10):
        assert all(r.ok for r in place(edge, line, tmp_path / f"back{i}", 2))
        if len(calls_on(engines[1])) > on_b:
            break
    assert len(calls_on(engines[1])) > on_b

    # one engine dies: its health checks go unanswered, and every new call lands on the
    # other (a call sent to it before the edge noticed tries the other after FR_TIMER)
    engines[1].kill()
    time.sleep(3 * edge.ping + edge.fr_timer_ms / 1000)
    before = len(calls_on(engines[0]))
    results = place(edge, line, tmp_path / "failover", 4)
    assert all(r.ok for r in results), [r.output + r.errors for r in results if not r.ok]
    assert len(calls_on(engines[0])) == before + 4
