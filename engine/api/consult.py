"""Consults and three-way conferences on the agent's desk (engine/consult.py).

The agent on a call asks a colleague first (the caller hears hold audio), then hands
the caller over, makes it a conference, or cancels. Refusals are 409 with the
reason; not your call: 403. The colleague answers with the desk's ordinary
``POST /calls/{id}/accept`` (or declines with ``/decline``). Someone outside (a
number) is dialled through the SIP trunk instead, as a transfer to a number is.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import Field, model_validator
from starlette.exceptions import HTTPException

from engine.api.auth import Operator
from engine.api.schemas import DIAL_NUMBER, PathId
from engine.calls import CallManager
from engine.callstate import NotAllowed
from engine.consult import dial_failure
from engine.inputs import Input
from engine.sip import DialFailed, SipFront

router = APIRouter(prefix="/api/v1", tags=["agent desk"])


class ConsultIn(Input):
    agent: str | None = Field(
        None, min_length=1, max_length=64, description="the colleague (username)"
    )
    number: str | None = Field(
        None,
        pattern=DIAL_NUMBER,
        description="or someone outside: a number through the trunk, or a sip: URI",
    )

    @model_validator(mode="after")
    def _one(self) -> ConsultIn:
        if (self.agent is None) == (self.number is None):
            raise ValueError("give an agent or a number to consult: one of them")
        return self


# how a number that was not reached is told (engine/consult.py ``dial_failure``'s reasons)
_TOLD = {
    "no_answer": "did not answer",
    "busy": "is busy",
    "declined": "declined the call",
    "failed": "could not be reached",
}


def _manager(request: Request) -> CallManager:
    m: CallManager = request.app.state.calls
    return m


@router.post("/calls/{call_id}/consult", status_code=202)
async def consult(call_id: PathId, body: ConsultIn, request: Request, user: Operator) -> None:
    """Put the caller on hold and ring a signed-in, available colleague, whose desk
    shows the call so far marked as a consult from you. 409 on a chat, while already
    consulting, or if the colleague is not available.

    With ``number``, someone outside is dialled through the SIP trunk instead, and this
    answers once they pick up (then you talk while the caller is held). 502 if they do
    not (busy, no answer, declined, or the dial failed), saying which: the caller stays
    on hold with you. 409 if you cancelled before they answered, without SIP or a
    trunk, or for a number this engine may not dial (CCENGINE_SIP_DIAL_DOMAINS,
    CCENGINE_SIP_DIAL_PREFIXES; ``*`` and ``#`` are pressed on the keypad once they
    answer, not dialled)."""
    m = _manager(request)
    if body.agent is not None:
        await m.consults.start(user, call_id, body.agent)
        return
    assert body.number is not None
    sip: SipFront | None = request.app.state.sip
    if sip is None:
        raise NotAllowed("SIP is not running on this engine")
    try:
        await m.consults.start_outside(user, call_id, body.number, sip)
    except DialFailed as exc:
        _event, reason = dial_failure(exc.status)
        raise HTTPException(502, f"{body.number} {_TOLD[reason]}: {exc}") from None


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
    """The colleague leaves (or stops ringing; a number being dialled is called off,
    an outside party hung up on); the caller is back with you."""
    await _manager(request).consults.cancel(user, call_id)


@router.post("/calls/{call_id}/conference/leave", status_code=204)
async def leave(call_id: PathId, request: Request, user: Operator) -> None:
    """Either agent leaves a conference; the other keeps the caller (you go to wrap-up).
    The consulted colleague may also leave a consult: the caller stays on hold."""
    await _manager(request).consults.leave(user, call_id)
