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

A second review found the first fix leaky at its edges: an utterance spoken across the
start or end of a consult was judged by its majority (now cut at the turn and judged
fail closed), a partial by the leg's latest audio (now by its own), a desk phone's SIP
INFO keys were the caller's, and the typed client's ``call()`` lost its staff type.

In-process: the real app and call manager (tests/controlplane.py), phone legs that open
no socket, each agent leg's audio pushed through the manager's ``_analyse`` (the path
every decoded frame takes) into a pipeline with no recognizer, and the recognizer's
reports queued by hand, as tests/test_signals.py does."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from engine.analysis import caller_heard
from engine.api.schemas import CallDetail, CallerCallDetail
from engine.api.streams import for_caller
from engine.livecall import Call, Leg
from engine.sip import SipFront, _PhoneCall
from engine.unheard import MAX_SPANS, TOLERANCE, Unheard
from engine.users import issue_caller_token
from media import events as me
from media.asr.base import AsrResult
from media.audio import AnalysisResampler
from media.pipeline import LegPipeline
from media.sip.events import DtmfInfo
from media.vad import SpeechSegmenter, UtteranceEnded, UtteranceStarted
from tests.controlplane import ControlPlane
from tests.test_analysis import AGENT, CALLER, new_call
from tests.test_consult_legs import NUMBER, Line, bob_available, consulting, outside_leg
from tests.test_monitor_legs import cp, person, phone, with_ann

__all__ = ["cp"]  # the fixture, shared with tests/test_monitor_legs.py

RATE = 16_000

# -- the stretches the caller did not hear (engine/unheard.py), pure ---------------------


def test_stretches_that_meet_are_one_and_any_of_an_utterance_in_one_hides_it() -> None:
    """Found in review: an utterance was judged by its majority, so words said mostly
    before a consult (or after) carried the consult's words with them to the caller.
    Now any of it past the tolerance (a push straddling a turn) keeps it from them."""
    unheard = Unheard()
    unheard.add(2.0, 2.02)
    unheard.add(2.02, 4.0)  # the next push of audio: the same consult
    unheard.add(4.0, 4.0)  # nothing analysed: nothing noted
    unheard.add(6.0, 7.0)
    assert unheard.spans == [(2.0, 4.0), (6.0, 7.0)]
    assert unheard.heard(0.0, 1.9)  # before the consult
    assert unheard.heard(0.0, 2.0) and unheard.heard(4.0, 6.0)  # up to it, between
    assert not unheard.heard(2.5, 3.5)  # inside it
    assert not unheard.heard(0.5, 3.0)  # mostly before, a second of it inside
    assert not unheard.heard(3.5, 6.5)  # 1.0 of 3.0 in two stretches
    assert not unheard.heard(0.0, 2.0 + 2 * TOLERANCE)  # a word's worth in
    assert unheard.heard(0.0, 2.0 + TOLERANCE / 2)  # a push straddling the turn
    assert not unheard.heard(2.0, 2.0 + TOLERANCE / 2)  # short, and all of it inside
    assert not unheard.heard(6.5, 6.5) and unheard.heard(5.0, 5.0)  # instants


def test_the_stretches_kept_are_bounded_and_hide_more_not_less() -> None:
    """A call with more consults than the bound merges its two oldest stretches (found
    in review: it dropped the oldest, and a late report of its words was shown); memory
    stays flat."""
    unheard = Unheard()
    for n in range(MAX_SPANS + 10):
        unheard.add(10.0 * n, 10.0 * n + 5.0)
    assert len(unheard.spans) == MAX_SPANS
    assert unheard.spans[0] == (0.0, 105.0)  # the eleven oldest, and what lay between
    assert unheard.spans[1] == (110.0, 115.0)
    assert not unheard.heard(1.0, 4.0)  # the first consult's words: still unheard
    assert not unheard.heard(10.0 * (MAX_SPANS + 9), 10.0 * (MAX_SPANS + 9) + 5.0)


def test_a_turn_is_a_change_in_whether_the_caller_hears() -> None:
    unheard = Unheard()
    assert [unheard.turns(h) for h in (False, False, True, True, False)] == [
        False, False, True, False, True,
    ]  # fmt: skip


def test_an_unknown_leg_is_not_the_callers() -> None:
    """Found in review: a report from a leg the call did not know was judged heard."""
    call = new_call()
    assert caller_heard(call, CALLER, 0.0, 1.0) and caller_heard(call, AGENT, 0.0, 1.0)
    assert not caller_heard(call, "some-leg", 0.0, 1.0)


