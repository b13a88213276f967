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
from engine.monitoring import SupervisorLeg
from media.audio import ANALYSIS_RATE
from media.wavtrack import FRAME, SEND_RATE
from tests.controlplane import ControlPlane
from tests.test_monitor_legs import cp, offer, person, with_ann
from tests.test_recording_disk import changes, fill_up

__all__ = ["cp"]  # the fixture, shared with tests/test_monitor_legs.py

LOUD = 8000  # the tone's amplitude
WINDOW = ANALYSIS_RATE // 100  # 10 ms, the resolution of the measured times


class Tone(MediaStreamTrack):
    """A supervisor's decoded microphone saying a sine tone: as many 20 ms frames as it
    is told to ``say``, a few ms apart (faster than real time: within a stretch the
    recording places them by their samples, not by when they came), then nothing until
    told more. ``channels=2``: interleaved stereo, as aiortc's Opus decoder gives."""

    kind = "audio"

    def __init__(self, hz: float, channels: int = 1) -> None:
        super().__init__()
        self.hz = hz
        self.channels = channels
        self.pts = 0
        self.left = 0
        self.taken: list[float] = []  # when each frame was taken
        self.said = asyncio.Event()  # everything it was told to say has been taken
        self._more = asyncio.Event()
        self.leg: SupervisorLeg | None = None  # the leg it speaks into (``saying``)

    @property
    def first_at(self) -> float | None:
        return self.taken[0] if self.taken else None

    def say(self, frames: int) -> None:
        self.left += frames
        self.said.clear()
        self._more.set()

    def lose(self, frames: int) -> None:
        """The next ``frames`` never arrive (lost on the network): their timestamps are
        skipped, as a gap in the RTP timestamps reaches aiortc's decoded frames."""
        self.pts += frames * FRAME

    async def recv(self) -> av.AudioFrame:
        while not self.left:
            self.said.set()  # asked for the next frame: the last one was pushed
            self._more.clear()
            await self._more.wait()
        await asyncio.sleep(0.005)
        self.left -= 1
        n = np.arange(self.pts, self.pts + FRAME)
        samples = np.round(LOUD * np.sin(2 * np.pi * self.hz * n / SEND_RATE)).astype(np.int16)
        layout = "mono" if self.channels == 1 else "stereo"
        packed = np.repeat(samples, self.channels)[None, :]  # s16 is packed: interleaved
        frame = av.AudioFrame.from_ndarray(packed, format="s16", layout=layout)
        frame.sample_rate, frame.pts = SEND_RATE, self.pts
        frame.time_base = fractions.Fraction(1, SEND_RATE)
        self.pts += FRAME
        self.taken.append(time.monotonic())
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


async def saying(
    cp: ControlPlane, call: Call, name: str, mode: Mode, hz: float, channels: int = 1
) -> Tone:
    pc, sdp = await offer()
    try:
        leg, _answer = await cp.calls.monitors.start(await person(cp, name), call, mode, sdp)
    finally:
        await pc.close()
    tone = Tone(hz, channels)
    tone.leg = leg
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


