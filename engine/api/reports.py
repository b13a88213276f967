"""Post-call analytics and reports: ``/api/v1/calls/{id}/analytics`` and
``/api/v1/reports/calls`` (JSON and CSV). A call's analytics: read scope, like the
call reads. Reports show every queue's and agent's figures: supervisors and admins, or
an API key with the read scope (engine/api/supervisor.py's rule); agents get 403."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from starlette.exceptions import HTTPException

from engine.analyst import Analyst, CallNotEnded
from engine.api.auth import Who
from engine.api.schemas import PathId
from engine.api.supervisor import Watcher
from engine.callanalytics import CallAnalytics
from engine.callreports import (
    CallFacts,
    Figures,
    Group,
    ReportRow,
    is_direct,
    is_outbound,
    report,
    to_csv,
)
from engine.events import as_utc, utcnow
from engine.store.models import CallAnalyticsRow, CallRow, UserRow

router = APIRouter(prefix="/api/v1")
DEFAULT_PERIOD = timedelta(days=7)
MAX_PERIOD = timedelta(days=366)
MAX_REPORT_CALLS = 50_000  # calls one report adds up; more: ask for a shorter period
MAX_CALL_ROWS = 10_000  # rows of a per-call report


class CallAnalyticsOut(CallAnalytics):
    call_id: str
    agent: str | None = Field(description="the agent who took it last (username)")
    queue: str | None
    disposition: str | None


class ReportOut(BaseModel):
    group: Group
    since: datetime = Field(serialization_alias="from")
    until: datetime = Field(serialization_alias="to")
    rows: list[ReportRow]
    total: ReportRow


def analyst(request: Request) -> Analyst:
    a: Analyst = request.app.state.analyst
    return a


@router.get("/calls/{call_id}/analytics", response_model=CallAnalyticsOut, tags=["analytics"])
async def call_analytics(call_id: PathId, request: Request, p: Who) -> CallAnalyticsOut:
    """A finished call's analytics: talk and talk/listen ratio per side, non-talk time,
    interruptions, the sentiment arc per side, categories (CCENGINE_ANALYTICS_CATEGORIES)
    and the handle time split. Computed when the call ends and when it is wrapped up;
    an older call's the first time they are asked for. 409 while the call goes on.
    Staff only: the call's caller (their token) is never told what was concluded."""
    p.need("read")
    a = analyst(request)
    try:
        found = await a.get(call_id)
    except CallNotEnded:
        raise HTTPException(
            409, f"call {call_id} is still going on; its analytics are made when it ends"
        ) from None
    if found is None:
        raise HTTPException(404, f"no call {call_id}")
    agent = None
    if found.call.agent_id is not None:
        async with a.store.session() as s:
            agent = await s.scalar(
                select(UserRow.username).where(UserRow.id == found.call.agent_id)
            )
    return CallAnalyticsOut(
        **found.result.model_dump(),
        call_id=call_id,
        agent=agent,
        queue=found.call.queue,
        disposition=found.call.disposition,
    )


Since = Annotated[
    datetime | None,
    Query(alias="from", description="calls started at or after (ISO 8601); default: 7 days ago"),
]
Until = Annotated[
    datetime | None, Query(alias="to", description="calls started before (ISO 8601); default: now")
]
GroupQ = Annotated[
    Group, Query(description="one row per queue, agent (username), day (UTC) or call")
]


