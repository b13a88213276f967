"""In-app calls end to end: aiortc callers against a real engine process."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests import speech
from tests.engine_proc import ROOT, EngineProcess
from tests.rtc_client import Caller

pytestmark = pytest.mark.integration


def check_stream_order(events: list[dict[str, Any]]) -> None:
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "ids must strictly increase"
    types = [e["type"] for e in events]
    assert types[0] == "call.started"
    assert types[-1] == "call.ended"
    states = [e["state"] for e in events if e["type"] == "call.state_changed"]
    assert states in (
        ["connecting", "active", "ended"],
        ["connecting", "active", "queued", "ended"],
    )
    finals = {e["index"]: i for i, e in enumerate(events) if e["type"] == "transcript.final"}
    for i, e in enumerate(events):
        if e["type"] == "transcript.partial" and e["index"] in finals:
            assert i < finals[e["index"]], "a partial arrived after its final"
    final_pos = {
        e["utterance_id"]: i for i, e in enumerate(events) if e["type"] == "transcript.final"
    }
    emotions = [(i, e) for i, e in enumerate(events) if e["type"] == "emotion.updated"]
    assert emotions, "no emotion updates"
    for i, e in emotions:
        assert final_pos[e["utterance_id"]] < i, "emotion before its transcript"
    for i, e in enumerate(events):
        if e["type"] == "escalation.raised":
            for utt in e["evidence"].get("utterance_ids", []):
                assert final_pos[utt] < i, "escalation before its evidence"


async def test_calm_and_angry_callers(engine: EngineProcess, voices: dict[str, Path]) -> None:
    """Two simultaneous callers: transcripts within 20 % WER, different emotions, ordered events."""
    calm, angry = Caller(engine.url, voices["calm"]), Caller(engine.url, voices["angry"])
    records = await asyncio.gather(calm.complete_call(), angry.complete_call())
    assert all(c.answer["recognizer"] == "moonshine" for c in (calm, angry))
    assert "moonshine model at" in calm.answer["recognizer_note"]

    results = {}
    for name, caller, record, script in (
        ("calm", calm, records[0], speech.CALM_SCRIPT),
        ("angry", angry, records[1], speech.ANGRY_SCRIPT),
    ):
        assert record["state"] == "ended"
        assert record["end_reason"] == "remote_closed"
        heard = " ".join(u["text"] for u in record["transcript"])
        error = speech.wer(" ".join(script), heard)
        print(f"{name}: WER {error:.1%}: {heard}")
        assert error <= 0.20, heard
        assert len(record["transcript"]) >= 3, "sentences should be separate utterances"
        check_stream_order(caller.events)
        # what the stream showed is what was stored
        streamed = [
            (e["utterance_id"], e["text"]) for e in caller.events if e["type"] == "transcript.final"
        ]
        assert streamed == [(u["id"], u["text"]) for u in record["transcript"]]
        assert len(record["emotion_timeline"]) == len(record["transcript"])
        results[name] = record

    print({k: (r["emotion"], r["emotion_timeline"][-1]["trend"]) for k, r in results.items()})
    # escalation: the calm caller never needs a person; the angry one does, and why is on record
    assert results["calm"]["escalations"] == [] and results["calm"]["escalation_reason"] is None
    angry_esc = results["angry"]["escalations"]
    rules = [e["rule"] for e in angry_esc]
    print("angry escalations:", [e["reason"] for e in angry_esc])
    assert "asks_for_person" in rules and "upset_streak" in rules
    stored_ids = {u["id"] for u in results["angry"]["transcript"]}
    assert all(set(e["evidence"]["utterance_ids"]) <= stored_ids for e in angry_esc)
    first_routing = next(e for e in angry_esc if "route_to_human" in e["actions"])
    assert results["angry"]["escalation_reason"] == first_routing["reason"]
    assert results["angry"]["priority"] >= 3
    # the angry caller was put in line for a person, told so, and heard it
    queued = [e for e in angry.events if e["type"] == "queue.updated"]
    assert queued and queued[0]["position"] == 1 and queued[0]["expected_wait"] is None
    assert "number 1 in line" in queued[0]["announcement"]
    heard = speech.recognise(angry.heard_pcm())
    print("angry caller heard:", heard)
    # the announcement's first sentence ("I am connecting you to a person") is the
    # engine's piper, whose rendition varies with its noise; twice in full runs the
    # recognizer heard only the rest ("You are number one in line, all of our agents
    # are busy"): that still says a person is coming and where the caller stands
    assert "line" in heard and ("person" in heard or "agents" in heard), heard
    assert not any(e["type"] == "queue.updated" for e in calm.events)
    assert int(np.abs(calm.heard_pcm()).max()) < 50  # silence: nobody spoke to them
    streamed = [e["escalation_id"] for e in angry.events if e["type"] == "escalation.raised"]
    assert streamed == [e["id"] for e in angry_esc]
    labels = {k: [e["label"] for e in r["emotion_timeline"]] for k, r in results.items()}
    print("labels:", labels)
    # a polite caller asking routine things is neutral throughout (courtesy is not
    # delight); the angry caller is angry from the first sentence, no baseline needed
    assert set(labels["calm"]) == {"neutral"} and results["calm"]["emotion"] == "neutral"
    assert labels["angry"][0] == "angry"
    assert results["angry"]["emotion"] in {"angry", "frustrated"}
    # each label comes with its confidence and the cues behind it, stored and streamed
    first = results["angry"]["emotion_timeline"][0]
    assert 0.5 <= first["confidence"] <= 1.0
    assert any("ridiculous" in e for e in first["evidence"]), first["evidence"]
    streamed_emotion = [e for e in angry.events if e["type"] == "emotion.updated"]
    assert streamed_emotion[0]["evidence"] == first["evidence"]
    assert (
        results["angry"]["emotion_timeline"][-1]["trend"]
        < results["calm"]["emotion_timeline"][-1]["trend"]
    )

    async with engine.http() as http:
        metrics = (await http.get("/metrics")).text
        listed = (await http.get("/api/v1/calls", params={"state": "ended"})).json()["calls"]
    assert {c["id"] for c in listed} == {calm.call_id, angry.call_id}
    assert "ccengine_active_calls 0.0" in metrics
    # finals by what ended them: these scripts' sentences end at a window the
    # recognizer's look at a pause chose, not at the slower ratio rule
    ended_by = {
        ln.split('end="')[1].split('"')[0]: float(ln.split()[-1])
        for ln in metrics.splitlines()
        if ln.startswith("ccengine_asr_latency_seconds_count{")
    }
    assert ended_by.get("sure", 0) + ended_by.get("complete", 0) > 0, ended_by
    # collections are timed, and ccengine serve froze its start-up objects out of them
    assert 'ccengine_gc_pause_seconds_count{generation="0"}' in metrics
    assert "start-up objects frozen" in engine.log.read_text()
    heap = next(ln for ln in metrics.splitlines() if ln.startswith("ccengine_malloc_in_use_bytes"))
    assert 10 * 2**20 < float(heap.split()[-1]) < 2**31  # the engine's heap, tens of MB
    frames = next(
        ln for ln in metrics.splitlines() if ln.startswith("ccengine_frames_processed_total")
    )
    assert float(frames.split()[-1]) > 2 * 50 * 10  # two calls, 10+ s each, 50 frames/s
    # what the bounded caches hold (a soak's memory curve subtracts it): the greeting
    # both callers heard, and the calls' events
    held = {
        ln.split('"')[1]: float(ln.split()[-1])
        for ln in metrics.splitlines()
        if ln.startswith("ccengine_bounded_cache_bytes{")
    }
    assert held["prompt"] > 16000 and held["event_ring"] > 1000, held


async def test_hangup_from_the_api(engine: EngineProcess, voices: dict[str, Path]) -> None:
    caller = Caller(engine.url, voices["calm"])
    try:
        await caller.dial()
        await asyncio.sleep(3)
        async with engine.http() as http:
            assert (await http.post(f"/api/v1/calls/{caller.call_id}/hangup")).status_code == 202
            assert (await http.post(f"/api/v1/calls/{caller.call_id}/hangup")).status_code == 404
        await asyncio.wait_for(caller.ended.wait(), 15)
    finally:
        await caller.close()
    assert caller.events[-1]["reason"] == "hangup"
    assert (await caller.call_record())["end_reason"] == "hangup"


VANISHING_CALLER = """
import asyncio, sys
from tests.rtc_client import Caller
async def main():
    c = Caller(sys.argv[1], sys.argv[2])
    await c.dial()
    print(c.call_id, flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def test_a_caller_that_vanishes_is_ended(engine: EngineProcess, voices: dict[str, Path]) -> None:
    """The caller's process dies mid-call (no BYE, no DTLS close): the call must end
    within 30 s with a recorded reason, and what was said must be kept."""
    with subprocess.Popen(
        [sys.executable, "-c", VANISHING_CALLER, engine.url, str(voices["calm"])],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            call_id = proc.stdout.readline().strip()
            time.sleep(6)  # let it speak a couple of sentences
        finally:
            proc.kill()
    killed_at = time.monotonic()
    record: dict[str, Any] = {}
    while time.monotonic() - killed_at < 30:
        record = httpx.get(f"{engine.url}/api/v1/calls/{call_id}", headers=engine.headers).json()
        if record["state"] == "ended":
            break
        time.sleep(0.5)
    assert record["state"] == "ended", "call still open 30 s after the caller vanished"
    assert record["end_reason"] in {"media_timeout", "ice_failed"}
    assert record["transcript"], "the words said before vanishing were lost"


async def test_a_crash_loses_at_most_the_utterance_in_flight(
    tmp_path: Path, voices: dict[str, Path]
) -> None:
    engine = EngineProcess(tmp_path / "crash").start()
    caller = Caller(engine.url, voices["calm"])
    try:
        await caller.dial()
        deadline = time.monotonic() + 20
        while not any(e["type"] == "emotion.updated" for e in caller.events):
            assert time.monotonic() < deadline, "no utterance finished"
            await asyncio.sleep(0.1)
        engine.kill()
        seen = [e["utterance_id"] for e in caller.events if e["type"] == "transcript.final"]
    finally:
        await caller.close()
        engine.kill()
    with sqlite3.connect(engine.db) as db:
        stored = [
            r[0] for r in db.execute("select id from utterances where call_id=?", (caller.call_id,))
        ]
    assert set(seen) <= set(stored)
    restarted = EngineProcess(tmp_path / "crash").start()
    try:
        async with restarted.http() as http:
            record = (await http.get(f"/api/v1/calls/{caller.call_id}")).json()
    finally:
        restarted.stop()
    assert record["state"] == "ended"
    assert record["end_reason"] == "engine_restart"
    assert [u["id"] for u in record["transcript"]] == stored


async def test_korean_call_is_transcribed_by_vosk(engine: EngineProcess, tmp_path: Path) -> None:
    """language=ko picks vosk with the installed model package, through the whole engine."""
    wav = speech.espeak("안녕하세요. 주문 확인 부탁드립니다.", "ko", tmp_path / "ko.wav")
    caller = Caller(engine.url, wav, language="ko")
    record = await caller.complete_call()
    assert caller.answer["recognizer"] == "vosk" and caller.answer["language"] == "ko"
    partials = [e for e in caller.events if e["type"] == "transcript.partial"]
    finals = [e for e in caller.events if e["type"] == "transcript.final"]
    assert partials and finals
    assert all(w["start"] < w["end"] for f in finals for w in f["words"])
    assert all(f["asr_latency"] < 5 for f in finals)
    assert record["recognizer"] == "vosk"
    assert [u["text"] for u in record["transcript"]] == [f["text"] for f in finals]


async def test_custom_rules_and_silence(tmp_path: Path, voices: dict[str, Path]) -> None:
    """Rules come from the configured file; the silence rule fires from the call's
    media clock once the caller stops talking, and puts them in line for a person.
    (A caller already waiting in line is not judged for silence.)"""
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rules]]\nid = "order_question"\nkind = "phrase"\nphrases = ["order"]\n'
        'actions = ["raise_priority"]\npriority = 4\n\n'
        '[[rules]]\nid = "quiet"\nkind = "silence"\nseconds = 3\nactions = ["route_to_human"]\n'
    )
    engine = EngineProcess(tmp_path / "rules", CCENGINE_ESCALATION_RULES=str(rules)).start()
    try:
        async with engine.http() as http:
            active = (await http.get("/api/v1/escalation-rules")).json()
        assert [r["id"] for r in active] == ["order_question", "quiet"]
        caller = Caller(engine.url, voices["calm"])
        await caller.dial()
        try:
            await caller.talk_and_hang_up(tail=5.0)
        finally:
            await caller.close()
        record = await caller.call_record()
    finally:
        engine.stop()
    by_rule = {e["rule"]: e for e in record["escalations"]}
    assert set(by_rule) == {"order_question", "quiet"}
    assert record["priority"] == 4
    last_word = record["transcript"][-1]["end"]
    assert by_rule["quiet"]["at"] >= last_word + 3
    # silence is what called for a person, so that is the reason on record
    assert record["escalation_reason"] == by_rule["quiet"]["reason"]
    states = [e["state"] for e in caller.events if e["type"] == "call.state_changed"]
    assert states[-2:] == ["queued", "ended"]
    # regression: priority raised before the call was routed must reach the queue
    queued = next(e for e in caller.events if e["type"] == "queue.updated")
    assert queued["priority"] == 4


