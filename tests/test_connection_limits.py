"""Connections, in number and in time (issue 12, item 3: slowloris): the per-address,
total and file-descriptor caps, the open-file limit raised at start, and SIP over TCP
on loopback sockets against the real transport (HTTP is tested against a real engine
in tests/test_resource_e2e.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from media.netlimits import ConnectionCaps, raise_fd_limit
from media.sip.endpoint import SipEndpoint
from media.sip.transport import SipTransport, StreamFramer, TcpLimits

PHONE_SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


# -- item 3: connections, in number and in time ------------------------------------------


def test_connection_caps_per_address_in_all_and_descriptors() -> None:
    caps = ConnectionCaps(
        2, 3, fd_reserve=100, exempt=lambda h: h == "10.0.0.9", limit=lambda: 1000
    )
    assert caps.take("10.0.0.1", fd=10) is None
    assert caps.take("10.0.0.1", fd=11) is None
    assert caps.take("10.0.0.1", fd=12) == "address"
    assert caps.take("10.0.0.9", fd=13) is None
    assert caps.take("10.0.0.2", fd=14) == "total"
    caps.release("10.0.0.1")
    assert caps.take("10.0.0.2", fd=950) == "descriptors"  # 50 left, 100 kept
    assert caps.take("10.0.0.2", fd=15) is None
    for host in ("10.0.0.1", "10.0.0.9", "10.0.0.2"):
        caps.release(host)
    assert caps.open == 0 and caps.addresses == 0
    assert dict(caps.refused) == {"address": 1, "total": 1, "descriptors": 1}


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    """1,100 idle connections exhausted the descriptors at a soft limit of 1,024 while
    the hard limit allowed far more: the engine lifts its soft limit at start."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 64:
        pytest.skip("no finite hard limit to raise to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        assert raise_fd_limit() == (64, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def options(branch: str) -> bytes:
    return (
        f"OPTIONS sip:support@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.2:5099;branch=z9hG4bK{branch}\r\n"
        f"From: <sip:probe@127.0.0.2>;tag=p1\r\nTo: <sip:support@127.0.0.1>\r\n"
        f"Call-ID: {branch}@127.0.0.2\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@contextlib.asynccontextmanager
async def sip_tcp(limits: TcpLimits) -> AsyncIterator[int]:
    transport = SipTransport(SipEndpoint("127.0.0.1", 0), lambda _ev: None, limits)
    port = await transport.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await transport.stop()


async def connect(
    port: int, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sent before it closed the connection, which it must do in time."""
    async with asyncio.timeout(seconds):
        return await reader.read()


async def test_sip_tcp_connections_are_capped_per_address() -> None:
    """SIP over TCP had no per-address cap: one host could take every descriptor. Past
    the cap a new connection is closed at once; another address is still served."""
    async with sip_tcp(TcpLimits(per_address=5, message_timeout=5)) as port:
        held = [await connect(port) for _ in range(5)]
        refused = [await connect(port) for _ in range(3)]
        try:
            for reader, _ in refused:
                assert await closed_within(reader, 2) == b""
            reader, writer = await connect(port, "127.0.0.2")
            writer.write(options("other"))
            async with asyncio.timeout(3):
                assert (await reader.readline()).startswith(b"SIP/2.0 ")
            writer.close()
        finally:
            for _, writer in held + refused:
                writer.close()


async def test_sip_tcp_messages_and_silence_have_deadlines() -> None:
    """SIP over TCP gave a message 600 s to arrive: a byte now and then held a
    connection for good. Now a connection that says nothing, or trickles a message,
    is closed after message_timeout; one that goes silent after a message, after
    idle_timeout; CRLF keep-alives (RFC 5626) keep it open and are answered."""
    async with sip_tcp(TcpLimits(message_timeout=0.6, idle_timeout=1.2)) as port:
        t0 = time.monotonic()
        silent, silent_w = await connect(port)
        trickle, trickle_w = await connect(port)
        idle, idle_w = await connect(port)
        alive, alive_w = await connect(port)
        try:
            idle_w.write(options("idle"))
            alive_w.write(options("alive"))
            trickled = options("trickle")

            async def drip() -> None:
                for byte in trickled[:60]:
                    trickle_w.write(bytes([byte]))
                    await asyncio.sleep(0.1)

            async def ping() -> None:
                for _ in range(6):
                    await asyncio.sleep(0.4)
                    alive_w.write(b"\r\n\r\n")

            dripping, pinging = asyncio.create_task(drip()), asyncio.create_task(ping())
            assert await closed_within(silent, 2) == b""
            assert await closed_within(trickle, 2) == b""
            assert time.monotonic() - t0 < 1.5
            dripping.cancel()
            said = await closed_within(idle, 3)
            assert said.startswith(b"SIP/2.0 200") and time.monotonic() - t0 >= 1.2
            await pinging
            said = await closed_within(alive, 3)  # 1.2 s after its last ping
            assert time.monotonic() - t0 > 3.0  # kept well past idle_timeout by its pings
            end = said.index(b"\r\n\r\n") + 4
            assert said.startswith(b"SIP/2.0 200") and said[end:] == b"\r\n" * 6  # pongs
        finally:
            for w in (silent_w, trickle_w, idle_w, alive_w):
                w.close()


def trickled(pad: int) -> float:
    """Seconds to feed a framer a header of ``pad`` bytes one byte at a time (the best
    of three)."""
    head = b"OPTIONS sip:a@b SIP/2.0\r\nX-Pad: " + b"a" * pad
    best = float("inf")
    for _ in range(3):
        framer = StreamFramer()
        t0 = time.perf_counter()
        for i in range(len(head)):
            framer.feed(head[i : i + 1])
        best = min(best, time.perf_counter() - t0)
        assert framer.partial
    return best


def test_the_framer_keeps_a_trickled_header_cheap() -> None:
    """A header trickled a byte at a time is searched once, not from its start per byte:
    ten times the header is about ten times the work, not a hundred (a whole message's
    worth, 64 KB, searched from the start per byte is 2 GB of searching)."""
    assert trickled(60_000) < 30 * trickled(6_000)