async def _report(
    request: Request, group: Group, since: datetime | None, until: datetime | None
) -> ReportOut:
    until = as_utc(until) if until is not None else utcnow()
    try:
        since = as_utc(since) if since is not None else until - DEFAULT_PERIOD
    except OverflowError:  # "to" in the first week of year 1
        raise HTTPException(422, "to is too early") from None
    if since >= until:
        raise HTTPException(422, "from must be before to")
    if until - since > MAX_PERIOD:
        raise HTTPException(422, f"a report covers at most {MAX_PERIOD.days} days")
    a = analyst(request)
    period = (CallRow.created_at >= since, CallRow.created_at < until, CallRow.state == "ended")
    cap = MAX_CALL_ROWS if group == "call" else MAX_REPORT_CALLS
    async with a.store.session() as s:  # refused before any analysis is spent on it
        count = await s.scalar(select(func.count()).select_from(CallRow).where(*period)) or 0
    if count > cap:
        raise HTTPException(
            422, f"{count} calls in this period; a {group} report adds up {cap} at most"
        )
    await a.backfill(since, until)  # calls ended before analytics, or missed (bounded)
    async with a.store.session() as s:
        names = {uid: name for uid, name in await s.execute(select(UserRow.id, UserRow.username))}
        # the figure columns only: never the analytics JSON (``data``) of every call
        q = (
            select(CallRow.id, CallRow.created_at, CallRow.queue, CallRow.agent_id,
                   CallRow.escalated_at, CallRow.escalation_reason, CallRow.end_reason,
                   CallRow.disposition, CallAnalyticsRow.call_id, *FIGURE_COLUMNS)
            .outerjoin(CallAnalyticsRow, CallAnalyticsRow.call_id == CallRow.id)
            .where(*period)
            .order_by(CallRow.created_at)
            .limit(cap)
        )  # fmt: skip
        rows = (await s.execute(q)).all()
    facts = [
        CallFacts(
            id=cid,
            created_at=as_utc(created),
            queue=queue,
            agent=names.get(agent_id, agent_id) if agent_id else None,
            escalated=escalated is not None and not is_outbound(why),
            reached_agent=agent_id is not None,
            disposition=disposition,
            figures=_figures(figures) if analysed is not None else None,
            direct=is_direct(why),
            end_reason=end_reason,
        )
        for cid, created, queue, agent_id, escalated, why, end_reason, disposition, analysed,
        *figures in rows
    ]  # fmt: skip
    body, total = report(facts, group)
    return ReportOut(group=group, since=since, until=until, rows=body, total=total)


FIGURE_COLUMNS = (
    CallAnalyticsRow.handle_seconds, CallAnalyticsRow.queue_seconds,
    CallAnalyticsRow.bot_seconds, CallAnalyticsRow.agent_seconds,
    CallAnalyticsRow.hold_seconds, CallAnalyticsRow.wrap_up_seconds,
    CallAnalyticsRow.caller_talk_seconds, CallAnalyticsRow.agent_talk_seconds,
    CallAnalyticsRow.non_talk_seconds, CallAnalyticsRow.longest_non_talk_seconds,
    CallAnalyticsRow.caller_interruptions, CallAnalyticsRow.agent_interruptions,
    CallAnalyticsRow.categories,
)  # fmt: skip


def _figures(v: Sequence[Any]) -> Figures:
    """A call's FIGURE_COLUMNS, in their order."""
    return Figures(
        handle=v[0], split=(v[1], v[2], v[3], v[4], v[5]), caller_talk=v[6], agent_talk=v[7],
        non_talk=v[8], longest_non_talk=v[9], caller_interruptions=v[10],
        agent_interruptions=v[11], categories=tuple(v[12] or ()),
    )  # fmt: skip


@router.get(
    "/reports/calls",
    response_model=ReportOut,
    response_model_by_alias=True,
    tags=["analytics"],
)
async def call_report(
    request: Request, _p: Watcher, group: GroupQ = "queue", since: Since = None, until: Until = None
) -> ReportOut:
    """Ended calls added up by queue, agent, day, or one row per call: counts,
    escalations, abandoned, average handle time and its split, the caller's share of
    the talk, dead air, interruptions and categories. Supervisors, admins and read-scope
    API keys. At most 366 days and 50,000 calls (10,000 for ``group=call``) a report."""
    return await _report(request, group, since, until)


@router.get(
    "/reports/calls.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
    tags=["analytics"],
)
async def call_report_csv(
    request: Request, _p: Watcher, group: GroupQ = "queue", since: Since = None, until: Until = None
) -> Response:
    """The same report as CSV, one line per row and a last line for the total
    (``group=call``: one line per call)."""
    out = await _report(request, group, since, until)
    body = to_csv([*out.rows, out.total], group)
    name = f"calls-by-{group}-{out.since:%Y%m%d}-{out.until:%Y%m%d}.csv"
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
