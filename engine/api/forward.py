"""Requests for a call another engine runs, sent on to that engine.

Theory of operation
-------------------
Behind a load balancer any engine may be asked about any call, but only the engine that
runs a call (its media, its live state) can act on it. A request that acts on a call,

    any method but GET, HEAD and OPTIONS, on /api/v1/calls/{call_id}/...

that reaches an engine where the call is not live is sent on, as it came (method, path,
query, headers with the client's credentials, body), to the engine the call's row names
while the call has not ended (``Store.call_node``), at the URL that engine registered
(``CCENGINE_NODE_URL``), and its answer is passed back. That engine authenticates and
authorises the request as if the client had come to it. One hop only: a request sent on
carries ``Ccengine-Forwarded-By`` and is never sent on again, so two engines that each
think the other runs a call cannot pass a request back and forth.

Reads are not sent on: a call's record, transcript and history are in the shared
database, and its events in the shared stream, on every engine. A call no engine runs
(ended, unknown) is answered here, as before. The engine that runs the call not
answering is a 503 with ``Retry-After``: if it died, a survivor soon ends its calls.
WebSockets are not sent on (the audio fork): a client opens them on the call's engine.
"""

from __future__ import annotations

import logging
import re

import httpx
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.api.problems import problem

log = logging.getLogger(__name__)

CALL_ACTION = re.compile(r"^/api/v1/calls/([A-Za-z0-9_\-]{1,64})/.+$")
READS = frozenset({"GET", "HEAD", "OPTIONS"})
FORWARDED_BY = "ccengine-forwarded-by"
# a connection's own headers, not the request's (RFC 9110 section 7.6.1)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
TIMEOUT = 30.0  # seconds: an agent's answer sets up media, a spoken prompt is synthesised


def client(ring_for: float = 0.0) -> httpx.AsyncClient:
    """The client call actions are sent on with (the app keeps one, closed at stop).
    ``ring_for``: how long a number we dial may ring (a transfer or a consult to a
    number answers once they pick up): the wait is longer by that, or the host is told
    503 while the number still rings, and a retry is refused as already consulting."""
    # only the wait for the answer: an engine that is down is still found in TIMEOUT
    timeout = httpx.Timeout(TIMEOUT, read=TIMEOUT + ring_for)
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False)


class ForwardCallActions:
    """ASGI middleware sending call actions on to the engine that runs the call. The
    app's state gives ``calls`` (the live calls here), ``store``, ``engine_id`` and
    ``forward_http`` (``client()``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READS:
            await self.app(scope, receive, send)
            return
        match = CALL_ACTION.match(scope["path"])
        if match is None or any(name == FORWARDED_BY.encode() for name, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        call_id = match.group(1)
        node = None
        if state.calls.live(call_id) is None:
            node = await state.store.call_node(call_id)
        if node is None or node.id == state.engine_id or not node.url:
            await self.app(scope, receive, send)
            return
        try:
            body = await _body(receive)
        except StarletteHTTPException as exc:  # the body limit (problems.BodyLimit)
            await problem(exc.status_code, "Content Too Large", str(exc.detail))(
                scope, receive, send
            )
            return
        await self._forward(scope, send, node.id, node.url, body)

    async def _forward(self, scope: Scope, send: Send, node: str, url: str, body: bytes) -> None:
        state = scope["app"].state
        # the client's address and scheme as this engine settled them (its trusted
        # proxies' X-Forwarded-* already applied): the engine running the call believes
        # them if this one is among its CCENGINE_TRUSTED_PROXIES, as a proxy would be
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if (name := k.decode("latin-1").lower()) not in HOP_BY_HOP
            and not name.startswith("x-forwarded-")
        ]
        client = scope.get("client")
        headers.append((FORWARDED_BY, state.engine_id))
        headers.append(("x-forwarded-proto", scope.get("scheme", "http")))
        if client:
            headers.append(("x-forwarded-for", client[0]))
        query = scope["query_string"].decode("latin-1")
        target = url + scope["path"] + (f"?{query}" if query else "")
        try:
            r = await state.forward_http.request(
                scope["method"], target, headers=headers, content=body
            )
        except httpx.HTTPError as exc:
            log.warning("call action for engine %s at %s failed: %r", node, url, exc)
            response = problem(
                503, "Call's engine unavailable",
                "the engine running this call does not answer; if it has stopped, the "
                "call is ended shortly",
                headers={"Retry-After": "5"},
            )  # fmt: skip
            await response(scope, _nothing, send)
            return
        out = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in r.headers.multi_items()
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding"
        ]
        out.append((b"content-length", str(len(r.content)).encode()))
        await send({"type": "http.response.start", "status": r.status_code, "headers": out})
        await send({"type": "http.response.body", "body": r.content})


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            break
    return b"".join(chunks)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}
