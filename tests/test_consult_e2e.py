"""A warm transfer and a three-way conference, against a real engine.

One engine, one call: the caller, Ann (who takes it) and Bob (whom she consults) are
aiortc peers humming their own tones (440, 700, 1100 Hz). What each *received* is
measured with an FFT after each step, so a wrong route fails: the caller overhearing
the consult, a conference missing a voice, a hand-over that leaves Ann on the line.
Steps: refusals, a consult declined, cancelled while ringing and rung out (no media),
then a consult (the agents hear each other, the caller neither), conference
(everyone), Bob leaves (Ann keeps the caller), a second consult, complete (the caller
hears Bob only; Ann is in wrap-up)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller
from tests.test_monitor_e2e import ToneTrack
from tests.test_monitor_e2e import levels as tone_levels

pytestmark = [pytest.mark.integration]

CALLER_HZ, ANN_HZ, BOB_HZ = 440.0, 700.0, 1100.0
HEARD, NOT_HEARD = 1000.0, 150.0
# the held caller hears hold audio: its notes' harmonics (659, 784 Hz) under their short
# envelopes spread some energy into the 700 Hz window (~100); an agent heard reads ~4,000
HELD_DEAF = 600.0


async def levels(phones: dict[str, Caller], settle: float = 1.0, span: float = 1.2) -> dict:
    """Per party, the level of each party's tone it received over ``span`` s after ``settle``."""
    return await tone_levels(phones, settle, span, (CALLER_HZ, ANN_HZ, BOB_HZ))


async def wait_event(
    events: list[dict[str, Any]], type_: str, within: float = 20, **match: Any
) -> dict[str, Any]:
    for _ in range(int(within * 10)):
        for e in events:
            if e["type"] == type_ and all(e.get(k) == v for k, v in match.items()):
                return e
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no {type_} {match}")


async def presence(http: httpx.AsyncClient) -> str:
    me = (await http.get("/api/v1/auth/me")).json()
    r = await http.get("/api/v1/agents")
    return next(a["presence"] for a in r.json() if a["username"] == me["username"])


async def ann_has_the_caller(
    admin: httpx.AsyncClient, ann: httpx.AsyncClient, caller: Caller, ann_phone: Caller
) -> str:
    """The caller rings Ann by a call link and her softphone answers: the call's id."""
    r = await admin.post("/api/v1/call-links", json={"agent": "ann"})
    caller.invite = r.json()["token"]
    await caller.dial()
    cid = caller.call_id
    await caller.wait_for("call.offered", within=30)
    await ann_phone.accept(ann, cid)
    await caller.wait_for("call.state_changed", state="bridged")
    return cid


