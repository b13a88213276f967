"""API keys for developers: ``cck_<id>_<secret>``, scopes, and what each scope allows.

The id is public (it names the key in listings and logs); only a SHA-256 hash of the
secret is stored. A salted slow hash buys nothing here: the secret is 32 random bytes,
not a password a person chose, and every request checks it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Literal

Scope = Literal["read", "control", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "control", "admin")
PREFIX = "cck_"
_KEY = re.compile(r"cck_([a-z0-9]{12})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class NewKey:
    id: str
    secret: str
    secret_hash: str

    @property
    def token(self) -> str:
        return f"{PREFIX}{self.id}_{self.secret}"


def new_key() -> NewKey:
    key_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, secret, hash_secret(secret))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    m = _KEY.fullmatch(token)
    return (m.group(1), m.group(2)) if m else None


def secret_matches(secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), secret_hash)


def expand(scopes: list[str] | tuple[str, ...]) -> frozenset[Scope]:
    """Scopes nest: admin may control, and control may read."""
    out: set[Scope] = set()
    for i, scope in enumerate(SCOPES):
        if any(s in SCOPES[i:] for s in scopes):
            out.add(scope)
    return frozenset(out)


def role_scopes(role: str) -> frozenset[Scope]:
    """What a signed-in person may do through the API, by role."""
    return expand(["admin"] if role == "admin" else ["control"])
