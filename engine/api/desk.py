"""The agent's desk: call controls (mute, hold, transfer), wrap-up, callbacks,
caller history and the queues, for the softphone and for API clients.

Controls act on a live call that is with the signed-in agent (a supervisor may act
on any). Wrong state or target: 409 with the reason; not your call: 403.
"""

from __future__ import annotations

from typing import Literal, NoReturn

from fastapi import APIRouter, Query, Request
from starlette.exceptions import HTTPException

from engine.acd import QueueConfig
from engine.api.auth import CurrentUser, Operator, Reader, Who
from engine.api.schemas import (
    CallbackIn,
    CallbackOut,
    HistoryItem,
    MuteIn,
    OutboundIn,
    PathId,
    PathName,
    PlacedCall,
    QueueIn,
    QueueOut,
    TransferIn,
    WrapUpIn,
)
from engine.calls import CallManager
from engine.callstate import NotAllowed, UnknownCall
from engine.sip import DialFailed, SipFront

router = APIRouter(prefix="/api/v1", tags=["agent desk"])


def _manager(request: Request) -> CallManager:
    m: CallManager = request.app.state.calls
    return m


async def _ended(m: CallManager, call_id: str, action: str) -> NoReturn:
    """A control on a call that is not live: 409 if it has ended (the desk's call, after
    hang-up: nothing to act on any more), 404 if there never was such a call."""
    if await m.store.get_call(call_id) is not None:
        raise NotAllowed(f"call {call_id} has ended: there is no live call to {action}")
    raise HTTPException(404, f"no call {call_id}")


@router.post("/calls/{call_id}/mute", status_code=204)
async def mute(call_id: PathId, body: MuteIn, request: Request, user: Operator) -> None:
    """Mute or unmute the agent towards the caller (muted talk is not transcribed)."""
    m = _manager(request)
    try:
        await m.mute(user, call_id, body.muted)
    except UnknownCall:
        await _ended(m, call_id, "mute")


@router.post("/calls/{call_id}/hold", status_code=204)
async def hold(call_id: PathId, request: Request, user: Operator) -> None:
    """The caller hears a short prompt, then hold audio; the agent hears nothing."""
    m = _manager(request)
    try:
        await m.hold(user, call_id)
    except UnknownCall:
        await _ended(m, call_id, "hold")


@router.post("/calls/{call_id}/resume", status_code=204)
async def resume(call_id: PathId, request: Request, user: Operator) -> None:
    m = _manager(request)
    try:
        await m.resume(user, call_id)
    except UnknownCall:
        await _ended(m, call_id, "resume")


@router.post("/calls/{call_id}/transfer", status_code=202)
async def transfer(call_id: PathId, body: TransferIn, request: Request, user: Operator) -> None:
    """Hand the caller to a queue or to one agent (who is offered it with all context so
    far; if they decline or do not answer, the call goes to the queue), or to a number
    outside through the SIP trunk (it rings while you stay on the line; 502 if nobody
    answers, and the call stays with you). The agent who transferred goes to wrap-up."""
    if body.number is not None:
        sip: SipFront | None = request.app.state.sip
        if sip is None:
            raise NotAllowed("SIP is not running on this engine")
        try:
            _manager(request).may_transfer(user, call_id)  # during a consult: before dialling
            await sip.transfer_out(user, call_id, body.number, body.note)
        except DialFailed as exc:
            raise HTTPException(502, f"the transfer was not answered: {exc}") from None
        return
    m = _manager(request)
    try:
        await m.transfer(user, call_id, queue=body.queue, agent=body.agent, note=body.note)
    except UnknownCall:
        await _ended(m, call_id, "transfer")


@router.post("/calls/{call_id}/wrap-up", status_code=204)
async def wrap_up(call_id: PathId, body: WrapUpIn, request: Request, user: CurrentUser) -> None:
    """Store the disposition and notes with the call; the agent owes it nothing more and
    leaves wrap-up for ``then`` (until then "available" is refused). Once more for the same
    call changes what was stored (after a "timed-out" too)."""
    m = _manager(request)
    if body.disposition not in m.settings.dispositions:
        raise HTTPException(422, f"disposition must be one of {', '.join(m.settings.dispositions)}")
    await m.wrap_up(user, call_id, body.disposition, body.notes, body.then)


@router.get("/dispositions", response_model=list[str])
async def dispositions(request: Request, _p: Reader) -> list[str]:
    return _manager(request).settings.dispositions


@router.post("/calls/{call_id}/callback", status_code=201, response_model=CallbackOut)
async def request_callback(
    call_id: PathId, request: Request, p: Who, body: CallbackIn | None = None
) -> CallbackOut:
    """The waiting caller chooses a callback instead of waiting: the request is stored
    and shown to agents, the caller hears a confirmation, and the call ends (the call's
    own caller, or control scope)."""
    p.need_call(call_id, "control")
    row = await _manager(request).request_callback(call_id, body.contact if body else None)
    return CallbackOut.model_validate(row, from_attributes=True)


