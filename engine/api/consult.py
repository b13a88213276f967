"""Consults and three-way conferences on the agent's desk (engine/consult.py).

The agent on a call asks a colleague first (the caller hears hold audio), then hands
the caller over, makes it a conference, or cancels. Refusals are 409 with the
reason; not your call: 403. The colleague answers with the desk's ordinary
``POST /calls/{id}/accept`` (or declines with ``/decline``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import Field

from engine.api.auth import Operator
from engine.api.schemas import PathId
from engine.calls import CallManager
from engine.inputs import Input

router = APIRouter(prefix="/api/v1", tags=["agent desk"])


class ConsultIn(Input):
    agent: str = Field(min_length=1, max_length=64, description="the colleague (username)")


def _manager(request: Request) -> CallManager:
    m: CallManager = request.app.state.calls
    return m


@router.post("/calls/{call_id}/consult", status_code=202)
async def consult(call_id: PathId, body: ConsultIn, request: Request, user: Operator) -> None:
    """Put the caller on hold and ring a signed-in, available colleague, whose desk
    shows the call so far marked as a consult from you. 409 on a chat, while already
    consulting, or if the colleague is not available."""
    await _manager(request).consults.start(user, call_id, body.agent)


@router.post("/calls/{call_id}/consult/complete", status_code=204)
async def complete(call_id: PathId, request: Request, user: Operator) -> None:
    """A warm transfer: you go to wrap-up, the colleague keeps the caller."""
    await _manager(request).consults.complete(user, call_id)


@router.post("/calls/{call_id}/consult/conference", status_code=204)
async def conference(call_id: PathId, request: Request, user: Operator) -> None:
    """Caller, you and the colleague all hear each other."""
    await _manager(request).consults.conference(user, call_id)


@router.post("/calls/{call_id}/consult/cancel", status_code=204)
async def cancel(call_id: PathId, request: Request, user: Operator) -> None:
    """The colleague leaves (or stops ringing); the caller is back with you."""
    await _manager(request).consults.cancel(user, call_id)


@router.post("/calls/{call_id}/conference/leave", status_code=204)
async def leave(call_id: PathId, request: Request, user: Operator) -> None:
    """Either agent leaves a conference; the other keeps the caller (you go to wrap-up).
    The consulted colleague may also leave a consult: the caller stays on hold."""
    await _manager(request).consults.leave(user, call_id)
