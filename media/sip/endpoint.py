"""The SIP user agent, sans-IO: transactions, dialogs, registrar and admission.

Feed it what arrived (:meth:`SipEndpoint.receive`), let it run its timers
(:meth:`handle_timer` at :meth:`next_timer`), and send what :meth:`transmit`
returns; what the application must decide (a new call, a hang-up, a re-INVITE)
comes out of :meth:`events`. No sockets, no clocks: ``now`` is always passed in,
so every RFC 3261 timer is testable without waiting.

What it does on its own, as RFC 3261 asks:

* server transactions absorb retransmitted requests by re-sending the last
  response (§17.2); a final non-2xx answer to an INVITE is retransmitted over UDP
  until its ACK (Timer G/H), a 2xx until the ACK of the dialog (§13.3.1.4), and a
  call whose 2xx is never acknowledged is ended with a BYE;
* CANCEL before the answer: 200 to the CANCEL, 487 to the INVITE (§9.2);
* requests inside a dialog are matched by Call-ID and both tags; anything else
  gets 481; an in-dialog CSeq that goes backwards gets 500 (§12.2.2);
* admission: INVITEs from a trunk address (allow-list) pass, others need digest
  credentials (401 challenge, 403 for wrong ones, 401 stale=true again for a replayed
  answer); REGISTER always needs them, and a user may register only its own address
  of record; an address or user that keeps failing is refused for a while (503 with
  Retry-After, see :mod:`media.sip.throttle`), and each failure and lockout is an event;
* precise answers: 405/501 for methods, 415 for bodies, 420 for extensions, 423
  for short registrations, 503 when the tables are full.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from aiosipua import SipDigestAuth, build_credentials, parse_auth, stringify_auth

from media.sip import message as sm
from media.sip.digest import DigestServer, Verdict, claimed_user
from media.sip.message import SipRequest, SipResponse, SipSyntaxError
from media.sip.throttle import AuthThrottle, Lockout

log = logging.getLogger(__name__)

T1, T2, T4 = 0.5, 4.0, 5.0
TIMER_64T1 = 64 * T1
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REGISTER"
KNOWN_METHODS = {"SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH", "UPDATE", "PRACK"}
MAX_TRANSACTIONS = 20_000
MAX_DIALOGS = 5_000
MIN_EXPIRES, MAX_EXPIRES, DEFAULT_EXPIRES = 60, 3600, 3600
MAX_CONTACTS = 10  # bindings per address of record


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from, and so where answers go (symmetric signalling)."""

    transport: str  # "UDP" | "TCP"
    host: str
    port: int
    conn: int | None = None  # the TCP connection it arrived on

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"


@dataclass(frozen=True, slots=True)
class Transmit:
    peer: Peer
    data: bytes


# -- events for the application -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class InviteReceived:
    call_id: str
    request: SipRequest
    peer: Peer
    user: str | None  # the digest user who authenticated, None for a trunk
    trunk: bool


@dataclass(frozen=True, slots=True)
class ReinviteReceived:
    call_id: str
    request: SipRequest


@dataclass(frozen=True, slots=True)
class CallConfirmed:
    call_id: str  # the ACK for our 2xx arrived


@dataclass(frozen=True, slots=True)
class CallCancelled:
    call_id: str


@dataclass(frozen=True, slots=True)
class CallTerminated:
    call_id: str
    reason: str  # "remote_bye" | "no_ack"


@dataclass(frozen=True, slots=True)
class DtmfInfo:
    call_id: str
    digit: str


@dataclass(frozen=True, slots=True)
class Registered:
    aor: str
    contact: str
    expires: int  # 0: removed


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """Digest credentials refused: ``wrong`` (403), ``replay`` (an answer seen before,
    challenged again), or ``throttled`` (refused unchecked: the address or user is
    locked out)."""

    reason: Literal["wrong", "replay", "throttled"]
    user: str | None  # as claimed: never proof that such a user exists
    host: str


@dataclass(frozen=True, slots=True)
class AuthLockedOut:
    """Too many wrong answers from one address or for one user: a brute-force attempt."""

    lockout: Lockout
    host: str  # the address whose failure tripped it


@dataclass(frozen=True, slots=True)
class OutboundRinging:
    call_id: str


@dataclass(frozen=True, slots=True)
class OutboundAnswered:
    call_id: str
    sdp: bytes  # the callee's SDP answer


@dataclass(frozen=True, slots=True)
class OutboundFailed:
    call_id: str
    status: int  # 408 when nobody answered at all
    reason: str


@dataclass(frozen=True, slots=True)
class RegistrationChanged:
    """Our own registration with a carrier: "registered" (for ``expires`` s) or "failed"."""

    registrar: str
    state: str
    status: int
    expires: int = 0


Event = (
    InviteReceived
    | ReinviteReceived
    | CallConfirmed
    | CallCancelled
    | CallTerminated
    | DtmfInfo
    | Registered
    | AuthFailed
    | AuthLockedOut
    | OutboundRinging
    | OutboundAnswered
    | OutboundFailed
    | RegistrationChanged
)


# -- transactions and dialogs ----------------------------------------------------------


