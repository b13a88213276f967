"""Server side of SIP digest authentication (RFC 3261 §22.4, RFC 7616 qop=auth).

Nonces are signed, not stored: ``<issued>.<salt>.<hmac>`` with a per-process
secret, so a flood of unauthenticated requests costs no memory, and a nonce older
than ``nonce_ttl`` is answered with a fresh challenge marked ``stale=true`` (the UA
retries without asking its user again). So is a right answer to a nonce this process
did not issue (another engine's, when the edge moved the phone, or this engine's before
a restart): nothing is shared between engines, and a phone moves with one more round
trip, never a "wrong password".

What is stored is the use of a nonce, once it has carried a right answer: the
highest nonce count (nc) seen with it (RFC 7616 §3.4.4), or, without qop, that it
was used at all. An Authorization that comes again (a captured one replayed, or an
nc that does not go up) is a REPLAY: challenged again, never let in. Only right
answers are remembered, so the table grows with real sign-ins, not with an
attacker's traffic, and it is bounded: when full, the oldest entry goes and every
nonce issued before it turns stale (a fresh challenge, never a replay let through).

An unknown user is checked against a throw-away password, so the answer and the
time it takes are the same as for a known user with a wrong password: no reply
tells a scanner which user names exist.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from aiosipua import parse_auth

_HASH = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
MAX_TRACKED_NONCES = 10_000
NO_QOP = -1  # the nc recorded for a nonce used without qop: any second use is a replay


class Verdict(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # no credentials for our realm: challenge
    STALE = "stale"  # right password, old nonce: challenge again with stale=true
    REPLAY = "replay"  # right answer seen before (same nonce, nc not higher): challenge again
    WRONG = "wrong"  # wrong user/password or a forged nonce: 403


@dataclass(frozen=True, slots=True)
class AuthResult:
    verdict: Verdict
    username: str | None = None


def claimed_user(authorization: str | None) -> str | None:
    """The user name an Authorization claims, before anything about it is checked."""
    if not authorization:
        return None
    try:
        creds = parse_auth(authorization, credentials=True)
    except (ValueError, IndexError):
        return None
    name = {k.lower(): v for k, v in creds.params.items()}.get("username")
    return name[:128] if name else None


class DigestServer:
    def __init__(
        self,
        realm: str,
        *,
        secret: bytes | None = None,
        nonce_ttl: float = 300,
        max_tracked: int = MAX_TRACKED_NONCES,
    ) -> None:
        self.realm = realm
        self._secret = secret or secrets.token_bytes(32)
        self.nonce_ttl = nonce_ttl
        self._decoy = secrets.token_hex(16)
        self._used: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._max_tracked = max_tracked
        self._stale_before = -1  # nonces issued at or before this second are stale

    def _sign(self, issued: str, salt: str) -> str:
        mac = hmac.new(self._secret, f"{issued}.{salt}".encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    def nonce(self, now: float) -> str:
        # the salt makes every challenge's nonce its own, so each has its own nc sequence
        issued, salt = f"{int(now)}", secrets.token_hex(8)
        return f"{issued}.{salt}.{self._sign(issued, salt)}"

    def challenge(self, now: float, *, stale: bool = False) -> str:
        """A WWW-Authenticate (or Proxy-Authenticate) value."""
        value = f'Digest realm="{self.realm}", nonce="{self.nonce(now)}", algorithm=MD5, qop="auth"'
        return value + (", stale=true" if stale else "")

    def verify(
        self,
        method: str,
        authorization: str | None,
        password_for: Callable[[str], str | None],
        now: float,
    ) -> AuthResult:
        if not authorization:
            return AuthResult(Verdict.MISSING)
        try:
            creds = parse_auth(authorization, credentials=True)
        except (ValueError, IndexError):
            return AuthResult(Verdict.WRONG)
        p = {k.lower(): v for k, v in creds.params.items()}
        if creds.scheme.lower() != "digest" or p.get("realm") != self.realm:
            return AuthResult(Verdict.MISSING)
        username, nonce, uri, given = (
            p.get("username"),
            p.get("nonce", ""),
            p.get("uri"),
            p.get("response", ""),
        )
        algorithm = (p.get("algorithm") or "MD5").upper()
        hasher = _HASH.get(algorithm)
        if not username or not uri or hasher is None:
            return AuthResult(Verdict.WRONG)
        issued, _, rest = nonce.partition(".")
        salt, _, sig = rest.partition(".")
        ours = issued.isdigit() and hmac.compare_digest(sig, self._sign(issued, salt))
        password = password_for(username)
        known = password is not None

        def h(s: str) -> str:
            return hasher(s.encode()).hexdigest()

        ha1 = h(f"{username}:{self.realm}:{password if known else self._decoy}")
        ha2 = h(f"{method}:{uri}")
        qop = p.get("qop")
        nc = NO_QOP
        if qop:
            nc_text = p.get("nc", "")
            if qop.lower() != "auth" or len(nc_text) != 8:
                return AuthResult(Verdict.WRONG)
            try:
                nc = int(nc_text, 16)
            except ValueError:
                return AuthResult(Verdict.WRONG)
            expected = h(f"{ha1}:{nonce}:{nc_text}:{p.get('cnonce', '')}:auth:{ha2}")
        else:
            expected = h(f"{ha1}:{nonce}:{ha2}")
        if not (hmac.compare_digest(expected, given.lower()) and known):
            return AuthResult(Verdict.WRONG)
        if not ours:
            # a right answer to a nonce we did not issue: another engine's (the edge
            # moved the phone here) or this engine's before it restarted. Stale, so the
            # phone answers a fresh challenge at once instead of taking a second 401 as
            # a wrong password; a replayed answer gets only that fresh challenge.
            return AuthResult(Verdict.STALE, username)
        if now - int(issued) > self.nonce_ttl or int(issued) <= self._stale_before:
            return AuthResult(Verdict.STALE, username)
        last = self._used.get(nonce)
        if last is not None and (nc == NO_QOP or last == NO_QOP or nc <= last):
            return AuthResult(Verdict.REPLAY, username)
        self._remember(nonce, nc, now)
        return AuthResult(Verdict.OK, username)

    def _remember(self, nonce: str, nc: int, now: float) -> None:
        self._used[nonce] = nc
        self._used.move_to_end(nonce)
        # forget what has gone stale anyway, oldest first
        while self._used:
            oldest = next(iter(self._used))
            if now - int(oldest.partition(".")[0]) <= self.nonce_ttl:
                break
            del self._used[oldest]
        while len(self._used) > self._max_tracked:
            evicted, _ = self._used.popitem(last=False)
            # its next use must not look new: everything issued up to it turns stale
            self._stale_before = max(self._stale_before, int(evicted.partition(".")[0]))