def test_a_cut_keeps_the_vads_pre_roll_from_crossing_it() -> None:
    """Speech begun just before a turn must not start an utterance before it: its
    pre-roll would carry the words before the turn into the utterance after."""
    seg = SpeechSegmenter()
    frames = AnalysisResampler().push(voice(1.0, 140.0)[None, :], RATE, 1)
    events = [ev for f in frames[:10] for ev in seg.push(f)]  # 200 ms: not yet started
    assert not any(isinstance(ev, UtteranceStarted) for ev in events) and not seg.in_speech
    assert seg.cut(frames[9].end) == []
    started = [ev for f in frames[10:] for ev in seg.push(f) if isinstance(ev, UtteranceStarted)]
    assert [ev.start for ev in started] == [frames[10].start]
    ended = seg.cut(frames[-1].end)
    assert [(ev.rule, ev.cut, ev.end) for ev in ended if isinstance(ev, UtteranceEnded)] == [
        ("turn", True, frames[-1].end)
    ]


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
        typed = await (cc.caller_view(call.id) if reader == "caller" else cc.call(call.id))
        # a staff reader keeps the staff's type (found in review: ``call()`` answered
        # either, and typed staff code lost ``.caller``)
        assert type(typed) is (CallerCallDetail if reader == "caller" else CallDetail)
        if reader == "caller":
            assert {u.text for u in typed.transcript} == set(HEARD) - PRIVATE
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


# -- an utterance across a turn, with the real pipeline ---------------------------------

# each "word" a voice of its own pitch, which the recognizer below tells apart
WORDS = {140.0: "colleague", 220.0: "rude", 300.0: "hello"}


def voice(seconds: float, f0: float) -> np.ndarray:
    """A voiced sound webrtcvad takes for speech: a buzz of harmonics of ``f0``, its
    loudness swaying at a syllable's rate (never silent, so never a pause)."""
    t = np.arange(int(seconds * RATE)) / RATE
    buzz = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 25))
    sway = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    return (buzz * sway / np.max(np.abs(buzz)) * 8000).astype(np.int16)


class PitchRecognizer:
    """A recognizer that hears which of ``WORDS`` each 100 ms chunk is voiced at (its
    strongest pitch), so a final's text tells exactly which audio went into it."""

    def __init__(self) -> None:
        self.words: list[str] = []

    async def accept(self, pcm: bytes) -> str | None:
        x = np.frombuffer(pcm, np.int16).astype(np.float32)
        if np.sqrt(np.mean(x**2)) < 500:
            return None  # the pre-roll's silence
        f0 = np.argmax(np.abs(np.fft.rfft(x))) * RATE / len(x)
        word = WORDS[min(WORDS, key=lambda f: abs(f - f0))]
        if not self.words or self.words[-1] != word:
            self.words.append(word)
        return " ".join(self.words)

    async def peek(self) -> AsrResult:
        return AsrResult(" ".join(self.words))

    async def finish(self) -> AsrResult:
        said, self.words = " ".join(self.words), []
        return AsrResult(said)

    async def close(self) -> None:
        pass


async def transcribed(cp: ControlPlane, call: Call, leg: Leg) -> list[me.MediaEvent]:
    """The leg's real pipeline, its recognizer the one above, its reports into the
    call's queue as the manager's own pipelines do; the reports, as they are made."""

    async def opener() -> PitchRecognizer:
        return PitchRecognizer()

    reports: list[me.MediaEvent] = []

    def emit(ev: me.MediaEvent) -> None:
        reports.append(ev)
        cp.calls._enqueue(call, ev)

    leg.pipeline = LegPipeline(leg.id, opener, cp.calls.executor, emit)
    await leg.pipeline.start()
    return reports


