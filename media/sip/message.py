"""SIP messages: strict validation on top of aiosipua's tokenizer, and builders.

aiosipua's ``SipMessage.parse`` splits a message into start line, headers and body
and is forgiving on purpose (it keeps a message whose Content-Length is larger than
its body, ignores a negative one, and reads a CSeq of 2**65). A server must not act
on such messages (RFC 3261 §8.2, RFC 4475 §3.1.2), so every received message passes
through :func:`parse` here, which either returns a message we can safely act on or
raises :class:`SipSyntaxError` carrying the status to answer with (or ``None``: drop
it, there is nobody to answer).

Pure code over bytes: no sockets, no clocks.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
from collections.abc import Iterable

from aiosipua import SipMessage, SipRequest, SipResponse

__all__ = [
    "MAX_MESSAGE",
    "SipRequest",
    "SipResponse",
    "SipSyntaxError",
    "address_uri",
    "answerable",
    "branch",
    "cseq",
    "new_branch",
    "new_tag",
    "parse",
    "reason_phrase",
    "response",
    "tag",
    "uri_user",
]

# its per-message warnings (a trimmed body...) would let any sender flood our log; the
# verdict on a message is ours, logged once by the endpoint
logging.getLogger("aiosipua.message").setLevel(logging.ERROR)

MAX_MESSAGE = 65_535  # the largest UDP datagram; TCP framing enforces the same
MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5
SERVER = "ccengine"

_TOKEN = r"[A-Za-z0-9.!%*_+`'~\-]+"
_REQUEST_LINE = re.compile(rf"^({_TOKEN}) (\S+) (SIP/\d+\.\d+)$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 ([1-6]\d\d) ?(.*)$")
_VIA = re.compile(
    r"^SIP\s*/\s*2\.0\s*/\s*(UDP|TCP|TLS|SCTP|WSS?)\s+([^\s;]+)\s*((?:;\s*[^;]+)*)$", re.I
)
_VIA_PARAM = re.compile(rf"^\s*{_TOKEN}\s*(=\s*(\"[^\"]*\"|[^\s;=]+))?\s*$")
_CSEQ = re.compile(rf"^(\d{{1,10}})\s+({_TOKEN})$")
_DIGITS = re.compile(r"^\d{1,10}$")
_SCHEME = re.compile(r"^(sips?|tel):", re.I)
_TAG = re.compile(r";\s*tag\s*=\s*([^;>\s,]+)", re.I)
_URI_USER = re.compile(r"^(?:sips?|tel):([^@;?>]+)@?", re.I)
_SINGLE = ("from", "to", "call-id", "cseq", "max-forwards", "content-length")
_REQUIRED = ("via", "from", "to", "call-id", "cseq")

REASONS = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
}


def reason_phrase(status: int) -> str:
    return REASONS.get(status, "Unknown")


class SipSyntaxError(ValueError):
    """A message we must not act on. ``status`` is what to answer (None: drop it)."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def parse(data: bytes) -> SipRequest | SipResponse:
    """Parse and validate one SIP message (one datagram, or one TCP-framed message)."""
    if len(data) > MAX_MESSAGE:
        raise SipSyntaxError(None, "message too large")
    head, sep, _ = data.partition(b"\r\n")
    if not sep:
        head, _, _ = data.partition(b"\n")
    try:
        start = head.decode("ascii")
    except UnicodeDecodeError:
        raise SipSyntaxError(None, "start line is not ASCII") from None
    if start.startswith("SIP/"):
        return _parse_response(data, start)
    m = _REQUEST_LINE.match(start)
    if m is None:
        # nothing readable, or a Request-Line with extra spaces, a <bracketed> URI...
        raise SipSyntaxError(400 if " SIP/" in start else None, f"bad request line {start!r}")
    try:
        msg = SipMessage.parse(data)
    except ValueError as exc:
        raise SipSyntaxError(None, f"unparseable: {exc}") from None
    if not isinstance(msg, SipRequest):
        raise SipSyntaxError(None, "not a request")
    _check_request(msg, m.group(2), m.group(3))
    return msg


