"""Who we are on the wire: our address in Via and Contact, the methods we allow, and the
answers we send through server transactions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from media.sip import message as sm
from media.sip.events import Peer
from media.sip.message import SipRequest
from media.sip.transaction import ServerTransaction, Transactions

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REGISTER"
# methods we know but do not serve: 405, where an unknown one gets 501
KNOWN_METHODS = {"SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH", "UPDATE", "PRACK"}


@dataclass(slots=True)
class Local:
    """Our own address; the port may change once the socket is bound (port 0)."""

    host: str
    port: int

    def contact(self, peer: Peer) -> str:
        transport = "" if peer.transport == "UDP" else ";transport=tcp"
        return f"<sip:ccengine@{self.host}:{self.port}{transport}>"

    def via(self, peer: Peer, branch: str) -> str:
        transport = "UDP" if peer.transport == "UDP" else "TCP"
        return f"SIP/2.0/{transport} {self.host}:{self.port};branch={branch};rport"

    def request(self, method: str, uri: str, peer: Peer, branch: str | None) -> SipRequest:
        req = SipRequest(method=method, uri=uri)
        req.headers.append("Via", self.via(peer, branch or sm.new_branch()))
        req.headers.set_single("Max-Forwards", "70")
        req.headers.set_single("User-Agent", sm.SERVER)
        return req


class Replies:
    """Responses to requests we received, each sent in its server transaction."""

    def __init__(self, local: Local, txns: Transactions) -> None:
        self.local = local
        self.txns = txns

    def provisional(
        self, txn: ServerTransaction, status: int, to_tag: str | None, now: float
    ) -> bytes:
        resp = sm.response(txn.request, status, to_tag=to_tag)
        if to_tag:
            resp.headers.set_single("Contact", self.local.contact(txn.peer))
        return self.txns.respond(txn, resp, now)

    def final(
        self,
        txn: ServerTransaction,
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
            resp.headers.set_single("Contact", self.local.contact(txn.peer))
            resp.headers.set_single("Allow", ALLOW)
        return self.txns.respond(txn, resp, now)