async def test_consult_conference_and_warm_transfer_route_the_voices(tmp_path: Path) -> None:
    # a short ring, so a consult rings out quickly
    engine = EngineProcess(tmp_path / "consult", CCENGINE_OFFER_TIMEOUT="3").start()
    admin = engine.http(timeout=30)
    for name in ("ann", "bob"):
        user = {"username": name, "password": f"pw-{name}-1"}
        assert (await admin.post("/api/v1/agents", json=user)).status_code == 201
    ann = await engine.agent("ann", "pw-ann-1", "login", "available")
    bob = await engine.agent("bob", "pw-bob-1", "login", "available")
    caller = Caller(engine.url, None, mic=ToneTrack(CALLER_HZ))
    ann_phone = Caller(engine.url, None, mic=ToneTrack(ANN_HZ))
    bob_phone = Caller(engine.url, None, mic=ToneTrack(BOB_HZ))
    bob_again = Caller(engine.url, None, mic=ToneTrack(BOB_HZ))
    events: list[dict[str, Any]] = []
    watcher = asyncio.create_task(engine.watch_events(events))
    try:
        cid = await ann_has_the_caller(admin, ann, caller, ann_phone)
        # keys to the caller (0: 941 + 1336 Hz, far from the tones measured): at most 8 s
        # of them waiting per call (50 keys); more is 409
        dtmf = f"/api/v1/calls/{cid}/dtmf"
        for _ in range(2):
            r = await ann.post(dtmf, json={"digits": "0" * 20})
            assert r.status_code == 200 and r.json()["sent_as"] == "inband", r.text
        r = await ann.post(dtmf, json={"digits": "0" * 20})
        assert r.status_code == 409 and "too many keys" in r.json()["detail"], r.text
        assert (await bob.post(dtmf, json={"digits": "1"})).status_code == 403  # not his call
        assert (await ann.post(dtmf, json={"digits": "x" * 40})).status_code == 422
        url = f"/api/v1/calls/{cid}/consult"
        # refusals: not Bob's call; nobody by that name; nothing to complete yet
        r = await bob.post(url, json={"agent": "ann"})
        assert r.status_code == 403, r.text
        r = await ann.post(url, json={"agent": "nobody"})
        assert r.status_code == 409 and "no such agent" in r.json()["detail"], r.text
        r = await ann.post(f"{url}/complete")
        assert r.status_code == 409 and "no consult" in r.json()["detail"], r.text
        assert (await ann.post(url, json={})).status_code == 422

        # Bob declines: Ann is told, and stays with the caller on hold until she resumes
        assert (await ann.post(url, json={"agent": "bob"})).status_code == 202
        bob_id = (await bob.get("/api/v1/auth/me")).json()["id"]
        await wait_event(events, "call.offered", agent_id=bob_id)
        assert (await bob.post(f"/api/v1/calls/{cid}/decline")).status_code == 204
        declined = await wait_event(events, "call.consult_cancelled")
        assert (declined["reason"], declined["guest"]) == ("declined", "bob")
        assert (await admin.get(f"/api/v1/calls/{cid}")).json()["state"] == "held"
        assert (await ann.post(f"/api/v1/calls/{cid}/resume")).status_code == 204
        # Ann cancels while Bob rings: he is free again, the caller back with her
        assert (await ann.post(url, json={"agent": "bob"})).status_code == 202
        assert (await presence(bob)) == "ringing"
        assert (await ann.post(f"{url}/cancel")).status_code == 204
        cancelled = await wait_event(events, "call.consult_cancelled", reason="cancelled")
        assert cancelled["guest"] == "bob" and await presence(bob) == "available"
        assert (await admin.get(f"/api/v1/calls/{cid}")).json()["state"] == "bridged"
        # Bob lets it ring out (CCENGINE_OFFER_TIMEOUT): Ann is told, the caller stays held
        assert (await ann.post(url, json={"agent": "bob"})).status_code == 202
        await wait_event(events, "call.consult_cancelled", reason="no_answer", within=10)
        assert (await admin.get(f"/api/v1/calls/{cid}")).json()["state"] == "held"
        assert (await presence(bob)) == "away"  # a missed offer, as any
        r = await bob.post("/api/v1/agents/me/presence", json={"event": "available"})
        assert r.status_code == 200, r.text
        assert (await ann.post(f"/api/v1/calls/{cid}/resume")).status_code == 204

        # the consult: the caller is held, Bob's desk rings marked as a consult from Ann
        events.clear()
        r = await ann.post(url, json={"agent": "bob"})
        assert r.status_code == 202, r.text
        offered = await wait_event(events, "call.offered", agent_id=bob_id)
        assert offered["consult_from"] == "ann" and offered["call_id"] == cid
        r = await ann.post(url, json={"agent": "bob"})
        assert r.status_code == 409 and "already consulting" in r.json()["detail"]
        r = await ann.post(f"{url}/complete")
        assert r.status_code == 409 and "not answered yet" in r.json()["detail"]
        await bob_phone.accept(bob, cid)
        await wait_event(events, "call.consult_answered")
        r = await ann.post(f"/api/v1/calls/{cid}/resume")
        assert r.status_code == 409 and "during a consult" in r.json()["detail"]
        phones = {"caller": caller, "ann": ann_phone, "bob": bob_phone}
        consulting = await levels(phones, settle=1.5)

        assert (await ann.post(f"{url}/conference")).status_code == 204
        conference = await levels(phones)

        # Bob leaves the conference: Ann keeps the caller, Bob goes to wrap-up
        assert (await bob.post(f"/api/v1/calls/{cid}/conference/leave")).status_code == 204
        await wait_event(events, "call.conference_left", agent="bob")
        bob_left = await levels({"caller": caller, "ann": ann_phone})
        r = await bob.post(f"/api/v1/calls/{cid}/wrap-up", json={"disposition": "resolved"})
        assert r.status_code == 204, r.text

        # a second consult, completed: a warm transfer to Bob
        assert (await ann.post(url, json={"agent": "bob"})).status_code == 202
        await bob_again.accept(bob, cid)
        await wait_event(events, "call.consult_answered", within=20)
        await asyncio.sleep(0.5)
        assert (await ann.post(f"{url}/complete")).status_code == 204
        await wait_event(events, "call.consult_completed")
        handed = await levels({"caller": caller, "bob": bob_again})
        ann_presence = await presence(ann)
        r = await ann.post(f"/api/v1/calls/{cid}/hold")
        assert r.status_code == 403, r.text  # not Ann's call any more
        assert (await bob.post(f"/api/v1/calls/{cid}/hold")).status_code == 204
        await caller.pc.close()
        await asyncio.wait_for(caller.ended.wait(), 20)
    finally:
        watcher.cancel()
        await asyncio.gather(
            caller.close(), ann_phone.close(), bob_phone.close(), bob_again.close()
        )
        await asyncio.gather(ann.aclose(), bob.aclose(), admin.aclose())
        engine.stop()

    def hears(got: dict[float, float], hz: float) -> bool:
        return got[hz] > HEARD

    def deaf(got: dict[float, float], hz: float) -> bool:
        return got[hz] < NOT_HEARD

    # consulting: Ann and Bob hear each other; the caller hears neither, nor is heard
    assert consulting["caller"][ANN_HZ] < HELD_DEAF and consulting["caller"][BOB_HZ] < HELD_DEAF
    assert hears(consulting["ann"], BOB_HZ) and hears(consulting["bob"], ANN_HZ)
    assert deaf(consulting["ann"], CALLER_HZ) and deaf(consulting["bob"], CALLER_HZ)
    # conference: all three hear each other
    for name, others in {"caller": (ANN_HZ, BOB_HZ), "ann": (CALLER_HZ, BOB_HZ),
                         "bob": (CALLER_HZ, ANN_HZ)}.items():  # fmt: skip
        assert all(hears(conference[name], hz) for hz in others), name
    # Bob left: caller and Ann, as before the consult
    assert hears(bob_left["caller"], ANN_HZ) and deaf(bob_left["caller"], BOB_HZ)
    assert hears(bob_left["ann"], CALLER_HZ) and deaf(bob_left["ann"], BOB_HZ)
    # completed: the caller hears Bob only, Ann is in wrap-up
    assert hears(handed["caller"], BOB_HZ) and deaf(handed["caller"], ANN_HZ)
    assert hears(handed["bob"], CALLER_HZ)
    assert ann_presence == "wrap_up"
    audit = [e["type"] for e in events if e["type"].startswith(("call.consult", "call.conference"))]
    assert audit == [
        "call.consult_started", "call.consult_answered", "call.consult_conferenced",
        "call.conference_left", "call.consult_started", "call.consult_answered",
        "call.consult_completed",
    ]  # fmt: skip
