"""The people who take calls: added and changed by admins; presence and answering
offers (signed-in agents only).

A request the ACD cannot honour (not ringing on you, wrong presence) is a 409."""

from __future__ import annotations

import asyncio
import uuid
import weakref

from fastapi import APIRouter, Request, Response
from starlette.exceptions import HTTPException

from engine.api.auth import (
    Admin,
    Authenticated,
    CurrentUser,
    Reader,
    people_changed,
    revoke_tokens,
)
from engine.api.schemas import (
    AgentOut,
    AnswerIn,
    AnswerOut,
    PathId,
    PresenceIn,
    UserIn,
    UserOut,
    UserPatch,
)
from engine.calls import CallManager
from engine.events import utcnow
from engine.store.models import UserRow
from engine.users import hash_password

router = APIRouter(prefix="/api/v1", tags=["agents"])


def _manager(request: Request) -> CallManager:
    m: CallManager = request.app.state.calls
    return m


def _agent_out(m: CallManager, u: UserRow) -> AgentOut:
    s = m.agent_status(u.id)
    return AgentOut(
        id=u.id, username=u.username, display_name=u.display_name, skills=u.skills,
        presence=s.presence, away_reason=s.away_reason, presence_since=s.since,
        wrap_up_call=s.wrap_up_call, wrap_up_since=s.wrap_up_since,
        wrap_up_ends_at=s.wrap_up_ends_at,
    )  # fmt: skip


@router.get("/agents", response_model=list[AgentOut])
async def agents(request: Request, _p: Reader) -> list[AgentOut]:
    """Every agent with their presence: why they are away, since when, and the call
    they owe a disposition (with its wrap-up deadline, if there is a limit)."""
    m = _manager(request)
    return [_agent_out(m, u) for u in await m.store.users() if u.role == "agent"]


@router.get("/users", response_model=list[UserOut])
async def users(request: Request, _p: Admin) -> list[UserOut]:
    """Everyone who signs in (agents, supervisors, admins), by username: what the admin
    page lists to change or remove (``/agents`` lists agents only, with presence)."""
    rows = await _manager(request).store.users()  # by username
    return [UserOut.model_validate(u, from_attributes=True) for u in rows]


@router.post("/agents", status_code=201, response_model=UserOut)
async def add_user(body: UserIn, request: Request, _p: Admin) -> UserOut:
    """Add an agent, supervisor or admin (as ``ccengine users add`` does); 409 if the
    username is taken."""
    store = _manager(request).store
    if await store.user_by_name(body.username) is not None:
        raise HTTPException(409, f"user {body.username} exists")
    row = UserRow(
        id=str(uuid.uuid4()), username=body.username,
        display_name=body.display_name or body.username, role=body.role,
        skills=sorted({s.strip() for s in body.skills if s.strip()}),
        password_hash=await asyncio.to_thread(hash_password, body.password),
        created_at=utcnow(),
    )  # fmt: skip
    await store.add_user(row)
    return UserOut.model_validate(row, from_attributes=True)


# Who is an admin is read and changed under one lock: two demotions (or removals) at
# once could otherwise both count two admins and leave none. It holds within this engine
# process only; with several engines on one database the check stays best-effort. One
# lock per event loop: an asyncio lock is bound to the loop it first waits in.
_admin_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _admins() -> asyncio.Lock:
    return _admin_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())


MONITORS = ("supervisor", "admin")  # the roles that listen to calls (engine/monitoring.py)


async def _keep_an_admin(m: CallManager, user: UserRow, role: str | None) -> None:
    """409 when the change would leave no person who can sign in as an admin (admin API
    keys still work, but nobody could manage people from the admin page). Called with
    ``_admins()`` held, up to the write."""
    if user.role != "admin" or role == "admin":
        return
    if sum(u.role == "admin" for u in await m.store.users()) <= 1:
        raise HTTPException(409, f"{user.username} is the last admin: make another one first")


