"""What a caller may read about their own call (their caller token): two leaks found in
review.

1. During a consult the caller is on hold and hears neither agent, yet the agents'
   words were transcribed onto the caller's own stream: the caller page showed the
   consult as live captions. A transcript event now says whether the caller heard it
   (``caller_heard``, decided per analysed stretch of an agent leg, engine/unheard.py),
   and the caller's stream leaves out what they did not hear.
2. ``GET /calls/{id}`` and its transcript export, read with the caller token, returned
   everything the staff see: mood timeline, escalations with evidence, notes, facts,
   summary, priority, disposition, the customer record. A caller now gets
   ``CallerCallDetail`` and only the words they heard.

In-process: the real app and call manager (tests/controlplane.py), phone legs that open
no socket, each agent leg's audio pushed through the manager's ``_analyse`` (the path
every decoded frame takes) into a pipeline with no recognizer, and the recognizer's
reports queued by hand, as tests/test_signals.py does."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from engine.api.schemas import CallDetail, CallerCallDetail
from engine.api.streams import for_caller
from engine.livecall import Call, Leg
from engine.unheard import MAX_SPANS, Unheard
from engine.users import issue_caller_token
from media import events as me
from media.pipeline import LegPipeline
from tests.controlplane import ControlPlane
from tests.test_consult_legs import NUMBER, Line, bob_available, outside_leg
from tests.test_monitor_legs import cp, person, phone, with_ann

__all__ = ["cp"]  # the fixture, shared with tests/test_monitor_legs.py

RATE = 16_000

# -- the stretches the caller did not hear (engine/unheard.py), pure ---------------------


def test_stretches_that_meet_are_one_and_most_of_an_utterance_decides() -> None:
    unheard = Unheard()
    unheard.add(2.0, 2.02)
    unheard.add(2.02, 4.0)  # the next push of audio: the same consult
    unheard.add(4.0, 4.0)  # nothing analysed: nothing noted
    unheard.add(6.0, 7.0)
    assert unheard.spans == [(2.0, 4.0), (6.0, 7.0)]
    assert unheard.heard(0.0, 1.9)  # before the consult
    assert not unheard.heard(2.5, 3.5)  # inside it
    assert not unheard.heard(1.0, 3.0)  # half in: a tie keeps it from the caller
    assert unheard.heard(0.5, 3.0)  # mostly before
    assert unheard.heard(3.5, 6.5)  # 1.0 of 3.0 in two stretches: mostly heard
    assert not unheard.heard(6.5, 6.5) and unheard.heard(5.0, 5.0)  # instants


def test_the_stretches_kept_are_bounded() -> None:
    """A call with more consults than the bound forgets the oldest, whose words were
    reported long since; memory stays flat."""
    unheard = Unheard()
    for n in range(MAX_SPANS + 10):
        unheard.add(10.0 * n, 10.0 * n + 5.0)
    assert len(unheard.spans) == MAX_SPANS
    assert unheard.spans[0] == (100.0, 105.0)
    assert not unheard.heard(10.0 * (MAX_SPANS + 9), 10.0 * (MAX_SPANS + 9) + 5.0)


# -- a consult's words on the live side --------------------------------------------------


def speak(cp: ControlPlane, call: Call, leg: Leg, seconds: float) -> tuple[float, float]:
    """``seconds`` of the leg's audio through the manager's ``_analyse``, as a decoded
    frame would go; the stretch of the leg's clock it took."""
    if leg.pipeline is None:
        leg.pipeline = LegPipeline(leg.id, None, cp.calls.executor, lambda _ev: None)
    before = leg.pipeline.seconds_in
    pcm = np.zeros((1, int(seconds * RATE)), np.int16)
    cp.calls._analyse(call, leg, leg.pipeline, pcm, RATE, 1)
    return before, leg.pipeline.seconds_in


async def says(cp: ControlPlane, call: Call, leg: Leg, index: int, text: str) -> None:
    """Two seconds of the leg's audio, then its recognizer's report of ``text`` said in
    them, analysed before the leg's audio goes on (a partial runs to the leg's latest
    audio when it is analysed, as a report follows the audio it heard within a moment)."""
    at = speak(cp, call, leg, 2.0)
    start, end = at[0] + 0.2, at[1] - 0.2
    final = me.TranscriptFinal(leg.id, index, text, start, end, [], 0.1, False, "sure")
    cp.calls._enqueue(call, me.TranscriptPartial(leg.id, index, text, start))
    cp.calls._enqueue(call, final)
    async with asyncio.timeout(5):
        # polled: an event reaches the bus once the event log has it (as tests/
        # test_consult_legs.py ``told``)
        while not any(f'"text":"{text}"' in e.body and '"transcript.final"' in e.body  # noqa: ASYNC110
                      for e in cp.bus.replay(call.id)):  # fmt: skip
            await asyncio.sleep(0.02)