def sound(cp: ControlPlane, call: Call, leg: Leg, pcm: np.ndarray) -> None:
    """The leg's audio through the manager's ``_analyse``, 20 ms at a time as a track
    delivers it."""
    assert leg.pipeline is not None
    for i in range(0, len(pcm), RATE // 50):
        cp.calls._analyse(call, leg, leg.pipeline, pcm[None, i : i + RATE // 50], RATE, 1)


async def straddled(cp: ControlPlane, call: Call, leg: Leg, n: int) -> dict[str, bool]:
    """The leg's pipeline closed (its last utterance ended), once ``n`` finals are out:
    text -> caller_heard of every transcript event."""
    assert leg.pipeline is not None
    sound(cp, call, leg, np.zeros(RATE, np.int16))  # a second of silence: words end
    await leg.pipeline.close()
    return heard_by_caller(await transcripts(cp, call, n))


async def test_words_said_across_the_start_of_a_consult_are_cut_there(cp: ControlPlane) -> None:
    """Found in review: Ann says "one moment, I'll check with a colleague" and, as Bob
    answers, goes on "he is rude" in one breath. Nothing ended the utterance at the
    turn (her analysis clock stands still during the ring), so the two were one
    final, judged by its majority: heard, and the caller read "he is rude". Now the
    utterance is cut where the caller stops hearing her: the words before are their
    own final, shown; those after, hidden (partials alike)."""
    m = cp.calls
    call = await with_ann(cp)
    ann_leg = call.agent_leg()
    assert ann_leg is not None
    reports = await transcribed(cp, call, ann_leg)
    sound(cp, call, ann_leg, voice(1.0, 140.0))  # "colleague", and she goes on...
    assert ann_leg.pipeline is not None
    turn = ann_leg.pipeline.seconds_in  # where the caller stops hearing her
    ann, bob = await person(cp, "ann"), await bob_available(cp)
    await m.consults.start(ann, call.id, "bob")
    await m.accept_peer(bob.id, call.id, phone(), "sip", "PCMU")
    assert call.consult is not None and call.consult.phase == "consulting"
    sound(cp, call, ann_leg, voice(1.0, 220.0))  # ... "rude", to Bob alone
    assert await straddled(cp, call, ann_leg, 2) == {"colleague": True, "rude": False}
    assert ann_leg.unheard.spans == [pytest.approx((turn, 3.0))]
    finals = [r for r in reports if isinstance(r, me.TranscriptFinal)]
    assert [(f.text, f.end_rule) for f in finals] == [("colleague", "turn"), ("rude", "silence")]
    assert finals[0].end == pytest.approx(turn) and finals[1].start >= finals[0].end
    # each partial ends where the audio it was made of ends, on the leg's clock
    partials = [r for r in reports if isinstance(r, me.TranscriptPartial)]
    assert all(p.end is not None and p.start < p.end <= turn for p in partials if p.index == 0)
    assert all(p.end is not None and turn < p.end <= 3.0 for p in partials if p.index == 1)
    await m.end_call(call.id, "hangup")


async def test_words_said_across_a_consults_turn_to_conference_are_cut_there(
    cp: ControlPlane,
) -> None:
    """The same at the other end: Bob, consulted, says "rude" about the caller and,
    as Ann joins the caller in, goes on "hello" to them. The consult's words stay
    hidden, the greeting is shown."""
    m = cp.calls
    call, ann, bob = await consulting(cp)
    bob_leg = call.legs[-1]
    await transcribed(cp, call, bob_leg)
    sound(cp, call, bob_leg, voice(1.0, 220.0))
    await m.consults.conference(ann, call.id)
    sound(cp, call, bob_leg, voice(1.0, 300.0))
    assert await straddled(cp, call, bob_leg, 2) == {"rude": False, "hello": True}
    await m.end_call(call.id, "hangup")


async def test_a_partial_is_judged_by_the_audio_it_was_made_of(cp: ControlPlane) -> None:
    """Found in review: a partial was judged up to the leg's latest audio when the call
    read it. A partial of Bob's consult words, read after the conference began and its
    audio came in, was judged by that audio (heard); one of Ann's words before the
    consult, read after it began, was hidden while its final was shown. A partial now
    carries the end of the audio it was made of."""
    m = cp.calls
    call = await with_ann(cp)
    ann_leg = call.agent_leg()
    assert ann_leg is not None
    before = speak(cp, call, ann_leg, 2.0)  # Ann, to the caller
    ann, bob = await person(cp, "ann"), await bob_available(cp)
    await m.consults.start(ann, call.id, "bob")
    await m.accept_peer(bob.id, call.id, phone(), "sip", "PCMU")
    bob_leg = call.legs[-1]
    consult = speak(cp, call, bob_leg, 1.0)
    speak(cp, call, ann_leg, 1.0)
    await m.consults.conference(ann, call.id)
    speak(cp, call, bob_leg, 5.0)  # the conference: most of Bob's clock by now
    late = [
        me.TranscriptPartial(ann_leg.id, 0, "i will ask", before[0] + 0.2, before[1] - 0.1),
        me.TranscriptPartial(bob_leg.id, 0, "they shouted", consult[0] + 0.2, consult[1]),
    ]
    for partial in late:
        m._enqueue(call, partial)
    m._enqueue(call, me.TranscriptFinal(bob_leg.id, 0, "end", 7.0, 7.5, [], 0.1, False, "sure"))
    assert heard_by_caller(await transcripts(cp, call, 1)) == {
        "i will ask": True,
        "they shouted": False,
        "end": True,
    }
    await m.end_call(call.id, "hangup")


async def test_a_guest_who_joined_mid_call_is_judged_on_their_own_clock(
    cp: ControlPlane,
) -> None:
    """Bob's leg joins 30 s into the call: his leg's clock starts at 0 there, and so do
    the stretches the caller did not hear and his recognizer's times. His consult words
    (0.2-1.8 s of his clock, 30.2-31.8 s of the call's) stay hidden; his words in the
    conference are shown, placed on the call's clock."""
    m = cp.calls
    call, ann, bob = await consulting(cp)
    bob_leg = call.legs[-1]
    bob_leg.offset = 30.0  # his first audio came 30 s after the caller's
    await says(cp, call, bob_leg, 0, "they shouted")
    await m.consults.conference(ann, call.id)
    await says(cp, call, bob_leg, 1, "hi from billing")
    assert bob_leg.unheard.spans == [pytest.approx((0.0, 2.0))]
    bodies = await transcripts(cp, call, 2)
    assert heard_by_caller(bodies) == {"they shouted": False, "hi from billing": True}
    finals = [json.loads(b) for b in bodies if '"transcript.final"' in b]
    assert [(f["start"], f["end"]) for f in finals] == [(30.2, 31.8), (32.2, 33.8)]
    await m.end_call(call.id, "hangup")


async def test_after_a_cancelled_consult_the_host_is_heard_again(cp: ControlPlane) -> None:
    """Ann consults Bob, then cancels: the caller is back with her, and what she says
    from then on is theirs (only the consult's stretch of her clock is not)."""
    m = cp.calls
    call = await with_ann(cp)
    ann_leg = call.agent_leg()
    assert ann_leg is not None
    ann, bob = await person(cp, "ann"), await bob_available(cp)
    await m.consults.start(ann, call.id, "bob")
    await m.accept_peer(bob.id, call.id, phone(), "sip", "PCMU")
    await says(cp, call, ann_leg, 0, "they shouted")
    await m.consults.cancel(ann, call.id)
    assert call.consult is None and call.state == "bridged"
    await says(cp, call, ann_leg, 1, "thanks for waiting")
    assert heard_by_caller(await transcripts(cp, call, 2)) == {
        "they shouted": False,
        "thanks for waiting": True,
    }
    assert ann_leg.unheard.spans == [pytest.approx((0.0, 2.0))]
    await m.end_call(call.id, "hangup")


async def test_an_agent_on_plain_hold_is_not_transcribed_at_all(cp: ControlPlane) -> None:
    """On hold (no consult) Ann's talk is no one's: not analysed, so nothing of it is
    transcribed, her leg's clock stands still and no stretch is noted; once resumed,
    her words are heard, placed after the hold on the call's clock."""
    m = cp.calls
    call = await with_ann(cp)
    ann_leg = call.agent_leg()
    assert ann_leg is not None
    ann = await person(cp, "ann")
    await says(cp, call, ann_leg, 0, "one moment")
    await m.hold(ann, call.id)
    assert speak(cp, call, ann_leg, 3.0) == (2.0, 2.0)
    assert ann_leg.offset == pytest.approx(3.0) and ann_leg.unheard.spans == []
    await m.resume(ann, call.id)
    await says(cp, call, ann_leg, 1, "back with you")
    bodies = await transcripts(cp, call, 2)
    assert heard_by_caller(bodies) == {"one moment": True, "back with you": True}
    assert [json.loads(b)["start"] for b in bodies if '"transcript.final"' in b] == [0.2, 5.2]
    await m.end_call(call.id, "hangup")


# -- an agent's keys ----------------------------------------------------------------------


async def test_an_agents_desk_phone_keys_are_not_the_callers(cp: ControlPlane) -> None:
    """Found in review: a key Ann pressed on her desk phone, sent as SIP INFO, was filed
    as the caller's ``dtmf.received``: on the caller's stream, choosing from the key
    menu, read by escalation rules. Her desk phone's dialog is the agent's (as its RFC
    4733 keys already were); the caller's line still reports theirs."""
    call = await with_ann(cp)
    front = SipFront(cp.settings, cp.calls, cp.store, cp._state("metrics"))
    front._phone["desk"] = _PhoneCall("desk", call_id=call.id, agent=True)
    front._phone["line"] = _PhoneCall("line", call_id=call.id)
    front._on_event(DtmfInfo("desk", "7"))
    front._on_event(DtmfInfo("line", "3"))  # after Ann's: once it is out, hers would be
    async with asyncio.timeout(5):
        # polled, as ``says``: an event reaches the bus once the event log has it
        while not (keys := [e.body for e in cp.bus.replay(call.id) if "dtmf.rec" in e.body]):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert [json.loads(k)["digit"] for k in keys] == ["3"]
    await cp.calls.end_call(call.id, "hangup")
