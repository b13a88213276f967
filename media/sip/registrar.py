"""The registrar (RFC 3261 §10.3): where each user's phones are, for how long.

A user may register only its own address of record, a handful of contacts each, for
``MIN_EXPIRES`` to ``MAX_EXPIRES`` seconds; a binding that runs out is removed and said
so with a :class:`~media.sip.events.Registered` of 0 seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from media.sip import message as sm
from media.sip.events import Event, Peer, Registered
from media.sip.local import Replies
from media.sip.message import SipRequest
from media.sip.transaction import ServerTransaction

MIN_EXPIRES, MAX_EXPIRES, DEFAULT_EXPIRES = 60, 3600, 3600
MAX_CONTACTS = 10  # bindings per address of record


@dataclass(slots=True)
class Binding:
    contact: str
    peer: Peer
    expires_at: float


class Registrar:
    def __init__(self, replies: Replies, emit: Callable[[Event], None]) -> None:
        self.replies = replies
        self.emit = emit
        self.bindings: dict[str, dict[str, Binding]] = {}

    def lookup(self, aor_user: str, now: float) -> list[Binding]:
        return [b for b in self.bindings.get(aor_user, {}).values() if b.expires_at > now]

    def register(self, req: SipRequest, txn: ServerTransaction, user: str, now: float) -> None:
        """A REGISTER from ``user``, who has authenticated."""
        final = self.replies.final
        aor = sm.uri_user(sm.address_uri(req.headers.get_first("to") or ""))
        if aor != user:
            final(txn, 403, sm.new_tag(), now)  # one's own address of record only
            return
        default = int(req.headers.get_first("expires") or DEFAULT_EXPIRES)
        bindings = self.bindings.setdefault(aor, {})
        contacts = req.headers.get("contact")
        if contacts == ["*"]:
            if default != 0:
                final(txn, 400, sm.new_tag(), now)
                return
            for c in list(bindings):
                self.emit(Registered(aor, c, 0))
            bindings.clear()
            contacts = []
        for value in contacts:
            uri = sm.address_uri(value)
            m = header_param(value, "expires")
            expires = int(m) if m is not None and m.isdigit() else default
            if 0 < expires < MIN_EXPIRES:
                final(txn, 423, sm.new_tag(), now, headers=[("Min-Expires", str(MIN_EXPIRES))])
                return
            expires = min(expires, MAX_EXPIRES)
            if expires == 0:
                if bindings.pop(uri, None) is not None:
                    self.emit(Registered(aor, uri, 0))
            elif uri not in bindings and len(bindings) >= MAX_CONTACTS:
                final(txn, 403, sm.new_tag(), now)  # one user, a handful of phones
                return
            else:
                bindings[uri] = Binding(uri, txn.peer, now + expires)
                self.emit(Registered(aor, uri, expires))
        if not bindings:
            self.bindings.pop(aor, None)
        now_bound = [
            ("Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now))}")
            for b in bindings.values()
        ]
        final(txn, 200, sm.new_tag(), now, headers=now_bound)

    def next_timer(self) -> float | None:
        times = [b.expires_at for bs in self.bindings.values() for b in bs.values()]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for aor, bs in list(self.bindings.items()):
            for contact, b in list(bs.items()):
                if now >= b.expires_at:
                    del bs[contact]
                    self.emit(Registered(aor, contact, 0))
            if not bs:
                del self.bindings[aor]


def header_param(value: str, name: str) -> str | None:
    """A parameter of a Contact value, outside the URI's angle brackets."""
    outside = value.rsplit(">", 1)[1] if ">" in value else value
    for part in outside.split(";")[1:]:
        k, _, v = part.partition("=")
        if k.strip().lower() == name:
            return v.strip()
    return None
