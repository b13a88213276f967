"""People who use the engine: agents, supervisors, admins. Passwords and tokens.

Passwords are hashed with argon2id (argon2-cffi's defaults). A login that fails
says the same thing, and takes the same time, whether or not the user exists.
Tokens are short-lived JWTs (HS256) naming the user and role, or, for callers, the
one call they may reach; the pages carry them in HttpOnly cookies, API clients as a
Bearer header.
"""

from __future__ import annotations

import functools
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

Role = Literal["agent", "supervisor", "admin"]
ROLES: tuple[Role, ...] = ("agent", "supervisor", "admin")
ALGORITHM = "HS256"
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so both cases cost one argon2 run.
    Made on first use, not at import: an argon2 hash is ~0.3 s of CPU that every engine
    start and every ``ccengine`` command paid (the first unknown name pays it once)."""
    return _hasher.hash(secrets.token_hex(16))


class AuthError(Exception):
    """Credentials or token refused; the message is safe to show."""


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise ValueError("passwords need at least 8 characters")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        checked = _hasher.verify(password_hash or _dummy_hash(), password)
        return checked and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


class Actor(Protocol):
    """Whoever acts on a call or a queue: a person (UserRow), or a program (ApiActor)."""

    @property
    def id(self) -> str: ...

    @property
    def username(self) -> str: ...

    @property
    def role(self) -> str: ...


@dataclass(frozen=True)
class ApiActor:
    """An API key acting on calls: like a supervisor on every call (control scope);
    only an admin key changes queues."""

    id: str  # "key:<key id>"
    username: str  # "api:<key name>", as notes and events name who did it
    role: str  # "operator" or "admin"


@dataclass(frozen=True)
class Identity:
    user_id: str
    username: str
    role: Role
    # The person's token version the token was issued under: signing out, a new
    # password and removal raise the stored one, and older tokens stop working.
    version: int = 0


def issue_token(identity: Identity, key: str, ttl: int, now: float | None = None) -> str:
    now = time.time() if now is None else now
    claims = {
        "sub": identity.user_id,
        "name": identity.username,
        "role": identity.role,
        "ver": identity.version,
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
    version = claims.get("ver")
    return Identity(
        str(claims["sub"]), str(claims.get("name", "")), claims["role"],
        version if isinstance(version, int) else -1,  # older than versions: never current
    )  # fmt: skip


CALLER = "caller"


def token_kind(token: str) -> str | None:
    """Which verifier a token is for (read without checking it: it only picks which
    check runs, and the check is what decides)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise AuthError("invalid token") from None
    kind = claims.get("kind")
    return kind if isinstance(kind, str) else None


def issue_caller_token(call_id: str, key: str, ttl: int, now: float | None = None) -> str:
    """A token that reaches one call only: its events, its record, hanging it up."""
    now = time.time() if now is None else now
    claims = {"sub": f"call:{call_id}", "kind": CALLER, "call": call_id,
              "iat": int(now), "exp": int(now + ttl)}  # fmt: skip
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def read_caller_token(token: str, key: str) -> str:
    """The call a caller token is for."""
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("caller token expired") from None
    except jwt.InvalidTokenError:
        raise AuthError("invalid token") from None
    if claims.get("kind") != CALLER or not isinstance(claims.get("call"), str):
        raise AuthError("invalid token")
    return str(claims["call"])


INVITE = "invite"


def issue_invite(claims: dict[str, str | None], key: str, ttl: int) -> str:
    """A call link's token: who is invited (``caller``), and where their call goes
    (``queue``, ``agent`` id, ``by``, ``callback``)."""
    now = int(time.time())
    body = {k: v for k, v in claims.items() if v is not None}
    token: str = jwt.encode(
        {**body, "kind": INVITE, "iat": now, "exp": now + ttl, "jti": uuid.uuid4().hex},
        key, algorithm=ALGORITHM,
    )  # fmt: skip
    return token


def read_invite(token: str, key: str) -> dict[str, str]:
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("this call link has expired") from None
    except jwt.InvalidTokenError:
        raise AuthError("this call link is not valid") from None
    if claims.get("kind") != INVITE:
        raise AuthError("this call link is not valid")
    return {k: str(v) for k, v in claims.items() if isinstance(v, str)}


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