@dataclass(slots=True)
class _ServerTxn:
    request: SipRequest
    peer: Peer
    created: float
    last: bytes | None = None  # the last response sent, re-sent on a retransmission
    status: int = 0
    retransmit_at: float | None = None  # Timer G (non-2xx final to an INVITE, UDP)
    interval: float = T1
    expire_at: float | None = None  # Timer H/I/J: forget the transaction

    @property
    def method(self) -> str:
        return self.request.method


@dataclass(slots=True)
class _ClientTxn:
    data: bytes
    peer: Peer
    method: str
    started: float
    retransmit_at: float | None
    interval: float = T1
    done: bool = False
    call_id: str = ""


@dataclass(slots=True)
class _Outbound:
    """An INVITE we sent (a callback through a trunk), until it is answered or fails."""

    call_id: str
    uri: str
    peer: Peer
    sdp: bytes
    local_tag: str
    from_value: str
    auth: tuple[str, str] | None
    cseq: int = 0
    branch: str | None = None
    provisional: bool = False
    final: bool = False
    cancelled: bool = False
    tried_auth: bool = False
    ack: bytes | None = None
    expire_at: float | None = None


@dataclass(slots=True)
class _Registration:
    """We register to a carrier (behind NAT or on a dynamic address) and keep it fresh."""

    registrar: str  # the Request-URI: sip:carrier.example
    aor: str  # sip:user@carrier.example
    user: str
    peer: Peer
    auth: tuple[str, str] | None
    expires: int
    call_id: str
    local_tag: str
    cseq: int = 0
    tried_auth: bool = False
    refresh_at: float | None = None


@dataclass(slots=True)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # our To value without its tag
    remote_uri: str  # the caller's From value
    remote_target: str  # Contact URI: where in-dialog requests go
    peer: Peer
    invite: SipRequest
    remote_cseq: int
    local_cseq: int = 0
    state: str = "early"  # early -> confirmed -> terminated
    route: list[str] = field(default_factory=list)
    ok: bytes | None = None  # our 2xx, retransmitted until the ACK
    ok_at: float | None = None
    ok_interval: float = T1
    ok_giveup: float | None = None
    invite_key: tuple[str, str] | None = None
    reinvite_key: tuple[str, str] | None = None
    outbound: bool = False  # we placed it (UAC): answered once it exists


@dataclass(slots=True)
class Binding:
    contact: str
    peer: Peer
    expires_at: float


@dataclass
class Admission:
    """Who may call and register."""

    realm: str = "ccengine"
    trunks: list[str] = field(default_factory=list)  # addresses or networks, CIDR ok
    passwords: Callable[[str], str | None] = lambda _user: None

    def __post_init__(self) -> None:
        self._nets = [ipaddress.ip_network(t, strict=False) for t in self.trunks]

    def is_trunk(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in n for n in self._nets)


