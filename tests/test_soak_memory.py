"""What a soak of calls must not leave behind in the engine process (issue 11, memory
flat over a 30-minute soak), in-process: calls one after the other, on a real SQLite
store, leave the queue as they found it; the prompt cache has a bound in bytes; the
ring of recent events keeps them small."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from engine.callstate import NotAllowed
from engine.events import EventBus, TranscriptFinal, WordTiming
from engine.livecall import Call
from engine.users import ApiActor
from media import events as me
from media.tts import CACHE_BYTES, Speaker
from tests.controlplane import phone_call
from tests.test_manager_limits import manager


def asks_for_a_person(call: Call) -> me.TranscriptFinal:
    leg = call.caller_leg().id
    said = "I want to talk to a real person"
    return me.TranscriptFinal(leg, 0, said, 0.0, 1.2, [], 0.1, False, "sure")


async def test_a_caller_asking_for_a_person_as_they_hang_up_leaves_the_queue(
    tmp_path: Path,
) -> None:
    """The 30-minute soak grew the engine by 2 MB a minute. Among the causes: a caller's
    last words are handled while the call ends (the teardown flushes the recognizer, then
    waits for the call's events), and when they asked for a person the call was put in
    the queue after end_call had already taken it out: it waited there for good. The line
    grew with every such call, every new caller was told a higher number ("You are number
    40 in line"), a new sentence to synthesise in the engine and keep in its prompt cache,
    and agents would have been offered calls long gone. Now an ended call is never queued:
    calls one after the other leave the line empty, while a caller who asks during the
    call still waits in it."""
    async with manager(tmp_path, media_timeout=60.0) as m:
        call, peer = await phone_call(m, "+15550000001")
        m._enqueue(call, asks_for_a_person(call))
        for _ in range(200):  # the call's consumer routes it: in the line while it is on
            if m.acd.waiting:
                break
            await asyncio.sleep(0.01)
        assert list(m.acd.waiting) == [call.id]
        peer.remote_ended = True
        await m.end_call(call.id, "remote_closed")
        assert m.acd.waiting == {}

        for i in range(5):
            call, peer = await phone_call(m, f"+1555000100{i}")
            m._enqueue(call, asks_for_a_person(call))  # the last words, then the BYE
            peer.remote_ended = True
            await m.end_call(call.id, "remote_closed")
            fired = [e for e in m.bus.replay(call.id) if '"escalation.raised"' in e.body]
            assert fired, "the last words did not ask for a person: the test proves nothing"
            assert m.acd.waiting == {}, f"call {i}: ended, yet still in the line"
        assert m.calls == {}


class _Silence(Speaker):
    """Synthesis that costs nothing: a second of silence per 15 characters."""

    name = "silence"

    def _synthesize(self, text: str) -> tuple[np.ndarray, int]:
        return np.zeros(len(text) * RATE // 15, dtype=np.int16), RATE


RATE = 22050


def test_the_prompt_cache_is_bounded_in_bytes() -> None:
    """The prompt cache kept 256 texts whatever their length: a queue's announcements
    (~0.3 MB of PCM each) grew it through a soak, and texts played to callers through
    the API (up to 1000 characters, ~3 MB each) could pin ~700 MB in the engine. Now it
    holds at most CACHE_BYTES, the most recent first, a text too long to be worth it is
    not kept, and the sentences callers hear again and again still come from the cache."""
    speaker = _Silence()
    common = "Please hold for a moment. I will be right back with you."
    first = speaker.speak(common)[0]
    for i in range(40):  # ~0.9 MB each
        speaker.speak(f"{i:03d} " + "x" * 300)
        assert speaker.speak(common)[0] is first, "a prompt heard all the time was dropped"
    held = sum(pcm.nbytes for pcm, _ in speaker._cache.values())
    assert 0 < held <= CACHE_BYTES
    assert speaker.cached_bytes == held
    speaker.speak("y" * 1000)  # ~3 MB: a one-off, not worth 3 prompts
    assert sum(pcm.nbytes for pcm, _ in speaker._cache.values()) == held


def _final(i: int) -> TranscriptFinal:
    text = "I was charged twice for the same order and I want my money back now"
    words = [WordTiming(word=w, start=1.0, end=1.2, conf=0.9) for w in text.split()]
    call = f"call-{i % 8}"
    return TranscriptFinal(call_id=call, leg_id=f"{call}-caller", speaker="caller",
                           utterance_id=f"utterance-{i}", index=i, text=text, start=1.0,
                           end=4.0, words=words, asr_latency=0.2)  # fmt: skip


def test_the_event_ring_holds_json_not_objects() -> None:
    """The ring of recent events filled for minutes of the soak and read as growth: it
    kept each event as its pydantic objects, ~9 KB for a final with its word times. It
    keeps the JSON a replay sends (~1 KB) now; a replay still gives every recent event
    after an id, of one call or all, as the events were published."""
    bus = EventBus(ring_size=500)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):  # the ring is full halfway: what it holds is its bound
            bus.publish(_final(i))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held / 500 < 2_000, f"{held / 500:.0f} bytes an event"
    replayed = bus.replay("call-3", after=900)
    assert [r.id for r in replayed] == list(range(908, 1001, 8))
    last = json.loads(replayed[-1].body)
    assert last == json.loads(_final(995).model_dump_json()) | {"id": 996, "time": last["time"]}


async def test_a_caller_hanging_up_during_a_transfer_leaves_the_queue(tmp_path: Path) -> None:
    """The same hole in a transfer: the caller hung up while it was under way (its note
    and its prompt are awaited), end_call found nothing in the line, and the transfer
    then put the ended call there for good. Now a transfer that finds the call ended
    queues nothing; one that finds it ended before the hand-over is refused (it raised
    an error of our own, a 500 for the API)."""
    async with manager(tmp_path, media_timeout=60.0) as m:
        bot = ApiActor("key:soak", "api:soak", "operator")
        for i in range(3):
            call, peer = await phone_call(m, f"+1555000200{i}")
            await m._transition(call, "queue", "general")
            await m._transition(call, "accept")  # with an agent: what a transfer needs
            transfer = asyncio.create_task(m.transfer(bot, call.id, queue="general"))
            deadline = time.monotonic() + 5  # under way: queued, its prompt and write to come
            for _ in range(1_000_000):
                if call.state == "queued" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0)
            assert call.state == "queued"
            peer.remote_ended = True
            await m.end_call(call.id, "remote_closed")
            await transfer
            assert call.state == "ended"
            assert m.acd.waiting == {}, f"call {i}: ended, yet still in the line"
        # hung up sooner, while the agent was leaving: a refusal saying so, not a crash
        call, peer = await phone_call(m, "+15550002009")
        await m._transition(call, "queue", "general")
        await m._transition(call, "accept")
        peer.remote_ended = True
        transfer = asyncio.create_task(m.transfer(bot, call.id, queue="general"))
        await m.end_call(call.id, "remote_closed")
        with pytest.raises(NotAllowed, match="has ended"):
            await transfer
        assert m.acd.waiting == {}
