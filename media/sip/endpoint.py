"""The SIP user agent, sans-IO: it wires transactions, dialogs, the registrar,
admission and the UAC together, and is the one surface the transport talks to.

Feed it what arrived (:meth:`SipEndpoint.receive`), let it run its timers
(:meth:`handle_timer` at :meth:`next_timer`), and send what :meth:`transmit`
returns; what the application must decide (a new call, a hang-up, a re-INVITE)
comes out of :meth:`events`. No sockets, no clocks: ``now`` is always passed in,
so every RFC 3261 timer is testable without waiting.

Who owns what:

* :mod:`media.sip.transaction`: retransmissions and absorbed copies (§17), its state
  tables and timers;
* :mod:`media.sip.dialog`: calls once their INVITE is in: 2xx until the ACK (a call
  never acknowledged ends with a BYE), CANCEL (§9.2), in-dialog requests (481, 500);
* :mod:`media.sip.admission`: trunk addresses pass, others answer a digest challenge
  (401, 403 for wrong ones, 401 stale=true for a replay), and who keeps failing gets
  503 with Retry-After for a while (:mod:`media.sip.throttle`);
* :mod:`media.sip.registrar`: REGISTER, one's own address of record only (423 for
  short registrations);
* :mod:`media.sip.uac`: calls we place through a trunk, our registrations to carriers;
* here: which of them a message goes to, and precise answers for the rest: 405/501
  for methods, 415 for bodies, 420 for extensions, 503 when the tables are full; OPTIONS
  gets 200, or 503 while the node takes no new calls (``Admission.unavailable``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from media.sip import message as sm
from media.sip.admission import Admission, Gate
from media.sip.dialog import MAX_DIALOGS, Dialog, Dialogs
from media.sip.digest import DigestServer
from media.sip.events import (
    AuthFailed,
    AuthLockedOut,
    CallCancelled,
    CallConfirmed,
    CallTerminated,
    DtmfInfo,
    Event,
    InviteReceived,
    OutboundAnswered,
    OutboundFailed,
    OutboundRinging,
    Peer,
    Registered,
    RegistrationChanged,
    ReinviteReceived,
    Transmit,
)
from media.sip.local import ALLOW, KNOWN_METHODS, Local, Replies
from media.sip.message import SipRequest, SipResponse, SipSyntaxError
from media.sip.registrar import (
    DEFAULT_EXPIRES,
    MAX_CONTACTS,
    MAX_EXPIRES,
    MIN_EXPIRES,
    Binding,
    Registrar,
)
from media.sip.throttle import AuthThrottle
from media.sip.transaction import (
    MAX_TRANSACTIONS,
    T1,
    T2,
    T4,
    TIMER_64T1,
    ServerTransaction,
    Transactions,
)
from media.sip.uac import Uac

__all__ = [  # what other modules import from here, as before the split
    "ALLOW",
    "DEFAULT_EXPIRES",
    "KNOWN_METHODS",
    "MAX_CONTACTS",
    "MAX_DIALOGS",
    "MAX_EXPIRES",
    "MAX_TRANSACTIONS",
    "MIN_EXPIRES",
    "T1",
    "T2",
    "T4",
    "TIMER_64T1",
    "Admission",
    "AuthFailed",
    "AuthLockedOut",
    "Binding",
    "CallCancelled",
    "CallConfirmed",
    "CallTerminated",
    "Dialog",
    "DtmfInfo",
    "Event",
    "InviteReceived",
    "OutboundAnswered",
    "OutboundFailed",
    "OutboundRinging",
    "Peer",
    "Registered",
    "RegistrationChanged",
    "ReinviteReceived",
    "SipEndpoint",
    "Transmit",
]

log = logging.getLogger(__name__)


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
        self.local = Local(local_host, local_port)
        self.admission = admission or Admission()
        self.digest = digest or DigestServer(self.admission.realm)
        self.throttle = throttle or AuthThrottle()
        self._out: list[Transmit] = []
        self._events: list[Event] = []
        self._txns = Transactions(self._send)
        self._replies = Replies(self.local, self._txns)
        emit = self._emit
        self._gate = Gate(self.admission, self.digest, self.throttle, self._replies, emit)
        self._dialogs = Dialogs(self._txns, self._replies, emit)
        self._registrar = Registrar(self._replies, emit)
        self._uac = Uac(self.local, self._txns, self._dialogs.table, emit)
        self.dialogs: dict[str, Dialog] = self._dialogs.table
        self.bindings: dict[str, dict[str, Binding]] = self._registrar.bindings
        self.malformed = 0

    @property
    def local_host(self) -> str:
        return self.local.host

    @local_host.setter
    def local_host(self, host: str) -> None:
        self.local.host = host

    @property
    def local_port(self) -> int:
        return self.local.port

    @local_port.setter
    def local_port(self, port: int) -> None:
        self.local.port = port  # known once the socket is bound

    # -- I/O surface -------------------------------------------------------------------

    def transmit(self) -> list[Transmit]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def next_timer(self) -> float | None:
        parts = (self._txns, self._dialogs, self._registrar, self._uac)
        times = [t for t in (p.next_timer() for p in parts) if t is not None]
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
        for txn in self._txns.handle_timer(now):  # Timer B or F: nobody answered
            if txn.method == "INVITE":
                self._uac.invite_timed_out(txn.call_id, now)
            elif txn.method == "REGISTER":
                self._uac.registration_failed(txn.call_id, 408, now)
        self._dialogs.handle_timer(now)
        self._uac.handle_timer(now)
        self._registrar.handle_timer(now)

    # -- the application's answers -------------------------------------------------------

    def ring(self, call_id: str, now: float) -> None:
        """180 Ringing."""
        self._dialogs.ring(call_id, now)

    def answer(self, call_id: str, sdp: bytes, now: float) -> None:
        self._dialogs.answer(call_id, sdp, now)

    def reject(
        self, call_id: str, status: int, now: float, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self._dialogs.reject(call_id, status, now, headers)

    def answer_reinvite(
        self, call_id: str, sdp: bytes | None, now: float, status: int = 200
    ) -> None:
        self._dialogs.answer_reinvite(call_id, sdp, now, status)

    def hangup(self, call_id: str, now: float) -> None:
        """End a call from our side: BYE if answered, 480 if still ringing."""
        if self._uac.ringing(call_id):
            self.cancel(call_id, now)
            return
        d = self.dialogs.get(call_id)
        if d is None:
            return
        if d.ok is None and not d.outbound:
            self.reject(call_id, 480, now)  # still ringing here
            return
        self._dialogs.bye(d, now)

    def lookup(self, aor_user: str, now: float) -> list[Binding]:
        return self._registrar.lookup(aor_user, now)

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
        return self._uac.invite(uri, peer, sdp, now, caller, auth)

    def cancel(self, call_id: str, now: float) -> None:
        """Give up on an outbound call still ringing (CANCEL, RFC 3261 §9.1)."""
        self._uac.cancel(call_id, now)

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
        self._uac.register(registrar, user, peer, now, auth, expires)

    # -- what arrived ------------------------------------------------------------------

    def _on_request(self, req: SipRequest, peer: Peer, now: float) -> None:
        method = req.method
        key = (sm.branch(req), "INVITE" if method == "ACK" else method)
        if method == "ACK":
            if not self._txns.ack(key, now):  # not a failure's: the ACK of a 2xx
                self._dialogs.on_ack(req, now)
            return
        if self._txns.absorb(key, peer, now):  # a retransmission: same answer again
            return
        if self._txns.full():
            self._send(peer, bytes(sm.response(req, 503, headers=[("Retry-After", "5")])))
            return
        txn = self._txns.open(key, req, peer, now)
        if method == "CANCEL":
            self._dialogs.on_cancel(req, txn, now)
            return
        to_tag = sm.tag(req.headers.get_first("to"))
        if to_tag is not None:
            self._dialogs.on_request(req, txn, to_tag, now)
            return
        require = req.headers.get_first("require")
        final = self._replies.final
        if require:
            final(txn, 420, sm.new_tag(), now, headers=[("Unsupported", require)])
        elif method == "INVITE":
            self._on_invite(req, txn, now)
        elif method == "OPTIONS":
            accept = [("Allow", ALLOW), ("Accept", "application/sdp")]
            if (retry := self.admission.unavailable()) is not None:
                # a proxy pinging its destinations (Kamailio's dispatcher) takes 503 as
                # "out of rotation": it stops sending INVITEs before any is refused
                final(txn, 503, sm.new_tag(), now, headers=[("Retry-After", str(retry))])
            else:
                final(txn, 200, sm.new_tag(), now, headers=accept)
        elif method == "REGISTER":
            user = self._gate.authenticate(req, txn, now)
            if user is not None:
                self._registrar.register(req, txn, user, now)
        elif method in ("BYE", "INFO"):
            final(txn, 481, sm.new_tag(), now)
        elif method in KNOWN_METHODS:
            final(txn, 405, sm.new_tag(), now, headers=[("Allow", ALLOW)])
        else:
            final(txn, 501, sm.new_tag(), now, headers=[("Allow", ALLOW)])

    def _on_invite(self, req: SipRequest, txn: ServerTransaction, now: float) -> None:
        trunk = self.admission.is_trunk(txn.peer.host)
        user = None
        if not trunk:
            user = self._gate.authenticate(req, txn, now)
            if user is None:
                return
        self._dialogs.open(req, txn, user, trunk, now)

    def _on_response(self, resp: SipResponse, now: float) -> None:
        method = sm.cseq(resp)[1]
        txn = self._txns.on_response(resp, now)
        if method == "INVITE":
            # 2xx retransmissions come outside the transaction: matched by Call-ID
            self._uac.on_invite_response(resp, now)
        elif method == "REGISTER" and txn is not None and resp.status_code >= 200:
            self._uac.on_register_response(resp, now)

    def _emit(self, event: Event) -> None:
        self._events.append(event)  # not a bound append: events() swaps the list

    def _send(self, peer: Peer, data: bytes) -> None:
        self._out.append(Transmit(peer, data))

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
