"""Supervisor legs with several engines on one database (engine/monitoring.py
``recheck``, engine/changes.py kind "people"), in-process: the real app and call
manager (tests/controlplane.py), phone legs that open no socket and supervisors
joined as in tests/test_monitor_legs.py. The other engine is played by writing the
database as its API would, then running this engine's reload for "people", as its
change listener does when told (tests/test_changes.py proves the telling over Redis).

Regression: ``user_gone`` ran only on the engine that took the sign-out, removal or
demotion; a supervisor whose leg lived on another engine (the one running the call)
went on listening there, and that engine's open streams noticed the sign-out only at
their next periodic check (RECHECK, 60 s)."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from engine.api.auth import ENDED
from engine.callstate import Forbidden
from engine.changes import KINDS, Changes, Kind
from engine.store.models import UserRow
from tests.controlplane import ControlPlane
from tests.test_monitor_legs import PASSWORD, cp, join, offer, person, published, stops, with_ann

__all__ = ["cp"]  # the fixture, shared with tests/test_monitor_legs.py


def changes(cp: ControlPlane) -> Changes:
    assert cp.app is not None
    found: Changes = cp.app.state.changes
    return found


async def test_people_changed_on_another_engine_end_their_supervisor_legs_here(
    cp: ControlPlane,
) -> None:
    """Sue signed out, Sam demoted to agent and Sid removed through another engine end
    their legs on this one ("signed_out", each told as an event); Sol, unchanged,
    keeps listening. This engine's open streams are told to check their credentials
    at once."""
    call = await with_ann(cp)
    names = ("sue", "sam", "sid", "sol")
    legs = {name: await join(cp, call, await person(cp, name), "listen") for name in names}
    # what the other engine's API wrote (engine/api/auth.py revoke_tokens, agents.py)
    await cp.store.update_user("id-sue", token_version=UserRow.token_version + 1)
    await cp.store.update_user("id-sam", role="agent")
    await cp.store.delete_user("id-sid")
    streams_told = revocation(cp)
    assert not streams_told.is_set()
    await changes(cp).apply(("people",), announced=True)  # as the listener does when told
    assert streams_told.is_set()
    assert [legs[n].reason for n in names] == ["signed_out"] * 3 + [None]
    assert call.monitors == [legs["sol"]] and not legs["sol"].stopped
    assert sorted(await stops(cp, 3)) == [(n, "signed_out") for n in ("sam", "sid", "sue")]
    # the backstop runs it every minute whatever happened: nothing more ends
    await changes(cp).apply(("people",), announced=False)
    assert call.monitors == [legs["sol"]]
    assert len(published(cp, "supervisor.monitor_stopped")) == 3


def revocation(cp: ControlPlane) -> asyncio.Event:
    """What this engine's open streams wait on (engine/api/auth.py): set when they are
    told to check their credentials now; a fresh one after each telling."""
    assert cp.app is not None
    told: asyncio.Event = cp.app.state.credentials._revoked
    return told


async def test_the_backstop_rechecks_legs_without_waking_every_open_stream(
    cp: ControlPlane,
) -> None:
    """Regression (cost): every engine's reload of "people" at each minute's backstop
    (and each new subscription) told every open stream to check its credentials, all
    streams of all engines at the same instant, though each checks every minute on its
    own anyway. The backstop's reload still ends the legs of someone signed out
    elsewhere (a missed message is late, never lost), but wakes no stream; an
    announcement does both."""
    call = await with_ann(cp)
    sue = await join(cp, call, await person(cp, "sue"), "listen")
    sam = await join(cp, call, await person(cp, "sam"), "listen")
    await cp.store.update_user("id-sue", token_version=UserRow.token_version + 1)
    streams_told = revocation(cp)
    await changes(cp).apply(KINDS, announced=False)  # the backstop's reload of everything
    assert sue.stopped and sue.reason == "signed_out" and not sam.stopped
    assert not streams_told.is_set()
    await cp.store.update_user("id-sam", role="agent")
    await changes(cp).apply(("people",), announced=True)
    assert sam.stopped and sam.reason == "signed_out" and streams_told.is_set()


async def test_a_sign_out_between_the_credential_check_and_the_join_is_refused(
    cp: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (security): a request's token was checked against Sue's record, then
    her record read again for the join; a sign-out committed in between (on another
    engine) left the second read with her new token version, the leg was stamped with
    it, and its last check and every later recheck passed: a signed-out supervisor
    kept listening. The second read is refused as the sign-out it sees (401)."""
    call = await with_ann(cp)
    sue = await cp.agent("sue", PASSWORD)
    real = cp.store.user
    reads: list[str] = []

    async def read_then_signed_out(user_id: str) -> UserRow | None:
        row = await real(user_id)
        if user_id == "id-sue" and not reads:
            # her token was just checked against this row: another engine signs her out
            await cp.store.update_user(user_id, token_version=UserRow.token_version + 1)
        reads.append(user_id)
        return row

    monkeypatch.setattr(cp.store, "user", read_then_signed_out)
    pc, sdp = await offer()
    try:
        r = await sue.post(f"/api/v1/calls/{call.id}/monitor", json={"mode": "listen", "sdp": sdp})
    finally:
        await pc.close()
    assert r.status_code == 401, r.text
    assert r.json()["detail"] == ENDED
    assert reads[:2] == ["id-sue", "id-sue"]  # the credential check, then the join's read
    assert call.monitors == [] and published(cp, "supervisor.monitor_started") == []


