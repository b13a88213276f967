"""Draining a real engine process with SIGTERM, as Kubernetes ends a pod: the journey
the in-process tests (tests/test_drain.py) cannot prove, the signal and the exit."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller
from tests.test_admission_e2e import silence
from tests.test_drain import _sip, check_draining, offer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def sip_options(engine: EngineProcess) -> str:
    """The status line of the engine's answer to an OPTIONS ping."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        branch = f"z9hG4bK{time.monotonic_ns()}"
        ping = _sip("OPTIONS", sock.getsockname()[1], branch, branch)
        sock.sendto(ping, ("127.0.0.1", engine.sip_port))
        return sock.recv(65535).decode().split("\r\n", 1)[0]


async def test_sigterm_drains_the_node_and_it_exits_0_when_its_call_ends(tmp_path: Path) -> None:
    """Regression for SIGTERM ending every call at once (``engine_shutdown``): Kubernetes
    sends it on every rollout and scale-down. Now the node drains: /readyz and SIP
    OPTIONS answer 503, a new call gets 503 with Retry-After, /healthz stays 200, and the
    call in progress goes on; when it is hung up the process exits by itself, code 0."""
    engine = EngineProcess(tmp_path / "engine").start()
    caller = Caller(engine.url, silence(tmp_path / "quiet.wav", 60))
    try:
        async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
            assert (await http.get("/readyz")).status_code == 200
            assert await asyncio.to_thread(sip_options, engine) == "SIP/2.0 200 OK"
            await caller.dial()
            assert (await http.get("/healthz")).json()["active_calls"] == 1

            assert engine.proc is not None
            engine.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while (await http.get("/readyz")).status_code != 503:
                assert time.monotonic() < deadline, "/readyz never said 503"
                await asyncio.sleep(0.1)
            health = await http.get("/healthz")
            assert health.status_code == 200 and health.json()["draining"] is True
            check_draining(await http.post("/api/v1/calls", json=offer()))
            assert (await asyncio.to_thread(sip_options, engine)).startswith("SIP/2.0 503")
            node = (await http.get("/api/v1/node", headers=engine.headers)).json()
            assert node["by"] == "SIGTERM" and node["calls_left"] == 1

            # the call goes on: a few seconds later it is still up, and so is the node
            await asyncio.sleep(3)
            assert engine.proc.poll() is None and not caller.ended.is_set()
            record = await http.get(f"/api/v1/calls/{caller.call_id}", headers=engine.headers)
            assert record.json()["state"] not in ("ended",), record.text
            assert not [e for e in caller.events if e["type"] == "call.ended"]
            r = await http.post(f"/api/v1/calls/{caller.call_id}/hangup", headers=engine.headers)
            assert r.status_code == 202
        await asyncio.wait_for(caller.ended.wait(), 10)
        assert (await caller.wait_for("call.ended"))["reason"] == "hangup"
        code = await asyncio.to_thread(engine.proc.wait, 15)
        assert code == 0, engine.log.read_text()[-3000:]
        log = engine.log.read_text()
        assert "draining (SIGTERM)" in log and "drained: no calls left" in log
        assert "engine_shutdown" not in log
    finally:
        await caller.close()
        engine.stop()
