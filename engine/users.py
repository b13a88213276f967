"""People who use the engine: agents, supervisors, admins. Passwords and tokens.

Passwords are hashed with argon2id (argon2-cffi's defaults). A login that fails
says the same thing, and takes the same time, whether or not the user exists.
Tokens are short-lived JWTs (HS256) naming the user and role; the pages carry
them in an HttpOnly cookie, API clients as a Bearer header.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

Role = Literal["agent", "supervisor", "admin"]
ROLES: tuple[Role, ...] = ("agent", "supervisor", "admin")
ALGORITHM = "HS256"
_hasher = PasswordHasher()
# verified against when the user does not exist, so both cases cost one argon2 run
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class AuthError(Exception):
    """Credentials or token refused; the message is safe to show."""


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise ValueError("passwords need at least 8 characters")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class Identity:
    user_id: str
    username: str
    role: Role


def issue_token(identity: Identity, key: str, ttl: int, now: float | None = None) -> str:
    now = time.time() if now is None else now
    claims = {
        "sub": identity.user_id,
        "name": identity.username,
        "role": identity.role,
        "iat": int(now),
        "exp": int(now + ttl),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def read_token(token: str, key: str) -> Identity:
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("login expired; sign in again") from None
    except jwt.InvalidTokenError:
        raise AuthError("invalid token") from None
    if claims.get("role") not in ROLES:
        raise AuthError("invalid token")
    return Identity(str(claims["sub"]), str(claims.get("name", "")), claims["role"])


def load_or_create_key(path: Path | str) -> str:
    """A signing key that survives restarts: created once, readable by us only."""
    p = Path(path)
    if p.exists():
        return p.read_text().strip()
    key = secrets.token_urlsafe(48)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key
