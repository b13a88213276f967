"""Admission by measured capacity through a real engine: a full node refuses new calls
with 503 and Retry-After over HTTP and SIP, and says why on /healthz and /metrics; a
node with room takes them."""

from __future__ import annotations

import asyncio
import re
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import sipp
from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FIXTURES = Path(__file__).parent / "fixtures"
CPU_REASON = re.compile(r"^cpu [0-9.]+% > 0\.01%$")


def wait_load(engine: EngineProcess, state: str, timeout: float = 20) -> dict[str, Any]:
    """/healthz's load, once its state is ``state`` with the signals measured."""
    deadline = time.monotonic() + timeout
    load: dict[str, Any] = {}
    while time.monotonic() < deadline:
        load = httpx.get(f"{engine.url}/healthz").json()["load"]
        if load["state"] == state and load["cpu"] is not None and load["loop_lag_p99_ms"]:
            return load
        time.sleep(0.2)
    raise AssertionError(f"load never {state}: {load}")


def rejected(metrics: str, reason: str) -> float:
    line = f'ccengine_offers_rejected_total{{reason="{reason}"}} '
    return sum(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith(line))


def check_busy(r: httpx.Response, reason: str | re.Pattern[str]) -> int:
    """A 503 problem naming ``reason``, with a sane Retry-After; the Retry-After."""
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    wait = int(r.headers["retry-after"])
    assert 5 <= wait <= 30
    body = r.json()
    assert body["title"] == "Engine busy" and body["retry_after"] == wait
    if isinstance(reason, str):
        assert body["detail"] == reason, body
    else:
        assert reason.match(body["detail"]), body
    return wait


@pytest.fixture(scope="module")
def full_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """An engine whose CPU threshold (0.01 % of the cores) its own idle ticking exceeds:
    measurably full as soon as the CPU meter has a second of samples."""
    proc = EngineProcess(
        tmp_path_factory.mktemp("full-engine"),
        CCENGINE_ADMISSION_MAX_CPU="0.0001",
        CCENGINE_SIP_TRUNKS='["127.0.0.1"]',
        CCENGINE_PRELOAD_LANGUAGES="[]",  # a refused call never needs a recognizer
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_a_full_node_refuses_offers_over_http_and_says_why(full_engine: EngineProcess) -> None:
    """Regression for admission by a fixed count only: a node whose CPU is over its
    threshold still took calls (and made every admitted call worse). Now an offer gets
    503 with Retry-After and the reason, outbound calls are refused before anyone is
    dialled, and /healthz and /metrics show the node full and why."""
    engine = full_engine
    load = wait_load(engine, "full")
    assert CPU_REASON.match(load["reason"]), load
    assert load["calls"] == 0 and load["limit"] == 64 and load["cpu"] > 0.0001
    offer = {"type": "offer", "sdp": (FIXTURES / "chromium_offer.sdp").read_text()}
    r = httpx.post(f"{engine.url}/api/v1/calls", json=offer, timeout=10)
    check_busy(r, CPU_REASON)
    # a call the engine would place: refused before the trunk is asked (this engine has
    # none, which would otherwise be a 409)
    r = httpx.post(
        f"{engine.url}/api/v1/calls/outbound",
        json={"to": "+15557654321"},
        headers=engine.headers,
        timeout=10,
    )
    check_busy(r, CPU_REASON)
    calls = httpx.get(f"{engine.url}/api/v1/calls", headers=engine.headers).json()["calls"]
    assert calls == []
    metrics = httpx.get(f"{engine.url}/metrics", headers=engine.headers).text
    assert rejected(metrics, "cpu") >= 2
    assert "ccengine_node_full 1.0" in metrics
    assert re.search(r'^ccengine_event_loop_lag_seconds_bucket\{le="0.001"\} [1-9]', metrics, re.M)
    assert 'ccengine_event_loop_lag_seconds_bucket{le="2.0"}' in metrics
    assert re.search(r"^ccengine_cpu_utilisation [0-9.e-]+$", metrics, re.M)
    assert "ccengine_recognition_backlog_seconds 0.0" in metrics


def test_a_full_node_answers_invites_503_with_retry_after(
    full_engine: EngineProcess, tmp_path: Path
) -> None:
    """A phone or carrier must hear "not now, ask again in N s" (RFC 3261 §20.33), not be
    rung and answered by a node that cannot carry the call."""
    engine = full_engine
    wait_load(engine, "full")
    before = rejected(httpx.get(f"{engine.url}/metrics", headers=engine.headers).text, "cpu")
    result = sipp.run(sipp.rejected_scenario(503), tmp_path / "sipp", engine.sip)
    assert result.ok, result.output + result.errors
    final = result.messages.split("SIP/2.0 503", 1)[1].split("\n\n", 1)[0]
    retry = re.search(r"^Retry-After: (\d+)\s*$", final, re.M | re.I)
    assert retry and 5 <= int(retry.group(1)) <= 30, final
    assert re.search(r'^Warning: 399 ccengine "cpu [0-9.]+% > 0\.01%"', final, re.M), final
    assert "180 Ringing" not in result.messages  # refused before ringing
    after = rejected(httpx.get(f"{engine.url}/metrics", headers=engine.headers).text, "cpu")
    assert after == before + 1


def silence(path: Path, seconds: float) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(b"\0\0" * int(48000 * seconds))
    return path


async def test_a_node_with_room_takes_calls_and_the_limit_is_still_a_hard_cap(
    tmp_path: Path,
) -> None:
    """Default thresholds on an idle node: it is "ok" and takes a call. The configured
    call limit still holds as a hard cap on top of the measured signals: at it, the next
    offer gets 503 naming the limit, with Retry-After 30."""
    engine = EngineProcess(tmp_path / "engine", CCENGINE_MAX_CONCURRENT_CALLS="1").start()
    caller = Caller(engine.url, silence(tmp_path / "quiet.wav", 20))
    try:
        load = await asyncio.to_thread(wait_load, engine, "ok")
        assert load["reason"] is None and load["cpu"] < 0.9
        # measured, but not bounded here: how late an idle loop wakes depends on what else
        # runs on the box (the suite's other worker took it to 53 ms once); the verdict
        # above is the test, and bench.capacity measures the lag
        assert load["loop_lag_p99_ms"] >= 0 and load["backlog_s"] == 0.0
        await caller.dial()  # raises unless 201
        async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
            health = (await http.get("/healthz")).json()
            assert health["status"] == "ok" and health["active_calls"] == 1
            assert health["load"]["state"] == "full"
            assert health["load"]["reason"] == "1 calls: the configured limit"
            offer = {"type": "offer", "sdp": (FIXTURES / "chromium_offer.sdp").read_text()}
            r = await http.post("/api/v1/calls", json=offer)
            assert check_busy(r, "1 calls: the configured limit") == 30
            metrics = (await http.get("/metrics", headers=engine.headers)).text
            assert rejected(metrics, "limit") == 1
            assert (
                await http.post(f"/api/v1/calls/{caller.call_id}/hangup", headers=engine.headers)
            ).status_code == 202
    finally:
        await caller.close()
        engine.stop()
