"""The agent's desk against a real engine: transfer with full context, hold, mute,
wrap-up, and a waiting caller who chooses a callback. Agents are aiortc softphones."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import jwt
import numpy as np
import pytest

from media.audio import rms_dbfs
from media.holdmusic import NOTES_HZ
from media.wavtrack import SEND_RATE
from tests import speech
from tests.engine_proc import EngineProcess
from tests.redisd import RedisServer, prefix
from tests.rtc_client import Caller

pytestmark = pytest.mark.integration


def dominant_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize("nodes", [1, 2])
async def test_transfer_hands_the_caller_over_with_everything_so_far(
    tmp_path: Path, voices: dict[str, Path], nodes: int, request: pytest.FixtureRequest
) -> None:
    """Ann takes the upset caller and transfers them to Bob with a note. Bob's phone rings
    with the note, the summary and why it escalated; Bob holds and resumes; both wrap up.
    With two nodes (one routing through Redis, engine/routinglog.py) Bob's desk is on the
    other engine: he is offered the transfer there, and everything he does to the call is
    sent on to the engine running it."""
    env: dict[str, str] = {}
    if nodes == 2:
        redis: RedisServer = request.getfixturevalue("redis_server")
        env = {"CCENGINE_REDIS_URL": redis.url, "CCENGINE_REDIS_PREFIX": prefix(),
               "CCENGINE_SECRET_KEY_FILE": str(tmp_path / "secret")}  # fmt: skip
    engine = EngineProcess(tmp_path / "desk", **env).start()
    bobs = engine  # the engine Bob's desk talks to
    if nodes == 2:
        bobs = EngineProcess(tmp_path / "bobs", **env)
        bobs.db, bobs.api_key = engine.db, engine.api_key  # one database
        bobs.start()
    engine.add_user("ann", "pw-ann-1", "--name", "Ann Lee")
    engine.add_user("bob", "pw-bob-1", "--name", "Bob Ray", "--skills", "billing")
    ann_wav = speech.piper_script(
        ["Hello, this is Ann from customer care.", "Let me get you to our billing team."],
        tmp_path / "ann.wav",
    )
    bob_wav = speech.piper_script(
        ["Hi, this is Bob from billing.", "I can see what you told Ann, so I will fix it now."],
        tmp_path / "bob.wav",
    )
    note = "Wants a refund for the late order. Already very upset."
    ann = await engine.agent("ann", "pw-ann-1", "login", "available")
    bob = await bobs.agent("bob", "pw-bob-1", "login")  # away: the first ring goes to Ann
    caller = Caller(engine.url, voices["angry"], caller="cust-42")
    ann_phone, bob_phone = Caller(engine.url, ann_wav), Caller(bobs.url, bob_wav)
    try:
        await caller.dial()
        cid = caller.call_id
        await caller.wait_for("call.offered", within=40)
        await ann_phone.accept(ann, cid)
        await ann_phone.track.finished.wait()
        await asyncio.sleep(2.0)  # her last words reach the transcript
        # only the agent on the call controls it; a transfer needs a destination
        assert (await bob.post(f"/api/v1/calls/{cid}/hold")).status_code == 403
        r = await ann.post(f"/api/v1/calls/{cid}/transfer", json={})
        assert r.status_code == 422 and "a queue, an agent or a number" in r.json()["detail"]
        r = await ann.post(f"/api/v1/calls/{cid}/transfer", json={"agent": "nobody"})
        assert r.status_code == 409 and "no agent 'nobody'" in r.json()["detail"]
        r = await ann.post(f"/api/v1/calls/{cid}/transfer", json={"agent": "bob", "note": note})
        assert r.status_code == 202, r.text
        transfer_mark = len(caller.heard)
        await caller.wait_for("call.transferred")
        await asyncio.sleep(6.0)  # the caller hears why the line went quiet
        # Bob was away: the call waited for him alone; now it rings him with the context
        await bob.post("/api/v1/agents/me/presence", json={"event": "available"})
        bob_id = (await bob.get("/api/v1/auth/me")).json()["id"]
        offer = await caller.wait_for("call.offered", agent_id=bob_id)
        # Bob reads what happened before he answers (the page does the same)
        before = (await bob.get(f"/api/v1/calls/{cid}")).json()
        await bob_phone.accept(bob, cid)
        await bob_phone.track.finished.wait()
        await asyncio.sleep(1.5)
        hold_mark = len(caller.heard)
        assert (await bob.post(f"/api/v1/calls/{cid}/hold")).status_code == 204
        await asyncio.sleep(7.0)  # the hold prompt, then hold audio
        held = caller.heard_pcm(hold_mark)
        assert (await bob.post(f"/api/v1/calls/{cid}/resume")).status_code == 204
        r = await bob.post(f"/api/v1/calls/{cid}/mute", json={"muted": True})
        assert r.status_code == 204
        await caller.wait_for("call.muted", muted=True)
        r = await bob.post(f"/api/v1/calls/{cid}/wrap-up", json={"disposition": "resolved"})
        assert r.status_code == 409  # still on the call
        r = await ann.post(f"/api/v1/calls/{cid}/wrap-up", json={"disposition": "bogus"})
        assert r.status_code == 422 and "disposition must be one of" in r.json()["detail"]
        r = await ann.post(
            f"/api/v1/calls/{cid}/wrap-up",
            json={"disposition": "transferred", "notes": "Sent to Bob for the refund."},
        )
        assert r.status_code == 204
        await caller.pc.close()
        await asyncio.wait_for(caller.ended.wait(), 20)
        r = await bob.post(
            f"/api/v1/calls/{cid}/wrap-up",
            json={"disposition": "resolved", "notes": "Refund issued.", "then": "away"},
        )
        assert r.status_code == 204
        record = await caller.call_record()
        presence = {a["username"]: a["presence"] for a in (await bob.get("/api/v1/agents")).json()}
    finally:
        await asyncio.gather(caller.close(), ann_phone.close(), bob_phone.close())
        await asyncio.gather(ann.aclose(), bob.aclose())
        if bobs is not engine:
            bobs.stop()
        engine.stop()

    states = [e["state"] for e in caller.events if e["type"] == "call.state_changed"]
    assert states == [
        "connecting", "active", "queued", "bridged", "queued", "bridged", "held", "bridged",
        "ended",
    ]  # fmt: skip
    # Bob's ring carries the hand-over
    assert offer["transferred_by"] == "ann" and offer["transfer_note"] == note
    assert offer["escalation_reason"] and "Caller:" in offer["summary"]
    # ... and before answering he could read both sides of the first part, on one clock
    ann_leg = next(leg["id"] for leg in before["legs"] if leg["user_id"])
    first_part = [(u["speaker"], u["leg_id"]) for u in before["transcript"]]
    assert ("caller", before["legs"][0]["id"]) in first_part and ("agent", ann_leg) in first_part
    assert before["notes"][0]["kind"] == "transfer" and before["notes"][0]["text"] == note
    legs = record["legs"]
    assert [leg["role"] for leg in legs] == ["caller", "agent", "agent"]
    assert all(leg["ended_at"] for leg in legs)
    ann_said = [u for u in record["transcript"] if u["leg_id"] == legs[1]["id"]]
    bob_said = [u for u in record["transcript"] if u["leg_id"] == legs[2]["id"]]
    print("ann:", [u["text"] for u in ann_said], "bob:", [u["text"] for u in bob_said])
    assert ann_said and bob_said
    assert max(u["end"] for u in ann_said) < min(u["start"] for u in bob_said)
    assert [(n["kind"], n["author"], n["disposition"]) for n in record["notes"]] == [
        ("transfer", "ann", None),
        ("wrap_up", "ann", "transferred"),
        ("wrap_up", "bob", "resolved"),
    ]
    assert record["disposition"] == "resolved" and record["wrapped_up_at"]
    assert presence == {"ann": "available", "bob": "away"}
    # the caller was told about the transfer, in words
    told = speech.recognise(caller.heard_pcm(transfer_mark, transfer_mark + 400))
    print("caller heard at transfer:", told)
    assert {"transferring", "transfer", "colleague"} & set(told.split())
    # on hold: the prompt, then the hold loop's notes, not silence
    tail = held[-2 * SEND_RATE :]
    assert rms_dbfs(tail) > -40
    assert min(abs(dominant_hz(tail[i : i + 14400], SEND_RATE) / f - 1) for f in NOTES_HZ
               for i in (0, 28800)) < 0.03  # fmt: skip


async def test_waiting_caller_chooses_a_callback(tmp_path: Path, voices: dict[str, Path]) -> None:
    """Nobody is free; after the queue's maximum wait the caller is offered a callback,
    takes it, hears a confirmation, and the agents see the request with its summary
    and the caller's history."""
    queues = tmp_path / "queues.toml"
    queues.write_text('[[queues]]\nname = "general"\nmax_wait = 3\n')
    engine = EngineProcess(tmp_path / "cb", CCENGINE_QUEUES=str(queues)).start()
    engine.add_user("ann", "pw-ann-1")
    try:
        earlier = await Caller(engine.url, voices["calm"], caller="cust-7").complete_call()
        caller = Caller(engine.url, voices["angry"], caller="cust-7")
        try:
            await caller.dial()
            cid = caller.call_id
            r = await caller.post(f"/api/v1/calls/{cid}/callback", {})
            assert r.status_code == 409  # not waiting for anyone yet
            offered = await caller.wait_for("queue.updated", within=60, callback_offered=True)
            mark = len(caller.heard)
            r = await caller.post(f"/api/v1/calls/{cid}/callback", {"contact": "+1 555 0100"})
            assert r.status_code == 201, r.text
            await asyncio.wait_for(caller.ended.wait(), 25)
            confirmation = speech.recognise(caller.heard_pcm(mark))
        finally:
            await caller.close()
        ann = await engine.agent("ann", "pw-ann-1")
        try:
            pending = (await ann.get("/api/v1/callbacks")).json()
            history = (await ann.get(f"/api/v1/calls/{cid}/history")).json()
            r = await ann.post("/api/v1/call-links", json={"callback_id": pending[0]["id"]})
            assert r.status_code == 201, r.text
            invite = jwt.decode(r.json()["token"], options={"verify_signature": False})
            done = await ann.post(f"/api/v1/callbacks/{pending[0]['id']}/done")
            used = await ann.post("/api/v1/calls", json={"sdp": "v=0", "invite": r.json()["token"]})
            again = await ann.post(f"/api/v1/callbacks/{pending[0]['id']}/done")
            left = (await ann.get("/api/v1/callbacks")).json()
            anonymous = await httpx_get(engine, "/api/v1/callbacks")
        finally:
            await ann.aclose()
    finally:
        engine.stop()
    assert "call back" in offered["announcement"]
    ended = next(e for e in caller.events if e["type"] == "call.ended")
    assert ended["reason"] == "callback_requested"
    print("caller heard:", confirmation)
    # the confirmation, to its last words (the offer's "call back" came before it). Not
    # "the last word heard is back": Moonshine once added a "Thank you." on the quiet line
    # after it ("... will call you back. Thank you.")
    said = " ".join(speech.normalize(confirmation))
    assert "request" in said and "call you back" in said.split("request", 1)[1]
    assert [(c["call_id"], c["contact"], c["caller"]) for c in pending] == [
        (cid, "+1 555 0100", "cust-7")
    ]
    assert "Caller:" in pending[0]["summary"] and pending[0]["escalation_reason"]
    assert [h["id"] for h in history] == [earlier["id"]]
    assert history[0]["summary"] == earlier["summary"] != ""
    assert done.status_code == 200 and done.json()["done_by"] == "ann"
    assert again.status_code == 409 and left == []
    # the link Ann made for it carried who and where; once done, the link is spent
    assert (invite["caller"], invite["queue"], invite["by"]) == ("cust-7", "general", "ann")
    assert used.status_code == 409 and "used" in used.json()["detail"]
    assert anonymous.status_code == 401


