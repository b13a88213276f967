"""The mix a party hears (media/mixer.py) and who hears whom with a supervisor on the
call (engine/monitor.py): in-process, no sockets."""

from __future__ import annotations

import numpy as np
import pytest

from engine.monitor import BRIDGE, HEARS, MODES, Mode, Party, hears
from media.mixer import MAX_SOURCES, LiveMixer
from media.outbound import MAX_LIVE_SAMPLES, OutboundAudioTrack
from media.wavtrack import FRAME, SEND_RATE


def tone(hz: float, seconds: float, amplitude: float = 8000) -> np.ndarray:
    t = np.arange(int(seconds * SEND_RATE)) / SEND_RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def level_at(pcm: np.ndarray, hz: float) -> float:
    """Amplitude of ``hz`` in ``pcm`` (a sine of amplitude A reads ~A)."""
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    bins = np.fft.rfftfreq(len(pcm), 1 / SEND_RATE)
    near = np.abs(bins - hz) < 15
    return float(spectrum[near].max() * 4 / len(pcm))


# -- the mixer ------------------------------------------------------------------


def test_two_voices_are_summed_frame_by_frame() -> None:
    """The agent hears the caller and a whispering supervisor at once: both tones are
    in every frame, each at its own level, none replaces the other."""
    mixer = LiveMixer(MAX_LIVE_SAMPLES)
    caller, supervisor = tone(440, 0.2), tone(1100, 0.2)
    for i in range(0, len(caller), FRAME):  # as packets come: interleaved
        mixer.push("caller", caller[i : i + FRAME])
        mixer.push("supervisor", supervisor[i : i + FRAME])
    frames = [mixer.mix(FRAME) for _ in range(10)]
    assert all(f is not None for f in frames)
    out = np.concatenate([f for f in frames if f is not None])
    assert np.array_equal(out, caller.astype(np.int32) + supervisor)
    assert level_at(out, 440) == pytest.approx(8000, rel=0.1)
    assert level_at(out, 1100) == pytest.approx(8000, rel=0.1)
    assert mixer.mix(FRAME) is None and mixer.sources == ()  # dry sources are forgotten


def test_loud_voices_clip_instead_of_wrapping_around() -> None:
    """Two loud voices sum past 16 bits: the mix clips (int16 arithmetic would wrap a
    loud positive sum round to a loud negative one)."""
    mixer = LiveMixer(MAX_LIVE_SAMPLES)
    for name in ("a", "b"):
        mixer.push(name, np.full(FRAME, 30000, np.int16))
    mixer.push("c", np.full(FRAME, -1000, np.int16))
    out = mixer.mix(FRAME)
    assert out is not None and out.dtype == np.int16 and (out == 32767).all()
    for name in ("a", "b"):
        mixer.push(name, np.full(FRAME, -30000, np.int16))
    out = mixer.mix(FRAME)
    assert out is not None and (out == -32768).all()


def test_a_short_voice_fills_what_it_has_and_the_rest_is_silence() -> None:
    mixer = LiveMixer(MAX_LIVE_SAMPLES)
    mixer.push("caller", np.full(FRAME // 2, 100, np.int16))
    out = mixer.mix(FRAME)
    assert out is not None
    assert (out[: FRAME // 2] == 100).all() and (out[FRAME // 2 :] == 0).all()


def test_each_voice_is_bounded_on_its_own() -> None:
    """A voice whose packets bunch up (a second at once) is cut to the same 300 ms the
    single bridged voice always was, and does not push another voice out."""
    mixer = LiveMixer(MAX_LIVE_SAMPLES)
    mixer.push("steady", np.full(FRAME, 5, np.int16))
    for _ in range(50):
        mixer.push("bursty", np.full(FRAME, 7, np.int16))
    assert mixer.pending("bursty") <= MAX_LIVE_SAMPLES
    assert mixer.dropped == 50 * FRAME - mixer.pending("bursty")
    assert mixer.pending("steady") == FRAME
    out = mixer.mix(FRAME)
    assert out is not None and (out == 12).all()


def test_sources_are_bounded_and_removable() -> None:
    mixer = LiveMixer(MAX_LIVE_SAMPLES)
    for i in range(MAX_SOURCES + 3):
        mixer.push(f"s{i}", np.ones(FRAME, np.int16))
    assert len(mixer.sources) == MAX_SOURCES and mixer.dropped == 3 * FRAME
    mixer.remove("s0")
    assert "s0" not in mixer.sources
    mixer.clear()
    assert mixer.mix(FRAME) is None


async def test_the_outbound_track_sends_the_mix_after_prompts() -> None:
    """Through the track a leg sends: a prompt first, then both live voices summed;
    a voice dropped (a supervisor who stopped whispering) is not heard after."""
    track = OutboundAudioTrack()
    track.play(np.full(FRAME, 7, np.int16), SEND_RATE)
    track.push_live(np.full(FRAME * 2, 3, np.int16), "caller")
    track.push_live(np.full(FRAME * 2, 10, np.int16), "supervisor")
    got = [int((await track.recv()).to_ndarray()[0][0]) for _ in range(2)]
    track.drop_live("supervisor")
    got += [int((await track.recv()).to_ndarray()[0][0]) for _ in range(2)]
    assert got == [7, 13, 3, 0]
    track.stop()


# -- who hears whom -------------------------------------------------------------

PARTIES: tuple[Party, ...] = ("caller", "agent", "supervisor")


def heard_by(mode: Mode, speaker: Party, state: str = "bridged", muted: bool = False) -> set[str]:
    return {p for p in PARTIES if hears(mode, speaker, p, state=state, agent_muted=muted)}


def test_the_table_per_mode() -> None:
    """listen: the supervisor hears both, nobody hears them; whisper: only the agent
    hears them; barge: everyone hears everyone. Caller and agent always hear each other."""
    expected: dict[Mode, tuple[set[str], set[str], set[str]]] = {
        "listen": ({"agent", "supervisor"}, {"caller", "supervisor"}, set()),
        "whisper": ({"agent", "supervisor"}, {"caller", "supervisor"}, {"agent"}),
        "barge": ({"agent", "supervisor"}, {"caller", "supervisor"}, {"caller", "agent"}),
    }
    assert set(HEARS) == set(MODES) == set(expected)
    for mode, (caller, agent, supervisor) in expected.items():
        assert BRIDGE <= HEARS[mode]
        assert heard_by(mode, "caller") == caller
        assert heard_by(mode, "agent") == agent
        assert heard_by(mode, "supervisor") == supervisor
        assert all(s != listener for s, listener in HEARS[mode])  # nobody hears themself


def test_hold_and_mute() -> None:
    """On hold the caller is out of the mix (hears hold audio, is heard by nobody), the
    agent is heard by nobody, but a whisper still coaches the agent; a muted agent is
    heard by nobody, the supervisor included; before an agent, nobody is heard."""
    for mode in MODES:
        assert heard_by(mode, "caller", "held") == set()
        assert heard_by(mode, "agent", "held") == set()
        assert heard_by(mode, "agent", muted=True) == set()
        assert heard_by(mode, "caller", muted=True) == {"agent", "supervisor"}
        assert heard_by(mode, "supervisor", "queued") == set()
    assert heard_by("whisper", "supervisor", "held") == {"agent"}
    assert heard_by("barge", "supervisor", "held") == {"agent"}
    assert heard_by("listen", "supervisor", "held") == set()
