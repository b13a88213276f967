"""Callbacks (engine/callbacks.py): the decisions with the real ACD and lists (the
harness of test_controls.py), the confirmation's live half with a fake voice, and a
request through the call manager on a real SQLite store. test_desk_e2e.py proves the
wiring to the HTTP API and a real caller."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from engine.callbacks import Callbacks, ThankAndEnd, thank_and_end
from engine.callstate import CALLBACK_PROMPT, NotAllowed
from engine.controls import Save
from engine.events import CallbackDone, CallbackRequested, QueueUpdated, utcnow
from engine.livecall import Call, Leg
from engine.routing import UpdateCall
from engine.store.models import CallbackRow
from media.asr import ModelChoice
from media.rtp import RtpSession
from media.sip.peer import SipPeer
from media.sip.sdp import parse_offer
from tests.test_controls import ANN, BOT, Desk, emitted
from tests.test_manager_limits import PHONE_SDP, manager


def waiting(desk: Desk, call_id: str, priority: int = 0) -> Call:
    call = Call(call_id, "sip", "en", ModelChoice("en", None, None), "+15550100", utcnow())
    call.state = "active"
    call.legs.append(Leg(f"{call_id}-caller", "caller", "sip"))
    call.escalation.priority = priority
    call.escalation_reason = "asked for a person"
    desk.calls[call_id] = call
    desk.run(desk.routing.enqueue(call, None, queue="general"))
    desk.take()
    return call


def test_a_callback_request_keeps_the_callers_place_and_ends_with_the_thank_you() -> None:
    """The row keeps the queue, the priority and why the call escalated; it is stored
    (not spooled: the caller is told it worked) before the caller leaves the line, the
    callers behind move up, and the thank-you that ends the call comes last."""
    desk = Desk()
    callbacks = Callbacks(desk.routing)
    first, second = waiting(desk, "c1", priority=3), waiting(desk, "c2")
    row = desk.run(callbacks.request(first, "+15550111"))
    effects = desk.take()
    assert effects[0] == Save(row)
    assert (row.call_id, row.queue, row.priority, row.status) == ("c1", "general", 3, "pending")
    assert (row.contact, row.caller, row.escalation_reason) == (
        "+15550111",
        "+15550100",
        "asked for a person",
    )
    assert "c1" not in desk.routing.acd.waiting
    assert [(u.call_id, u.position) for u in emitted(effects, QueueUpdated)] == [("c2", 1)]
    [told] = emitted(effects, CallbackRequested)
    assert (told.callback_id, told.contact) == (row.id, "+15550111")
    assert effects[-1] == ThankAndEnd(first)
    assert second.queue_position == 1


def test_a_callback_is_for_a_caller_who_is_waiting() -> None:
    desk = Desk()
    callbacks = Callbacks(desk.routing)
    desk.agent(ANN)
    call = desk.bridged("c1", ANN)
    with pytest.raises(NotAllowed, match="while waiting for an agent"):
        desk.run(callbacks.request(call, None))
    assert desk.effects == []


def test_a_callback_is_done_once() -> None:
    desk = Desk()
    with pytest.raises(NotAllowed, match="no pending callback cb1"):
        desk.run(Callbacks.finished(BOT, "cb1", None))
    row = CallbackRow(id="cb1", call_id="c1", queue="general", priority=0, status="done")
    assert desk.run(Callbacks.finished(BOT, "cb1", row)) is row
    [done] = emitted(desk.take(), CallbackDone)
    assert (done.call_id, done.callback_id, done.by) == ("c1", "cb1", "api:bot")


def test_the_call_back_rings_the_agent_who_placed_it_at_the_callbacks_priority() -> None:
    desk = Desk()
    desk.agent(ANN)
    desk.take()
    callbacks = Callbacks(desk.routing)
    call = Call("c9", "sip", "en", ModelChoice("en", None, None), "+15550100", utcnow())
    call.state = "connecting"
    desk.calls[call.id] = call
    row = CallbackRow(id="cb1", call_id="c1", queue="general", priority=5, status="done")
    desk.run(callbacks.connected(call, row, ANN.id))
    effects = desk.take()
    assert isinstance(effects[0], UpdateCall)
    assert effects[0].values["escalation_reason"] == "callback the caller asked for"
    assert call.escalation_reason == "callback the caller asked for"
    assert desk.routing.acd.waiting["c9"].priority == 5
    assert desk.routing.offered_to(ANN.id, "c9")


async def test_the_thank_you_is_heard_before_the_call_ends() -> None:
    """What was still playing stops, the confirmation is said, and the call ends once it
    has been sent (the live half of ThankAndEnd)."""
    peer = SipPeer(RtpSession(parse_offer(PHONE_SDP), lambda _d: None), hangup=lambda: None)
    peer.outbound.play(np.zeros(48_000, np.int16), 48_000)  # a queue announcement
    call = Call("c1", "sip", "en", ModelChoice("en", None, None), None, utcnow())
    call.legs.append(Leg("c1-caller", "caller", "sip", peer=peer))
    happened: list[str] = []

    async def say(c: Call, text: str) -> asyncio.Future[None]:
        happened.append(f"say {text} after {peer.outbound.queued_seconds:.0f} s")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def end_call(call_id: str, reason: str) -> None:
        happened.append(f"end {call_id} {reason}")

    await thank_and_end(call, say, end_call)
    assert happened == [f"say {CALLBACK_PROMPT} after 0 s", "end c1 callback_requested"]


async def test_the_manager_stores_the_request_and_ends_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row is in the store when the request answers; the call then ends, for the
    reason the caller chose, once the thank-you is out (here no RTP is sent: it never
    is, and the wait for it is cut short)."""
    monkeypatch.setattr("engine.callbacks.CALLBACK_PROMPT_TIMEOUT", 0.2)
    async with manager(tmp_path, media_timeout=60.0) as m:
        peer = SipPeer(RtpSession(parse_offer(PHONE_SDP), lambda _d: None), hangup=lambda: None)
        call = await m.create_phone_call(peer, "+15550001234", "PCMU", menu=False)
        await m._transition(call, "media")
        with pytest.raises(NotAllowed):
            await m.request_callback(call.id, None)
        await m.route_invited(call, queue="general", agent_id=None, reason="asked for a person")
        row = await m.request_callback(call.id, "+15550111")
        assert [r.id for r in await m.store.callbacks("pending")] == [row.id]
        for _ in range(1000):
            if call.id not in m.calls:  # gone once its end has been told
                break
            await asyncio.sleep(0.01)
        ended = [e.body for e in m.bus.replay(call.id) if '"type":"call.ended"' in e.body]
        assert len(ended) == 1 and '"reason":"callback_requested"' in ended[0]
        done = await m.finish_callback(BOT, row.id)
        assert done.status == "done" and done.done_by == "api:bot"
        with pytest.raises(NotAllowed):
            await m.finish_callback(BOT, row.id)