async def transcripts(cp: ControlPlane, call: Call, n: int) -> list[str]:
    """The call's transcript events as published (their JSON), once ``n`` finals are."""
    async with asyncio.timeout(5):
        while True:
            bodies = [e.body for e in cp.bus.replay(call.id) if '"type":"transcript.' in e.body]
            if sum('"transcript.final"' in b for b in bodies) >= n:
                return bodies
            await asyncio.sleep(0.02)


def heard_by_caller(bodies: list[str]) -> dict[str, bool]:
    """text -> caller_heard, for finals and partials alike (they must agree)."""
    out: dict[str, bool] = {}
    for body in bodies:
        ev = json.loads(body)
        assert out.setdefault(ev["text"], ev["caller_heard"]) == ev["caller_heard"], ev
    return out


async def consulted_call(cp: ControlPlane) -> Call:
    """Ann talks to the caller, consults Bob (the caller held), then all three confer;
    each says something at each step. The call ended."""
    m = cp.calls
    call = await with_ann(cp)
    ann_leg = call.agent_leg()
    assert ann_leg is not None
    await says(cp, call, call.caller_leg(), 0, "i want a refund")
    await says(cp, call, ann_leg, 0, "let me ask a colleague")
    ann, bob = await person(cp, "ann"), await bob_available(cp)
    await m.consults.start(ann, call.id, "bob")
    await m.accept_peer(bob.id, call.id, phone(), "sip", "PCMU")
    assert call.consult is not None and call.consult.phase == "consulting"
    bob_leg = call.legs[-1]
    await says(cp, call, ann_leg, 1, "this one shouted at me")
    await says(cp, call, bob_leg, 0, "refund them anyway")
    # the caller speaks on hold: their own words, which they know
    await says(cp, call, call.caller_leg(), 1, "hello anyone")
    await m.consults.conference(ann, call.id)
    await says(cp, call, bob_leg, 1, "hi i am bob from billing")
    await says(cp, call, ann_leg, 2, "bob will help you")
    await transcripts(cp, call, 7)
    await m.end_call(call.id, "hangup")
    return call


HEARD = {
    "i want a refund": True,
    "let me ask a colleague": True,  # bridged
    "this one shouted at me": False,  # consulting: the host
    "refund them anyway": False,  # consulting: the guest
    "hello anyone": True,  # the caller's own, on hold
    "hi i am bob from billing": True,  # conference: everyone hears everyone
    "bob will help you": True,
}
PRIVATE = {text for text, heard in HEARD.items() if not heard}


async def test_a_consults_words_never_reach_the_callers_stream(cp: ControlPlane) -> None:
    """The failure: the caller page captioned what Ann and Bob said about the caller
    while the caller was on hold. Each transcript event (partial and final) now says
    whether the caller heard it; the caller's stream drops those they did not, and
    keeps what was said while bridged and in the conference. The staff's stream and
    the stored record keep everything, marked."""
    call = await consulted_call(cp)
    bodies = await transcripts(cp, call, 7)
    assert heard_by_caller(bodies) == HEARD
    assert len(bodies) == 2 * len(HEARD)  # a partial and a final each
    for_them = [json.loads(b)["text"] for b in bodies if for_caller(b) is not None]
    assert set(for_them) == set(HEARD) - PRIVATE
    record = await cp.store.get_call(call.id)
    assert record is not None
    assert {u.text: u.caller_heard for u in record.utterances} == HEARD


async def test_an_outside_numbers_consult_is_private_too(cp: ControlPlane) -> None:
    """The same hold, with an outside number consulted through the trunk (a leg with no
    user, the consult's guest): neither side of that talk is the caller's."""
    call = await with_ann(cp)
    ann_leg = call.agent_leg()
    assert ann_leg is not None
    await cp.calls.consults.start_outside(await person(cp, "ann"), call.id, NUMBER, Line())
    number = outside_leg(call)
    await says(cp, call, number, 0, "supplier here")
    await says(cp, call, ann_leg, 0, "is the part in stock")
    bodies = await transcripts(cp, call, 2)
    assert heard_by_caller(bodies) == {"supplier here": False, "is the part in stock": False}
    assert [b for b in bodies if for_caller(b) is not None] == []
    await cp.calls.end_call(call.id, "hangup")


