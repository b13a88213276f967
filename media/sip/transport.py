"""The sockets around :class:`~media.sip.endpoint.SipEndpoint`: UDP and TCP on one port.

Everything the endpoint decides is sent from :meth:`SipTransport.flush`, which
also re-arms the one timer the endpoint needs and hands its events to the
application's callback (called synchronously, in order: a callback that needs
to wait starts its own task). TCP is framed by Content-Length (RFC 3261 §18.3);
a connection that sends garbage, no Content-Length, or more than a message's
worth of headers is closed, which affects nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import Callable

from media.sip.endpoint import Event, Peer, SipEndpoint
from media.sip.message import MAX_MESSAGE

log = logging.getLogger(__name__)

_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.I | re.M)
TCP_IDLE = 600.0  # a connection with no message for this long is closed


class SipTransport(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint, on_event: Callable[[Event], None]) -> None:
        self.endpoint = endpoint
        self._on_event = on_event
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._conns: dict[int, asyncio.StreamWriter] = {}
        self._ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen on UDP and TCP; port 0 picks a free port (the same for both)."""
        loop = asyncio.get_running_loop()
        for _ in range(20):
            udp, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
            bound = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(
                    self._serve_tcp, host, bound, limit=MAX_MESSAGE
                )
            except OSError:
                udp.close()
                if port:
                    raise
                continue
            self._udp = udp
            return int(bound)
        raise OSError("no free port for both UDP and TCP")

    def now(self) -> float:
        return time.monotonic()

    # -- UDP ---------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.endpoint.receive(data, Peer("UDP", addr[0], addr[1]), self.now())
        except Exception:
            # an exception escaping here would close the socket: SIP for everyone
            log.exception("SIP message from %s:%s could not be handled", *addr[:2])
        self.flush()

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP UDP error: %s", exc)

    # -- TCP ---------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(self._ids)
        host, port = writer.get_extra_info("peername")[:2]
        self._conns[conn] = writer
        peer = Peer("TCP", host, port, conn)
        try:
            while True:
                data = await asyncio.wait_for(_read_message(reader), TCP_IDLE)
                if data is None:
                    break
                try:
                    self.endpoint.receive(data, peer, self.now())
                except Exception:
                    log.exception("SIP message from %s:%s could not be handled", host, port)
                self.flush()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            log.info("SIP TCP connection %s:%s closed: %s", host, port, exc or type(exc).__name__)
        finally:
            self._conns.pop(conn, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _send_tcp(self, peer: Peer, data: bytes) -> None:
        """To a TCP peer whose connection is gone (a BYE after it hung up the socket)."""
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(peer.host, peer.port), 5)
        except (OSError, TimeoutError) as exc:
            log.info("SIP TCP to %s:%s failed: %s", peer.host, peer.port, exc)
            return
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    # -- the endpoint's output ---------------------------------------------------------

    def flush(self) -> None:
        for t in self.endpoint.transmit():
            if t.peer.transport == "UDP":
                if self._udp is not None:
                    self._udp.sendto(t.data, (t.peer.host, t.peer.port))
                continue
            writer = self._conns.get(t.peer.conn or 0)
            if writer is not None and not writer.is_closing():
                writer.write(t.data)
            else:
                task = asyncio.create_task(self._send_tcp(t.peer, t.data))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        for ev in self.endpoint.events():
            try:
                self._on_event(ev)
            except Exception:
                log.exception("SIP event handler failed on %r", ev)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.endpoint.next_timer()
        if at is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, at - self.now())
            self._timer = loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.endpoint.handle_timer(self.now())
        self.flush()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._udp is not None:
            self._udp.close()
        for w in list(self._conns.values()):
            w.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tcp.wait_closed(), 2)
        for task in list(self._tasks):
            task.cancel()


async def _read_message(reader: asyncio.StreamReader) -> bytes | None:
    """One message from a stream; None at a clean end of stream."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise
            return None
        except asyncio.LimitOverrunError:
            raise ValueError("headers larger than a SIP message may be") from None
        if head.strip():
            break  # skip CRLF keep-alives between messages
    m = _CONTENT_LENGTH.search(head)
    if m is None:
        raise ValueError("a message over TCP needs Content-Length")
    length = int(m.group(1))
    if length + len(head) > MAX_MESSAGE:
        raise ValueError("message too large")
    body = await reader.readexactly(length) if length else b""
    return head + body
