"""Supervisor alerts kept (engine/alerts.py), on the engine's control plane.

The failures: alerts lived only in the desk page's memory, so a restart lost them, and
one whose call had ended still read as active. Here an alert is raised by a real chat
(an escalation rule with ``alert_supervisor``), acknowledged, kept across a restart,
and closed when its call ends: by a hang-up, and by a crash nobody followed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from engine.eventlog import EventLog
from engine.events import (
    CallEnded,
    CallStarted,
    CallStateChanged,
    EmotionUpdated,
    EventBase,
    EventBus,
    QueueUpdated,
    utcnow,
)
from engine.store.db import Store
from engine.store.models import AlertRow, CallRow, EngineRow
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


# -- start-up and the follower, in-process (a real SQLite store, bus and event log) ----


async def _opened(tmp_path: Path) -> tuple[Store, EventBus, EventLog]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}")
    await store.open()
    bus = EventBus()
    event_log = EventLog(store, bus, retention_days=2)
    await event_log.start()
    return store, bus, event_log


def _waits(call_id: str, when: datetime) -> list[EventBase]:
    """A call that starts and joins the general line at ``when``."""
    return [
        CallStarted(call_id=call_id, time=when, channel="sip", language="en", recognizer=None,
                    recognizer_note=""),
        CallStateChanged(call_id=call_id, time=when, state="queued", previous="bot"),
        QueueUpdated(call_id=call_id, time=when, queue="general", position=1, priority=0,
                     expected_wait=None, announcement=None),
    ]  # fmt: skip


def _ends(call_id: str, when: datetime, reason: str) -> list[EventBase]:
    return [
        CallStateChanged(call_id=call_id, time=when, state="ended", previous="queued",
                         reason=reason),
        CallEnded(call_id=call_id, time=when, reason=reason, duration=1.0),
    ]  # fmt: skip


async def test_a_restart_shows_every_live_call_and_counts_the_whole_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At start the floor read today's events oldest first up to a cap, then followed
    from the newest: what lay between was never counted, and a call that began before
    midnight (still waiting) was not on the wallboard at all after a restart."""
    from engine import alerts

    monkeypatch.setattr(alerts, "SEED_PAGE", 2)  # many pages, few events
    now = utcnow()
    before_midnight = datetime.combine(now.date(), dtime(), UTC) - timedelta(minutes=30)
    store, bus, event_log = await _opened(tmp_path)
    try:
        async with store.writing() as s:
            s.add_all([
                EngineRow(id="alive", host="h", pid=1, started_at=now, heartbeat_at=now),
                EngineRow(id="dead", host="h", pid=2, started_at=now,
                          heartbeat_at=now - timedelta(hours=1)),
            ])  # fmt: skip
            for call_id, engine, created, state in (
                ("early", "alive", before_midnight, "queued"),
                ("pruned", "alive", now, "bridged"),  # live, its events gone
                ("orphan", "dead", now, "queued"),  # its engine died: recovery's to end
            ):
                s.add(CallRow(id=call_id, channel="sip", state=state, language="en",
                              created_at=created, engine_id=engine, queue="general"))  # fmt: skip
        told = _waits("early", before_midnight)
        told.append(
            EmotionUpdated(call_id="early", time=before_midnight, leg_id="l", utterance_id="u",
                           at=1.0, label="angry", arousal=0.8, valence=-0.7, scores={},
                           trend=-0.5, call_label="angry", call_scores={"angry": 0.8})
        )  # fmt: skip
        for i in range(7):  # seven callers give up today
            told += _waits(f"gone{i}", now) + _ends(f"gone{i}", now, "hangup")
        told += _waits("cb", now) + _ends("cb", now, "callback_requested")
        for event in told:
            bus.publish(event)
    finally:
        await event_log.stop()  # written
    bus = EventBus()  # the restart: a new bus and log over the same database
    event_log = EventLog(store, bus, retention_days=2)
    await event_log.start()
    sup = alerts.Supervision(store, bus, event_log, 20.0)
    try:
        await sup.start()
        floor = sup.floor
        assert set(floor.calls) == {"early", "pruned"}
        early = floor.calls["early"]
        assert (early.state, early.queue, early.mood) == ("queued", "general", "angry")
        assert floor.calls["pruned"].state == "bridged"
        day = floor.queues["general"]
        assert (day.abandoned, day.callbacks) == (7, 1)
    finally:
        await sup.stop()
        await event_log.stop()
        await store.close()


async def test_one_bad_event_or_a_failing_sweep_does_not_stop_the_alerts(
    tmp_path: Path,
) -> None:
    """An event the follower could not take made it resume at that same event for
    ever (the alerts and the wallboard stood still); and a sweep whose query failed
    aborted the engine's start."""
    from engine import alerts

    store, bus, event_log = await _opened(tmp_path)
    async with store.writing() as s:
        await s.execute(text("DROP TABLE alerts"))  # every query of the sweep fails
    sup = alerts.Supervision(store, bus, event_log, 20.0)
    try:
        await sup.start()  # does not raise
        feed = sup.floor.feed

        def poisoned(ev: Mapping[str, Any]) -> None:
            if ev.get("call_id") == "bad":
                raise ValueError("a malformed event")
            feed(ev)

        sup.floor.feed = poisoned  # type: ignore[method-assign]  # the bad event's effect
        bus.publish(_waits("bad", utcnow())[0])
        last = bus.publish(_waits("good", utcnow())[0])
        await until(lambda: _after(sup, last.id), within=3.0)
        assert "good" in sup.floor.calls and sup.skipped == 1
    finally:
        await sup.stop()
        await event_log.stop()
        await store.close()


async def _after(sup: Any, event_id: int) -> bool:
    return bool(sup.handled >= event_id)