@router.patch("/agents/{username}", response_model=UserOut)
async def change_user(username: str, body: UserPatch, request: Request, _p: Admin) -> UserOut:
    """Change skills (used from the next offer), role, display name or password. A new
    password ends the person's sign-ins: tokens issued before it are refused. A new
    password, or a role that no longer monitors, ends their supervisor legs."""
    m = _manager(request)
    values: dict[str, object] = body.model_dump(exclude_none=True, exclude={"password"})
    if "skills" in values:
        values["skills"] = sorted({s.strip() for s in body.skills or [] if s.strip()})
    if body.password is not None:  # ~170 ms of CPU: hashed before the lock is taken
        values["password_hash"] = await asyncio.to_thread(hash_password, body.password)
    async with _admins():
        user = await m.store.user_by_name(username)
        if user is None:
            raise HTTPException(404, f"no user {username}")
        if body.role is not None:
            await _keep_an_admin(m, user, body.role)
        if body.password is not None:
            await revoke_tokens(request, user.id, **values)
        elif values:
            await m.store.update_user(user.id, **values)
    if body.role is not None and body.password is None:  # a new password has told them
        # open streams, here and on the other engines, read the role again now (a
        # demoted supervisor's wallboard ends), not at their next minute's check; and
        # the other engines' supervisor legs of a demoted person end
        await people_changed(request)
    changed = await m.store.user(user.id)
    assert changed is not None
    if body.password is not None or changed.role not in MONITORS:
        await m.monitors.user_gone(user.id)
    await m.user_changed(changed)
    return UserOut.model_validate(changed, from_attributes=True)


@router.delete("/agents/{username}", status_code=204)
async def remove_user(username: str, request: Request, _p: Admin) -> None:
    """Remove a user: signed out at once, their tokens refused from then on (and off
    any call they were listening to); 409 while they ring or talk. Their calls, notes
    and dispositions stay."""
    m = _manager(request)
    async with _admins():
        user = await m.store.user_by_name(username)
        if user is None:
            raise HTTPException(404, f"no user {username}")
        await _keep_an_admin(m, user, None)
        await m.agent_gone(user.id)
        await m.store.delete_user(user.id)
    await people_changed(request)  # here and on the other engines
    await m.monitors.user_gone(user.id)


@router.post("/agents/me/presence", response_model=AgentOut)
async def set_presence(body: PresenceIn, request: Request, user: CurrentUser) -> AgentOut:
    """Log in, go available, go away (with a ``reason``: break, lunch, meeting,
    training, other) or log out. 409 when the ACD cannot: among others "available"
    while a call of yours waits for its disposition (save its wrap-up first)."""
    if user.role != "agent":
        raise HTTPException(403, "only agents take calls")
    m = _manager(request)
    await m.agent_presence(user, body.event, body.reason)
    return _agent_out(m, user)


@router.post("/calls/{call_id}/decline", status_code=204)
async def decline(call_id: PathId, request: Request, who: Authenticated) -> None:
    """Let a ringing call go to the next agent."""
    await _manager(request).decline(who.user_id, call_id)


@router.post("/calls/{call_id}/accept-chat", status_code=204)
async def accept_chat(call_id: PathId, request: Request, user: CurrentUser) -> Response:
    """Take a ringing chat: no media, the agent's lines are posted to
    ``/calls/{id}/messages``. 409 if it is a call (answer it with the softphone)."""
    await _manager(request).accept_chat(user, call_id)
    return Response(status_code=204)


@router.post("/calls/{call_id}/accept", response_model=AnswerOut)
async def accept(call_id: PathId, body: AnswerIn, request: Request, user: CurrentUser) -> AnswerOut:
    """Answer a ringing call with the softphone's SDP offer; media is bridged at once."""
    sdp = await _manager(request).accept(user, call_id, body.sdp)
    return AnswerOut(call_id=call_id, sdp=sdp)
