"""PCM frames, resampling to the analysis rate, and level metering.

Everything downstream of the transports (VAD, ASR, emotion) works on 16 kHz mono
int16 audio in 20 ms frames. ``AnalysisResampler`` turns whatever a transport
decodes (Opus at 48 kHz stereo, G.711 at 8 kHz mono, ...) into exactly that,
with a real band-limited resampler so nothing aliases into the speech band the
recognizer listens to: for 48 kHz (every caller) and for rates that divide 16 kHz (8
kHz) polyphase filters of our own that give each frame at once (:class:`Decimator`,
:class:`Interpolator`), for other rates libsoxr.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soxr

ANALYSIS_RATE = 16000
FRAME_MS = 20
FRAME_SAMPLES = ANALYSIS_RATE * FRAME_MS // 1000  # 320


@dataclass(frozen=True, slots=True)
class PcmFrame:
    """20 ms of 16 kHz mono int16 audio, stamped with its offset in the leg."""

    samples: np.ndarray  # int16, shape (FRAME_SAMPLES,)
    start: float  # seconds since the first sample of the leg

    @property
    def end(self) -> float:
        return self.start + len(self.samples) / ANALYSIS_RATE

    def to_bytes(self) -> bytes:
        return self.samples.astype("<i2", copy=False).tobytes()


def downmix_interleaved(pcm: np.ndarray, channels: int) -> np.ndarray:
    """Average interleaved channels into mono float32 in [-1, 1)."""
    if channels == 2:
        # what aiortc's Opus decoder always gives: two strided adds instead of a
        # mean over a reshaped copy, a third of the cost on the event loop, per frame
        flat = pcm.reshape(-1)
        usable = len(flat) - len(flat) % 2
        left = flat[0:usable:2].astype(np.float32)
        left += flat[1:usable:2]
        left *= 1.0 / 65536.0
        return left
    x = pcm.astype(np.float32).reshape(-1) / 32768.0
    if channels > 1:
        usable = len(x) - len(x) % channels
        x = x[:usable].reshape(-1, channels).mean(axis=1)
    return x


def downmix_int16(pcm: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved int16 to mono int16 (for forwarding audio, not analysis)."""
    return np.clip(np.round(downmix_interleaved(pcm, channels) * 32768.0), -32768, 32767).astype(
        np.int16
    )


