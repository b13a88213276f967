"""Post-call analytics through the engine's own pipeline, in-process (tests/controlplane.py):
a bridged call's legs report finals and emotion estimates as their recognizers would,
the call manager's analysis stages store them, the call ends, the analyst computes and
stores the analytics from what was stored, and the API reads them."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, event, func, select, update

from engine import callanalytics as ca
from engine.analyst import Analyst
from engine.api import reports as reports_api
from engine.events import CallEnded, utcnow
from engine.livecall import Leg
from engine.recovery import LOST, Recovery
from engine.store.models import CallAnalyticsRow, CallRow, EngineRow, EventRow, LegRow, UtteranceRow
from media import events as me
from media.asr.base import Word
from media.emotion import EmotionEstimate, Prosody
from tests.controlplane import ControlPlane, bridged_phone_call

# the script: the caller speaks 1.0-4.0 s; the agent cuts in at 3.2 s and speaks to
# 6.0 s; nobody speaks from 6.0 to 9.5 s; the caller thanks them 9.5-11.0 s
INTERRUPTION_AT = 3.2
SILENCE = (6.0, 9.5)


def final(leg: Leg, index: int, start: float, end: float, text: str) -> me.TranscriptFinal:
    """As a recognizer reports it: word timings where the words were, the utterance
    padded by the endpointing (a little before, the trailing silence after)."""
    ws = text.split()
    step = (end - start) / len(ws)
    words = [Word(w, start + i * step, start + (i + 1) * step) for i, w in enumerate(ws)]
    return me.TranscriptFinal(
        leg.id, index, text, start - 0.25, end + 0.8, words, 0.2, False, "sure"
    )


def feeling(leg: Leg, index: int, at: float, label: str, valence: float) -> me.EmotionEstimated:
    prosody = Prosody(2.0, 4.0, -22.0, 2.5, 0.1, 0.7)
    scores = {label: 0.8, "neutral": 0.2}
    estimate = EmotionEstimate(label, 0.5, valence, scores, 0.0, prosody, label, scores)
    return me.EmotionEstimated(leg.id, index, at, estimate)


async def stored(cp: ControlPlane, call_id: str, within: float = 10.0) -> CallAnalyticsRow:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with cp.store.session() as s:
            row = await s.get(CallAnalyticsRow, call_id)
        if row is not None:
            return row
        assert asyncio.get_running_loop().time() < deadline, "never analysed at its end"
        await asyncio.sleep(0.05)


async def test_a_scripted_calls_interruption_and_silence_are_reported_within_half_a_second(
    tmp_path: Path,
) -> None:
    """The acceptance of issue 16's analytics: the known interruption and the known
    silence come back within 0.5 s; the analytics are stored when the call ends (before
    anyone asks), and the reports and their CSV count the call."""
    async with ControlPlane(tmp_path / "engine", media_timeout=60.0) as cp:
        m = cp.calls
        call, agent_leg = await bridged_phone_call(m)
        caller_leg = call.caller_leg()
        m._enqueue(call, final(caller_leg, 0, 1.0, 4.0, "I want a refund for my parcel"))
        m._enqueue(call, feeling(caller_leg, 0, 4.0, "angry", -0.6))
        m._enqueue(
            call, final(agent_leg, 0, INTERRUPTION_AT, SILENCE[0], "let me check that for you")
        )
        m._enqueue(call, feeling(agent_leg, 0, 6.0, "neutral", 0.1))
        m._enqueue(call, final(caller_leg, 1, SILENCE[1], 11.0, "thank you"))
        m._enqueue(call, feeling(caller_leg, 1, 11.0, "happy", 0.5))
        async with cp.http() as http:
            deadline = asyncio.get_running_loop().time() + 10
            while len((await http.get(f"/api/v1/calls/{call.id}")).json()["transcript"]) < 3:
                assert asyncio.get_running_loop().time() < deadline, "finals never stored"
                await asyncio.sleep(0.05)
            live = await http.get(f"/api/v1/calls/{call.id}/analytics")
            await m.end_call(call.id, "hangup")
            row = await stored(cp, call.id)
            r = await http.get(f"/api/v1/calls/{call.id}/analytics")
            report = await http.get("/api/v1/reports/calls", params={"group": "queue"})
            per_call = await http.get("/api/v1/reports/calls.csv", params={"group": "call"})
            bad = [
                await http.get("/api/v1/reports/calls", params={"group": "planet"}),
                await http.get(
                    "/api/v1/reports/calls",
                    params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
                ),
                await http.get(
                    "/api/v1/reports/calls",
                    params={"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
                ),
                await http.get("/api/v1/calls/nope/analytics"),
            ]
        anonymous = await cp.anonymous().get(f"/api/v1/calls/{call.id}/analytics")
    assert live.status_code == 409 and live.headers["content-type"] == "application/problem+json"
    assert r.status_code == 200, r.text
    a = r.json()
    (cut,) = a["interruptions"]
    print("interruption:", cut, "| non-talk:", a["non_talk"])
    assert (cut["by"], cut["of"]) == ("agent", "caller")
    assert abs(cut["at"] - INTERRUPTION_AT) <= 0.5
    assert abs(a["non_talk"]["longest_seconds"] - (SILENCE[1] - SILENCE[0])) <= 0.5
    assert abs(a["non_talk"]["longest_at"] - SILENCE[0]) <= 0.5
    assert a["interruptions_by"] == {"agent": 1}
    assert a["talk"]["caller"]["talk_seconds"] == pytest.approx(4.5, abs=0.5)
    assert a["talk"]["agent"]["talk_seconds"] == pytest.approx(2.8, abs=0.5)
    assert [p["label"] for p in a["sentiment"]["caller"]["points"]] == ["angry", "happy"]
    assert a["sentiment"]["caller"]["change"] == pytest.approx(1.1)
    assert [c["name"] for c in a["categories"]] == ["refund request", "delivery"]
    assert a["handle"]["agent"] > 0 and a["reached_agent"] is True
    assert row.caller_interruptions == 0 and row.agent_interruptions == 1
    assert report.status_code == 200, report.text
    body = report.json()
    assert set(body) == {"group", "from", "to", "rows", "total"}
    assert body["total"]["calls"] == body["total"]["analysed"] == 1
    assert body["total"]["categories"] == {"delivery": 1, "refund request": 1}
    table = list(csv.reader(io.StringIO(per_call.text)))
    assert per_call.headers["content-type"].startswith("text/csv")
    assert [t[0] for t in table] == ["call", call.id, "total"]
    assert [b.status_code for b in bad] == [422, 422, 422, 404]
    assert all(b.headers["content-type"] == "application/problem+json" for b in bad)
    assert anonymous.status_code == 401


# -- the analyst and the reports against a real store, in-process ----------------------

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def ended_call(
    cp: ControlPlane,
    call_id: str,
    *,
    engine_id: str | None = None,
    words: list[Any] | None = None,
    log: bool = False,
    created: datetime = T0,
) -> None:
    """An escalated call that ended 96 s in: bot to 11 s, queue to 31 s, an agent to
    the end; a caller's line; its state changes in the event log if ``log``."""
    call = CallRow(id=call_id, channel="sip", state="ended", language="en", created_at=created,
                   answered_at=created + timedelta(seconds=1), queue="billing",
                   escalated_at=created + timedelta(seconds=11),
                   ended_at=created + timedelta(seconds=96), end_reason="hangup",
                   engine_id=engine_id)  # fmt: skip
    legs = [
        LegRow(id=f"{call_id}-c", call_id=call_id, role="caller", transport="sip",
               created_at=created),
        LegRow(id=f"{call_id}-a", call_id=call_id, role="agent", transport="sip",
               created_at=created + timedelta(seconds=31), ended_at=call.ended_at),
    ]  # fmt: skip
    utt = UtteranceRow(id=f"{call_id}-u", call_id=call_id, leg_id=f"{call_id}-c", speaker="caller",
                       seq=0, start=2.0, end=5.0, text="I want a refund", words=words or [],
                       created_at=created)  # fmt: skip
    await cp.store.add(call)
    await cp.store.add(*legs, utt)
    if log:
        steps = [(0, "connecting", "new"), (1, "active", "connecting"), (11, "queued", "active"),
                 (31, "bridged", "queued"), (61, "held", "bridged"), (76, "bridged", "held"),
                 (96, "ended", "bridged")]  # fmt: skip
        rows = [
            EventRow(id=10_000_000 + hash((call_id, n)) % 1_000_000, type="call.state_changed",
                     call_id=call_id, time=created + timedelta(seconds=t),
                     body=json.dumps({"type": "call.state_changed", "call_id": call_id,
                                      "time": (created + timedelta(seconds=t)).isoformat(),
                                      "state": state, "previous": previous}))
            for n, (t, state, previous) in enumerate(steps)
        ]  # fmt: skip
        await cp.store.add(*rows)


