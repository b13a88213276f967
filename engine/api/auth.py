"""Login for the pages and the API: argon2 passwords, signed tokens, one dependency.

A token travels as the ``ccengine_token`` cookie (HttpOnly, SameSite=Strict) for the
pages and their WebSockets, or as ``Authorization: Bearer`` for API clients.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from engine.store.models import UserRow
from engine.users import AuthError, Identity, issue_token, read_token, verify_password

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])
COOKIE = "ccengine_token"
REFUSED = "wrong username or password"  # never says which of the two


class Login(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserOut(BaseModel):
    id: str
    username: str
    display_name: str
    role: str
    skills: list[str]


class LoginOut(BaseModel):
    token: str
    expires_in: int
    user: UserOut


def identity(request: Request) -> Identity:
    token = request.cookies.get(COOKIE)
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        token = header[7:].strip()
    if not token:
        raise HTTPException(401, "sign in first", headers={"WWW-Authenticate": "Bearer"})
    try:
        return read_token(token, request.app.state.secret_key)
    except AuthError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None


Authenticated = Annotated[Identity, Depends(identity)]


def maybe_identity(request: Request) -> Identity | None:
    """Who is asking, if they signed in; None for anonymous callers."""
    try:
        return identity(request)
    except HTTPException:
        return None


MaybeAuthenticated = Annotated[Identity | None, Depends(maybe_identity)]


async def current_user(request: Request, who: Authenticated) -> UserRow:
    user = await request.app.state.calls.store.user(who.user_id)
    if user is None:
        raise HTTPException(401, "this user no longer exists")
    return user


CurrentUser = Annotated[UserRow, Depends(current_user)]


@router.post("/login", response_model=LoginOut)
async def login(body: Login, request: Request, response: Response) -> LoginOut:
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
