"""An outgoing audio track that plays a WAV file like a microphone would.

Paced in real time in 20 ms frames; after the file it keeps sending silence
(a real microphone never stops), so the far end's VAD can close the last
utterance. ``finished`` is set when the file has been played. Used by the test
callers, the benchmark, and as the desktop softphone's file "device".
"""

from __future__ import annotations

import asyncio
import fractions
import time
import wave

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from media.opus import OpusPackets

SEND_RATE = 48000
FRAME = SEND_RATE // 50  # 20 ms


def read_wav_mono(path: str) -> tuple[np.ndarray, int]:
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: need 16-bit PCM")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return pcm, rate


def to_send_rate(pcm: np.ndarray, rate: int) -> np.ndarray:
    if rate == SEND_RATE:
        return pcm
    import soxr

    out = soxr.resample(pcm.astype(np.float32) / 32768.0, rate, SEND_RATE)
    return np.clip(np.round(out * 32768.0), -32768, 32767).astype(np.int16)


class PacedAudioTrack(MediaStreamTrack):
    """A 48 kHz mono track paced in real time, 20 ms a frame; subclasses say what
    each frame holds (``_next_samples``), this class keeps the clock and timestamps."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._start: float | None = None
        self.frames_sent = 0
        self._opus: OpusPackets | None = None

    @property
    def started_at(self) -> float | None:
        """time.monotonic() when the first frame went out."""
        return self._start

    def _next_samples(self) -> np.ndarray:
        raise NotImplementedError

    async def next_samples(self) -> tuple[np.ndarray, int]:
        """The next frame's samples and timestamp, once it is time to send it: for a
        sender that wants samples, not an ``av.AudioFrame`` (phone RTP, Opus packets)."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / SEND_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        samples, pts = self._next_samples(), self._pts
        self._pts += FRAME
        self.frames_sent += 1
        return samples, pts

    def send_opus(self) -> None:
        """Hand aiortc Opus packets instead of frames (media/opus.py): only for a peer
        whose negotiated codec is Opus, which it then sends as they are."""
        self._opus = OpusPackets(FRAME)

    async def recv(self) -> av.AudioFrame | av.Packet:
        samples, pts = await self.next_samples()
        if self._opus is not None:
            return self._opus.packet(samples, pts)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SEND_RATE
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, SEND_RATE)
        return frame


class WavFileTrack(PacedAudioTrack):
    def __init__(self, path: str, *, lead_silence: float = 0.5, loop: bool = False) -> None:
        super().__init__()
        pcm, rate = read_wav_mono(path)
        lead = np.zeros(int(lead_silence * SEND_RATE), dtype=np.int16)
        self._pcm = np.concatenate([lead, to_send_rate(pcm, rate)])
        self.lead_silence = lead_silence
        self._repeat = loop
        self._pos = 0
        self.finished = asyncio.Event()
        self.duration = len(self._pcm) / SEND_RATE

    def _next_samples(self) -> np.ndarray:
        chunk = self._pcm[self._pos : self._pos + FRAME]
        self._pos += FRAME
        if self._pos >= len(self._pcm):
            self.finished.set()
            if self._repeat:
                self._pos = 0
        if len(chunk) < FRAME:
            chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), dtype=np.int16)])
        return chunk