@router.get("/callbacks", response_model=list[CallbackOut])
async def callbacks(
    request: Request,
    _p: Reader,
    status: Literal["pending", "done"] | None = Query("pending"),
) -> list[CallbackOut]:
    """Callback requests, highest priority and oldest first."""
    rows = await _manager(request).store.callbacks(status)
    return [CallbackOut.model_validate(r, from_attributes=True) for r in rows]


@router.post("/callbacks/{callback_id}/done", response_model=CallbackOut)
async def callback_done(callback_id: PathId, request: Request, user: CurrentUser) -> CallbackOut:
    row = await _manager(request).finish_callback(user, callback_id)
    return CallbackOut.model_validate(row, from_attributes=True)


@router.post("/callbacks/{callback_id}/call", status_code=202, response_model=PlacedCall)
async def place_callback(callback_id: PathId, request: Request, user: CurrentUser) -> PlacedCall:
    """Call the customer back through the SIP trunk. When they answer, the callback is
    done and the call rings this agent's desk with the customer's history; 502 when the
    call is not answered (busy, no answer, rejected), 409 without a trunk or number."""
    sip: SipFront | None = request.app.state.sip
    if sip is None:
        raise NotAllowed("SIP is not running on this engine")
    try:
        call = await sip.place_callback(user, callback_id)
    except DialFailed as exc:
        raise HTTPException(502, f"the callback was not answered: {exc}") from None
    return PlacedCall(call_id=call.id)


@router.post("/calls/outbound", status_code=201, response_model=PlacedCall, tags=["calls"])
async def place_call(body: OutboundIn, request: Request, actor: Operator) -> PlacedCall:
    """Call a number through the SIP trunk (control scope). Answers once they pick up:
    the call is live, transcribed and judged like any other; ``prompt`` is said first,
    then it waits for ``agent`` or a person in ``queue``, or stays with the AI. 502 when
    nobody answers (busy, no answer, rejected), 409 without a trunk."""
    sip: SipFront | None = request.app.state.sip
    if sip is None:
        raise NotAllowed("SIP is not running on this engine")
    try:
        call = await sip.place_call(
            body.to, by=actor.username, prompt=body.prompt, queue=body.queue, agent=body.agent
        )
    except DialFailed as exc:
        raise HTTPException(502, f"the call was not answered: {exc}") from None
    return PlacedCall(call_id=call.id)


@router.get("/calls/{call_id}/history", response_model=list[HistoryItem])
async def history(
    call_id: PathId, request: Request, _p: Reader, limit: int = Query(10, ge=1, le=100)
) -> list[HistoryItem]:
    """Earlier calls of the same customer record (any channel), or else of the same
    caller identity, newest first (empty when the caller gave no identity)."""
    m = _manager(request)
    found = await m.store.get_call(call_id)
    if found is None:
        raise HTTPException(404, f"no call {call_id}")
    if found.call.customer_id is not None:  # their record's calls, whatever the channel
        rows = await m.customers.calls(found.call.customer_id, limit=limit, before=call_id)
    elif found.call.caller:
        rows = await m.store.history(found.call.caller, before=call_id, limit=limit)
    else:
        return []
    return [HistoryItem.model_validate(r, from_attributes=True) for r in rows]


@router.get("/queues", response_model=list[QueueOut])
async def queues(request: Request, _p: Reader) -> list[QueueOut]:
    acd = _manager(request).acd
    waiting = [w.queue for w in acd.waiting.values()]
    return [
        QueueOut(
            **q.model_dump(),
            waiting=waiting.count(q.name),
            average_handle_time=round(acd.average_handle_time, 1),
        )
        for q in acd.queues.values()
    ]


@router.put("/queues/{name}", response_model=QueueOut)
async def put_queue(
    name: PathName,
    body: QueueIn,
    request: Request,
    user: Operator,
) -> QueueOut:
    """Create or change a queue (supervisors, admins). Kept across restarts; it wins
    over the queues file."""
    m = _manager(request)
    config = QueueConfig(name=name, **body.model_dump())
    await m.set_queue(user, config)
    await request.app.state.changes.changed("queues")
    waiting = sum(1 for w in m.acd.waiting.values() if w.queue == name)
    return QueueOut(
        **config.model_dump(),
        waiting=waiting,
        average_handle_time=round(m.acd.average_handle_time, 1),
    )


@router.delete("/queues/{name}", status_code=204)
async def delete_queue(name: PathName, request: Request, user: Operator) -> None:
    """Remove a queue nobody waits in (409 otherwise, and for the last queue)."""
    await _manager(request).remove_queue(user, name)
    await request.app.state.changes.changed("queues")
