"""Post-call analytics through the engine's own pipeline, in-process (tests/controlplane.py):
a bridged call's legs report finals and emotion estimates as their recognizers would,
the call manager's analysis stages store them, the call ends, the analyst computes and
stores the analytics from what was stored, and the API reads them."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

import pytest

from engine.livecall import Leg
from engine.store.models import CallAnalyticsRow
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
