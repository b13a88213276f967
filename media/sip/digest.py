"""Server side of SIP digest authentication (RFC 3261 §22.4, RFC 7616 qop=auth).

Nonces are stateless: ``<issued>.<hmac>`` signed with a per-process secret, so a
flood of unauthenticated requests costs no memory, and a nonce older than
``nonce_ttl`` is answered with a fresh challenge marked ``stale=true`` (the UA
retries without asking its user again).

An unknown user is checked against a throw-away password, so the answer and the
time it takes are the same as for a known user with a wrong password: no reply
tells a scanner which user names exist.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from aiosipua import parse_auth

_HASH = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


class Verdict(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # no credentials for our realm: challenge
    STALE = "stale"  # right password, old nonce: challenge again with stale=true
    WRONG = "wrong"  # wrong user/password or a forged nonce: 403


@dataclass(frozen=True, slots=True)
class AuthResult:
    verdict: Verdict
    username: str | None = None


class DigestServer:
    def __init__(self, realm: str, *, secret: bytes | None = None, nonce_ttl: float = 300) -> None:
        self.realm = realm
        self._secret = secret or secrets.token_bytes(32)
        self.nonce_ttl = nonce_ttl
        self._decoy = secrets.token_hex(16)

    def _sign(self, issued: str) -> str:
        return hmac.new(self._secret, issued.encode(), hashlib.sha256).hexdigest()[:32]

    def nonce(self, now: float) -> str:
        issued = f"{int(now)}"
        return f"{issued}.{self._sign(issued)}"

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
        issued, _, sig = nonce.partition(".")
        if not hmac.compare_digest(sig, self._sign(issued)) or not issued.isdigit():
            return AuthResult(Verdict.WRONG)
        password = password_for(username)
        known = password is not None

        def h(s: str) -> str:
            return hasher(s.encode()).hexdigest()

        ha1 = h(f"{username}:{self.realm}:{password if known else self._decoy}")
        ha2 = h(f"{method}:{uri}")
        qop = p.get("qop")
        if qop:
            if qop.lower() != "auth":
                return AuthResult(Verdict.WRONG)
            expected = h(f"{ha1}:{nonce}:{p.get('nc', '')}:{p.get('cnonce', '')}:auth:{ha2}")
        else:
            expected = h(f"{ha1}:{nonce}:{ha2}")
        if not (hmac.compare_digest(expected, given.lower()) and known):
            return AuthResult(Verdict.WRONG)
        if now - int(issued) > self.nonce_ttl:
            return AuthResult(Verdict.STALE, username)
        return AuthResult(Verdict.OK, username)
