"""Resource exhaustion against a real engine process (issue 12): a burst of offers that
never send media, idle and trickling HTTP connections, the language lookup that
remembered and logged whatever it was asked, and audio lost past capacity. The limits
themselves are tested in-process (tests/test_manager_limits.py,
test_connection_limits.py, test_lost_audio.py); this proves the wiring and states the
memory bound (README, "Resource limits")."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from engine.config import Settings
from tests import sipp, speech
from tests.engine_proc import EngineProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CHROMIUM = (Path(__file__).parent / "fixtures" / "chromium_offer.sdp").read_text()
# The stated bound (README): 100 offers that never send media, from one address, grow
# the engine's memory (its process and its recognition workers, PSS) by less than this,
# and once they have expired it is back within RETURN_MB of where it was.
GROWTH_MB = 60
RETURN_MB = 20


def default(name: str) -> str:
    return str(Settings.model_fields[name].default)


def memory_mb(engine: EngineProcess) -> float:
    """Proportional set size of the engine and its children (recognition workers)."""
    assert engine.proc is not None
    root = psutil.Process(engine.proc.pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


async def idle(http: httpx.AsyncClient, within: float) -> None:
    deadline = time.monotonic() + within
    while (await http.get("/healthz")).json()["active_calls"]:
        assert time.monotonic() < deadline, "calls without media did not end"
        await asyncio.sleep(0.2)


async def test_media_less_offers_are_capped_and_their_memory_returns(tmp_path: Path) -> None:
    """Gate: 100 offers that never send media took an engine from 0.6 to 5.6 GB (a
    recognizer each, at once), a second burst to 8.7 GB, and it never came back. Now,
    at the default settings: past the per-address cap the offers get 429 with
    Retry-After; those taken hold no recognizer, expire after the media timeout, and
    the memory stays under the stated bound and returns; a second burst does the same."""
    engine = EngineProcess(
        tmp_path / "engine",
        CCENGINE_MEDIA_TIMEOUT="3",
        CCENGINE_SIP_ENABLED="false",
        CCENGINE_MAX_PENDING_OFFERS_PER_ADDRESS=default("max_pending_offers_per_address"),
        CCENGINE_MAX_PENDING_OFFERS=default("max_pending_offers"),
    ).start()
    cap = int(default("max_pending_offers_per_address"))
    limits = httpx.Limits(max_connections=100)
    try:
        async with httpx.AsyncClient(base_url=engine.url, timeout=60, limits=limits) as http:

            async def burst(n: int) -> list[httpx.Response]:
                offer = {"type": "offer", "sdp": CHROMIUM}
                return await asyncio.gather(
                    *(http.post("/api/v1/calls", json=offer) for _ in range(n))
                )

            await burst(cap)  # warm-up: what the first calls load once, for good
            await idle(http, 15)
            baseline = memory_mb(engine)
            for round_ in (1, 2):
                answers = await burst(100)
                assert Counter(r.status_code for r in answers) == {201: cap, 429: 100 - cap}
                refused = next(r for r in answers if r.status_code == 429)
                assert refused.headers["content-type"] == "application/problem+json"
                assert refused.headers["retry-after"] == "3"
                assert "offers from your address are still waiting" in refused.json()["detail"]
                peak = memory_mb(engine)
                assert peak - baseline < GROWTH_MB, (round_, baseline, peak)
                await idle(http, 15)
                after = memory_mb(engine)
                print(f"burst {round_}: {baseline:.0f} MB, peak {peak:.0f}, after {after:.0f}")
                assert after - baseline < RETURN_MB, (round_, baseline, peak, after)
            metrics = (await http.get("/metrics", headers=engine.headers)).text
            assert (
                f'ccengine_offers_rejected_total{{reason="pending_address"}} {2 * (100 - cap)}.0'
                in metrics
            )
            assert f'ccengine_calls_ended_total{{reason="no_media"}} {3 * cap}.0' in metrics
    finally:
        engine.stop()


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


async def test_language_lookups_are_validated_and_not_logged(strict: EngineProcess) -> None:
    """``/api/v1/models?language=`` remembered every value forever and logged each at
    WARNING; a CRLF in one forged a log line. Now a value that is no language tag, or
    too many of them, is 422 naming the parameter, and lookups are not logged."""
    async with strict.http(timeout=10) as http:
        for bad in ["en\r\nWARNING engine: forged", "e" * 5000, "en-" + "x" * 20, "12"]:
            r = await http.get("/api/v1/models", params={"language": bad})
            assert r.status_code == 422, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["errors"][0]["field"].startswith("query.language")
        r = await http.get("/api/v1/models", params=[("language", "en")] * 17)
        assert r.status_code == 422
        log_size = strict.log.stat().st_size
        for i in range(100):
            language = "q" + chr(97 + i // 26) + chr(97 + i % 26)  # qaa, qab... (private use)
            r = await http.get("/api/v1/models", params={"language": language})
            assert r.status_code == 200 and r.json()[0]["backend"] is None
    logged = strict.log.read_bytes()[log_size:]
    assert b"speech for" not in logged
    assert b"\nWARNING engine: forged" not in strict.log.read_bytes()


async def test_concurrent_offers_get_no_more_calls_than_the_limit(tmp_path: Path) -> None:
    """Replayed from outside: 20 offers at once against a limit of 4 all got 201 (the
    limit was read before an await and the call counted after it). Now 4 get a call
    and the rest 503 with Retry-After, and the node holds 4 calls."""
    engine = EngineProcess(
        tmp_path / "engine",
        CCENGINE_MAX_CONCURRENT_CALLS="4",
        CCENGINE_MEDIA_TIMEOUT="30",
        CCENGINE_SIP_ENABLED="false",
    ).start()
    try:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=engine.url, timeout=60, limits=limits) as http:
            offer = {"type": "offer", "sdp": CHROMIUM}
            answers = await asyncio.gather(
                *(http.post("/api/v1/calls", json=offer) for _ in range(20))
            )
            codes = Counter(r.status_code for r in answers)
            assert codes == {201: 4, 503: 16}, codes
            refused = next(r for r in answers if r.status_code == 503)
            assert refused.headers["retry-after"]
            assert (await http.get("/healthz")).json()["active_calls"] == 4
    finally:
        engine.stop()


async def test_sip_tcp_connections_are_capped_and_trickles_cut_off(tmp_path: Path) -> None:
    """Replayed from outside against the engine's own SIP port: one address held as many
    TCP connections as it liked, each for 600 s a message. Now past the per-address cap
    a connection is closed at once, and a message trickled a byte at a time is cut off
    at the message deadline, while a whole message is still answered."""
    from tests.test_connection_limits import closed_within, connect, options

    engine = EngineProcess(
        tmp_path / "engine",
        CCENGINE_SIP_TCP_MAX_CONNECTIONS_PER_ADDRESS="5",
        CCENGINE_SIP_TCP_MESSAGE_TIMEOUT="1",
        CCENGINE_PRELOAD_LANGUAGES="[]",
    ).start()
    held: list[asyncio.StreamWriter] = []
    try:
        port = engine.sip_port
        pairs = [await connect(port) for _ in range(5)]
        held = [w for _, w in pairs]
        extra_r, extra_w = await connect(port)
        held.append(extra_w)
        assert await closed_within(extra_r, 3) == b""  # the sixth from one address
        trickle_r, trickle_w = pairs[0]
        t0 = time.monotonic()
        for byte in options("trickle")[:30]:
            trickle_w.write(bytes([byte]))
            await asyncio.sleep(0.1)
            if trickle_r.at_eof():
                break
        await closed_within(trickle_r, 3)
        assert time.monotonic() - t0 < 3.5
        # the silent ones were closed at the same deadline, so the address may connect again
        whole_r, whole_w = await connect(port)
        held.append(whole_w)
        whole_w.write(options("whole"))
        async with asyncio.timeout(5):
            assert (await whole_r.readline()).startswith(b"SIP/2.0 ")
    finally:
        for writer in held:
            writer.close()
        engine.stop()


# -- item 5: audio lost past capacity ----------------------------------------------------

LOSS_REASON = re.compile(r"^audio lost ([0-9.]+)% > 5%$")
LOCAL_LOSSES = ("late", "queue", "recognizer")
STALL = 5.0  # s the engine's event loop is stopped: a node that cannot keep up


def health_when(
    engine: EngineProcess, ready: Callable[[dict[str, Any]], bool], within: float
) -> dict[str, Any]:
    """/healthz once ``ready`` says so."""
    deadline = time.monotonic() + within
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = httpx.get(f"{engine.url}/healthz", timeout=5).json()
        if ready(health):
            return health
        time.sleep(0.1)
    raise AssertionError(f"not within {within} s: {health}")


def counters(engine: EngineProcess) -> dict[str, float]:
    """The loss and refusal counters on /metrics, by sample name and labels."""
    text = httpx.get(f"{engine.url}/metrics", headers=engine.headers, timeout=5).text
    return {
        name: float(value)
        for name, value in (ln.rsplit(" ", 1) for ln in text.splitlines())
        if name.startswith(("ccengine_frames_processed_total", "ccengine_frames_lost_total",
                            "ccengine_udp_receive_drops_total", "ccengine_offers_rejected_total"))
    }  # fmt: skip


def lost_here(c: dict[str, float]) -> float:
    """Frames lost on the node itself: what admission reads (engine/capacity.py)."""
    return sum(c[f'ccengine_frames_lost_total{{reason="{r}"}}'] for r in LOCAL_LOSSES) + c.get(
        "ccengine_udp_receive_drops_total", 0.0
    )


@pytest.mark.timeout(90)
def test_audio_lost_past_capacity_is_counted_and_refuses_new_calls(tmp_path: Path) -> None:
    """Issue 12 item 5, replayed against a real engine: past capacity it still answered
    201 while 26-66 % of caller audio went unanalysed, and every drop counter stayed at
    0. Three phones talk; the engine's event loop is stopped for 5 s (SIGSTOP: exactly
    what a loop that cannot keep up looks like to its callers) and let go. Now the
    audio it skipped to catch up is counted at once (``late``), /healthz says the node
    is full because of it, a new offer and a new INVITE get 503 with Retry-After and the
    reason (counted as ``loss``), the three calls already up go on to their own
    hang-up, and once the loss is out of the 5 s window the node takes calls again.
    The other admission signals are set out of reach, so only the loss can refuse."""
    from tests.test_admission_e2e import check_busy
    from tests.test_sip_e2e import wait_ended

    wav = speech.piper_script(speech.CALM_SCRIPT, tmp_path / "calm48.wav")
    pcap, _, seconds = sipp.phone_pcap(wav, tmp_path / "calm.pcap", repeat=2)
    talk = 22.0  # s each phone talks before it hangs up: past the stall and the recovery
    assert seconds > talk  # speech all along, so the loss window always has audio in it
    engine = EngineProcess(
        tmp_path / "engine",
        CCENGINE_SIP_TRUNKS='["127.0.0.1"]',
        CCENGINE_IVR_PROMPT="",
        CCENGINE_ADMISSION_MAX_FRAME_LOSS="0.05",
        # the stall is also loop lag and, once over, a recognition backlog: out of reach
        CCENGINE_ADMISSION_MAX_LOOP_LAG_MS="1000000",
        CCENGINE_ADMISSION_MAX_BACKLOG_S="1000000",
        CCENGINE_ADMISSION_MAX_CPU="1",
    ).start()
    assert engine.proc is not None
    pid = engine.proc.pid
    phones = [
        sipp.start(sipp.call_scenario(sipp.play(pcap, talk), caller=f"1555123000{i}"),
                   tmp_path / f"phone{i}", engine.sip)
        for i in range(3)
    ]  # fmt: skip
    invite: list[tuple[subprocess.Popen[str], Path]] = []
    try:
        before = health_when(
            engine,
            lambda h: h["active_calls"] == 3 and h["load"]["audio_loss"] == 0.0,
            within=20,
        )
        assert before["load"]["state"] == "ok", before
        assert lost_here(counters(engine)) == 0
        calls = httpx.get(f"{engine.url}/api/v1/calls", headers=engine.headers).json()["calls"]
        up = {c["id"] for c in calls}
        assert len(up) == 3

        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(STALL)
        finally:
            os.kill(pid, signal.SIGCONT)
        full = health_when(engine, lambda h: h["load"]["state"] == "full", within=3)
        seen = counters(engine)
        load = full["load"]
        assert full["active_calls"] == 3
        match = LOSS_REASON.match(load["reason"] or "")
        assert match, load
        assert float(match.group(1)) == pytest.approx(100 * load["audio_loss"], abs=1)
        # counted as it was lost, and as the node's own doing: over a second of each
        # caller's audio skipped to catch up (up to the stall less MAX_BEHIND, 3 s)
        late = seen['ccengine_frames_lost_total{reason="late"}']
        assert late >= 3 * 50, seen
        assert lost_here(seen) >= late

        # a new caller, by phone and in-app, at once: refused, with the reason
        invite.append(sipp.start(sipp.rejected_scenario(503, caller="15559990000"),
                                 tmp_path / "refused", engine.sip))  # fmt: skip
        offer = {"type": "offer", "sdp": CHROMIUM}
        check_busy(httpx.post(f"{engine.url}/api/v1/calls", json=offer, timeout=10), LOSS_REASON)
        refused = sipp.finish(*invite[0], timeout=30)
        assert refused.ok, refused.output + refused.errors
        final = refused.messages.split("SIP/2.0 503", 1)[1].split("\n\n", 1)[0]
        retry = re.search(r"^Retry-After: (\d+)\s*$", final, re.M | re.I)
        assert retry and 5 <= int(retry.group(1)) <= 30, final
        assert re.search(r'^Warning: 399 ccengine "audio lost [0-9.]+% > 5%"', final, re.M), final
        assert counters(engine)['ccengine_offers_rejected_total{reason="loss"}'] == 2

        # the calls already up were not touched
        calls = httpx.get(f"{engine.url}/api/v1/calls", headers=engine.headers).json()["calls"]
        assert {c["id"] for c in calls if c["state"] != "ended"} == up, calls

        # the loss leaves the 5 s window: the node takes calls again
        # (measured while the phones still talk: with no audio there is no fraction)
        room = health_when(
            engine,
            lambda h: h["load"]["state"] == "ok" and h["load"]["audio_loss"] is not None,
            within=10,
        )
        assert room["load"]["audio_loss"] < 0.04, room
        r = httpx.post(f"{engine.url}/api/v1/calls", json=offer, timeout=10)
        assert r.status_code == 201, r.text

        for proc, base in phones:  # each phone talked to its end and hung up itself
            result = sipp.finish(proc, base, timeout=30)
            assert result.ok, result.output + result.errors
        for call_id in up:
            detail = wait_ended(engine, call_id, 10)
            assert detail["end_reason"] == "remote_closed", detail
        print(f"stalled {STALL:g} s: {load['reason']}, {late:.0f} frames late; {seen}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # a failed assertion must not leave it stopped
        for proc, _ in [*phones, *invite]:
            if proc.stdout is not None and not proc.stdout.closed:  # not finished: failed
                proc.kill()
                proc.communicate()
        engine.stop()
