"""The HTTP server's share of the resource limits: how many connections, and how long a
request may take to arrive.

uvicorn closes a keep-alive connection that stays idle after a response, but keeps a
connection that never sends a request, or sends its headers a byte at a time, for as
long as the client likes (slowloris): 1,100 of them took every file descriptor of the
engine. :func:`guarded_http` gives uvicorn a protocol (its httptools one, plus this)
that:

* counts connections per address and in all (``media.netlimits.ConnectionCaps``) and
  answers one over a cap, or past the file-descriptor reserve, with 429 (its address
  holds too many) or 503, a Retry-After and ``Connection: close``, before reading
  anything;
* gives each request ``request_timeout`` seconds from its first byte (for a new
  connection: from connecting) until it has arrived whole, line, headers and body;
  a request still incomplete then is answered 408 and the connection closed.

A refused connection is half-closed after the answer and what the client sends is read
and dropped, so closing it sends the client no reset that could hide the answer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from media.netlimits import ConnectionCaps, Refusal, describe

RETRY_AFTER = 5  # s: connections come and go quickly
REFUSED_LINGER = 2.0  # s a refused connection is kept to read and drop the request


def _answer(status: int, reason: str, detail: str, headers: dict[str, str]) -> bytes:
    body = json.dumps(
        {"type": "about:blank", "title": reason, "status": status, "detail": detail}
    ).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/problem+json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def refusal_answer(refusal: Refusal) -> bytes:
    retry = {"retry-after": str(RETRY_AFTER)}
    if refusal == "address":
        return _answer(429, "Too Many Requests", describe(refusal), retry)
    return _answer(503, "Service Unavailable", describe(refusal), retry)


def guarded_http(caps: ConnectionCaps, request_timeout: float) -> type[HttpToolsProtocol]:
    """A uvicorn HTTP protocol class (``uvicorn.run(http=...)``) bound to ``caps``."""

    class GuardedHttp(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._host: str | None = None  # set while counted in caps
            self._refused = False
            self._deadline: asyncio.TimerHandle | None = None

        # -- counting ------------------------------------------------------------------

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else ""
            sock = transport.get_extra_info("socket")
            refusal = caps.take(host, sock.fileno() if sock is not None else -1)
            if refusal is not None:
                self._refuse(refusal)
                return
            self._host = host
            self._arm()  # a new connection owes its first request at once

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._release()
            super().connection_lost(exc)

        def _release(self) -> None:
            if self._host is not None:
                caps.release(self._host)
                self._host = None

        def _refuse(self, refusal: Refusal) -> None:
            self._refused = True
            self.transport.write(refusal_answer(refusal))
            if refusal == "descriptors" or not self.transport.can_write_eof():
                self.transport.close()  # every descriptor counts now
                return
            self.transport.write_eof()
            self.loop.call_later(REFUSED_LINGER, self.transport.close)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # read and dropped: see the module's docstring
            super().data_received(data)

        def handle_websocket_upgrade(self) -> None:
            self._disarm()
            super().handle_websocket_upgrade()
            # the WebSocket protocol now owns the transport, and hears of its end: it
            # must give the count back then, not us
            ws = self.transport.get_protocol()
            lost = ws.connection_lost

            def connection_lost(exc: Exception | None) -> None:
                try:
                    lost(exc)
                finally:
                    self._release()

            ws.connection_lost = connection_lost  # type: ignore[method-assign]

        # -- the request's deadline ----------------------------------------------------

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(request_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:
                # nothing is being answered: say why, then close (RFC 9110 §15.5.9)
                detail = f"the request did not arrive within {request_timeout:g} s"
                self.transport.write(_answer(408, "Request Timeout", detail, {}))
            self.transport.close()

    return GuardedHttp
