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

A cookie authenticates only requests from the engine's own pages (or allowed
origins), and its writes only with ``X-Requested-With`` (``websec.py``). Signing out
revokes every token of that person; so do a new password and removal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from engine.api.schemas import Login, LoginOut, UserOut
from engine.api.websec import OriginPolicy, csrf_refusal, is_https
from engine.events import utcnow
from engine.keys import PREFIX, Scope, expand, parse_key, role_scopes, secret_matches
from engine.ratelimit import Limiter, LocalLimiter, retry_after
from engine.store.models import UserRow
from engine.users import (
    CALLER,
    Actor,
    ApiActor,
    AuthError,
    Identity,
    issue_token,
    read_caller_token,
    read_token,
    token_kind,
    verify_password,
)

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])
COOKIE = "ccengine_token"
CALLER_COOKIE = "ccengine_caller"
REFUSED = "wrong username or password"  # never says which of the two
ENDED = "this sign-in has ended (signed out, or the password changed); sign in again"
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
    """Per-app state: the rate limiter, when each key was last marked used, and a
    signal for open streams that some person's tokens were just revoked."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.key_touched: dict[str, float] = {}
        self._revoked = asyncio.Event()

    def revoked(self) -> None:
        self._revoked.set()
        self._revoked = asyncio.Event()

    async def next_revocation(self) -> None:
        await self._revoked.wait()


def _bearer(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


async def _resolve(conn: HTTPConnection) -> Principal:
    """A bearer credential must be good (401 with the reason); a cookie that no longer
    is (expired, its person removed) is ignored, so a stale cookie never keeps anyone
    from signing in again or from calling."""
    settings = conn.app.state.settings
    token = _bearer(conn)
    if token is not None:
        if token.startswith(PREFIX):
            return await _api_key(conn, token)
        return await _token(conn, token)
    for cookie in (COOKIE, CALLER_COOKIE):
        value = conn.cookies.get(cookie)
        if not value:
            continue
        try:
            p = await _token(conn, value)
        except HTTPException:
            continue
        # a browser sends cookies with requests other sites' pages make: only ours count
        why = conn.app.state.origins.refusal(conn) or csrf_refusal(conn)
        if why is not None:
            raise HTTPException(403, why)
        return p
    return Principal(
        "anonymous", f"ip:{_address(conn)}", per_minute=settings.anonymous_rate_per_minute
    )


def _address(conn: HTTPConnection) -> str:
    """The client's address: the peer's, or what a trusted proxy says it is (only
    CCENGINE_TRUSTED_PROXIES are believed; ProxyHeadersMiddleware has applied that)."""
    return conn.client.host if conn.client else "unknown"


async def _api_key(conn: HTTPConnection, token: str) -> Principal:
    store = conn.app.state.store
    creds: _Credentials = conn.app.state.credentials
    parsed = parse_key(token)
    row = await store.api_key(parsed[0]) if parsed else None
    if parsed is None or row is None or not secret_matches(parsed[1], row.secret_hash):
        raise HTTPException(401, "unknown API key", headers=CHALLENGE)
    if row.revoked_at is not None:
        raise HTTPException(401, "this API key was revoked", headers=CHALLENGE)
    now = time.monotonic()
    if now - creds.key_touched.get(row.id, -1e9) > 60:  # one write a minute, not each
        creds.key_touched[row.id] = now
        await store.touch_api_key(row.id, utcnow())
    return Principal(
        "key", f"key:{row.id}", expand(row.scopes), name=row.name,
        per_minute=row.rate_per_minute,
    )  # fmt: skip


async def _token(conn: HTTPConnection, token: str) -> Principal:
    """A person's token, or a caller's."""
    key, per_minute = conn.app.state.secret_key, conn.app.state.settings.rate_per_minute
    try:
        if token_kind(token) == CALLER:
            return _caller(read_caller_token(token, key), per_minute)
        who = read_token(token, key)
    except AuthError as exc:
        raise HTTPException(401, str(exc), headers=CHALLENGE) from None
    # the token was signed before any change: a removed person is refused at once,
    # a token from before a sign-out or a new password too, and a changed role counts
    # from the next request
    row = await conn.app.state.store.user(who.user_id)
    if row is None:
        raise HTTPException(401, "this user no longer exists", headers=CHALLENGE)
    if who.version != row.token_version:
        raise HTTPException(401, ENDED, headers=CHALLENGE)
    who = Identity(row.id, row.username, row.role, row.token_version)
    return Principal(
        "user", f"user:{who.user_id}", role_scopes(who.role), identity=who,
        per_minute=per_minute,
    )  # fmt: skip


def _caller(call_id: str, per_minute: int) -> Principal:
    return Principal("caller", f"call:{call_id}", call_id=call_id, per_minute=per_minute)


async def principal(conn: HTTPConnection) -> Principal:
    """Who is asking (anonymous included), counted against their rate limit. Refused
    credentials count against the address's, so guessing keys is as slow as guessing
    passwords."""
    creds: _Credentials = conn.app.state.credentials
    try:
        p = await _resolve(conn)
    except HTTPException:
        anonymous = conn.app.state.settings.anonymous_rate_per_minute
        await _count(creds, f"ip:{_address(conn)}", anonymous)
        raise
    await _count(creds, p.client, p.per_minute)
    return p


async def _count(creds: _Credentials, client: str, per_minute: int) -> None:
    wait = await creds.limiter.take(client, per_minute)
    if wait > 0:
        raise HTTPException(
            429,
            f"over {per_minute} requests a minute; retry in {retry_after(wait)} s",
            headers={"Retry-After": retry_after(wait)},
        )


Who = Annotated[Principal, Depends(principal)]


def _scoped(scope: Scope) -> object:
    async def dependency(p: Who) -> Principal:
        p.need(scope)
        return p

    return Depends(dependency)


Reader = Annotated[Principal, _scoped("read")]
Admin = Annotated[Principal, _scoped("admin")]


def install(app: FastAPI) -> None:
    settings = app.state.settings
    limiter: Limiter = LocalLimiter()
    if settings.redis_url:  # every engine counts a client's requests in the same buckets
        from engine.ratelimit_redis import RedisLimiter  # limits is loaded only for this

        limiter = RedisLimiter(settings.redis_url, settings.redis_prefix)
    app.state.credentials = _Credentials(limiter)
    # "*" in CCENGINE_CORS_ORIGINS is no origin: it never lets a page use the cookies
    app.state.origins = OriginPolicy([*settings.allowed_origins, *settings.cors_origins])


def cookie_options(conn: HTTPConnection, path: str = "/") -> dict[str, Any]:
    """The attributes a cookie is set with, and cleared with: the same both times, so
    a browser replaces the cookie it holds rather than keeping it beside another.
    Secure when the browser came over HTTPS (directly or through a trusted proxy)."""
    return {"path": path, "httponly": True, "samesite": "strict", "secure": is_https(conn)}


def identity(p: Who) -> Identity:
    """A person signed in; API keys and callers are refused."""
    if p.identity is not None:
        return p.identity
    if p.kind == "anonymous":
        raise HTTPException(401, "sign in first", headers=CHALLENGE)
    raise HTTPException(403, "this needs a person signed in, not an API key or caller token")


Authenticated = Annotated[Identity, Depends(identity)]


async def current_user(request: Request, who: Authenticated) -> UserRow:
    """The person as the database has them now, refused if that is no longer who the
    token was let in as: a sign-out (or a new password) committed between the token's
    check and this read would otherwise hand on a record stamped with the new version,
    and what is kept from it (a supervisor leg's version) would pass every check."""
    user = await request.app.state.store.user(who.user_id)
    if user is None:
        raise HTTPException(401, "this user no longer exists", headers=CHALLENGE)
    if user.token_version != who.version:
        raise HTTPException(401, ENDED, headers=CHALLENGE)
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
    name kept with the change. (Flows are admins' alone: engine/api/bot.py.)"""
    if p.identity is not None and p.identity.role in ("supervisor", "admin"):
        return p.identity.username
    if p.identity is not None:
        raise HTTPException(403, "only supervisors and admins change rules and articles")
    p.need("admin")
    return f"api:{p.name}"


Editor = Annotated[str, Depends(editor)]


async def signing_in(conn: HTTPConnection) -> None:
    """Sign-in attempts count against the address, whatever cookie came along, and
    pages on other origins may not sign a browser in (as someone of their choosing)."""
    settings = conn.app.state.settings
    creds = conn.app.state.credentials
    await _count(creds, f"ip:{_address(conn)}", settings.anonymous_rate_per_minute)
    why = conn.app.state.origins.refusal(conn)
    if why is not None:
        raise HTTPException(403, why)


@router.post("/login", response_model=LoginOut, dependencies=[Depends(signing_in)])
async def login(body: Login, request: Request, response: Response) -> LoginOut:
    user = await request.app.state.store.user_by_name(body.username)
    # argon2 takes ~170 ms of CPU: on the loop it would stall every call's audio
    stored = user.password_hash if user else None
    if not await asyncio.to_thread(verify_password, stored, body.password) or user is None:
        raise HTTPException(401, REFUSED)
    ttl = request.app.state.settings.token_ttl
    token = issue_token(
        Identity(user.id, user.username, user.role, user.token_version),
        request.app.state.secret_key,
        ttl,
    )
    response.set_cookie(COOKIE, token, max_age=ttl, **cookie_options(request))
    return LoginOut(
        token=token, expires_in=ttl, user=UserOut.model_validate(user, from_attributes=True)
    )


@router.post("/logout", status_code=204)
async def logout(request: Request, p: Who) -> Response:
    """Clear the sign-in cookie and, when a person's token came with the request (cookie
    or bearer), end every sign-in of that person: all their tokens, in every browser
    and program, are refused from now on."""
    if p.identity is not None:
        await revoke_tokens(request, p.identity.user_id)  # the other engines told too
        # signed out is off every call they were listening to (engine/monitoring.py)
        await request.app.state.calls.monitors.user_gone(p.identity.user_id)
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, **cookie_options(request))
    return response


async def revoke_tokens(request: Request, user_id: str, **changes: Any) -> None:
    """Every token issued to this person so far stops working (with ``changes`` to
    their record in the same write); streams they hold open end, on every engine."""
    await request.app.state.store.update_user(
        user_id, token_version=UserRow.token_version + 1, **changes
    )
    await people_changed(request)


async def people_changed(request: Request) -> None:
    """Someone was just signed out, given a new password, a new role or removed (the
    database written): this engine's open streams check their credentials now, and
    the other engines are told (engine/changes.py: their supervisor legs and streams).
    Right after the write, before the slow local teardown (this engine's supervisor
    legs): a request cancelled during that has told the others already."""
    tokens_revoked(request.app)
    await request.app.state.changes.changed("people")


def tokens_revoked(app: FastAPI) -> None:
    """Open streams: check your credential again now."""
    credentials: _Credentials = app.state.credentials
    credentials.revoked()


RECHECK = 60.0  # s: how stale an open stream's credential may get (expiry, a revoked key)


async def until_refused(conn: HTTPConnection, check: Callable[[Principal], None]) -> HTTPException:
    """Returns once the credential an open stream was let in with no longer holds: the
    person signed out, got a new password or was removed (noticed at once on this
    node), the token expired, the key was revoked (within RECHECK seconds). Re-checks
    are not counted against the rate limit."""
    credentials: _Credentials = conn.app.state.credentials
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(credentials.next_revocation(), RECHECK)
        try:
            check(await _resolve(conn))
        except HTTPException as exc:
            return exc


@router.get("/me", response_model=UserOut)
async def me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user, from_attributes=True)
