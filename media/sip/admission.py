"""Who may call and register: trunk addresses pass, everyone else answers a digest
challenge, and whoever keeps failing is refused for a while."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from media.sip import message as sm
from media.sip.digest import DigestServer, Verdict, claimed_user
from media.sip.events import AuthFailed, AuthLockedOut, Event
from media.sip.local import Replies
from media.sip.message import SipRequest
from media.sip.throttle import AuthThrottle
from media.sip.transaction import ServerTransaction


@dataclass
class Admission:
    """Who may call and register."""

    realm: str = "ccengine"
    trunks: list[str] = field(default_factory=list)  # addresses or networks, CIDR ok
    passwords: Callable[[str], str | None] = lambda _user: None
    # a Retry-After (s) while the node takes no new calls (draining), else None: OPTIONS
    # outside a dialog, the health check of SIP proxies, is then answered 503 with it
    unavailable: Callable[[], int | None] = lambda: None

    def __post_init__(self) -> None:
        self._nets = [ipaddress.ip_network(t, strict=False) for t in self.trunks]

    def is_trunk(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in n for n in self._nets)


class Gate:
    """Checks a request's digest answer, and answers 401/403/503 itself when it fails."""

    def __init__(
        self,
        admission: Admission,
        digest: DigestServer,
        throttle: AuthThrottle,
        replies: Replies,
        emit: Callable[[Event], None],
    ) -> None:
        self.admission = admission
        self.digest = digest
        self.throttle = throttle
        self.replies = replies
        self.emit = emit

    def authenticate(self, req: SipRequest, txn: ServerTransaction, now: float) -> str | None:
        """The digest user, or None after answering 401/403/503 ourselves."""
        final = self.replies.final
        authorization = req.headers.get_first("authorization")
        host = txn.peer.host
        if self.admission.is_trunk(host):
            # through a trusted proxy (the SIP edge): failures count against the phone's
            # own address, not the proxy's, or one phone guessing wrong would lock out
            # every phone behind the edge
            host = sm.forwarded_source(req) or host
        claimed = claimed_user(authorization)
        # only answers are throttled (a bare request just gets its challenge), and
        # before the password is checked: a locked-out guess learns nothing
        wait = self.throttle.refused(claimed, host, now) if authorization else None
        if wait is not None:
            retry = str(math.ceil(wait))
            final(txn, 503, sm.new_tag(), now, headers=[("Retry-After", retry)])
            self.emit(AuthFailed("throttled", claimed, host))
            return None
        result = self.digest.verify(req.method, authorization, self.admission.passwords, now)
        if result.verdict is Verdict.OK:
            assert result.username is not None
            self.throttle.succeeded(result.username, host, now)
            return result.username
        if result.verdict is Verdict.WRONG:
            final(txn, 403, sm.new_tag(), now)
            self.emit(AuthFailed("wrong", claimed, host))
            for lockout in self.throttle.failed(claimed, host, now):
                self.emit(AuthLockedOut(lockout, host))
            return None
        # a replayed answer is challenged like a stale one: the UA (or whoever replays
        # it) must answer a fresh nonce, which needs the password
        stale = result.verdict in (Verdict.STALE, Verdict.REPLAY)
        if result.verdict is Verdict.REPLAY:
            self.emit(AuthFailed("replay", claimed, host))
        challenge = self.digest.challenge(now, stale=stale)
        final(txn, 401, sm.new_tag(), now, headers=[("WWW-Authenticate", challenge)])
        return None