class SipEndpoint:
    def __init__(
        self,
        local_host: str,
        local_port: int,
        admission: Admission | None = None,
        *,
        digest: DigestServer | None = None,
        throttle: AuthThrottle | None = None,
    ) -> None:
        self.local_host = local_host
        self.local_port = local_port
        self.admission = admission or Admission()
        self.digest = digest or DigestServer(self.admission.realm)
        self.throttle = throttle or AuthThrottle()
        self._out: list[Transmit] = []
        self._events: list[Event] = []
        self._server: dict[tuple[str, str], _ServerTxn] = {}
        self._client: dict[tuple[str, str], _ClientTxn] = {}
        self.dialogs: dict[str, Dialog] = {}
        self.bindings: dict[str, dict[str, Binding]] = {}
        self._outbound: dict[str, _Outbound] = {}
        self._registrations: dict[str, _Registration] = {}  # by Call-ID
        self.malformed = 0

    # -- I/O surface -------------------------------------------------------------------

    def transmit(self) -> list[Transmit]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def next_timer(self) -> float | None:
        times = [t for x in self._server.values() for t in (x.retransmit_at, x.expire_at) if t]
        times += [x.retransmit_at for x in self._client.values() if x.retransmit_at]
        times += [d.ok_at for d in self.dialogs.values() if d.ok_at]
        times += [b.expires_at for bs in self.bindings.values() for b in bs.values()]
        times += [o.expire_at for o in self._outbound.values() if o.expire_at]
        times += [r.refresh_at for r in self._registrations.values() if r.refresh_at]
        return min(times) if times else None

    def receive(self, data: bytes, peer: Peer, now: float) -> None:
        if not data.strip():
            return  # CRLF keep-alives (RFC 5626 §3.5.1)
        try:
            msg = sm.parse(data)
        except SipSyntaxError as exc:
            self.malformed += 1
            log.info("malformed SIP from %s:%s: %s", peer.host, peer.port, exc.detail)
            if exc.status is not None:
                self._answer_malformed(data, peer, exc)
            return
        if isinstance(msg, SipResponse):
            self._on_response(msg, now)
        else:
            self._on_request(msg, peer, now)

    def handle_timer(self, now: float) -> None:
        for key, txn in list(self._server.items()):
            if txn.retransmit_at is not None and now >= txn.retransmit_at and txn.last:
                self._send(txn.peer, txn.last)
                txn.interval = min(txn.interval * 2, T2)
                txn.retransmit_at = now + txn.interval
            if txn.expire_at is not None and now >= txn.expire_at:
                del self._server[key]
                if txn.method == "INVITE" and txn.status >= 300 and txn.retransmit_at:
                    log.info("no ACK for %s to %s", txn.status, txn.request.call_id)
        for key, ctx in list(self._client.items()):
            if ctx.done or now - ctx.started >= TIMER_64T1:
                del self._client[key]
                out = self._outbound.get(ctx.call_id) if ctx.method == "INVITE" else None
                if not ctx.done and out is not None and not out.final:  # Timer B
                    out.final, out.expire_at = True, now
                    self._events.append(OutboundFailed(out.call_id, 408, "Request Timeout"))
                reg = self._registrations.get(ctx.call_id) if ctx.method == "REGISTER" else None
                if not ctx.done and reg is not None:  # Timer F: the registrar is silent
                    self._registration_failed(reg, 408, now)
            elif ctx.retransmit_at is not None and now >= ctx.retransmit_at:
                self._send(ctx.peer, ctx.data)
                # Timer A (INVITE) doubles without a cap; Timer E stops at T2 (§17.1)
                ctx.interval = (
                    ctx.interval * 2 if ctx.method == "INVITE" else min(ctx.interval * 2, T2)
                )
                ctx.retransmit_at = now + ctx.interval
        for d in list(self.dialogs.values()):
            if d.ok_at is not None and d.ok is not None and now >= d.ok_at:
                if d.ok_giveup is not None and now >= d.ok_giveup:
                    d.ok_at = None
                    self._bye(d, now)
                    self._events.append(CallTerminated(d.call_id, "no_ack"))
                    continue
                self._send(d.peer, d.ok)
                d.ok_interval = min(d.ok_interval * 2, T2)
                d.ok_at = now + d.ok_interval
        for call_id, out in list(self._outbound.items()):
            if out.expire_at is not None and now >= out.expire_at:
                del self._outbound[call_id]
        for reg in self._registrations.values():
            if reg.refresh_at is not None and now >= reg.refresh_at:
                reg.tried_auth = False
                self._send_register(reg, now, None)
        for aor, bs in list(self.bindings.items()):
            for contact, b in list(bs.items()):
                if now >= b.expires_at:
                    del bs[contact]
                    self._events.append(Registered(aor, contact, 0))
            if not bs:
                del self.bindings[aor]

    # -- the application's answers -------------------------------------------------------

    def ring(self, call_id: str) -> None:
        d = self.dialogs.get(call_id)
        if d is not None and d.state == "early":
            self._respond_invite(d, 180)

    def answer(self, call_id: str, sdp: bytes, now: float) -> None:
        d = self.dialogs.get(call_id)
        if d is None or d.state != "early" or d.ok is not None:
            return
        d.ok = self._respond_invite(d, 200, body=sdp)
        if not d.peer.reliable:
            d.ok_at, d.ok_giveup = now + T1, now + TIMER_64T1

    def reject(
        self, call_id: str, status: int, now: float, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        d = self.dialogs.pop(call_id, None)
        if d is None or d.ok is not None:
            return
        self._respond_invite(d, status, headers=headers, now=now)

    def answer_reinvite(
        self, call_id: str, sdp: bytes | None, now: float, status: int = 200
    ) -> None:
        d = self.dialogs.get(call_id)
        if d is None or d.reinvite_key is None:
            return
        txn = self._server.get(d.reinvite_key)
        d.reinvite_key = None
        if txn is None:
            return
        if status >= 300:
            self._final(txn, status, d.local_tag, now)
            return
        d.ok = self._final(txn, 200, d.local_tag, now, body=sdp or b"", contact=True)
        if not d.peer.reliable:
            d.ok_at, d.ok_interval, d.ok_giveup = now + T1, T1, now + TIMER_64T1

    def hangup(self, call_id: str, now: float) -> None:
        """End a call from our side: BYE if answered, 480 if still ringing."""
        out = self._outbound.get(call_id)
        if out is not None and not out.final:
            self.cancel(call_id, now)
            return
        d = self.dialogs.get(call_id)
        if d is None:
            return
        if d.ok is None and not d.outbound:
            self.reject(call_id, 480, now)  # still ringing here
            return
        self._bye(d, now)

    def lookup(self, aor_user: str, now: float) -> list[Binding]:
        return [b for b in self.bindings.get(aor_user, {}).values() if b.expires_at > now]

    # -- requests ------------------------------------------------------------------------

    def _on_request(self, req: SipRequest, peer: Peer, now: float) -> None:
        method = req.method
        key = (sm.branch(req), "INVITE" if method == "ACK" else method)
        if method == "ACK":
            self._on_ack(req, key, now)
            return
        txn = self._server.get(key)
        if txn is not None:  # a retransmission: same answer again
            if txn.last is not None:
                self._send(peer, txn.last)
            return
        if len(self._server) >= MAX_TRANSACTIONS:
            self._send(peer, bytes(sm.response(req, 503, headers=[("Retry-After", "5")])))
            return
        txn = _ServerTxn(req, peer, now)
        self._server[key] = txn
        if method == "CANCEL":
            self._on_cancel(req, txn, now)
            return
        to_tag = sm.tag(req.headers.get_first("to"))
        if to_tag is not None:
            self._in_dialog(req, txn, to_tag, now)
            return
        require = req.headers.get_first("require")
        if require:
            self._final(txn, 420, sm.new_tag(), now, headers=[("Unsupported", require)])
            return
        if method == "INVITE":
            self._on_invite(req, txn, now)
        elif method == "OPTIONS":
            self._final(
                txn,
                200,
                sm.new_tag(),
                now,
                headers=[("Allow", ALLOW), ("Accept", "application/sdp")],
            )
        elif method == "REGISTER":
            self._on_register(req, txn, now)
        elif method in ("BYE", "INFO"):
            self._final(txn, 481, sm.new_tag(), now)
        elif method in KNOWN_METHODS:
            self._final(txn, 405, sm.new_tag(), now, headers=[("Allow", ALLOW)])
        else:
            self._final(txn, 501, sm.new_tag(), now, headers=[("Allow", ALLOW)])

    def _authenticate(self, req: SipRequest, txn: _ServerTxn, now: float) -> str | None:
        """The digest user, or None after answering 401/403/503 ourselves."""
        authorization = req.headers.get_first("authorization")
        host = txn.peer.host
        claimed = claimed_user(authorization)
        # only answers are throttled (a bare request just gets its challenge), and
        # before the password is checked: a locked-out guess learns nothing
        wait = self.throttle.refused(claimed, host, now) if authorization else None
        if wait is not None:
            retry = str(math.ceil(wait))
            self._final(txn, 503, sm.new_tag(), now, headers=[("Retry-After", retry)])
            self._events.append(AuthFailed("throttled", claimed, host))
            return None
        result = self.digest.verify(req.method, authorization, self.admission.passwords, now)
        if result.verdict is Verdict.OK:
            assert result.username is not None
            self.throttle.succeeded(result.username, host, now)
            return result.username
        if result.verdict is Verdict.WRONG:
            self._final(txn, 403, sm.new_tag(), now)
            self._events.append(AuthFailed("wrong", claimed, host))
            for lockout in self.throttle.failed(claimed, host, now):
                self._events.append(AuthLockedOut(lockout, host))
            return None
        # a replayed answer is challenged like a stale one: the UA (or whoever replays
        # it) must answer a fresh nonce, which needs the password
        stale = result.verdict in (Verdict.STALE, Verdict.REPLAY)
        if result.verdict is Verdict.REPLAY:
            self._events.append(AuthFailed("replay", claimed, host))
        challenge = self.digest.challenge(now, stale=stale)
        self._final(txn, 401, sm.new_tag(), now, headers=[("WWW-Authenticate", challenge)])
        return None

    def _on_invite(self, req: SipRequest, txn: _ServerTxn, now: float) -> None:
        call_id = req.call_id or ""
        trunk = self.admission.is_trunk(txn.peer.host)
        user = None
        if not trunk:
            user = self._authenticate(req, txn, now)
            if user is None:
                return
        if call_id in self.dialogs or len(self.dialogs) >= MAX_DIALOGS:
            # a second INVITE for a live Call-ID with a new branch is a loop or a fork
            status = 482 if call_id in self.dialogs else 503
            self._final(txn, status, sm.new_tag(), now, headers=[("Retry-After", "5")])
            return
        ctype = (req.headers.get_first("content-type") or "application/sdp").split(";")[0]
        if req.body and ctype.strip().lower() != "application/sdp":
            self._final(txn, 415, sm.new_tag(), now, headers=[("Accept", "application/sdp")])
            return
        contact = req.headers.get_first("contact") or ""
        target = contact.split("<", 1)[1].split(">", 1)[0] if "<" in contact else contact
        to = req.headers.get_first("to") or ""
        d = Dialog(
            call_id=call_id,
            local_tag=sm.new_tag(),
            remote_tag=sm.tag(req.headers.get_first("from")) or "",
            local_uri=to,
            remote_uri=req.headers.get_first("from") or "",
            remote_target=target.split(";", 1)[0].strip() or req.uri,
            peer=txn.peer,
            invite=req,
            remote_cseq=sm.cseq(req)[0],
            route=list(req.headers.get("record-route")),
            invite_key=(sm.branch(req), "INVITE"),
        )
        self.dialogs[call_id] = d
        self._provisional(txn, 100, None)
        self._events.append(InviteReceived(call_id, req, txn.peer, user, trunk))

    def _in_dialog(self, req: SipRequest, txn: _ServerTxn, to_tag: str, now: float) -> None:
        d = self.dialogs.get(req.call_id or "")
        from_tag = sm.tag(req.headers.get_first("from"))
        if d is None or d.local_tag != to_tag or d.remote_tag != from_tag:
            self._final(txn, 481, None, now)
            return
        seq = sm.cseq(req)[0]
        if seq <= d.remote_cseq:
            self._final(txn, 500, None, now, headers=[("Retry-After", "1")])
            return
        d.remote_cseq = seq
        if req.method == "BYE":
            self._final(txn, 200, None, now)
            self._end_dialog(d)
            self._events.append(CallTerminated(d.call_id, "remote_bye"))
        elif req.method == "INVITE":
            if d.reinvite_key is not None or d.state != "confirmed":
                self._final(txn, 491, None, now)
                return
            d.reinvite_key = (sm.branch(req), "INVITE")
            d.invite = req
            self._provisional(txn, 100, None)
            self._events.append(ReinviteReceived(d.call_id, req))
        elif req.method == "INFO":
            self._final(txn, 200, None, now)
            digit = _info_digit(req)
            if digit:
                self._events.append(DtmfInfo(d.call_id, digit))
        elif req.method == "OPTIONS":
            self._final(txn, 200, None, now, headers=[("Allow", ALLOW)])
        elif req.method in KNOWN_METHODS:
            self._final(txn, 405, None, now, headers=[("Allow", ALLOW)])
        else:
            self._final(txn, 501, None, now, headers=[("Allow", ALLOW)])

    def _on_ack(self, req: SipRequest, key: tuple[str, str], now: float) -> None:
        txn = self._server.get(key)
        if txn is not None and txn.status >= 300:
            # ACK for a failure: stop Timer G, linger for Timer I (absorbs ACK copies)
            txn.retransmit_at = None
            txn.expire_at = now + (0 if txn.peer.reliable else T4)
            return
        d = self.dialogs.get(req.call_id or "")
        if d is None or sm.tag(req.headers.get_first("to")) != d.local_tag:
            return  # ACKs are never answered
        if d.ok_at is not None or d.state == "early":
            d.ok_at = d.ok_giveup = None
            if d.state == "early":
                d.state = "confirmed"
                self._events.append(CallConfirmed(d.call_id))

    def _on_cancel(self, req: SipRequest, txn: _ServerTxn, now: float) -> None:
        invite = self._server.get((sm.branch(req), "INVITE"))
        if invite is None:
            self._final(txn, 481, sm.new_tag(), now)
            return
        d = self.dialogs.get(req.call_id or "")
        self._final(txn, 200, d.local_tag if d else sm.new_tag(), now)
        if d is not None and d.ok is None and invite.status < 200:
            del self.dialogs[d.call_id]
            self._respond_invite(d, 487, now=now)
            self._events.append(CallCancelled(d.call_id))

    def _on_register(self, req: SipRequest, txn: _ServerTxn, now: float) -> None:
        user = self._authenticate(req, txn, now)
        if user is None:
            return
        aor = sm.uri_user(sm.address_uri(req.headers.get_first("to") or ""))
        if aor != user:
            self._final(txn, 403, sm.new_tag(), now)  # one's own address of record only
            return
        default = int(req.headers.get_first("expires") or DEFAULT_EXPIRES)
        bindings = self.bindings.setdefault(aor, {})
        contacts = req.headers.get("contact")
        if contacts == ["*"]:
            if default != 0:
                self._final(txn, 400, sm.new_tag(), now)
                return
            for c in list(bindings):
                self._events.append(Registered(aor, c, 0))
            bindings.clear()
            contacts = []
        for value in contacts:
            uri = sm.address_uri(value)
            m = _param(value, "expires")
            expires = int(m) if m is not None and m.isdigit() else default
            if 0 < expires < MIN_EXPIRES:
                self._final(
                    txn, 423, sm.new_tag(), now, headers=[("Min-Expires", str(MIN_EXPIRES))]
                )
                return
            expires = min(expires, MAX_EXPIRES)
            if expires == 0:
                if bindings.pop(uri, None) is not None:
                    self._events.append(Registered(aor, uri, 0))
            elif uri not in bindings and len(bindings) >= MAX_CONTACTS:
                self._final(txn, 403, sm.new_tag(), now)  # one user, a handful of phones
                return
            else:
                bindings[uri] = Binding(uri, txn.peer, now + expires)
                self._events.append(Registered(aor, uri, expires))
        if not bindings:
            self.bindings.pop(aor, None)
        now_bound = [
            ("Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now))}")
            for b in bindings.values()
        ]
        self._final(txn, 200, sm.new_tag(), now, headers=now_bound)

    # -- responses we receive ----------------------------------------------------------------

    def _on_response(self, resp: SipResponse, now: float) -> None:
        method = sm.cseq(resp)[1]
        ctx = self._client.get((sm.branch(resp), method))
        if ctx is not None:
            if resp.status_code >= 200 or ctx.method == "INVITE":
                ctx.done = True  # an INVITE stops at the first answer (Timer A ends)
                ctx.retransmit_at = None
            else:
                ctx.interval = T2  # §17.1.2.2: provisional -> retransmit at T2
        if method == "INVITE":
            # 2xx retransmissions come outside the transaction: match by Call-ID
            self._on_outbound_response(resp, now)
        elif method == "REGISTER" and ctx is not None and resp.status_code >= 200:
            self._on_register_response(resp, now)

    # -- outbound calls (UAC) ----------------------------------------------------------------

    def invite(
        self,
        uri: str,
        peer: Peer,
        sdp: bytes,
        now: float,
        *,
        caller: str = "ccengine",
        auth: tuple[str, str] | None = None,
    ) -> str:
        """Call ``uri`` through ``peer`` (the trunk). Answers with ``auth`` to a 401/407
        once. Returns the Call-ID; the outcome comes as OutboundAnswered/OutboundFailed."""
        call_id = f"{sm.new_tag()}{sm.new_tag()}@{self.local_host}"
        out = _Outbound(
            call_id=call_id,
            uri=uri,
            peer=peer,
            sdp=sdp,
            local_tag=sm.new_tag(),
            from_value=f"<sip:{caller}@{self.local_host}>",
            auth=auth,
        )
        self._outbound[call_id] = out
        self._send_invite(out, now, None)
        return call_id

    def cancel(self, call_id: str, now: float) -> None:
        """Give up on an outbound call still ringing (CANCEL, RFC 3261 §9.1)."""
        out = self._outbound.get(call_id)
        if out is None or out.final or out.branch is None:
            return
        out.cancelled = True
        if not out.provisional:
            return  # a CANCEL may only follow a provisional; sent when one arrives
        self._send_cancel(out, now)

    def _send_cancel(self, out: _Outbound, now: float) -> None:
        req = self._request("CANCEL", out.uri, out.peer, out.branch)
        req.headers.set_single("From", f"{out.from_value};tag={out.local_tag}")
        req.headers.set_single("To", f"<{out.uri}>")
        req.headers.set_single("Call-ID", out.call_id)
        req.headers.set_single("CSeq", f"{out.cseq} CANCEL")
        self._start_client(req, out.peer, now)

    def _request(self, method: str, uri: str, peer: Peer, branch: str | None) -> SipRequest:
        req = SipRequest(method=method, uri=uri)
        transport = "UDP" if peer.transport == "UDP" else "TCP"
        req.headers.append(
            "Via",
            f"SIP/2.0/{transport} {self.local_host}:{self.local_port};"
            f"branch={branch or sm.new_branch()};rport",
        )
        req.headers.set_single("Max-Forwards", "70")
        req.headers.set_single("User-Agent", sm.SERVER)
        return req

    def _start_client(self, req: SipRequest, peer: Peer, now: float) -> None:
        data = bytes(req)
        self._send(peer, data)
        self._client[(sm.branch(req), req.method)] = _ClientTxn(
            data,
            peer,
            req.method,
            now,
            None if peer.reliable else now + T1,
            call_id=req.call_id or "",
        )

    def _send_invite(self, out: _Outbound, now: float, credentials: tuple[str, str] | None) -> None:
        out.cseq += 1
        out.branch = sm.new_branch()
        out.provisional = False
        req = self._request("INVITE", out.uri, out.peer, out.branch)
        req.headers.set_single("From", f"{out.from_value};tag={out.local_tag}")
        req.headers.set_single("To", f"<{out.uri}>")
        req.headers.set_single("Call-ID", out.call_id)
        req.headers.set_single("CSeq", f"{out.cseq} INVITE")
        req.headers.set_single("Contact", self._contact(out.peer))
        req.headers.set_single("Allow", ALLOW)
        if credentials is not None:
            req.headers.set_single(*credentials)
        req.headers.set_single("Content-Type", "application/sdp")
        req.body = out.sdp
        self._start_client(req, out.peer, now)

    def _ack_outbound(self, out: _Outbound, resp: SipResponse, branch: str, target: str) -> bytes:
        req = self._request("ACK", target, out.peer, branch)
        req.headers.set_single("From", f"{out.from_value};tag={out.local_tag}")
        req.headers.set_single("To", resp.headers.get_first("to") or "")
        req.headers.set_single("Call-ID", out.call_id)
        req.headers.set_single("CSeq", f"{out.cseq} ACK")
        data = bytes(req)
        self._send(out.peer, data)
        return data

    def _on_outbound_response(self, resp: SipResponse, now: float) -> None:
        out = self._outbound.get(resp.call_id or "")
        if out is None or sm.cseq(resp) != (out.cseq, "INVITE"):
            return
        status = resp.status_code
        if status < 200:
            if not out.provisional:
                out.provisional = True
                if out.cancelled:
                    self._send_cancel(out, now)
                elif status in (180, 183):
                    self._events.append(OutboundRinging(out.call_id))
            return
        if 200 <= status < 300:
            if out.ack is not None:  # the 200 again: our ACK was lost
                self._send(out.peer, out.ack)
                return
            contact = resp.headers.get_first("contact") or ""
            target = sm.address_uri(contact) or out.uri
            out.ack = self._ack_outbound(out, resp, sm.new_branch(), target)
            out.final = True
            d = Dialog(
                call_id=out.call_id,
                local_tag=out.local_tag,
                remote_tag=sm.tag(resp.headers.get_first("to")) or "",
                local_uri=out.from_value,
                remote_uri=resp.headers.get_first("to") or "",
                remote_target=target,
                peer=out.peer,
                invite=SipRequest(method="INVITE", uri=out.uri),
                remote_cseq=0,
                local_cseq=out.cseq,
                state="confirmed",
                route=list(reversed(resp.headers.get("record-route"))),
                ok=None,
                outbound=True,
            )
            self.dialogs[out.call_id] = d
            out.expire_at = now + TIMER_64T1  # absorb 200 retransmissions, then forget
            self._events.append(OutboundAnswered(out.call_id, resp.body))
            return
        # a failure: ACK it in the same transaction (§17.1.1.3)
        self._ack_outbound(out, resp, out.branch or sm.new_branch(), out.uri)
        if status in (401, 407) and out.auth is not None and not out.tried_auth:
            out.tried_auth = True
            header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
            challenge = resp.headers.get_first(header)
            creds = (
                build_credentials(
                    SipDigestAuth(*out.auth), parse_auth(challenge), "INVITE", out.uri
                )
                if challenge
                else None
            )
            if creds is not None:
                name = "Authorization" if status == 401 else "Proxy-Authorization"
                self._send_invite(out, now, (name, stringify_auth(creds)))
                return
        out.final = True
        out.expire_at = now + T4
        self._events.append(OutboundFailed(out.call_id, status, resp.reason_phrase))

    # -- registering to a carrier ------------------------------------------------------------

    def register_to(
        self,
        registrar: str,
        user: str,
        peer: Peer,
        now: float,
        *,
        auth: tuple[str, str] | None = None,
        expires: int = 600,
    ) -> None:
        """Register ``user`` at ``registrar`` (e.g. ``sip:carrier.example``) and refresh
        it before it runs out, for as long as the endpoint lives."""
        host = registrar.split(":", 1)[1] if ":" in registrar else registrar
        reg = _Registration(
            registrar=registrar,
            aor=f"sip:{user}@{host.split(';')[0]}",
            user=user,
            peer=peer,
            auth=auth,
            expires=expires,
            call_id=f"{sm.new_tag()}{sm.new_tag()}@{self.local_host}",
            local_tag=sm.new_tag(),
        )
        self._registrations[reg.call_id] = reg
        self._send_register(reg, now, None)

    def _send_register(
        self, reg: _Registration, now: float, credentials: tuple[str, str] | None
    ) -> None:
        reg.cseq += 1
        reg.refresh_at = None
        req = self._request("REGISTER", reg.registrar, reg.peer, None)
        req.headers.set_single("From", f"<{reg.aor}>;tag={reg.local_tag}")
        req.headers.set_single("To", f"<{reg.aor}>")
        req.headers.set_single("Call-ID", reg.call_id)
        req.headers.set_single("CSeq", f"{reg.cseq} REGISTER")
        req.headers.set_single("Contact", f"<sip:{reg.user}@{self.local_host}:{self.local_port}>")
        req.headers.set_single("Expires", str(reg.expires))
        if credentials is not None:
            req.headers.set_single(*credentials)
        self._start_client(req, reg.peer, now)

    def _on_register_response(self, resp: SipResponse, now: float) -> None:
        reg = self._registrations.get(resp.call_id or "")
        if reg is None or sm.cseq(resp)[0] != reg.cseq:
            return
        status = resp.status_code
        if 200 <= status < 300:
            reg.tried_auth = False
            granted = self._granted(resp, reg)
            # refresh well before the end: at 80 %, or a minute early for long ones
            reg.refresh_at = now + max(
                1.0, min(granted * 0.8, granted - 60.0 if granted > 300 else granted * 0.8)
            )
            self._events.append(RegistrationChanged(reg.registrar, "registered", status, granted))
        elif status in (401, 407) and reg.auth is not None and not reg.tried_auth:
            reg.tried_auth = True
            header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
            challenge = resp.headers.get_first(header)
            creds = (
                build_credentials(
                    SipDigestAuth(*reg.auth), parse_auth(challenge), "REGISTER", reg.registrar
                )
                if challenge
                else None
            )
            if creds is None:
                self._registration_failed(reg, status, now)
                return
            name = "Authorization" if status == 401 else "Proxy-Authorization"
            self._send_register(reg, now, (name, stringify_auth(creds)))
        elif status == 423 and (resp.headers.get_first("min-expires") or "").strip().isdigit():
            reg.expires = int(resp.headers.get_first("min-expires") or reg.expires)
            self._send_register(reg, now, None)
        else:
            self._registration_failed(reg, status, now)

    def _granted(self, resp: SipResponse, reg: _Registration) -> int:
        ours = f"{self.local_host}:{self.local_port}"
        for contact in resp.headers.get("contact"):
            value = _param(contact, "expires")
            if ours in contact and value and value.isdigit():
                return int(value)
        header = (resp.headers.get_first("expires") or "").strip()
        return int(header) if header.isdigit() else reg.expires

    def _registration_failed(self, reg: _Registration, status: int, now: float) -> None:
        reg.tried_auth = False
        reg.refresh_at = now + 60.0  # try again in a minute: carriers come back
        self._events.append(RegistrationChanged(reg.registrar, "failed", status))

    # -- sending -------------------------------------------------------------------------------

    def _send(self, peer: Peer, data: bytes) -> None:
        self._out.append(Transmit(peer, data))

    def _contact(self, peer: Peer) -> str:
        transport = "" if peer.transport == "UDP" else ";transport=tcp"
        return f"<sip:ccengine@{self.local_host}:{self.local_port}{transport}>"

    def _provisional(self, txn: _ServerTxn, status: int, to_tag: str | None) -> None:
        resp = sm.response(txn.request, status, to_tag=to_tag)
        if to_tag:
            resp.headers.set_single("Contact", self._contact(txn.peer))
        txn.last, txn.status = bytes(resp), status
        self._send(txn.peer, txn.last)

    def _final(
        self,
        txn: _ServerTxn,
        status: int,
        to_tag: str | None,
        now: float,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        contact: bool = False,
    ) -> bytes:
        resp = sm.response(txn.request, status, to_tag=to_tag, headers=headers, body=body)
        if contact:
            resp.headers.set_single("Contact", self._contact(txn.peer))
            resp.headers.set_single("Allow", ALLOW)
        data = bytes(resp)
        txn.last, txn.status = data, status
        self._send(txn.peer, data)
        reliable = txn.peer.reliable
        if txn.method == "INVITE":
            if status >= 300:  # Timer G until the ACK, Timer H gives up
                txn.retransmit_at = None if reliable else now + T1
                txn.expire_at = now + TIMER_64T1
            else:  # 2xx: the dialog retransmits; keep the key to absorb INVITE copies
                txn.expire_at = now + TIMER_64T1
        else:  # Timer J
            txn.expire_at = now + (0 if reliable else TIMER_64T1)
        return data

    def _respond_invite(
        self,
        d: Dialog,
        status: int,
        *,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        now: float = 0.0,
    ) -> bytes | None:
        txn = self._server.get(d.invite_key) if d.invite_key else None
        if txn is None:
            return None
        if status < 200:
            self._provisional(txn, status, d.local_tag)
            return txn.last
        return self._final(
            txn, status, d.local_tag, now, body=body, headers=headers, contact=status < 300
        )

    def _bye(self, d: Dialog, now: float) -> None:
        d.local_cseq = max(d.local_cseq, 1) + 1
        req = SipRequest(method="BYE", uri=d.remote_target)
        transport = "UDP" if d.peer.transport == "UDP" else "TCP"
        branch = sm.new_branch()
        req.headers.append(
            "Via", f"SIP/2.0/{transport} {self.local_host}:{self.local_port};branch={branch};rport"
        )
        req.headers.set_single("Max-Forwards", "70")
        for r in d.route:
            req.headers.append("Route", r)
        req.headers.set_single("From", f"{_strip_tag(d.local_uri)};tag={d.local_tag}")
        req.headers.set_single("To", d.remote_uri)
        req.headers.set_single("Call-ID", d.call_id)
        req.headers.set_single("CSeq", f"{d.local_cseq} BYE")
        req.headers.set_single("User-Agent", sm.SERVER)
        data = bytes(req)
        self._send(d.peer, data)
        self._client[(branch, "BYE")] = _ClientTxn(
            data, d.peer, "BYE", now, None if d.peer.reliable else now + T1, call_id=d.call_id
        )
        self._end_dialog(d)

    def _end_dialog(self, d: Dialog) -> None:
        d.state = "terminated"
        d.ok_at = None
        self.dialogs.pop(d.call_id, None)

    def _answer_malformed(self, data: bytes, peer: Peer, exc: SipSyntaxError) -> None:
        """400/416/483/505 to a request we will not act on, if it can be routed back."""
        try:
            req = sm.SipRequest.parse(data)  # the lenient tokenizer: just to echo headers
        except ValueError:
            return
        if not isinstance(req, SipRequest) or req.method == "ACK" or not sm.answerable(req):
            return
        resp = sm.response(req, exc.status or 400, to_tag=sm.new_tag())
        resp.reason_phrase = f"{sm.reason_phrase(exc.status or 400)} ({exc.detail[:80]})"
        self._send(peer, bytes(resp))


def _param(value: str, name: str) -> str | None:
    outside = value.rsplit(">", 1)[1] if ">" in value else value
    for part in outside.split(";")[1:]:
        k, _, v = part.partition("=")
        if k.strip().lower() == name:
            return v.strip()
    return None


def _strip_tag(value: str) -> str:
    outside = value.rsplit(">", 1)
    if len(outside) == 2:
        return (
            outside[0]
            + ">"
            + ";".join(p for p in outside[1].split(";") if not p.strip().lower().startswith("tag"))
        )
    return value


def _info_digit(req: SipRequest) -> str | None:
    """SIP INFO DTMF (application/dtmf-relay: ``Signal=5``), which some phones send."""
    if "dtmf" not in (req.headers.get_first("content-type") or "").lower():
        return None
    for line in req.text.splitlines():
        k, _, v = line.partition("=")
        if k.strip().lower() == "signal" and v.strip()[:1] in "0123456789*#ABCDabcd":
            return v.strip()[:1].upper() or None
    return None