async def test_signing_out_silences_every_leg_before_finishing_any(
    cp: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a sign-out ended its supervisor's legs one after another, each
    awaiting its record's write and its peer's close (seconds when the database is
    slow): the later legs stayed audible meanwhile, and the change listener serving
    ``recheck`` was held up by the sum. Every leg now falls silent first, then all
    are finished together."""
    first, second = await with_ann(cp), await with_ann(cp, "bob")
    sue = await person(cp, "sue")
    legs = [await join(cp, call, sue, "barge") for call in (first, second)]
    writing, release = asyncio.Event(), asyncio.Event()
    real = cp.store.end_leg
    ended: list[str] = []

    async def slow_for_the_first(leg_id: str, at: datetime) -> None:
        if leg_id == legs[0].id:
            writing.set()
            await release.wait()  # a slow database
        await real(leg_id, at)
        ended.append(leg_id)

    monkeypatch.setattr(cp.store, "end_leg", slow_for_the_first)
    gone = asyncio.create_task(cp.calls.monitors.user_gone(sue.id))
    try:
        await asyncio.wait_for(writing.wait(), 5)
        assert all(leg.stopped for leg in legs)  # the second is silent already
        assert first.monitors == second.monitors == []
        await asyncio.wait_for(until_ended(ended, legs[1].id), 5)  # and finished
        assert not gone.done()
    finally:
        release.set()
    await asyncio.wait_for(gone, 5)
    assert sorted(ended) == sorted(leg.id for leg in legs)
    assert await stops(cp, 2) == [("sue", "signed_out")] * 2


async def until_ended(ended: list[str], leg_id: str) -> None:
    while leg_id not in ended:  # noqa: ASYNC110 (the store's write, patched: no event)
        await asyncio.sleep(0.01)


async def test_the_recheck_reads_nothing_without_legs(
    cp: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every engine runs it at every backstop (60 s) and every announcement: with no
    supervisor on any of its calls it costs no query."""

    async def no_query(_user_id: str) -> None:
        raise AssertionError("the database was read")

    await with_ann(cp)
    monkeypatch.setattr(cp.store, "user", no_query)
    await cp.calls.monitors.recheck()


async def test_a_join_set_up_across_a_sign_out_elsewhere_is_refused(cp: ControlPlane) -> None:
    """The join's request read Sue before another engine signed her out; that engine's
    announcement came while the join was still being set up, with no leg yet for
    ``recheck`` to find. The join reads her again last, and is refused."""
    call = await with_ann(cp)
    sue = await person(cp, "sue")  # as the request's credentials check read her
    await cp.store.update_user(sue.id, token_version=UserRow.token_version + 1)
    pc, sdp = await offer()
    try:
        with pytest.raises(Forbidden, match="signed out"):
            await cp.calls.monitors.start(sue, call, "listen", sdp)
    finally:
        await pc.close()
    assert call.monitors == [] and published(cp, "supervisor.monitor_started") == []
    record = await cp.store.get_call(call.id)
    assert record is not None
    assert all(leg.ended_at is not None for leg in record.call.legs if leg.role == "supervisor")


async def test_sign_outs_removals_and_demotions_are_announced(
    cp: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine that signs someone out, gives them a new password, changes their role
    or removes them tells the others ("people"); a new display name or skills change
    nothing the others hold, and are not announced. Each is told right after the
    database is written, before this engine's own (slow) teardown of the person's
    supervisor legs: a request cancelled during that has told the others already
    (a review finding: it was told last)."""
    call = await with_ann(cp)
    for name in ("sol", "sue", "sam", "sid"):
        await join(cp, call, await person(cp, name), "listen")
    told: list[Kind] = []
    listening: list[list[str]] = []  # who was still on the call here when it was told

    async def changed(kind: Kind) -> None:
        told.append(kind)
        listening.append(sorted(m.username for m in call.monitors))

    monkeypatch.setattr(changes(cp), "changed", changed)
    admin = cp.http()
    sol = await cp.agent("sol", PASSWORD)
    assert (await sol.post("/api/v1/auth/logout")).status_code == 204
    assert told == ["people"]
    r = await admin.patch("/api/v1/agents/sue", json={"display_name": "Sue B", "skills": ["x"]})
    assert r.status_code == 200 and told == ["people"]
    streams_told = cp.app.state.credentials._revoked  # set when open streams are told
    r = await admin.patch("/api/v1/agents/sue", json={"role": "agent"})
    assert r.status_code == 200 and told == ["people"] * 2
    # this engine's own open streams read the role again at once (a review finding:
    # only the other engines' did, and this one's within a minute)
    assert streams_told.is_set()
    r = await admin.patch("/api/v1/agents/sam", json={"password": "pw-sam-456789"})
    assert r.status_code == 200 and told == ["people"] * 3
    assert (await admin.delete("/api/v1/agents/sid")).status_code == 204
    assert told == ["people"] * 4
    # sol signed out, sue demoted, sam's password, sid removed: each still on here
    assert listening == [["sam", "sid", "sol", "sue"], ["sam", "sid", "sue"], ["sam", "sid"],
                         ["sid"]]  # fmt: skip
    assert call.monitors == []
