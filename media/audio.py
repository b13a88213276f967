"""PCM frames, resampling to the analysis rate, and level metering.

Everything downstream of the transports (VAD, ASR, emotion) works on 16 kHz mono
int16 audio in 20 ms frames. ``AnalysisResampler`` turns whatever a transport
decodes (Opus at 48 kHz stereo, G.711 at 8 kHz mono, ...) into exactly that,
with a real band-limited resampler (libsoxr) so nothing aliases into the speech
band the recognizer listens to.
"""

from __future__ import annotations

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
        self._stream: soxr.ResampleStream | None = None
        self._pending = np.zeros(0, dtype=np.float32)
        self._emitted = 0  # analysis samples already returned as frames

    def push(self, pcm: np.ndarray, sample_rate: int, channels: int = 1) -> list[PcmFrame]:
        mono = downmix_interleaved(pcm, channels)
        if sample_rate != self._in_rate:
            # A rate change mid-stream (codec switch) restarts the filter; the
            # few milliseconds of filter state lost are inaudible to ASR.
            self._in_rate = sample_rate
            self._stream = (
                None
                if sample_rate == ANALYSIS_RATE
                else soxr.ResampleStream(sample_rate, ANALYSIS_RATE, 1, dtype="float32")
            )
        out = mono if self._stream is None else self._stream.resample_chunk(mono)
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


class Decimator:
    """48 kHz int16 to 48 kHz / ``factor`` (8 or 16 kHz for a phone), every output
    sample as soon as its input is in.

    For what a phone hears. libsoxr's streams hand their output out in blocks of ~64 ms
    whatever they are fed: the phone got three or four RTP packets at once, every third
    or fourth frame, and 40 ms later than need be. This is a plain windowed-sinc
    low-pass evaluated only at the kept samples (polyphase): 2.5 ms of delay,
    ~80 dB stop band from ``out_rate / 2 + 500 Hz`` (what folds back lands above the
    telephone band), and nothing to compute while the line is silent.
    """

    TAPS = 241

    def __init__(self, factor: int) -> None:
        self.factor = factor
        out_rate = 48000 / factor
        n = np.arange(self.TAPS) - (self.TAPS - 1) / 2
        fc = (out_rate / 2) / 48000
        h = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(self.TAPS, 8.0)
        self._h = (h / h.sum()).astype(np.float32)
        self._history = np.zeros(self.TAPS - 1, np.float32)
        self._quiet = True  # the history is all zeros
        self._phase = 0  # where in the next input the next kept sample's window ends

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """int16 in, int16 out: every output sample whose input is complete."""
        count = max(0, (len(pcm) - self._phase + self.factor - 1) // self.factor)
        if self._quiet and not pcm.any():
            self._phase = self._phase + count * self.factor - len(pcm)
            return np.zeros(count, np.int16)
        buf = np.concatenate([self._history, pcm.astype(np.float32)])
        windows = np.lib.stride_tricks.sliding_window_view(buf, self.TAPS)
        y = windows[self._phase :: self.factor][:count] @ self._h
        self._phase = self._phase + count * self.factor - len(pcm)
        self._history = buf[len(buf) - (self.TAPS - 1) :]
        self._quiet = not self._history.any()
        return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level of int16 samples in dB relative to full scale (-120 for silence)."""
    if len(samples) == 0:
        return -120.0
    x = samples.astype(np.float64) / 32768.0
    rms = float(np.sqrt(np.mean(x * x)))
    return 20.0 * float(np.log10(rms)) if rms > 1e-6 else -120.0