@pytest.mark.parametrize("control_plane", ["postgresql"], indirect=True)
async def test_two_writers_of_one_calls_analytics_both_succeed(control_plane: ControlPlane) -> None:
    """Regression: the call page's read at hang-up and the analyst store the same call's
    analytics at once; a read-then-insert (``merge``) made one fail with an
    IntegrityError (a 503) on PostgreSQL. An upsert: both succeed, one row."""
    cp = control_plane
    a: Analyst = cp.app.state.analyst
    for n in range(5):
        await ended_call(cp, f"race-{n}")
        results = await asyncio.gather(*(a.analyse(f"race-{n}") for _ in range(4)))
        assert all(r is not None for r in results)
    async with cp.store.session() as s:
        assert await s.scalar(select(func.count()).select_from(CallAnalyticsRow)) == 5


async def test_the_analysis_runs_off_the_event_loop(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a 20,000-line call's analysis took 4 s on the event loop, stalling
    every call's media and every request meanwhile; it runs in a worker thread."""
    cp = control_plane
    threads = []
    real = ca.analyze

    def analyze(*args: Any, **kw: Any) -> ca.CallAnalytics:
        threads.append(threading.get_ident())
        return real(*args, **kw)

    monkeypatch.setattr(ca, "analyze", analyze)
    await ended_call(cp, "c1")
    await cp.app.state.analyst.analyse("c1")
    assert threads and threading.get_ident() not in threads


async def test_a_whole_logs_split_is_kept_when_the_log_is_pruned_later(
    control_plane: ControlPlane,
) -> None:
    """Regression: the log keeps 7 days; a call wrapped up (or read) after its state
    changes were pruned lost its queue, agent and hold time. With the log whole the
    split is kept; a call analysed first with the log gone gets it from its legs."""
    cp = control_plane
    a: Analyst = cp.app.state.analyst
    await ended_call(cp, "whole", log=True)
    first = await a.analyse("whole")
    assert first is not None
    h = first.result.handle
    assert (h.bot, h.queue, h.agent, h.hold, h.wrap_up) == (10.0, 20.0, 50.0, 15.0, 0.0)
    async with cp.store.writing() as s:  # pruned, then wrapped up
        await s.execute(delete(EventRow).where(EventRow.call_id == "whole"))
        await s.execute(update(CallRow).where(CallRow.id == "whole").values(wrapped_up_at=at(120)))
    again = await a.analyse("whole")  # as at the wrap-up
    assert again is not None
    h = again.result.handle
    assert (h.bot, h.queue, h.agent, h.hold, h.wrap_up) == (10.0, 20.0, 50.0, 15.0, 24.0)
    assert again.result.log_complete
    await ended_call(cp, "pruned")
    late = await a.analyse("pruned")
    assert late is not None and not late.result.log_complete
    h = late.result.handle
    assert (h.bot, h.queue, h.agent, h.hold) == (10.0, 20.0, 65.0, 0.0)


async def test_a_call_ended_for_a_dead_engine_is_analysed_by_the_engine_that_ended_it(
    control_plane: ControlPlane,
) -> None:
    """Regression: Recovery's calls keep the dead engine's id, and every live engine left
    them to it: nobody analysed them. The engine whose Recovery ended the call (its
    analyst told through ``on_ended``, as engine/app.py wires it) does; another does not."""
    cp = control_plane
    now = utcnow()
    dead = EngineRow(id="dead-engine", host="another-host", pid=1, started_at=now,
                     heartbeat_at=now - timedelta(seconds=31))  # fmt: skip
    await cp.store.beat(dead)
    await ended_call(cp, "orphan", engine_id="dead-engine")
    async with cp.store.writing() as s:  # still open, as the dead engine left it
        await s.execute(
            update(CallRow).where(CallRow.id == "orphan").values(state="bridged", ended_at=None)
        )
    survivor = Recovery(cp.store, cp.bus, lease=30)
    mine = Analyst(cp.store, cp.bus, None, survivor.id)
    other = Analyst(cp.store, cp.bus, None, "third-engine")
    survivor.on_ended = mine.ended_here
    mine.start()
    try:
        assert await survivor.recover(LOST) == 1
        await stored(cp, "orphan")
        assert await other.analyse("orphan", mine_only=True) is None
    finally:
        await mine.stop()


async def test_one_bad_call_does_not_end_the_analysts_following(
    control_plane: ControlPlane,
) -> None:
    """Regression: a call whose stored words are not what the analysis expects raised
    out of the follower's loop and ended it for good; later calls went unanalysed."""
    cp = control_plane
    await ended_call(cp, "bad", words=["not a word"])
    await ended_call(cp, "good")
    cp.bus.publish(CallEnded(call_id="bad", reason="hangup", duration=96.0))
    cp.bus.publish(CallEnded(call_id="good", reason="hangup", duration=96.0))
    await stored(cp, "good")


async def test_backfill_is_bounded_in_time_and_skips_what_just_failed(
    control_plane: ControlPlane,
) -> None:
    cp = control_plane
    a: Analyst = cp.app.state.analyst
    for n in range(3):
        await ended_call(cp, f"old-{n}", created=T0 + timedelta(minutes=n))
    assert await a.backfill(T0, at(3600), budget=0.0) == 0
    a._failed["old-0"] = time.monotonic()  # as _analyse_quietly remembers a failure
    assert await a.backfill(T0, at(3600)) == 2
    async with cp.store.session() as s:
        done = set((await s.scalars(select(CallAnalyticsRow.call_id))).all())
    assert done == {"old-1", "old-2"}


async def test_reports_are_for_supervisors_refused_before_backfill_and_read_no_json(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: any agent read every queue's and colleague's figures; a too large
    report was refused only after analysing 200 calls; a report read the analytics JSON
    of every call (MBs), where the figure columns do."""
    cp = control_plane
    await cp.add_user("ann", "secret-pass-1")
    await cp.add_user("sue", "secret-pass-2", "--role", "supervisor")
    period = {"from": T0.isoformat(), "to": at(86400).isoformat()}
    for n in range(2):
        await ended_call(cp, f"r-{n}", created=T0 + timedelta(minutes=n))
    monkeypatch.setattr(reports_api, "MAX_CALL_ROWS", 1)
    too_many = await cp.http().get("/api/v1/reports/calls", params={**period, "group": "call"})
    async with cp.store.session() as s:
        assert await s.scalar(select(func.count()).select_from(CallAnalyticsRow)) == 0
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sync = cp.store.engine.sync_engine
    event.listen(sync, "before_cursor_execute", seen)
    try:
        sue = await (await cp.agent("sue", "secret-pass-2")).get(
            "/api/v1/reports/calls", params=period
        )
    finally:
        event.remove(sync, "before_cursor_execute", seen)
    ann = await (await cp.agent("ann", "secret-pass-1")).get("/api/v1/reports/calls.csv")
    assert too_many.status_code == 422, too_many.text
    assert sue.status_code == 200, sue.text
    assert sue.json()["total"]["analysed"] == 2
    reads = [q for q in statements if "FROM calls" in q and "call_analytics" in q]
    assert reads and not any("call_analytics.data" in q for q in reads)
    assert ann.status_code == 403 and ann.headers["content-type"] == "application/problem+json"


async def test_a_call_ended_while_the_analyst_lagged_is_caught_up_from_the_log(
    control_plane: ControlPlane,
) -> None:
    """Regression: cut off for lagging, the analyst took a new subscription from now on;
    the calls that ended meanwhile waited for someone to read them. It replays what it
    missed from the event log, as the other followers do."""
    cp = control_plane
    await ended_call(cp, "missed")
    await asyncio.sleep(0.1)  # the analyst is following
    for sub in list(cp.bus._subs):  # every follower falls behind at once
        sub.cut_off()
    cp.bus.publish(CallEnded(call_id="missed", reason="hangup", duration=96.0))
    await stored(cp, "missed")
