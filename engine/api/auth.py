"""Who is asking, and may they: API keys, people's sign-in tokens, caller tokens.

Three kinds of credentials, all sent as ``Authorization: Bearer`` (or, for the pages,
as HttpOnly SameSite=Strict cookies a browser sends by itself, WebSockets included):

* an API key ``cck_<id>_<secret>`` with scopes read, control, admin (``ccengine keys``);
* a person's token (JWT) from ``POST /api/v1/auth/login``: agents and supervisors get
  read and control, admins all three; cookie ``ccengine_token``;
* a caller token (JWT) from ``POST /api/v1/calls``: reaches only that call; cookie
  ``ccengine_caller``, scoped to the call's path.

Every request is counted against its client's rate limit (the key, the person, the
call, or the address when anonymous); over it: 429 with Retry-After. Tokens never
travel in URLs, so access logs never hold one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from engine.api.schemas import Login, LoginOut, UserOut
from engine.events import utcnow
from engine.keys import PREFIX, Scope, expand, parse_key, role_scopes, secret_matches
from engine.ratelimit import RateLimiter, retry_after
from engine.store.models import UserRow
from engine.users import (
    Actor,
    ApiActor,
    AuthError,
    Identity,
    issue_token,
    read_caller_token,
    read_token,
    verify_password,
)

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])
COOKIE = "ccengine_token"
CALLER_COOKIE = "ccengine_caller"
REFUSED = "wrong username or password"  # never says which of the two
CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Principal:
    kind: Literal["key", "user", "caller", "anonymous"]
    client: str  # the rate-limit bucket, and the name safe to log: "key:<id>", ...
    scopes: frozenset[Scope] = frozenset()
    identity: Identity | None = None  # people
    call_id: str | None = None  # callers: the one call they may reach
    name: str = ""  # API keys: what the key is for (``ccengine keys create NAME``)
    per_minute: int = field(default=0, compare=False)

    def need(self, scope: Scope) -> None:
        if self.kind == "anonymous":
            raise HTTPException(401, "send an API key or sign in", headers=CHALLENGE)
        if scope not in self.scopes:
            what = "this token" if self.kind != "key" else "this API key"
            raise HTTPException(403, f"{what} lacks the {scope} scope")

    def need_call(self, call_id: str, scope: Scope) -> None:
        """The caller of ``call_id`` may; anyone else needs ``scope``."""
        if self.kind == "caller":
            if self.call_id != call_id:
                raise HTTPException(403, "this caller token is for another call")
            return
        self.need(scope)


class _Credentials:
    """Per-app state: the rate limiter and when each key was last marked used."""

    def __init__(self) -> None:
        self.limiter = RateLimiter()
        self.key_touched: dict[str, float] = {}


def _bearer(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


async def _resolve(conn: HTTPConnection) -> Principal:
    app = conn.app
    settings = app.state.settings
    creds: _Credentials = app.state.credentials
    token = _bearer(conn)
    if token is not None and token.startswith(PREFIX):
        parsed = parse_key(token)
        row = await app.state.calls.store.api_key(parsed[0]) if parsed else None
        if parsed is None or row is None or not secret_matches(parsed[1], row.secret_hash):
            raise HTTPException(401, "unknown API key", headers=CHALLENGE)
        if row.revoked_at is not None:
            raise HTTPException(401, "this API key was revoked", headers=CHALLENGE)
        now = time.monotonic()
        if now - creds.key_touched.get(row.id, -1e9) > 60:  # one write a minute, not each
            creds.key_touched[row.id] = now
            await app.state.calls.store.touch_api_key(row.id, utcnow())
        return Principal(
            "key", f"key:{row.id}", expand(row.scopes), name=row.name,
            per_minute=row.rate_per_minute,
        )  # fmt: skip
    key = app.state.secret_key
    user_token = token if token is not None else conn.cookies.get(COOKIE)
    if user_token:
        try:
            who = read_token(user_token, key)
        except AuthError as exc:
            try:
                call_id = read_caller_token(user_token, key)
            except AuthError:
                raise HTTPException(401, str(exc), headers=CHALLENGE) from None
            return _caller(call_id, settings.rate_per_minute)
        # the token was signed before any change: a removed person is refused at once,
        # and a changed role counts from the next request
        row = await app.state.calls.store.user(who.user_id)
        if row is None:
            raise HTTPException(401, "this user no longer exists", headers=CHALLENGE)
        who = Identity(row.id, row.username, row.role)
        return Principal(
            "user",
            f"user:{who.user_id}",
            role_scopes(who.role),
            identity=who,
            per_minute=settings.rate_per_minute,
        )
    caller_token = conn.cookies.get(CALLER_COOKIE)
    if caller_token:
        try:
            call_id = read_caller_token(caller_token, key)
        except AuthError as exc:
            raise HTTPException(401, str(exc), headers=CHALLENGE) from None
        return _caller(call_id, settings.rate_per_minute)
    address = conn.client.host if conn.client else "unknown"
    return Principal("anonymous", f"ip:{address}", per_minute=settings.anonymous_rate_per_minute)


def _caller(call_id: str, per_minute: int) -> Principal:
    return Principal("caller", f"call:{call_id}", call_id=call_id, per_minute=per_minute)


async def principal(conn: HTTPConnection) -> Principal:
    """Who is asking (anonymous included), counted against their rate limit."""
    p = await _resolve(conn)
    creds: _Credentials = conn.app.state.credentials
    wait = creds.limiter.take(p.client, p.per_minute, time.monotonic())
    if wait > 0:
        raise HTTPException(
            429,
            f"over {p.per_minute} requests a minute; retry in {retry_after(wait)} s",
            headers={"Retry-After": retry_after(wait)},
        )
    return p


Who = Annotated[Principal, Depends(principal)]


def _scoped(scope: Scope) -> object:
    async def dependency(p: Who) -> Principal:
        p.need(scope)
        return p

    return Depends(dependency)


Reader = Annotated[Principal, _scoped("read")]
Controller = Annotated[Principal, _scoped("control")]
Admin = Annotated[Principal, _scoped("admin")]


def install(app: FastAPI) -> None:
    app.state.credentials = _Credentials()


def identity(p: Who) -> Identity:
    """A person signed in; API keys and callers are refused."""
    if p.identity is not None:
        return p.identity
    if p.kind == "anonymous":
        raise HTTPException(401, "sign in first", headers=CHALLENGE)
    raise HTTPException(403, "this needs a person signed in, not an API key or caller token")


Authenticated = Annotated[Identity, Depends(identity)]


async def current_user(request: Request, who: Authenticated) -> UserRow:
    user = await request.app.state.calls.store.user(who.user_id)
    if user is None:
        raise HTTPException(401, "this user no longer exists")
    return user


CurrentUser = Annotated[UserRow, Depends(current_user)]


async def operator(request: Request, p: Who) -> Actor:
    """Who acts on a call: the signed-in person, or a program with a control key."""
    if p.identity is not None:
        return await current_user(request, p.identity)
    p.need("control")
    if p.kind != "key":
        raise HTTPException(403, "a caller token cannot control calls")
    return ApiActor(p.client, f"api:{p.name}", "admin" if "admin" in p.scopes else "operator")


Operator = Annotated[Actor, Depends(operator)]


async def editor(p: Who) -> str:
    """Who may change rules and articles: supervisors and admins, or an admin key; the
    name kept with the change."""
    if p.identity is not None and p.identity.role in ("supervisor", "admin"):
        return p.identity.username
    if p.identity is not None:
        raise HTTPException(403, "only supervisors and admins change rules and articles")
    p.need("admin")
    return f"api:{p.name}"


Editor = Annotated[str, Depends(editor)]


@router.post("/login", response_model=LoginOut)
async def login(body: Login, request: Request, response: Response, _p: Who) -> LoginOut:
    user = await request.app.state.calls.store.user_by_name(body.username)
    if not verify_password(user.password_hash if user else None, body.password) or user is None:
        raise HTTPException(401, REFUSED)
    ttl = request.app.state.settings.token_ttl
    token = issue_token(
        Identity(user.id, user.username, user.role), request.app.state.secret_key, ttl
    )
    response.set_cookie(COOKIE, token, max_age=ttl, httponly=True, samesite="strict")
    return LoginOut(
        token=token, expires_in=ttl, user=UserOut.model_validate(user, from_attributes=True)
    )


@router.post("/logout", status_code=204)
async def logout(response: Response) -> Response:
    response.delete_cookie(COOKIE)
    response.status_code = 204
    return response


@router.get("/me", response_model=UserOut)
async def me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user, from_attributes=True)