def test_a_broken_rules_file_stops_start_up_with_the_reason(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nid = "x"\nkind = "phrase"\nactions = ["route_to_human"]\n')
    engine = EngineProcess(tmp_path / "bad", CCENGINE_ESCALATION_RULES=str(rules))
    with pytest.raises(RuntimeError, match="a phrase rule needs phrases"):
        engine.start(timeout=30)


async def test_assist_redacts_cards_and_finds_facts(tmp_path: Path) -> None:
    """A caller gives an amount and an account number and reads out a card number: the
    card never reaches the store or the stream (even though the recognizer writes "for"
    for "four"), the amount becomes a fact, the summary says why they called,
    and the knowledge base suggests the right article."""
    wav = speech.piper_script(
        [
            "Hi, I am calling because my package arrived damaged.",
            "I was charged forty nine dollars.",
            "My account number is four five seven two.",
            "The card number is four one one one one one one one one one one one one one one one.",
        ],
        tmp_path / "assist.wav",
    )
    kb = Path(__file__).parent / "fixtures" / "kb"
    engine = EngineProcess(tmp_path / "assist", CCENGINE_KNOWLEDGE_BASE=str(kb)).start()
    try:
        caller = Caller(engine.url, wav)
        record = await caller.complete_call()
    finally:
        engine.stop()
    heard = " ".join(u["text"] for u in record["transcript"])
    print("heard:", heard)
    streamed = " ".join(e.get("text", "") for e in caller.events)
    for leak in ("one one one one one one", "1111"):
        assert leak not in heard and leak not in streamed
    assert "[card]" in heard
    card_words = [w for u in record["transcript"] for w in u["words"] if w["word"] == "[card]"]
    assert card_words and card_words[0]["end"] > card_words[0]["start"]
    facts = {(f["kind"], f["value"]) for f in record["facts"]}
    # the account number is in the script too, but this recognizer hears it differently
    # from run to run; exact extraction is unit-tested in test_redact_facts.py
    assert ("amount", "$49") in facts
    # the summary quotes the caller's own words for why they called (whatever the
    # recognizer made of "arrived damaged" in this run) and lists the facts
    intent = next(u["text"] for u in record["transcript"] if "calling" in u["text"])
    assert f'Caller: "{intent}"' in record["summary"]
    assert "amount $49" in record["summary"]
    updates = [e for e in caller.events if e["type"] == "assist.updated"]
    assert updates, "no assist updates"
    suggested = [s["article_id"] for u in updates for s in u["suggestions"][:1]]
    assert "damaged" in suggested
