"""The supervisor console's API: the wallboard, and alerts kept and acknowledged.

Supervisors and admins (a person's token), or an API key with the read scope (the
control scope to acknowledge). Agents are refused: the wallboard shows every
colleague and caller."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from engine.alerts import AlertError, Supervision
from engine.api.auth import Principal, Who
from engine.api.schemas import PathId
from engine.calls import CallManager
from engine.events import utcnow
from engine.wallboard import Person, snapshot

router = APIRouter(prefix="/api/v1", tags=["supervisor"])


def _supervisor(p: Principal, scope: Literal["read", "control"]) -> str:
    """The name of who asks, if they may supervise (403/401 otherwise)."""
    if p.identity is not None:
        if p.identity.role not in ("supervisor", "admin"):
            raise HTTPException(403, "only supervisors and admins see the wallboard and alerts")
        return p.identity.username
    p.need(scope)
    return f"api:{p.name}" if p.kind == "key" else p.client


async def reading(p: Who) -> str:
    return _supervisor(p, "read")


async def acting(p: Who) -> str:
    return _supervisor(p, "control")


Watcher = Annotated[str, Depends(reading)]
Acker = Annotated[str, Depends(acting)]


class QueueFigures(BaseModel):
    name: str
    waiting: int
    longest_wait: float = Field(description="seconds the longest waiting caller has waited")
    expected_wait: float | None = Field(description="seconds, for a caller joining now")
    answered_today: int
    answered_within: int = Field(description="answered within the service-level threshold")
    abandoned_today: int
    service_level: float | None = Field(
        description="answered within the threshold / (answered + abandoned), today (UTC)"
    )


class AgentFigures(BaseModel):
    id: str
    username: str
    display_name: str
    presence: str
    absent: bool = Field(description="every desk of theirs has gone, for now")
    time_in_state: float | None = Field(description="seconds since their presence changed")
    call_id: str | None = Field(description="the call they are on, or ringing with")
    caller_mood: str | None = Field(description="the caller's call-level mood")


class Risk(BaseModel):
    kind: Literal["mood_falling", "upset", "repeated", "long_hold", "long_wait"]
    reason: str


class LiveCallFigures(BaseModel):
    id: str
    channel: str
    state: str
    queue: str | None
    position: int | None
    agent_id: str | None
    since: float = Field(description="seconds in the current state")
    mood: str | None = Field(description="the caller's call-level mood (not one utterance's)")
    heat: float = Field(description="0 calm .. 1 boiling")
    trend: float | None
    escalated: bool
    escalations: list[str]
    risk: float = Field(description="0: not at risk; higher: riskier")
    risks: list[Risk]


class Totals(BaseModel):
    waiting: int
    agents: dict[str, int]
    live_calls: int


class Wallboard(BaseModel):
    time: datetime
    threshold: float = Field(description="the service level's seconds")
    totals: Totals
    queues: list[QueueFigures]
    agents: list[AgentFigures]
    calls: list[LiveCallFigures] = Field(description="calls at risk first")
    at_risk: list[str]


class AlertOut(BaseModel):
    id: str
    call_id: str
    reason: str
    priority: int
    raised_at: datetime
    acked_at: datetime | None
    acked_by: str | None
    closed_at: datetime | None
    closed_reason: str | None


class AlertList(BaseModel):
    alerts: list[AlertOut]


def _supervision(request: Request) -> Supervision:
    s: Supervision = request.app.state.supervision
    return s


@router.get("/wallboard", response_model=Wallboard)
async def wallboard(request: Request, _who: Watcher) -> Wallboard:
    """Queues, agents and live calls now, with the calls at risk first. With several
    engines, queues and agents are the one shared routing's (as ``GET /agents``) and
    live calls every engine's (from the shared event stream)."""
    m: CallManager = request.app.state.calls
    people = [
        Person(u.id, u.username, u.display_name or u.username)
        for u in await m.store.users()
        if u.role == "agent"
    ]
    # the ACD's clock: monotonic on one engine; the shared log's (Redis's, wall) on many
    now = time.time() if m.routing_copy is not None else time.monotonic()
    threshold = request.app.state.settings.service_level_seconds
    mine = {
        c.agent_id: c.id
        for c in m.calls.values()
        if c.agent_id is not None and c.state in ("bridged", "held")
    }
    floor = _supervision(request).floor
    board = snapshot(m.acd, now, floor, utcnow(), people, threshold, mine)
    return Wallboard.model_validate(board)


@router.get("/alerts", response_model=AlertList)
async def alerts(
    request: Request,
    _who: Watcher,
    open: bool = Query(False, description="only those not closed yet"),
    call_id: str | None = Query(None, max_length=36),
    limit: int = Query(100, ge=1, le=500),
) -> AlertList:
    """Supervisor alerts, newest first: kept across restarts, closed when the call ends."""
    rows = await _supervision(request).alerts(open_only=open, call_id=call_id, limit=limit)
    return AlertList(alerts=[AlertOut.model_validate(r, from_attributes=True) for r in rows])


@router.post(
    "/alerts/{alert_id}/ack",
    response_model=AlertOut,
    responses={404: {"description": "no such alert"}, 409: {"description": "acknowledged already"}},
)
async def ack(alert_id: PathId, request: Request, who: Acker) -> AlertOut:
    """Acknowledge an alert (who and when are kept; ``alert.acknowledged`` is sent);
    404 if there is none, 409 if it was acknowledged already."""
    try:
        row = await _supervision(request).ack(alert_id, who)
    except AlertError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return AlertOut.model_validate(row, from_attributes=True)
