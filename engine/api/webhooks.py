"""Webhook subscriptions and their delivery log (admin scope)."""

from __future__ import annotations

import secrets
import uuid
from typing import Literal

from fastapi import APIRouter, Query, Request
from starlette.exceptions import HTTPException

from engine.api.auth import Admin
from engine.api.schemas import DeliveryOut, PathId, WebhookCreated, WebhookIn, WebhookOut
from engine.egress import TargetPolicy
from engine.eventlog import EventLog
from engine.events import utcnow
from engine.store.models import WebhookRow

router = APIRouter(prefix="/api/v1", tags=["webhooks"])


def _log(request: Request) -> EventLog:
    log: EventLog = request.app.state.event_log
    return log


@router.post("/webhooks", status_code=201, response_model=WebhookCreated)
async def create_webhook(body: WebhookIn, request: Request, _p: Admin) -> WebhookCreated:
    """Subscribe a URL to event types. Deliveries start with the next event. A URL on
    a loopback, private or link-local address is refused (422) unless its network is
    in CCENGINE_WEBHOOK_ALLOWED_NETWORKS; a name is checked again, by the addresses it
    resolves to, on every delivery."""
    policy: TargetPolicy = request.app.state.webhook_targets
    why = policy.url_refusal(str(body.url))
    if why is not None:
        raise HTTPException(422, f"url: {why}")
    row = WebhookRow(
        id=str(uuid.uuid4()),
        url=str(body.url),
        events=body.events,
        secret="whsec_" + secrets.token_urlsafe(32),
        description=body.description,
        created_at=utcnow(),
    )
    log = _log(request)
    await log.store.add(row)
    await log.reload_webhooks()
    await request.app.state.changes.changed("webhooks")
    return WebhookCreated.model_validate(row, from_attributes=True)


@router.get("/webhooks", response_model=list[WebhookOut])
async def list_webhooks(request: Request, _p: Admin) -> list[WebhookOut]:
    rows = await _log(request).store.webhooks()
    return [WebhookOut.model_validate(r, from_attributes=True) for r in rows]


@router.delete("/webhooks/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: PathId, request: Request, _p: Admin) -> None:
    """Stop a subscription; its pending deliveries are dropped."""
    log = _log(request)
    if not await log.store.delete_webhook(webhook_id, utcnow()):
        raise HTTPException(404, f"no webhook {webhook_id}")
    await log.reload_webhooks()
    await request.app.state.changes.changed("webhooks")


@router.get("/webhooks/{webhook_id}/deliveries", response_model=list[DeliveryOut])
async def deliveries(
    webhook_id: PathId,
    request: Request,
    _p: Admin,
    status: Literal["pending", "delivered", "failed"] | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> list[DeliveryOut]:
    """The delivery log, newest event first: tries, last answer, next try."""
    store = _log(request).store
    if await store.webhook(webhook_id) is None:
        raise HTTPException(404, f"no webhook {webhook_id}")
    rows = await store.deliveries(webhook_id, status, limit)
    return [DeliveryOut.model_validate(r, from_attributes=True) for r in rows]
