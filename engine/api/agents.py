"""Agents: presence and answering offers (signed-in users only).

A request the ACD cannot honour (not ringing on you, wrong presence) is a 409."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException

from engine.api.auth import Authenticated, CurrentUser, Reader
from engine.api.schemas import AgentOut, AnswerIn, AnswerOut, PresenceIn
from engine.calls import CallManager

router = APIRouter(prefix="/api/v1", tags=["agents"])


def _manager(request: Request) -> CallManager:
    m: CallManager = request.app.state.calls
    return m


@router.get("/agents", response_model=list[AgentOut])
async def agents(request: Request, _p: Reader) -> list[AgentOut]:
    m = _manager(request)
    return [
        AgentOut(
            id=u.id,
            username=u.username,
            display_name=u.display_name,
            skills=u.skills,
            presence=m.presence_of(u.id),
        )
        for u in await m.store.users()
        if u.role == "agent"
    ]


@router.post("/agents/me/presence", response_model=AgentOut)
async def set_presence(body: PresenceIn, request: Request, user: CurrentUser) -> AgentOut:
    if user.role != "agent":
        raise HTTPException(403, "only agents take calls")
    presence = await _manager(request).agent_presence(user, body.event)
    return AgentOut(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        skills=user.skills,
        presence=presence,
    )


@router.post("/calls/{call_id}/decline", status_code=204)
async def decline(call_id: str, request: Request, who: Authenticated) -> None:
    """Let a ringing call go to the next agent."""
    await _manager(request).decline(who.user_id, call_id)


@router.post("/calls/{call_id}/accept", response_model=AnswerOut)
async def accept(call_id: str, body: AnswerIn, request: Request, user: CurrentUser) -> AnswerOut:
    """Answer a ringing call with the softphone's SDP offer; media is bridged at once."""
    sdp = await _manager(request).accept(user, call_id, body.sdp)
    return AnswerOut(call_id=call_id, sdp=sdp)
