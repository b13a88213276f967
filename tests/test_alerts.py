"""Supervisor alerts kept (engine/alerts.py), on the engine's control plane.

The failures: alerts lived only in the desk page's memory, so a restart lost them, and
one whose call had ended still read as active. Here an alert is raised by a real chat
(an escalation rule with ``alert_supervisor``), acknowledged, kept across a restart,
and closed when its call ends: by a hang-up, and by a crash nobody followed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.events import utcnow
from engine.store.models import AlertRow, CallRow
from tests.controlplane import ControlPlane

pytestmark = pytest.mark.timeout(60)

COMPLAINT = "This is a formal complaint, my lawyer will hear about this"


async def until(check: Callable[[], Any], within: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while not (found := await check()):
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.05)
    return found


async def complaining_chat(cp: ControlPlane) -> tuple[str, dict[str, str]]:
    http = cp.anonymous()
    chat = (await http.post("/api/v1/chats", json={"language": "en"})).json()
    caller = {"Authorization": f"Bearer {chat['caller_token']}"}
    r = await http.post(
        f"/api/v1/calls/{chat['call_id']}/messages", json={"text": COMPLAINT}, headers=caller
    )
    assert r.status_code == 204, r.text
    return chat["call_id"], caller


async def alerts_of(http: httpx.AsyncClient, call_id: str) -> list[dict[str, Any]]:
    r = await http.get("/api/v1/alerts", params={"call_id": call_id})
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["alerts"]
    return found


async def test_an_alert_is_kept_acknowledged_and_closed_when_its_call_ends(
    control_plane: ControlPlane,
) -> None:
    cp = control_plane
    await cp.add_user("sue", "pw-sue-12345", "--role", "supervisor")
    await cp.add_user("ann", "pw-ann-12345")
    events: list[dict[str, Any]] = []
    sub = cp.bus.subscribe()
    call_id, caller = await complaining_chat(cp)
    async with cp.http() as http:
        (alert,) = await until(lambda: alerts_of(http, call_id))
        assert "complaint" in alert["reason"] and alert["closed_at"] is None
        ann = await cp.agent("ann", "pw-ann-12345")
        r = await ann.post(f"/api/v1/alerts/{alert['id']}/ack")
        assert r.status_code == 403, r.text  # agents do not supervise
        sue = await cp.agent("sue", "pw-sue-12345")
        r = await sue.post(f"/api/v1/alerts/{alert['id']}/ack")
        assert r.status_code == 200, r.text
        assert r.json()["acked_by"] == "sue" and r.json()["acked_at"]
        again = await sue.post(f"/api/v1/alerts/{alert['id']}/ack")
        assert again.status_code == 409 and "sue" in again.json()["detail"]
        missing = await sue.post("/api/v1/alerts/nope/ack")
        assert missing.status_code == 404
        assert (await sue.get("/api/v1/alerts", params={"open": "true"})).json()["alerts"]

        r = await cp.anonymous().post(f"/api/v1/calls/{call_id}/hangup", headers=caller)
        assert r.status_code == 202
        (closed,) = await until(lambda: _closed(http, call_id))
        assert closed["closed_reason"] == "call_ended" and closed["acked_by"] == "sue"
        assert (await sue.get("/api/v1/alerts", params={"open": "true"})).json()["alerts"] == []
    while not sub.queue.empty():
        event = sub.queue.get_nowait()
        if event is not None:
            events.append(event.model_dump())
    sub.close()
    told = [
        (e["type"], e.get("alert_id"), e["call_id"])
        for e in events
        if e["type"].startswith("alert.")
    ]
    assert told == [
        ("alert.acknowledged", alert["id"], None),  # never on the caller's own stream
        ("alert.closed", alert["id"], None),
    ]

    await cp.restart()  # kept: acknowledged and closed as they were
    async with cp.http() as http:
        (kept,) = await alerts_of(http, call_id)
        assert kept == closed


async def _closed(http: httpx.AsyncClient, call_id: str) -> list[dict[str, Any]]:
    return [a for a in await alerts_of(http, call_id) if a["closed_at"]]


async def test_a_stop_closes_its_calls_alerts_and_a_crash_is_swept_at_the_next_start(
    tmp_path: Path,
) -> None:
    async with ControlPlane(tmp_path / "engine") as cp:
        call_id, _caller = await complaining_chat(cp)
        async with cp.http() as http:
            (alert,) = await until(lambda: alerts_of(http, call_id))
        await cp.stop()  # ends the chat: its alert is closed before the engine stops
        async with cp.store.session() as s:
            row = await s.get(AlertRow, alert["id"])
            assert row is not None and row.closed_reason == "call_ended"
        # a crash instead: the call's record says it ended (as engine/recovery.py writes
        # for a dead engine's calls) but its alert was never closed; and an alert of a
        # call still live elsewhere
        async with cp.store.writing() as s:
            row = await s.get(AlertRow, alert["id"])
            assert row is not None
            row.closed_at = row.closed_reason = None
            call = await s.get(CallRow, call_id)
            assert call is not None and call.ended_at is not None
            s.add(AlertRow(id="open-one", call_id="live-elsewhere", reason="still on",
                           priority=1, raised_at=utcnow()))  # fmt: skip
        await cp.start()
        async with cp.http() as http:
            (swept,) = await until(lambda: _closed(http, call_id))
            assert swept["id"] == alert["id"] and swept["closed_reason"] == "call_ended"
            (kept,) = await alerts_of(http, "live-elsewhere")
            assert kept["closed_at"] is None  # its call is not known to have ended