class AnalysisResampler:
    """Streaming converter from any rate/channel count to 20 ms analysis frames.

    Sans-IO: feed decoded PCM with ``push``; it returns the whole frames now
    available. Frame timestamps come from the sample count, not the wall clock,
    so they are exact and reproducible.
    """

    def __init__(self) -> None:
        self._in_rate: int | None = None
        self._resample: Callable[[np.ndarray], np.ndarray] | None = None
        self._pending = np.zeros(0, dtype=np.float32)
        self._emitted = 0  # analysis samples already returned as frames

    def push(self, pcm: np.ndarray, sample_rate: int, channels: int = 1) -> list[PcmFrame]:
        mono = downmix_interleaved(pcm, channels)
        if sample_rate != self._in_rate:
            # A rate change mid-stream (codec switch) restarts the filter; the
            # few milliseconds of filter state lost are inaudible to ASR.
            self._in_rate = sample_rate
            if sample_rate == ANALYSIS_RATE:
                self._resample = None
            elif sample_rate == 3 * ANALYSIS_RATE:
                # what every caller gives (Opus, and phones through media/rtp.py): each
                # frame analysed as it arrives, not in libsoxr's ~64 ms blocks, which
                # made end of speech (and so every final) up to 40 ms later
                # half the taps of a phone's: what folds back lands above 7 kHz,
                # where the recognizer hears nothing it needs; half the cost a frame
                self._resample = Decimator(3, taps=121).push_float
            elif ANALYSIS_RATE % sample_rate == 0:
                # 8 kHz (a WebRTC peer that negotiated G.711): the same for a narrow
                # line, up in one step (libsoxr held it back up to 100 ms, five frames
                # at a time, so every end of speech was found that late)
                self._resample = Interpolator(ANALYSIS_RATE // sample_rate).push_float
            else:
                self._resample = soxr.ResampleStream(
                    sample_rate, ANALYSIS_RATE, 1, dtype="float32"
                ).resample_chunk
        out = mono if self._resample is None else self._resample(mono)
        return self._frames(out)

    def _frames(self, out: np.ndarray) -> list[PcmFrame]:
        # Every whole frame leaves at once: what stays is under one frame, so this
        # buffer is bounded by construction.
        pending = np.concatenate([self._pending, out]) if len(self._pending) else out
        n = len(pending) // FRAME_SAMPLES
        frames: list[PcmFrame] = []
        for i in range(n):
            chunk = pending[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
            samples = np.clip(np.round(chunk * 32768.0), -32768, 32767).astype(np.int16)
            frames.append(PcmFrame(samples, self._emitted / ANALYSIS_RATE))
            self._emitted += FRAME_SAMPLES
        self._pending = pending[n * FRAME_SAMPLES :].copy()
        return frames


def _lowpass(taps: int, factor: int) -> np.ndarray:
    """A windowed-sinc low-pass at the wide rate / ``factor`` / 2 (the narrow rate's
    Nyquist; the wide rate is 48 kHz, or 16 kHz for analysis from 8 kHz), Kaiser window
    (beta 8: ~80 dB down past the transition band)."""
    n = np.arange(taps) - (taps - 1) / 2
    fc = 0.5 / factor  # as a fraction of the wide rate
    h: np.ndarray = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(taps, 8.0)
    return h


class Decimator:
    """48 kHz to 48 kHz / ``factor`` (8 or 16 kHz), every output sample as soon as its
    input is in.

    libsoxr's streams hand their output out in blocks of ~64 ms whatever they are fed: a
    phone got three or four RTP packets at once, every third or fourth frame, 40 ms
    later than need be, and analysis heard the caller that much late. This is a plain
    windowed-sinc low-pass evaluated only at the kept samples (polyphase): 2.5 ms of
    delay, flat to ``out_rate / 2 - 500 Hz``, ~80 dB down from ``out_rate / 2 + 500 Hz``
    (what folds back lands above the telephone band), and nothing to compute while the
    line is silent.
    """

    TAPS = 241

    def __init__(self, factor: int, taps: int = TAPS) -> None:
        self.factor = factor
        self.taps = taps
        h = _lowpass(taps, factor)
        self._h = (h / h.sum()).astype(np.float32)
        self._history = np.zeros(taps - 1, np.float32)
        self._quiet = True  # the history is all zeros
        self._phase = 0  # where in the next input the next kept sample's window ends

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """int16 in, int16 out: every output sample whose input is complete."""
        y = self.push_float(pcm)
        return np.clip(np.round(y), -32768, 32767).astype(np.int16)

    def push_float(self, x: np.ndarray) -> np.ndarray:
        """The same for float32 samples (any scale)."""
        count = max(0, (len(x) - self._phase + self.factor - 1) // self.factor)
        if self._quiet and not x.any():
            self._phase = self._phase + count * self.factor - len(x)
            return np.zeros(count, np.float32)
        buf = np.concatenate([self._history, x.astype(np.float32, copy=False)])
        windows = np.lib.stride_tricks.sliding_window_view(buf, self.taps)
        y: np.ndarray = windows[self._phase :: self.factor][:count] @ self._h
        self._phase = self._phase + count * self.factor - len(x)
        self._history = buf[len(buf) - (self.taps - 1) :]
        self._quiet = not self._history.any()
        return y


class Interpolator:
    """A rate ``factor`` times higher (a phone's 8 or 16 kHz to 48 kHz; 8 to 16 kHz for
    analysis), each input block's output at once: the same filter as
    :class:`Decimator`, run per output phase, for the same reason (libsoxr gave blocks of
    ~64 ms from 48 kHz and 100 ms from 8 kHz)."""

    TAPS_PER_PHASE = 40

    def __init__(self, factor: int) -> None:
        self.factor = factor
        h = _lowpass(self.TAPS_PER_PHASE * factor, factor)
        h *= factor / h.sum()  # zeros stuffed between samples: gain ``factor`` back
        # row k: the taps that make output sample i * factor + k, newest input first
        self._phases = h.reshape(self.TAPS_PER_PHASE, factor).T.astype(np.float32)
        self._history = np.zeros(self.TAPS_PER_PHASE - 1, np.float32)
        self._quiet = True

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """int16 in, ``factor`` times as many int16 out."""
        if self._quiet and not pcm.any():
            return np.zeros(len(pcm) * self.factor, np.int16)
        y = self.push_float(pcm)
        return np.clip(np.round(y), -32768, 32767).astype(np.int16)

    def push_float(self, x: np.ndarray) -> np.ndarray:
        """The same for float32 samples (any scale)."""
        if self._quiet and not x.any():
            return np.zeros(len(x) * self.factor, np.float32)
        buf = np.concatenate([self._history, x.astype(np.float32, copy=False)])
        windows = np.lib.stride_tricks.sliding_window_view(buf, self.TAPS_PER_PHASE)
        y: np.ndarray = (windows[:, ::-1] @ self._phases.T).reshape(-1)
        self._history = buf[len(buf) - (self.TAPS_PER_PHASE - 1) :]
        self._quiet = not self._history.any()
        return y


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level of int16 samples in dB relative to full scale (-120 for silence)."""
    if len(samples) == 0:
        return -120.0
    x = samples.astype(np.float64) / 32768.0
    rms = float(np.sqrt(np.mean(x * x)))
    return 20.0 * float(np.log10(rms)) if rms > 1e-6 else -120.0
