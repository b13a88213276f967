"""What we start ourselves (the UAC side): calls out through a trunk and our own
registrations with a carrier.

An outbound INVITE answers a 401/407 once with the trunk's credentials, ACKs a failure
in its own transaction (§17.1.1.3) and a 2xx in a new one (§13.2.2.4), re-sending that
ACK whenever the 2xx comes again. A CANCEL may only follow a provisional (§9.1), so a
hang-up before one waits for it. Nothing waits for ever: a call that rings for
``TIMER_C`` with no final answer is cancelled and fails with 408 (a proxy's Timer C,
§16.6 item 11), and a CANCEL whose INVITE gets no final answer within 64*T1 ends it
anyway with 487 (§9.1). A registration is refreshed well before it runs out and retried
a minute after it fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiosipua import SipDigestAuth, build_credentials, parse_auth, stringify_auth

from media.sip import message as sm
from media.sip.dialog import Dialog
from media.sip.events import (
    Event,
    OutboundAnswered,
    OutboundFailed,
    OutboundRinging,
    Peer,
    RegistrationChanged,
)
from media.sip.local import ALLOW, Local
from media.sip.message import SipRequest, SipResponse
from media.sip.registrar import header_param
from media.sip.transaction import T4, TIMER_64T1, Transactions

# longest a call of ours may ring with no new provisional (RFC 3261 §16.6: a proxy's is
# over 3 min); longer than any ring time the engine lets a user set (300 s at most)
TIMER_C = 330.0


@dataclass(slots=True)
class Outbound:
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
    ringing: bool = False  # told the user (OutboundRinging), once
    final: bool = False
    cancelled: bool = False
    tried_auth: bool = False
    ack: bytes | None = None
    expire_at: float | None = None  # once final: forgotten then
    give_up_at: float | None = None  # while not final: Timer C, or 64*T1 after the CANCEL


@dataclass(slots=True)
class Registration:
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


def _answer_challenge(
    resp: SipResponse, auth: tuple[str, str], method: str, uri: str
) -> tuple[str, str] | None:
    """The Authorization (401) or Proxy-Authorization (407) header answering ``resp``."""
    header = "WWW-Authenticate" if resp.status_code == 401 else "Proxy-Authenticate"
    challenge = resp.headers.get_first(header)
    if not challenge:
        return None
    creds = build_credentials(SipDigestAuth(*auth), parse_auth(challenge), method, uri)
    if creds is None:
        return None
    name = "Authorization" if resp.status_code == 401 else "Proxy-Authorization"
    return name, stringify_auth(creds)


class Uac:
    def __init__(
        self,
        local: Local,
        txns: Transactions,
        dialogs: dict[str, Dialog],
        emit: Callable[[Event], None],
    ) -> None:
        self.local = local
        self.txns = txns
        self.dialogs = dialogs
        self.emit = emit
        self.outbound: dict[str, Outbound] = {}
        self.registrations: dict[str, Registration] = {}  # by Call-ID

    # -- calls out ---------------------------------------------------------------------

    def invite(
        self,
        uri: str,
        peer: Peer,
        sdp: bytes,
        now: float,
        caller: str,
        auth: tuple[str, str] | None,
    ) -> str:
        call_id = f"{sm.new_tag()}{sm.new_tag()}@{self.local.host}"
        out = Outbound(
            call_id=call_id,
            uri=uri,
            peer=peer,
            sdp=sdp,
            local_tag=sm.new_tag(),
            from_value=f"<sip:{caller}@{self.local.host}>",
            auth=auth,
        )
        self.outbound[call_id] = out
        self._send_invite(out, now, None)
        return call_id

    def cancel(self, call_id: str, now: float) -> None:
        out = self.outbound.get(call_id)
        if out is None or out.final or out.branch is None:
            return
        out.cancelled = True
        if not out.provisional:
            return  # a CANCEL may only follow a provisional; sent when one arrives
        self._send_cancel(out, now)

    def ringing(self, call_id: str) -> bool:
        """Still waiting for the callee's final answer."""
        out = self.outbound.get(call_id)
        return out is not None and not out.final

    def _send_cancel(self, out: Outbound, now: float) -> None:
        req = self.local.request("CANCEL", out.uri, out.peer, out.branch)
        req.headers.set_single("From", f"{out.from_value};tag={out.local_tag}")
        req.headers.set_single("To", f"<{out.uri}>")
        req.headers.set_single("Call-ID", out.call_id)
        req.headers.set_single("CSeq", f"{out.cseq} CANCEL")
        self.txns.start(req, out.peer, now)
        # §9.1: a CANCEL whose INVITE gets no final answer in 64*T1 ends it all the same
        # (a trunk that never sends the 487 kept this record for ever)
        out.give_up_at = now + TIMER_64T1

    def _send_invite(self, out: Outbound, now: float, credentials: tuple[str, str] | None) -> None:
        out.cseq += 1
        out.branch = sm.new_branch()
        out.provisional = False
        out.give_up_at = None  # Timer B runs in the new INVITE's transaction
        req = self.local.request("INVITE", out.uri, out.peer, out.branch)
        req.headers.set_single("From", f"{out.from_value};tag={out.local_tag}")
        req.headers.set_single("To", f"<{out.uri}>")
        req.headers.set_single("Call-ID", out.call_id)
        req.headers.set_single("CSeq", f"{out.cseq} INVITE")
        req.headers.set_single("Contact", self.local.contact(out.peer))
        req.headers.set_single("Allow", ALLOW)
        if credentials is not None:
            req.headers.set_single(*credentials)
        req.headers.set_single("Content-Type", "application/sdp")
        req.body = out.sdp
        self.txns.start(req, out.peer, now)

    def _ack(
        self, out: Outbound, resp: SipResponse, branch: str, target: str, *, dialog: bool
    ) -> bytes:
        """``dialog``: the ACK of a 2xx (its own transaction), else of a failure (the
        INVITE's, hop by hop: §17.1.1.3, no route set of the response's)."""
        req = self.local.request("ACK", target, out.peer, branch)
        if dialog:
            # the ACK of a 2xx is the dialog's first request (§13.2.2.4): it follows the
            # route set the proxies recorded, as the BYE does; without it a
            # record-routing proxy (the edge relaying to a desk phone) has nothing to
            # route it by, and the phone resends its 200 until it gives up
            for r in reversed(resp.headers.get("record-route")):
                req.headers.append("Route", r)
        req.headers.set_single("From", f"{out.from_value};tag={out.local_tag}")
        req.headers.set_single("To", resp.headers.get_first("to") or "")
        req.headers.set_single("Call-ID", out.call_id)
        req.headers.set_single("CSeq", f"{out.cseq} ACK")
        data = bytes(req)
        self.txns.send(out.peer, data)
        return data

    def on_invite_response(self, resp: SipResponse, now: float) -> None:
        """Any response to an INVITE of ours, matched by Call-ID and CSeq: 2xx copies
        come outside the transaction."""
        out = self.outbound.get(resp.call_id or "")
        if out is None or sm.cseq(resp) != (out.cseq, "INVITE"):
            return
        status = resp.status_code
        if status < 200:
            if not out.provisional:
                out.provisional = True
                if out.cancelled:
                    self._send_cancel(out, now)
            if not out.cancelled:  # each provisional restarts it, as for a proxy
                out.give_up_at = now + TIMER_C
            # a trunk answers 100 Trying first: ringing is the first 180/183, not the
            # first provisional
            if status in (180, 183) and not out.ringing and not out.cancelled:
                out.ringing = True
                self.emit(OutboundRinging(out.call_id))
            return
        if 200 <= status < 300:
            if out.ack is not None:  # the 200 again: our ACK was lost
                self.txns.send(out.peer, out.ack)
                return
            self._answered(out, resp, now)
            return
        # a failure: ACK it in the same transaction (§17.1.1.3)
        self._ack(out, resp, out.branch or sm.new_branch(), out.uri, dialog=False)
        if out.final:  # a copy (our ACK was lost): ACKed again, and told only once
            return
        if status in (401, 407) and out.auth is not None and not out.tried_auth:
            out.tried_auth = True
            credentials = _answer_challenge(resp, out.auth, "INVITE", out.uri)
            if credentials is not None:
                self._send_invite(out, now, credentials)
                return
        out.final = True
        out.expire_at = now + T4
        self.emit(OutboundFailed(out.call_id, status, resp.reason_phrase))

    def _answered(self, out: Outbound, resp: SipResponse, now: float) -> None:
        contact = resp.headers.get_first("contact") or ""
        target = sm.address_uri(contact) or out.uri
        out.ack = self._ack(out, resp, sm.new_branch(), target, dialog=True)
        out.final = True
        self.dialogs[out.call_id] = Dialog(
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
        out.expire_at = now + TIMER_64T1  # absorb 200 retransmissions, then forget
        self.emit(OutboundAnswered(out.call_id, resp.body))

    def _give_up(self, out: Outbound, now: float) -> None:
        """No final answer in time: rang for Timer C (cancel it, 408) or cancelled 64*T1
        ago (487, as the callee should have said)."""
        out.final, out.give_up_at = True, None
        if out.cancelled:
            del self.outbound[out.call_id]
            self.emit(OutboundFailed(out.call_id, 487, "Request Terminated"))
            return
        # kept for 64*T1: its 487 is ACKed when it comes, a crossing 200 gets ACK and BYE
        out.cancelled, out.expire_at = True, now + TIMER_64T1
        self._send_cancel(out, now)
        out.give_up_at = None
        self.emit(OutboundFailed(out.call_id, 408, "Request Timeout"))

    def invite_timed_out(self, call_id: str, now: float) -> None:
        """Timer B: nobody answered at all."""
        out = self.outbound.get(call_id)
        if out is not None and not out.final:
            out.final, out.expire_at = True, now
            self.emit(OutboundFailed(out.call_id, 408, "Request Timeout"))

    # -- registering to a carrier ------------------------------------------------------

    def register(
        self,
        registrar: str,
        user: str,
        peer: Peer,
        now: float,
        auth: tuple[str, str] | None,
        expires: int,
    ) -> None:
        host = registrar.split(":", 1)[1] if ":" in registrar else registrar
        reg = Registration(
            registrar=registrar,
            aor=f"sip:{user}@{host.split(';')[0]}",
            user=user,
            peer=peer,
            auth=auth,
            expires=expires,
            call_id=f"{sm.new_tag()}{sm.new_tag()}@{self.local.host}",
            local_tag=sm.new_tag(),
        )
        self.registrations[reg.call_id] = reg
        self._send_register(reg, now, None)

    def _send_register(
        self, reg: Registration, now: float, credentials: tuple[str, str] | None
    ) -> None:
        reg.cseq += 1
        reg.refresh_at = None
        req = self.local.request("REGISTER", reg.registrar, reg.peer, None)
        req.headers.set_single("From", f"<{reg.aor}>;tag={reg.local_tag}")
        req.headers.set_single("To", f"<{reg.aor}>")
        req.headers.set_single("Call-ID", reg.call_id)
        req.headers.set_single("CSeq", f"{reg.cseq} REGISTER")
        req.headers.set_single("Contact", f"<sip:{reg.user}@{self.local.host}:{self.local.port}>")
        req.headers.set_single("Expires", str(reg.expires))
        if credentials is not None:
            req.headers.set_single(*credentials)
        self.txns.start(req, reg.peer, now)

    def on_register_response(self, resp: SipResponse, now: float) -> None:
        """A final response to a REGISTER of ours, in its transaction."""
        reg = self.registrations.get(resp.call_id or "")
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
            self.emit(RegistrationChanged(reg.registrar, "registered", status, granted))
        elif status in (401, 407) and reg.auth is not None and not reg.tried_auth:
            reg.tried_auth = True
            credentials = _answer_challenge(resp, reg.auth, "REGISTER", reg.registrar)
            if credentials is None:
                self.registration_failed(reg.call_id, status, now)
                return
            self._send_register(reg, now, credentials)
        elif status == 423 and (resp.headers.get_first("min-expires") or "").strip().isdigit():
            reg.expires = int(resp.headers.get_first("min-expires") or reg.expires)
            self._send_register(reg, now, None)
        else:
            self.registration_failed(reg.call_id, status, now)

    def _granted(self, resp: SipResponse, reg: Registration) -> int:
        ours = f"{self.local.host}:{self.local.port}"
        for contact in resp.headers.get("contact"):
            value = header_param(contact, "expires")
            if ours in contact and value and value.isdigit():
                return int(value)
        header = (resp.headers.get_first("expires") or "").strip()
        return int(header) if header.isdigit() else reg.expires

    def registration_failed(self, call_id: str, status: int, now: float) -> None:
        """A failure, or Timer F (the registrar is silent): try again in a minute."""
        reg = self.registrations.get(call_id)
        if reg is None:
            return
        reg.tried_auth = False
        reg.refresh_at = now + 60.0  # carriers come back
        self.emit(RegistrationChanged(reg.registrar, "failed", status))

    # -- time --------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        times = [o.expire_at for o in self.outbound.values() if o.expire_at]
        times += [o.give_up_at for o in self.outbound.values() if o.give_up_at and not o.final]
        times += [r.refresh_at for r in self.registrations.values() if r.refresh_at]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for call_id, out in list(self.outbound.items()):
            if out.final:
                if out.expire_at is not None and now >= out.expire_at:
                    del self.outbound[call_id]
            elif out.give_up_at is not None and now >= out.give_up_at:
                self._give_up(out, now)
        for reg in self.registrations.values():
            if reg.refresh_at is not None and now >= reg.refresh_at:
                reg.tried_auth = False
                self._send_register(reg, now, None)
