"""``ccengine phone`` and enforced wrap-up, in-process: the phone against the real app
through ASGI (no socket, no process; tests/test_phone.py runs the real thing).

The failure: the phone signed in with "login" then "available"; an agent who owed a
disposition (the phone stopped in its wrap-up, a call taken on the desk page) got a
409 and the phone exited, with no way to save the wrap-up: locked out. A disposition
typed wrong ended the phone with a 422; a phone set away while cut off could only be
started again."""

from __future__ import annotations

import contextlib

import pytest

from engine import phone as phone_module
from engine.phone import Phone, PhoneOptions
from tests.controlplane import ControlPlane
from tests.test_controls import bridged_call


async def _owing(cp: ControlPlane) -> str:
    """Ann, signed in, took a call and hung up: she owes it a disposition."""
    await cp.add_user("ann", "pw-ann-123")
    ann = await cp.agent("ann", "pw-ann-123", "login", "available")
    async with contextlib.aclosing(ann):
        user = await cp.store.user_by_name("ann")
        assert user is not None
        call = await bridged_call(cp.calls, user)
        await cp.calls.end_call(call.id, "agent_hangup")
        assert cp.calls.agent_status(user.id).wrap_up_call == call.id
        return call.id


def _phone(cp: ControlPlane, **options: object) -> Phone:
    o = PhoneOptions("http://engine", "ann", "pw-ann-123", **options)  # type: ignore[arg-type]
    return Phone(o, http=cp.anonymous())


async def test_a_phone_signing_in_with_a_disposition_owed_saves_it_then_takes_calls(
    control_plane: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    cp = control_plane
    call_id = await _owing(cp)
    phone = _phone(cp, auto_answer=True, disposition="resolved")
    phone.interactive = False
    await phone.sign_in()
    out = capsys.readouterr().out
    assert f"call {call_id} still needs its wrap-up" in out
    assert "wrapped up (resolved); available" in out
    user = await cp.store.user_by_name("ann")
    assert user is not None and cp.calls.presence_of(user.id) == "available"
    record = await cp.store.get_call(call_id)
    assert record is not None and record.call.disposition == "resolved"


async def test_a_mistyped_disposition_is_asked_again(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp = control_plane
    call_id = await _owing(cp)
    answers = iter(["resolvd", "resolved", "a note"])
    asked: list[str] = []

    async def ask(question: str) -> str:
        asked.append(question)
        return next(answers)

    monkeypatch.setattr(phone_module, "_ask", ask)  # the terminal, not our code
    phone = _phone(cp)
    phone.interactive = True
    await phone.sign_in()
    assert len([q for q in asked if q.startswith("disposition")]) == 2
    record = await cp.store.get_call(call_id)
    assert record is not None and record.call.disposition == "resolved"


async def test_a_phone_set_away_while_cut_off_goes_available_again(
    control_plane: ControlPlane,
) -> None:
    cp = control_plane
    await cp.add_user("ann", "pw-ann-123")
    phone = _phone(cp, auto_answer=True)
    phone.interactive = False
    await phone.sign_in()
    user = await cp.store.user_by_name("ann")
    assert user is not None
    await cp.calls._route(
        cp.calls.routing.actions(cp.calls.routing.acd.disconnect(user.id, 0.0, "disconnected"))
    )
    assert cp.calls.presence_of(user.id) == "away"
    await phone._back_from_away()
    assert cp.calls.presence_of(user.id) == "available"