def where(call: Call, tone: Tone, frame: int = 0) -> float:
    """Where the tone's ``frame`` (its first by default) belongs in the recording: when
    it came, on the call's clock, from where the recording began."""
    assert len(tone.taken) > frame and call.media_t0 is not None and call.recording
    return tone.taken[frame] - call.media_t0 - call.recording.t0


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
    written. Resumed, his next words land where they were said, on the wall clock:
    not at the time his voice began, nor by the count of his samples meanwhile."""
    call = await recorded_call(cp)
    ann = await person(cp, "ann")
    cp.calls.recording(ann, call.id, False)
    sid = await saying(cp, call, "sid", "barge", 700)
    await say(sid, 25)
    await asyncio.sleep(0.3)  # paused longer than his 25 frames took to come
    cp.calls.recording(ann, call.id, True)
    await say(sid, 25)
    both = await finished(cp, call)
    [(start, end)] = loud_spans(both[:, 1])
    assert abs(start - where(call, sid, 25)) <= 0.03, (start, where(call, sid, 25))
    assert 0.46 <= end - start <= 0.52
    assert not both[: round((start - 0.03) * ANALYSIS_RATE), 1].any()


async def test_a_barge_after_listening_through_losses_lands_when_it_was_said(
    cp: ControlPlane,
) -> None:
    """Regression: the supervisor's place on the call's clock was fixed at their first
    frame and moved on only by the samples decoded, so audio that never came (lost
    packets, frames skipped to catch up) was never counted, and a barge after minutes
    of listening landed early (2 % loss for 60 s: 1.1 s). Sam listens with a lost
    stretch and a silence; his barge lands at the wall-clock time he said it. Within
    the barge, 400 ms lost on the network are counted (``on_lost``): his words after
    them land 400 ms later than his samples alone say."""
    call = await recorded_call(cp)
    sam = await saying(cp, call, "sam", "listen", 700)
    await say(sam, 10)
    sam.lose(20)
    await say(sam, 10)
    await asyncio.sleep(0.4)  # nothing comes: his microphone sends nothing (DTX), say
    assert sam.leg is not None
    cp.calls.monitors.change(await person(cp, "sam"), call, "barge")
    await say(sam, 15)
    sam.lose(20)
    await say(sam, 10)
    both = await finished(cp, call)
    (start, end), (again, last) = loud_spans(both[:, 1])
    assert abs(start - where(call, sam, 20)) <= 0.04, (start, where(call, sam, 20))
    assert 0.28 <= end - start <= 0.32
    assert abs(again - (start + 0.3 + 0.4)) <= 0.03, (again, start)
    assert 0.18 <= last - again <= 0.22


async def test_barge_whisper_barge_places_the_second_barge_right(cp: ControlPlane) -> None:
    """Regression: a stretch not written (a whisper) was counted by its samples, and the
    resampler's leftover from the first barge was spliced into the second. Sue barges,
    whispers, falls silent, barges again: each barge lands where it was said, the
    whisper nowhere."""
    call = await recorded_call(cp)
    sue_row = await person(cp, "sue")
    sue = await saying(cp, call, "sue", "barge", 700)
    await say(sue, 10)
    cp.calls.monitors.change(sue_row, call, "whisper")
    await say(sue, 10)
    await asyncio.sleep(0.4)
    cp.calls.monitors.change(sue_row, call, "barge")
    await say(sue, 10)
    both = await finished(cp, call)
    (start, end), (again, last) = loud_spans(both[:, 1])
    assert abs(start - where(call, sue)) <= 0.03, (start, where(call, sue))
    assert abs(again - where(call, sue, 20)) <= 0.03, (again, where(call, sue, 20))
    assert 0.18 <= end - start <= 0.22 and 0.18 <= last - again <= 0.22


async def test_stereo_input_is_recorded_as_mono_at_its_time(cp: ControlPlane) -> None:
    """aiortc's Opus decoder gives interleaved stereo: the barge is its half second at
    its pitch and time, not twice as long or at half the pitch."""
    call = await recorded_call(cp)
    sid = await saying(cp, call, "sid", "barge", 700, channels=2)
    await say(sid, 25)
    both = await finished(cp, call)
    [(start, end)] = loud_spans(both[:, 1])
    assert abs(start - where(call, sid)) <= 0.03, (start, where(call, sid))
    assert 0.46 <= end - start <= 0.52
    assert abs(pitch(both[:, 1]) - 700) < 5


async def test_a_barge_while_the_call_is_held_is_not_recorded(cp: ControlPlane) -> None:
    """On hold the caller hears hold audio, not the supervisor (engine/monitor.py):
    Sid's barge then reaches only the agent and is not written. Resumed, it is."""
    call = await recorded_call(cp)
    ann = await person(cp, "ann")
    await cp.calls.hold(ann, call.id)
    sid = await saying(cp, call, "sid", "barge", 700)
    await say(sid, 25)
    await cp.calls.resume(ann, call.id)
    await say(sid, 10)
    both = await finished(cp, call)
    [(start, end)] = loud_spans(both[:, 1])
    assert abs(start - where(call, sid, 25)) <= 0.03, (start, where(call, sid, 25))
    assert 0.18 <= end - start <= 0.22


async def test_a_recording_started_after_the_supervisor_joined_holds_their_barge(
    cp: ControlPlane,
) -> None:
    """Sid barges before anyone records; the recording starts later, and his next words
    are in it where they were said (not where his samples meanwhile would put them)."""
    call = await with_ann(cp)
    call.media_t0 = time.monotonic() - 1.0
    sid = await saying(cp, call, "sid", "barge", 700)
    await say(sid, 10)
    await asyncio.sleep(0.2)
    cp.calls.recording(await person(cp, "ann"), call.id, True)
    await say(sid, 25)
    both = await finished(cp, call)
    [(start, end)] = loud_spans(both[:, 1])
    assert abs(start - where(call, sid, 10)) <= 0.03, (start, where(call, sid, 10))
    assert 0.46 <= end - start <= 0.52


async def test_a_recording_that_cannot_be_written_leaves_the_barge_on(cp: ControlPlane) -> None:
    """Regression: a write error (a full disk) in the supervisor's recording ended their
    leg with "error". Now the recording stops at the first refused write (told once,
    recording.changed with recording false and its reason), their voice is not tried
    again, and the barge goes on: the caller still hears them."""
    call = await recorded_call(cp)
    rec = call.recording
    assert rec is not None
    fill_up(rec)  # the agent's channel, where a barge is written
    sid = await saying(cp, call, "sid", "barge", 700)
    await say(sid, 25)
    assert sid.leg is not None and not sid.leg.stopped and call.monitors == [sid.leg]
    assert rec.failed is not None and "No space" in rec.failed and not rec.active
    assert sid.leg.offset is None  # not written: the next frames stop at the check
    [_started, stopped] = await changes(cp, 2)
    assert (stopped["recording"], stopped["by"]) == (False, "engine")
    assert stopped["reason"].startswith("disk_full: ")
    caller = call.caller_leg()
    assert caller is not None and caller.peer is not None
    assert caller.peer.outbound._live.pending(sid.leg.id)  # the caller is sent his voice