# -- what a caller token reads of the call -----------------------------------------------

STAFF_ONLY = {
    "emotion_timeline", "escalations", "notes", "facts", "summary", "emotion",
    "escalation_reason", "escalated_at", "priority", "disposition", "wrapped_up_at",
    "customer_id", "verified_by", "attestation", "recognizer", "recognizer_note",
    "agent_id", "intent", "topic", "caller",
}  # fmt: skip


@pytest.mark.parametrize("reader", ["caller", "staff"])
async def test_a_caller_reads_their_call_not_the_staffs_conclusions(
    cp: ControlPlane, reader: str
) -> None:
    """The failure: the caller's token read the call's mood timeline, escalations with
    their evidence, the agents' notes, the facts and summary, the customer record, and
    the consult's words. A caller now gets ``CallerCallDetail``: the call's course and
    what they heard; the staff's key still reads everything, the consult included."""
    call = await consulted_call(cp)
    async with cp.http() as staff:
        note = await staff.post(f"/api/v1/calls/{call.id}/notes", json={"text": "rude caller"})
        assert note.status_code == 201, note.text
    token = issue_caller_token(call.id, cp.app.state.secret_key, 600)  # type: ignore[union-attr]
    headers = {"Authorization": f"Bearer {token}"} if reader == "caller" else cp.headers
    async with cp.anonymous(headers=headers) as http:
        detail = await http.get(f"/api/v1/calls/{call.id}")
        lines = await http.get(f"/api/v1/calls/{call.id}/transcript.json")
        text = await http.get(f"/api/v1/calls/{call.id}/transcript.txt")
        # (found after: the call's analytics, its sentiment arc per side, categories,
        # disposition and the agent's login, were a caller's to read too)
        analytics = await http.get(f"/api/v1/calls/{call.id}/analytics")
    assert detail.status_code == lines.status_code == text.status_code == 200
    assert analytics.status_code == (403 if reader == "caller" else 200), analytics.text
    # the typed client reads either answer as what it is
    async with cp.client(token=headers["Authorization"].removeprefix("Bearer ")) as cc:
        typed = await cc.call(call.id)
    assert type(typed) is (CallerCallDetail if reader == "caller" else CallDetail)
    body = detail.json()
    said_in = {u["text"] for u in body["transcript"]}
    if reader == "caller":
        assert STAFF_ONLY.isdisjoint(body), STAFF_ONLY & set(body)
        assert set(body) == {
            "id", "channel", "state", "language", "created_at", "answered_at", "ended_at",
            "end_reason", "queue", "upgraded_from", "legs", "transcript",
        }  # fmt: skip
        assert (body["state"], body["end_reason"], body["queue"]) == ("ended", "hangup", "general")
        assert all("user_id" not in leg for leg in body["legs"])
        assert said_in == set(HEARD) - PRIVATE
        assert {u["text"] for u in lines.json()} == said_in
        assert not any(words in text.text for words in PRIVATE)
        assert "bob will help you" in text.text
    else:
        assert {"emotion_timeline", "escalations", "notes", "facts", "agent_id"} <= set(body)
        assert [n["text"] for n in body["notes"] if n["kind"] == "note"] == ["rude caller"]
        assert said_in == set(HEARD)
        assert {u["text"]: u["caller_heard"] for u in lines.json()} == HEARD
        assert all(words in text.text for words in PRIVATE)


def test_the_callers_stream_drops_only_what_they_did_not_hear() -> None:
    """A transcript event logged before ``caller_heard`` existed (an older engine's, in
    the durable log) was heard as far as anyone knows: it is replayed as it was."""
    for kind in ("transcript.partial", "transcript.final"):
        private = {"type": kind, "text": "refund them anyway", "caller_heard": False}
        heard = {**private, "caller_heard": True}
        older = {"type": kind, "text": "hello"}
        assert for_caller(json.dumps(private)) is None
        assert for_caller(json.dumps(heard)) == json.dumps(heard)
        assert for_caller(json.dumps(older)) == json.dumps(older)