async def httpx_get(engine: EngineProcess, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
        return await http.get(path)


def colours_since(seen: list[tuple[float, np.ndarray]], since: float) -> list[np.ndarray]:
    return [rgb for t, rgb in seen if t >= since]


async def test_video_is_forwarded_both_ways_while_bridged(
    tmp_path: Path, voices: dict[str, Path]
) -> None:
    """A caller with a red camera and an agent with a blue one see each other; on hold
    the caller's picture goes black."""
    engine = EngineProcess(tmp_path / "video").start()
    engine.add_user("ann", "pw-ann-1")
    ann = await engine.agent("ann", "pw-ann-1", "login", "available")
    caller = Caller(engine.url, voices["angry"], camera=(220, 30, 30))
    phone = Caller(engine.url, voices["calm"], camera=(30, 30, 220))
    try:
        await caller.dial()
        await caller.wait_for("call.offered", within=40)
        queued_view = colours_since(caller.seen, 0)  # before anyone answers: black
        await phone.accept(ann, caller.call_id)
        await caller.wait_for("call.state_changed", state="bridged")
        bridged_at = time.monotonic() + 2.0  # give the encoders a moment
        await asyncio.sleep(5.0)
        r = await ann.post(f"/api/v1/calls/{caller.call_id}/hold")
        assert r.status_code == 204
        held_at = time.monotonic() + 1.5
        await asyncio.sleep(4.0)
        caller_saw = colours_since(caller.seen, bridged_at)
        agent_saw = colours_since(phone.seen, bridged_at)
    finally:
        await asyncio.gather(caller.close(), phone.close(), ann.aclose())
        engine.stop()
    assert queued_view and max(float(rgb.max()) for rgb in queued_view) < 40
    on_call = [rgb for t, rgb in caller.seen if bridged_at <= t < held_at - 1.5]
    print(f"caller saw {len(caller_saw)} frames, agent saw {len(agent_saw)}")
    assert len(on_call) >= 10 and len(agent_saw) >= 10  # ~30 fps for 3+ s, minus start-up
    blue = [rgb for rgb in on_call if rgb[2] > 150 and rgb[0] < 90]
    red = [rgb for rgb in agent_saw if rgb[0] > 150 and rgb[2] < 90]
    assert len(blue) > 0.8 * len(on_call) and len(red) > 0.8 * len(agent_saw)
    on_hold = [rgb for t, rgb in caller.seen if t >= held_at]
    assert on_hold and all(float(rgb.max()) < 40 for rgb in on_hold)
