"""What a browser page may do with the engine's cookies, and the headers every answer
carries.

The threat: a page on another origin of the same site (another port of the same host
is the same site, so even SameSite=Strict cookies travel with its requests) opening
the event stream or posting a hang-up with a signed-in person's cookie. So:

* a request that a sign-in cookie authenticates, and every WebSocket, is refused when
  its ``Origin`` is neither the engine's own (the scheme and ``Host`` of the request)
  nor listed in CCENGINE_ALLOWED_ORIGINS or CCENGINE_CORS_ORIGINS. Programs send no
  Origin and are not affected; browsers always send one on WebSockets and writes.
* a write that a cookie authenticates needs the ``X-Requested-With`` header. A page
  on another origin can send a custom header only after a CORS preflight, which the
  engine grants to CCENGINE_CORS_ORIGINS only; an HTML form cannot send one at all.

Requests with ``Authorization: Bearer`` carry no ambient credential and are not
checked: a page cannot make a browser add that header to someone else's request.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_HEADER = "x-requested-with"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]  # scheme, lower-case host, port


def parse_origin(value: str) -> Origin | None:
    """``scheme://host[:port]`` as a comparable tuple; None for anything else (``null``,
    a path, another scheme)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    return parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme]


def is_https(conn: HTTPConnection) -> bool:
    """Whether the browser reached us over TLS (a trusted proxy's X-Forwarded-Proto
    included: ProxyHeadersMiddleware has already set the scheme from it)."""
    return conn.url.scheme in ("https", "wss")


class OriginPolicy:
    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = frozenset(o for o in map(parse_origin, allowed) if o is not None)

    @staticmethod
    def own(conn: HTTPConnection) -> Origin | None:
        host = conn.headers.get("host")
        if not host:
            return None
        return parse_origin(f"{'https' if is_https(conn) else 'http'}://{host}")

    def refusal(self, conn: HTTPConnection) -> str | None:
        """Why a page on this request's Origin may not use the engine's cookies or
        WebSockets; None when it may (or the client is not a browser page)."""
        value = conn.headers.get("origin")
        if value is None:
            return None
        origin = parse_origin(value)
        if origin is not None and (origin == self.own(conn) or origin in self.allowed):
            return None
        # the Origin is not echoed: a WebSocket close reason has 123 bytes at most
        return (
            "pages on another origin may not use this engine's sign-in (CCENGINE_ALLOWED_ORIGINS)"
        )


def csrf_refusal(conn: HTTPConnection) -> str | None:
    """Why a cookie may not authenticate this request's write; None when it may."""
    if conn.scope["type"] != "http" or conn.scope["method"] in SAFE_METHODS:
        return None
    if conn.headers.get(CSRF_HEADER):
        return None
    return "a change made with a sign-in cookie needs the X-Requested-With header (any value)"


# The engine's pages load scripts, styles and images from /static only, talk to their
# own origin only (fetch, WebSocket), and are never framed.
PAGES_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; media-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# The API docs pages (Swagger UI and ReDoc, served from the fastapi-offline package)
# load everything from the engine but start with an inline script and style themselves
# inline; they show no data of ours but the schema.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; worker-src blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


class SecurityHeaders:
    """Adds the headers above to every HTTP answer (errors and static files too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope["path"] in DOCS_PATHS else PAGES_CSP

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in (*HEADERS.items(), ("content-security-policy", csp)):
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)