def _parse_response(data: bytes, start: str) -> SipResponse:
    m = _STATUS_LINE.match(start)
    if m is None:
        raise SipSyntaxError(None, f"bad status line {start!r}")
    try:
        msg = SipMessage.parse(data)
    except ValueError as exc:
        raise SipSyntaxError(None, f"unparseable: {exc}") from None
    if not isinstance(msg, SipResponse):
        raise SipSyntaxError(None, "not a response")
    for name in _REQUIRED:
        if not msg.headers.get(name):
            raise SipSyntaxError(None, f"response without {name}")
    if _CSEQ.match(msg.headers.get_first("cseq") or "") is None:
        raise SipSyntaxError(None, "response with a bad CSeq")
    return msg


def _check_request(msg: SipRequest, uri: str, version: str) -> None:
    if not msg.headers.get("via"):
        # no way to route an answer back
        raise SipSyntaxError(None, "request without Via")
    for name in _REQUIRED:
        if not msg.headers.get(name):
            raise SipSyntaxError(400, f"missing {name} header")
    for name in _SINGLE:
        if len(msg.headers.get(name)) > 1:
            raise SipSyntaxError(400, f"more than one {name} header")
    for via in msg.headers.get("via"):
        _check_via(via)
    if version != "SIP/2.0":
        raise SipSyntaxError(505, f"SIP version {version} is not supported")
    if _SCHEME.match(uri) is None:
        if "<" in uri or ">" in uri or ":" not in uri:
            raise SipSyntaxError(400, f"malformed Request-URI {uri!r}")
        raise SipSyntaxError(416, f"unsupported URI scheme in {uri!r}")
    cs = _CSEQ.match(msg.headers.get_first("cseq") or "")
    if cs is None or int(cs.group(1)) > MAX_CSEQ:
        raise SipSyntaxError(400, "malformed CSeq")
    if cs.group(2) != msg.method:
        raise SipSyntaxError(400, f"CSeq method {cs.group(2)} does not match {msg.method}")
    mf = msg.headers.get_first("max-forwards")
    if mf is not None:
        if _DIGITS.match(mf.strip()) is None or int(mf) > 255:
            raise SipSyntaxError(400, "malformed Max-Forwards")
        if int(mf) == 0 and msg.method not in ("OPTIONS", "ACK"):
            raise SipSyntaxError(483, "Max-Forwards reached zero")
    for name in ("from", "to"):
        _check_address(name, msg.headers.get_first(name) or "")
    cl = msg.headers.get_first("content-length")
    if cl is not None:
        if _DIGITS.match(cl.strip()) is None:
            raise SipSyntaxError(400, "malformed Content-Length")
        if int(cl) > len(msg.body):
            raise SipSyntaxError(400, "Content-Length larger than the body")
    expires = msg.headers.get_first("expires")
    if expires is not None and _DIGITS.match(expires.strip()) is None:
        raise SipSyntaxError(400, "malformed Expires")


def _check_via(value: str) -> None:
    m = _VIA.match(value.strip())
    if m is None:
        raise SipSyntaxError(400, f"malformed Via {value!r}")
    params = m.group(3)
    for p in params.split(";")[1:]:
        if _VIA_PARAM.match(p) is None:
            raise SipSyntaxError(400, f"malformed Via parameter {p!r}")


def _check_address(name: str, value: str) -> None:
    unescaped = re.sub(r"\\.", "", value)
    if unescaped.count('"') % 2:
        raise SipSyntaxError(400, f"unterminated quoted string in {name}")
    if unescaped.count("<") != unescaped.count(">") or unescaped.count("<") > 1:
        raise SipSyntaxError(400, f"malformed {name}")
    inner = unescaped.split("<", 1)[1].split(">", 1)[0] if "<" in unescaped else unescaped
    inner = re.sub(r'"[^"]*"', "", inner).strip()
    if ":" not in inner:
        raise SipSyntaxError(400, f"no URI in {name}")
    if "<" not in unescaped and re.search(r"\s", inner.split(";", 1)[0].strip()):
        raise SipSyntaxError(400, f"display name without <URI> in {name}")


