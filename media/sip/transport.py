"""The sockets around :class:`~media.sip.endpoint.SipEndpoint`: UDP and TCP on one port.

Everything the endpoint decides is sent from :meth:`SipTransport.flush`, which
also re-arms the one timer the endpoint needs and hands its events to the
application's callback (called synchronously, in order: a callback that needs
to wait starts its own task). TCP is framed by Content-Length (RFC 3261 §18.3);
a connection that sends garbage, no Content-Length, or more than a message's
worth of headers is closed, which affects nobody else.

A TCP connection is bounded in time and number (:class:`TcpLimits`), so idle or
trickling connections (slowloris) cannot take every file descriptor: a message must
arrive whole within ``message_timeout`` of its first byte (and a new connection's
first message within ``message_timeout`` of connecting); between messages a
connection may stay silent for ``idle_timeout`` (a CRLF keep-alive counts, and is
answered, RFC 5626 §4.4.1); one address may hold ``per_address`` connections and all
of them together ``total``, and none is taken when the process is short of file
descriptors (``media.netlimits``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from media.netlimits import ConnectionCaps, Refusal, describe
from media.sip.endpoint import Event, Peer, SipEndpoint
from media.sip.message import MAX_MESSAGE

log = logging.getLogger(__name__)

_CONTENT_LENGTH = re.compile(
    rb"^(?:content-length|l)[ \t]*:[ \t]*(\d{1,10})[ \t]*\r?$", re.I | re.M
)
READ_SIZE = 65536
MAX_UNREAD = 4 * MAX_MESSAGE  # bytes we sent that a TCP peer has not read yet


class FramingError(ValueError):
    """The stream is not SIP framed as RFC 3261 §18.3 says: the connection is closed."""


class StreamFramer:
    """SIP messages out of a TCP byte stream, sans-IO: bytes in (:meth:`feed`), whole
    messages out. Content-Length frames each one. CRLFs before a message are keep-alives
    (RFC 5626 §3.5.1); each double CRLF is a ping, counted in ``pings`` for the
    transport to answer with a single CRLF (the pong)."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._scanned = 0  # bytes of the buffer searched for the end of headers already
        self._total: int | None = None  # the length of the message begun, once known
        self._crlfs = 0
        self.pings = 0

    @property
    def partial(self) -> bool:
        """A message has begun and not yet ended."""
        return bool(self._buf) and self._buf != b"\r"

    def feed(self, data: bytes) -> list[bytes]:
        """The messages ``data`` completes; FramingError when the stream is broken."""
        self._buf += data
        out: list[bytes] = []
        while True:
            if self._total is None:
                self._skip_keepalives()
                if not self._buf:
                    return out
                # a trickled header is searched once, not again from the start per byte
                end = self._buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
                if end < 0:
                    self._scanned = len(self._buf)
                    if len(self._buf) > self.limit:
                        raise FramingError("headers larger than a SIP message may be")
                    return out
                m = _CONTENT_LENGTH.search(bytes(self._buf[: end + 4]))
                if m is None:
                    raise FramingError("a message over TCP needs Content-Length")
                self._total = end + 4 + int(m.group(1))
                if self._total > self.limit:
                    raise FramingError("message too large")
            if len(self._buf) < self._total:
                return out
            out.append(bytes(self._buf[: self._total]))
            del self._buf[: self._total]
            self._total = None
            self._scanned = 0

    def _skip_keepalives(self) -> None:
        if not self._buf.startswith(b"\r\n"):
            return
        n = 0
        while self._buf.startswith(b"\r\n", n):
            n += 2
        del self._buf[:n]
        self._scanned = 0
        self._crlfs += n // 2
        self.pings += self._crlfs // 2
        self._crlfs %= 2
        if self._buf:
            self._crlfs = 0  # a message follows: a lone CRLF before it is no ping

    def take_pings(self) -> int:
        pings, self.pings = self.pings, 0
        return pings


@dataclass(frozen=True)
class TcpLimits:
    """How long and how many: see the module's docstring."""

    message_timeout: float = 10.0
    idle_timeout: float = 600.0
    per_address: int = 16
    total: int = 1024
    fd_reserve: int = 256
    exempt: Callable[[str], bool] = lambda _host: False
    on_refused: Callable[[Refusal], None] | None = None


class SipTransport(asyncio.DatagramProtocol):
    def __init__(
        self,
        endpoint: SipEndpoint,
        on_event: Callable[[Event], None],
        limits: TcpLimits | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._on_event = on_event
        self.limits = limits or TcpLimits()
        self.caps = ConnectionCaps(
            self.limits.per_address,
            self.limits.total,
            fd_reserve=self.limits.fd_reserve,
            exempt=self.limits.exempt,
            on_refused=self.limits.on_refused,
        )
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
        host, port = writer.get_extra_info("peername")[:2]
        sock = writer.get_extra_info("socket")
        refusal = self.caps.take(host, sock.fileno() if sock is not None else -1)
        if refusal is not None:
            # no SIP answer: there is no request yet to answer, and reading one would
            # hold the descriptor longer than the refusal is worth
            log.debug("SIP TCP connection from %s:%s refused: %s", host, port, describe(refusal))
            writer.close()
            return
        conn = next(self._ids)
        self._conns[conn] = writer
        peer = Peer("TCP", host, port, conn)
        try:
            await self._read_messages(reader, writer, peer)
        except (TimeoutError, ConnectionError, FramingError) as exc:
            log.info("SIP TCP connection %s:%s closed: %s", host, port, exc or type(exc).__name__)
        finally:
            self._conns.pop(conn, None)
            self.caps.release(host)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read_messages(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
        """Until the peer closes: TimeoutError when a message takes longer than
        ``message_timeout`` or the connection is silent for ``idle_timeout``."""
        framer = StreamFramer()
        limits = self.limits
        begun = self.now()  # a new connection owes its first message at once
        first = True
        last_heard = begun
        while True:
            if first or framer.partial:
                deadline, what = begun + limits.message_timeout, "message"
            else:
                deadline, what = last_heard + limits.idle_timeout, "idle"
            try:
                async with asyncio.timeout(max(0.0, deadline - self.now())):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                raise TimeoutError(
                    f"a message took over {limits.message_timeout:g} s"
                    if what == "message"
                    else f"silent for {limits.idle_timeout:g} s"
                ) from None
            if not data:
                return
            now = self.now()
            was_partial = framer.partial
            messages = framer.feed(data)
            if pings := framer.take_pings():
                writer.write(b"\r\n" * pings)  # the pong (RFC 5626 §4.4.1)
            if messages or pings:
                last_heard = now
                first = False
            if framer.partial and not first and (messages or not was_partial):
                begun = now  # a new message started in this read
            for message in messages:
                try:
                    self.endpoint.receive(message, peer, now)
                except Exception:
                    log.exception(
                        "SIP message from %s:%s could not be handled", peer.host, peer.port
                    )
            self.flush()
            if writer.transport.get_write_buffer_size() > MAX_UNREAD:
                # it sends requests (or pings) and never reads the answers
                raise FramingError("the peer does not read what it is sent")

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
