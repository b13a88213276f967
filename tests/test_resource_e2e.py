"""Resource exhaustion against a real engine process (issue 12): idle and trickling HTTP
connections. The limits themselves are tested in-process
(tests/test_connection_limits.py); this proves the wiring."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.engine_proc import EngineProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """An engine with a 1 s request deadline and 20 connections per address."""
    proc = EngineProcess(
        tmp_path_factory.mktemp("strict"),
        CCENGINE_HTTP_REQUEST_TIMEOUT="1",
        CCENGINE_HTTP_MAX_CONNECTIONS_PER_ADDRESS="20",
        CCENGINE_SIP_ENABLED="false",
        CCENGINE_PRELOAD_LANGUAGES="[]",
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


async def read_until_closed(reader: asyncio.StreamReader, t0: float) -> tuple[bytes, float]:
    async with asyncio.timeout(5):
        data = await reader.read()
    return data, time.monotonic() - t0


async def test_idle_http_connections_are_capped_and_closed(strict: EngineProcess) -> None:
    """Slowloris: 1,100 idle connections took every file descriptor; uvicorn keeps a
    connection that never sends a request. Now one address holds at most 20 (more get
    429 at once), and a connection that has not sent a whole request within the
    deadline gets 408 and is closed; another address is served all along."""
    t0 = time.monotonic()
    conns = [await asyncio.open_connection("127.0.0.1", strict.port) for _ in range(50)]
    try:
        # meanwhile, someone else
        other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=strict.url, transport=other, timeout=5) as http:
            assert (await http.get("/healthz")).status_code == 200
        results = await asyncio.gather(*(read_until_closed(r, t0) for r, _ in conns))
    finally:
        for _, writer in conns:
            writer.close()
    refused = [(d, t) for d, t in results if d.startswith(b"HTTP/1.1 429 ")]
    timed_out = [(d, t) for d, t in results if d.startswith(b"HTTP/1.1 408 ")]
    assert (len(refused), len(timed_out)) == (30, 20), [d[:20] for d, _ in results]
    assert all(t < 0.9 for _, t in refused)
    assert all(b"retry-after: 5" in d and b"too many connections from your address" in d
               for d, _ in refused)  # fmt: skip
    assert all(0.9 <= t < 3 for _, t in timed_out)
    async with strict.http() as http:  # the address is served again
        metrics = (await http.get("/metrics")).text
    assert 'ccengine_connections_refused_total{listener="http",reason="address"} 30.0' in metrics


async def test_a_trickled_request_is_cut_off(strict: EngineProcess) -> None:
    """Headers or a body sent a byte at a time held a connection (and, for a body, a
    request) for as long as the sender liked: the whole request has the deadline."""
    t0 = time.monotonic()
    head_r, head_w = await asyncio.open_connection("127.0.0.1", strict.port)
    body_r, body_w = await asyncio.open_connection("127.0.0.1", strict.port)
    head_w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    body_w.write(
        b"POST /api/v1/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )

    async def drip() -> None:
        for _ in range(30):
            await asyncio.sleep(0.1)
            for w in (head_w, body_w):
                if not w.is_closing():
                    w.write(b"a")

    dripping = asyncio.create_task(drip())
    try:
        (head, t_head), (_body, t_body) = await asyncio.gather(
            read_until_closed(head_r, t0), read_until_closed(body_r, t0)
        )
    finally:
        dripping.cancel()
        head_w.close()
        body_w.close()
    assert head.startswith(b"HTTP/1.1 408 ") and 0.9 <= t_head < 2.5
    assert t_body < 2.5
    async with httpx.AsyncClient(base_url=strict.url, timeout=5) as http:
        # a client that keeps its connection and sends whole requests is not cut off
        for _ in range(3):
            assert (await http.get("/healthz")).status_code == 200
            await asyncio.sleep(0.6)
