"""A supervisor on a live call: listen, whisper, barge (engine/monitoring.py).

``POST`` joins with the supervisor's WebRTC offer and a mode, ``PATCH`` changes the
mode, ``DELETE`` leaves; each acts on the signed-in supervisor's own leg. Supervisors
and admins only (403 for agents, API keys and caller tokens: monitoring needs a
person with a microphone); 409 when the call is not with an agent (or with an outside
number it was transferred to), is a chat, or has ended. A leg ends by itself when the
agent leaves the call (a transfer) and when its supervisor is signed out, gets a new
password, is removed or stops being a supervisor or an admin, through any engine.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from engine.api.auth import CurrentUser
from engine.api.schemas import PathId
from engine.calls import CallManager
from engine.callstate import NotAllowed
from engine.inputs import Input
from engine.livecall import Call
from engine.monitor import Mode
from engine.monitoring import may_monitor

router = APIRouter(prefix="/api/v1", tags=["supervisor"])


class MonitorIn(Input):
    mode: Mode = Field(description="listen: hear both; whisper: the agent hears you; barge: both")
    sdp: str = Field(max_length=65536, description="your SDP offer (non-trickle ICE)")
    type: Literal["offer"] = "offer"


class MonitorModeIn(Input):
    mode: Mode


class MonitorOut(BaseModel):
    call_id: str
    leg_id: str
    mode: Mode
    type: Literal["answer"] = "answer"
    sdp: str | None = Field(None, description="our SDP answer (when joining)")


async def _call(request: Request, call_id: str) -> Call:
    """The live call; an ended one is a conflict, an unknown one 404 (UnknownCall)."""
    m: CallManager = request.app.state.calls
    call = m.live(call_id)
    if call is None and await m.store.get_call(call_id) is not None:
        raise NotAllowed("the call has ended")
    return call if call is not None else m.get(call_id)


@router.post("/calls/{call_id}/monitor", status_code=201, response_model=MonitorOut)
async def start(
    call_id: PathId, body: MonitorIn, request: Request, user: CurrentUser
) -> MonitorOut:
    """Join a call that is with an agent, over WebRTC: post your offer, get our answer.
    What you hear and who hears you follows ``mode``; your voice is never transcribed,
    and is recorded (on the agent's side) only while the caller hears you: a barge."""
    may_monitor(user)  # before anything about the call is told
    m: CallManager = request.app.state.calls
    leg, sdp = await m.monitors.start(user, await _call(request, call_id), body.mode, body.sdp)
    return MonitorOut(call_id=call_id, leg_id=leg.id, mode=leg.mode, sdp=sdp)


@router.patch("/calls/{call_id}/monitor", response_model=MonitorOut)
async def change(
    call_id: PathId, body: MonitorModeIn, request: Request, user: CurrentUser
) -> MonitorOut:
    """Change your mode on the call, live."""
    may_monitor(user)
    m: CallManager = request.app.state.calls
    leg = m.monitors.change(user, await _call(request, call_id), body.mode)
    return MonitorOut(call_id=call_id, leg_id=leg.id, mode=leg.mode)


@router.delete("/calls/{call_id}/monitor", status_code=204)
async def leave(call_id: PathId, request: Request, user: CurrentUser) -> None:
    """Leave the call; it goes on. Your own leg only, so no role is asked for: someone
    demoted since is off the call already, and may still hang up."""
    m: CallManager = request.app.state.calls
    await m.monitors.leave(user, await _call(request, call_id))
