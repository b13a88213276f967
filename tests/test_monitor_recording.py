"""A supervisor's voice in the call's recording (engine/monitoring.py ``record_voice``),
in-process: the real app and call manager (tests/controlplane.py), phone legs that
open no socket, supervisors joined as in tests/test_monitor_legs.py, each saying a
known tone into their leg's audio track; what the finished WAV holds is measured.

Regression: a supervisor's voice was never written, so a barge (the caller hears the
supervisor) was missing from the recording, the record of what the caller heard. A
whisper (only the agent hears it) and a listen (nobody does) must stay out of it,
and a paused recording must stay silent."""

from __future__ import annotations

import asyncio
import fractions
import time
import wave

import av
import numpy as np
from aiortc import MediaStreamTrack

from engine.livecall import Call
from engine.monitor import Mode
from media.audio import ANALYSIS_RATE
from media.wavtrack import FRAME, SEND_RATE
from tests.controlplane import ControlPlane
from tests.test_monitor_legs import cp, offer, person, with_ann

__all__ = ["cp"]  # the fixture, shared with tests/test_monitor_legs.py

LOUD = 8000  # the tone's amplitude
WINDOW = ANALYSIS_RATE // 100  # 10 ms, the resolution of the measured times


class Tone(MediaStreamTrack):
    """A supervisor's decoded microphone saying a sine tone: as many 20 ms frames as it
    is told to ``say``, a few ms apart (faster than real time: the recording places
    them by their samples, not by when they came), then nothing until told more."""

    kind = "audio"

    def __init__(self, hz: float) -> None:
        super().__init__()
        self.hz = hz
        self.pts = 0
        self.left = 0
        self.first_at: float | None = None  # when the first frame was taken
        self.said = asyncio.Event()  # everything it was told to say has been taken
        self._more = asyncio.Event()

    def say(self, frames: int) -> None:
        self.left += frames
        self.said.clear()
        self._more.set()

    async def recv(self) -> av.AudioFrame:
        while not self.left:
            self.said.set()  # asked for the next frame: the last one was pushed
            self._more.clear()
            await self._more.wait()
        await asyncio.sleep(0.005)
        self.left -= 1
        n = np.arange(self.pts, self.pts + FRAME)
        samples = np.round(LOUD * np.sin(2 * np.pi * self.hz * n / SEND_RATE)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts = SEND_RATE, self.pts
        frame.time_base = fractions.Fraction(1, SEND_RATE)
        self.pts += FRAME
        if self.first_at is None:
            self.first_at = time.monotonic()
        return frame


async def recorded_call(cp: ControlPlane) -> Call:
    """Ann's call, recorded from its start, whose caller began speaking a second ago
    (no audio flows on these phone legs: the call's clock is set as the caller's first
    frame would have set it)."""
    call = await with_ann(cp)
    call.media_t0 = time.monotonic() - 1.0
    cp.calls.recording(await person(cp, "ann"), call.id, True)
    assert call.recording is not None and call.recording.t0 == 0.0
    return call


async def saying(cp: ControlPlane, call: Call, name: str, mode: Mode, hz: float) -> Tone:
    pc, sdp = await offer()
    try:
        leg, _answer = await cp.calls.monitors.start(await person(cp, name), call, mode, sdp)
    finally:
        await pc.close()
    tone = Tone(hz)
    leg.peer.audio_track.set_result(tone)
    return tone


async def say(tone: Tone, frames: int) -> None:
    tone.say(frames)
    await asyncio.wait_for(tone.said.wait(), 5)


async def finished(cp: ControlPlane, call: Call) -> np.ndarray:
    """The call ended; its recording, (samples, 2)."""
    await cp.calls.end_call(call.id, "hangup")
    with wave.open(str(cp.calls.recording_path(call.id))) as w:
        assert (w.getnchannels(), w.getframerate()) == (2, ANALYSIS_RATE)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)


def loud_spans(side: np.ndarray) -> list[tuple[float, float]]:
    """Where ``side`` is loud, in seconds from the recording's start, to 10 ms."""
    n = len(side) // WINDOW
    rms = np.sqrt((side[: n * WINDOW].astype(np.float64).reshape(n, WINDOW) ** 2).mean(axis=1))
    spans: list[tuple[float, float]] = []
    for i in np.flatnonzero(rms > LOUD / 4):
        at = i * WINDOW / ANALYSIS_RATE
        if spans and abs(spans[-1][1] - at) < 1e-9:
            spans[-1] = (spans[-1][0], at + WINDOW / ANALYSIS_RATE)
        else:
            spans.append((at, at + WINDOW / ANALYSIS_RATE))
    return spans


def pitch(side: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(side.astype(np.float64)))
    return float(np.fft.rfftfreq(len(side), 1 / ANALYSIS_RATE)[int(np.argmax(spectrum))])


def where(call: Call, tone: Tone) -> float:
    """Where the tone's first frame belongs in the recording: when it came, on the
    call's clock, from where the recording began."""
    assert tone.first_at is not None and call.media_t0 is not None and call.recording
    return tone.first_at - call.media_t0 - call.recording.t0


async def test_a_barge_is_recorded_on_the_agent_channel_and_a_whisper_or_a_listen_is_not(
    cp: ControlPlane,
) -> None:
    """Sue whispers (300 Hz) and Sam listens (500 Hz), half a second each: nothing of
    theirs is written. Then Sid barges (700 Hz) for half a second: his voice is in the
    agent's channel, at its time on the call's clock, as long as he spoke; the
    caller's channel has none of it."""
    call = await recorded_call(cp)
    sue = await saying(cp, call, "sue", "whisper", 300)
    sam = await saying(cp, call, "sam", "listen", 500)
    await asyncio.gather(say(sue, 25), say(sam, 25))
    sid = await saying(cp, call, "sid", "barge", 700)
    await say(sid, 25)
    both = await finished(cp, call)
    assert not both[:, 0].any()  # the caller's side: nobody spoke there
    [(start, end)] = loud_spans(both[:, 1])
    assert abs(start - where(call, sid)) <= 0.03, (start, where(call, sid))
    assert 0.46 <= end - start <= 0.52
    assert abs(pitch(both[:, 1]) - 700) < 5
    # nothing else, quiet or loud, before his voice: no whisper, no listen
    assert not both[: round((start - 0.03) * ANALYSIS_RATE), 1].any()


async def test_a_paused_recording_keeps_a_barge_out_and_its_clock_runs_on(
    cp: ControlPlane,
) -> None:
    """Sid barges while the recording is paused (a card number, say): nothing is
    written. Resumed, his next words land where they were said: after the paused half
    second, not at the time his voice began."""
    call = await recorded_call(cp)
    ann = await person(cp, "ann")
    cp.calls.recording(ann, call.id, False)
    sid = await saying(cp, call, "sid", "barge", 700)
    await say(sid, 25)
    cp.calls.recording(ann, call.id, True)
    await say(sid, 25)
    both = await finished(cp, call)
    [(start, end)] = loud_spans(both[:, 1])
    assert abs(start - (where(call, sid) + 0.5)) <= 0.03, (start, where(call, sid))
    assert 0.46 <= end - start <= 0.52
    assert not both[: round((start - 0.03) * ANALYSIS_RATE), 1].any()
