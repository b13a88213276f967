"""What the SIP endpoint hands out: datagrams to send and events for the application.

:class:`Peer` names where a message came from (and so where its answers go);
:class:`Transmit` is one message to send there. The events are nouns the application
decides on (a new call, a hang-up, a registration); the endpoint never decides for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from media.sip.message import SipRequest
from media.sip.throttle import Lockout


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
