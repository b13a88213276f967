"""Dialogs (RFC 3261 §12-§15): a call's peer-to-peer relationship once its INVITE is in.

A dialog is matched by Call-ID and both tags; anything else in-dialog gets 481, and a
CSeq that goes backwards gets 500 (§12.2.2). Over UDP our 2xx to an INVITE is
retransmitted (T1 doubling to T2) until the dialog's ACK (§13.3.1.4); a call whose 2xx
is never acknowledged within 64*T1 is ended with a BYE. A dialog lives through
``early`` (ringing) -> ``confirmed`` (the ACK came, or we placed the call) ->
``terminated``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from media.sip import message as sm
from media.sip.events import (
    CallCancelled,
    CallConfirmed,
    CallTerminated,
    DtmfInfo,
    Event,
    InviteReceived,
    Peer,
    ReinviteReceived,
)
from media.sip.local import ALLOW, KNOWN_METHODS, Replies
from media.sip.message import SipRequest
from media.sip.transaction import (
    T1,
    T2,
    TIMER_64T1,
    Key,
    ServerTransaction,
    State,
    Transactions,
)

log = logging.getLogger(__name__)

MAX_DIALOGS = 5_000


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
    invite_key: Key | None = None
    reinvite_key: Key | None = None
    outbound: bool = False  # we placed it (UAC): answered once it exists
    bye_on_ack: bool = False  # rejected after our 2xx: a BYE as soon as the ACK comes


class Dialogs:
    """The endpoint's dialogs by Call-ID, and what happens inside them."""

    def __init__(self, txns: Transactions, replies: Replies, emit: Callable[[Event], None]) -> None:
        self.txns = txns
        self.replies = replies
        self.local = replies.local
        self.emit = emit
        self.table: dict[str, Dialog] = {}

    # -- a new call ----------------------------------------------------------------------

    def open(
        self, req: SipRequest, txn: ServerTransaction, user: str | None, trunk: bool, now: float
    ) -> None:
        """An admitted INVITE outside any dialog: 100 Trying, and the application decides."""
        call_id = req.call_id or ""
        final = self.replies.final
        if call_id in self.table or len(self.table) >= MAX_DIALOGS:
            # a second INVITE for a live Call-ID with a new branch is a loop or a fork
            status = 482 if call_id in self.table else 503
            final(txn, status, sm.new_tag(), now, headers=[("Retry-After", "5")])
            return
        ctype = (req.headers.get_first("content-type") or "application/sdp").split(";")[0]
        if req.body and ctype.strip().lower() != "application/sdp":
            final(txn, 415, sm.new_tag(), now, headers=[("Accept", "application/sdp")])
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
        self.table[call_id] = d
        self.replies.provisional(txn, 100, None, now)
        self.emit(InviteReceived(call_id, req, txn.peer, user, trunk))

    # -- the application's answers -------------------------------------------------------

    def ring(self, call_id: str, now: float) -> None:
        d = self.table.get(call_id)
        if d is not None and d.state == "early" and d.ok is None:
            self.respond_invite(d, 180, now=now)

    def answer(self, call_id: str, sdp: bytes, now: float) -> None:
        d = self.table.get(call_id)
        if d is None or d.state != "early" or d.ok is not None:
            return
        d.ok = self.respond_invite(d, 200, body=sdp, now=now)
        if not d.peer.reliable:
            d.ok_at, d.ok_giveup = now + T1, now + TIMER_64T1

    def reject(
        self, call_id: str, status: int, now: float, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Refuse a call still ringing. Once we have sent a 2xx the INVITE cannot be
        refused any more (its transaction is Accepted) and the call ends the only way a
        session can, with a BYE (§15); the callee must not send it before the ACK of its
        2xx (§15), so until the ACK comes it is owed: sent at the ACK, or by the missing
        ACK's own BYE after 64*T1. (The dialog used to vanish with no BYE: the caller
        stayed in a call nobody served.)"""
        d = self.table.get(call_id)
        if d is None:
            return
        if d.ok is None and not d.outbound:
            del self.table[call_id]
            self.respond_invite(d, status, headers=headers, now=now)
            return
        log.info("SIP call %s rejected after its answer: ending it with a BYE", call_id)
        if d.state == "confirmed":
            self.bye(d, now)
        else:
            d.bye_on_ack = True

    def answer_reinvite(
        self, call_id: str, sdp: bytes | None, now: float, status: int = 200
    ) -> None:
        d = self.table.get(call_id)
        if d is None or d.reinvite_key is None:
            return
        txn = self.txns.server.get(d.reinvite_key)
        d.reinvite_key = None
        if txn is None:
            return
        if status >= 300:
            self.replies.final(txn, status, d.local_tag, now)
            return
        d.ok = self.replies.final(txn, 200, d.local_tag, now, body=sdp or b"", contact=True)
        if not d.peer.reliable:
            d.ok_at, d.ok_interval, d.ok_giveup = now + T1, T1, now + TIMER_64T1

    def respond_invite(
        self,
        d: Dialog,
        status: int,
        *,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        now: float,
    ) -> bytes | None:
        txn = self.txns.server.get(d.invite_key) if d.invite_key else None
        if txn is None:
            return None
        if status < 200:
            return self.replies.provisional(txn, status, d.local_tag, now)
        return self.replies.final(
            txn, status, d.local_tag, now, body=body, headers=headers, contact=status < 300
        )

    # -- requests inside a dialog --------------------------------------------------------

    def on_request(self, req: SipRequest, txn: ServerTransaction, to_tag: str, now: float) -> None:
        final = self.replies.final
        d = self.table.get(req.call_id or "")
        from_tag = sm.tag(req.headers.get_first("from"))
        if d is None or d.local_tag != to_tag or d.remote_tag != from_tag:
            final(txn, 481, None, now)
            return
        seq = sm.cseq(req)[0]
        if seq <= d.remote_cseq:
            final(txn, 500, None, now, headers=[("Retry-After", "1")])
            return
        d.remote_cseq = seq
        if req.method == "BYE":
            final(txn, 200, None, now)
            self.terminate_pending(d, now)
            self.end(d)
            self.emit(CallTerminated(d.call_id, "remote_bye"))
        elif req.method == "INVITE":
            if d.reinvite_key is not None or d.state != "confirmed":
                final(txn, 491, None, now)
                return
            d.reinvite_key = (sm.branch(req), "INVITE")
            d.invite = req
            self.replies.provisional(txn, 100, None, now)
            self.emit(ReinviteReceived(d.call_id, req))
        elif req.method == "INFO":
            final(txn, 200, None, now)
            digit = info_digit(req)
            if digit:
                self.emit(DtmfInfo(d.call_id, digit))
        elif req.method == "OPTIONS":
            final(txn, 200, None, now, headers=[("Allow", ALLOW)])
        elif req.method in KNOWN_METHODS:
            final(txn, 405, None, now, headers=[("Allow", ALLOW)])
        else:
            final(txn, 501, None, now, headers=[("Allow", ALLOW)])

    def on_ack(self, req: SipRequest, now: float) -> None:
        """The ACK of our 2xx (its own transaction, §13.2.2.4): the call is confirmed."""
        d = self.table.get(req.call_id or "")
        if d is None or sm.tag(req.headers.get_first("to")) != d.local_tag:
            return  # ACKs are never answered
        if d.ok_at is not None or d.state == "early":
            d.ok_at = d.ok_giveup = None
            if d.bye_on_ack:  # rejected after its answer: the application is done with it
                d.state = "confirmed"
                self.bye(d, now)
                return
            if d.state == "early":
                d.state = "confirmed"
                self.emit(CallConfirmed(d.call_id))

    def on_cancel(self, req: SipRequest, txn: ServerTransaction, now: float) -> None:
        """CANCEL before the answer: 200 to the CANCEL, 487 to the INVITE (§9.2)."""
        invite = self.txns.server.get((sm.branch(req), "INVITE"))
        if invite is None:
            self.replies.final(txn, 481, sm.new_tag(), now)
            return
        d = self.table.get(req.call_id or "")
        self.replies.final(txn, 200, d.local_tag if d else sm.new_tag(), now)
        if d is not None and d.ok is None and invite.state is State.PROCEEDING:
            del self.table[d.call_id]
            self.respond_invite(d, 487, now=now)
            self.emit(CallCancelled(d.call_id))

    # -- ending ----------------------------------------------------------------------------

    def terminate_pending(self, d: Dialog, now: float) -> None:
        """A BYE ends the dialog while its INVITE or a re-INVITE is still unanswered: 487
        to it (§15.1.2), so its transaction completes and ends. Left in Proceeding, which
        has no timer, it stayed for ever, and enough such calls filled the table until
        every request got 503."""
        keys = [d.reinvite_key] + ([d.invite_key] if d.ok is None and not d.outbound else [])
        d.reinvite_key = None
        for key in keys:
            txn = self.txns.server.get(key) if key else None
            if txn is not None and txn.state is State.PROCEEDING:
                self.replies.final(txn, 487, d.local_tag, now)

    def bye(self, d: Dialog, now: float) -> None:
        d.local_cseq = max(d.local_cseq, 1) + 1
        req = SipRequest(method="BYE", uri=d.remote_target)
        req.headers.append("Via", self.local.via(d.peer, sm.new_branch()))
        req.headers.set_single("Max-Forwards", "70")
        for r in d.route:
            req.headers.append("Route", r)
        req.headers.set_single("From", f"{strip_tag(d.local_uri)};tag={d.local_tag}")
        req.headers.set_single("To", d.remote_uri)
        req.headers.set_single("Call-ID", d.call_id)
        req.headers.set_single("CSeq", f"{d.local_cseq} BYE")
        req.headers.set_single("User-Agent", sm.SERVER)
        self.txns.start(req, d.peer, now)
        self.terminate_pending(d, now)
        self.end(d)

    def end(self, d: Dialog) -> None:
        d.state = "terminated"
        d.ok_at = None
        self.table.pop(d.call_id, None)

    # -- time --------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        times = [d.ok_at for d in self.table.values() if d.ok_at]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for d in list(self.table.values()):
            if d.ok_at is not None and d.ok is not None and now >= d.ok_at:
                if d.ok_giveup is not None and now >= d.ok_giveup:
                    d.ok_at = None
                    self.bye(d, now)
                    self.emit(CallTerminated(d.call_id, "no_ack"))
                    continue
                self.txns.send(d.peer, d.ok)
                d.ok_interval = min(d.ok_interval * 2, T2)
                d.ok_at = now + d.ok_interval


def strip_tag(value: str) -> str:
    outside = value.rsplit(">", 1)
    if len(outside) == 2:
        return (
            outside[0]
            + ">"
            + ";".join(p for p in outside[1].split(";") if not p.strip().lower().startswith("tag"))
        )
    return value


def info_digit(req: SipRequest) -> str | None:
    """SIP INFO DTMF (application/dtmf-relay: ``Signal=5``), which some phones send."""
    if "dtmf" not in (req.headers.get_first("content-type") or "").lower():
        return None
    for line in req.text.splitlines():
        k, _, v = line.partition("=")
        if k.strip().lower() == "signal" and v.strip()[:1] in "0123456789*#ABCDabcd":
            return v.strip()[:1].upper() or None
    return None