def answerable(msg: SipMessage) -> bool:
    """A response to ``msg`` can be built and routed: its Vias, CSeq, Call-ID, From and
    To are intact (else a broken request is dropped rather than answered)."""
    try:
        for via in msg.headers.get("via") or ["-"]:
            _check_via(via)
        _check_address("from", msg.headers.get_first("from") or "")
        _check_address("to", msg.headers.get_first("to") or "")
    except SipSyntaxError:
        return False
    return bool(msg.headers.get_first("call-id")) and bool(
        _CSEQ.match(msg.headers.get_first("cseq") or "")
    )


# -- accessors --------------------------------------------------------------------


def tag(value: str | None) -> str | None:
    """The tag parameter of a From/To value (outside the URI's angle brackets)."""
    if not value:
        return None
    outside = value.rsplit(">", 1)[1] if ">" in value else value
    m = _TAG.search(outside)
    return m.group(1) if m else None


def branch(msg: SipMessage) -> str:
    """The top Via's branch, or a key built from the RFC 2543 fields when it has none."""
    top = msg.headers.get_first("via") or ""
    m = re.search(r";\s*branch\s*=\s*([^;\s,]+)", top, re.I)
    if m and m.group(1).startswith("z9hG4bK"):
        return m.group(1)
    return "2543:" + "|".join(
        (
            msg.headers.get_first("call-id") or "",
            str(cseq(msg)[0]),
            tag(msg.headers.get_first("from")) or "",
            top,
        )
    )


SOURCE_HEADER = "X-Ccengine-Source"


def forwarded_source(msg: SipMessage) -> str | None:
    """The address a trusted proxy says the request came from (``X-Ccengine-Source``,
    which deploy/kamailio/kamailio.cfg sets to the sender's address after removing any
    copy the sender wrote), if it is an IP address. Not the Vias: below the proxy's own
    Via every one is the sender's to write, ``received`` included. Only believed of a
    request from a trusted proxy: anyone else could name any address."""
    value = (msg.headers.get_first(SOURCE_HEADER.lower()) or "").strip()
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        return None


def cseq(msg: SipMessage) -> tuple[int, str]:
    m = _CSEQ.match(msg.headers.get_first("cseq") or "")
    if m is None:
        return 0, ""
    return int(m.group(1)), m.group(2)


def uri_user(uri: str) -> str | None:
    """The user part of a sip:/sips:/tel: URI, unescaped lightly (no '%xx' games)."""
    m = _URI_USER.match(uri.strip().lstrip("<"))
    if m is None:
        return None
    user = m.group(1)
    return None if "@" not in uri and not uri.lower().startswith("tel:") else user


def address_uri(value: str) -> str:
    """The URI of a From/To/Contact value: inside <>, or up to the first ';'."""
    if "<" in value:
        return value.split("<", 1)[1].split(">", 1)[0].strip()
    return value.split(";", 1)[0].strip()


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


# -- builders ---------------------------------------------------------------------


def response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> SipResponse:
    """A response to ``request`` (RFC 3261 §8.2.6): Via, From, Call-ID and CSeq copied,
    our tag added to To unless it has one (or the status is 100), and an INVITE's
    Record-Route in a response that makes a dialog."""
    resp = SipResponse(status_code=status, reason_phrase=reason or reason_phrase(status))
    for v in request.headers.get("via"):
        resp.headers.append("Via", v)
    resp.headers.set_single("From", request.headers.get_first("from") or "")
    to = request.headers.get_first("to") or ""
    if to_tag and status > 100 and tag(to) is None:
        to = f"{to};tag={to_tag}"
    resp.headers.set_single("To", to)
    resp.headers.set_single("Call-ID", request.headers.get_first("call-id") or "")
    resp.headers.set_single("CSeq", request.headers.get_first("cseq") or "")
    resp.headers.set_single("Server", SERVER)
    if request.method == "INVITE" and 100 < status < 300:
        # a response that makes a dialog (early or confirmed) carries the proxies'
        # Record-Route, in order (RFC 3261 §12.1.1): without it the caller's ACK and BYE
        # skip the proxy that routed the INVITE, and that proxy drops them
        for value in request.headers.get("record-route"):
            resp.headers.append("Record-Route", value)
    for name, value in headers:
        resp.headers.append(name, value)
    if body:
        resp.headers.set_single("Content-Type", content_type or "application/sdp")
        resp.body = body
    return resp
