"""The audio we send to a party of a call: prompts, the other party's voice, hold audio.

One track per leg, paced in real time in 20 ms frames at 48 kHz. What a frame
carries, first match wins:

    1. queued clips (``play``), in turn: prompts and announcements;
    2. live audio (``push_live``): the other party of a bridge, and a supervisor who
       whispers or barges in; several voices are summed (media/mixer.py);
    3. the background loop (``set_background``): hold audio;
    4. silence, so RTP keeps flowing (and NAT bindings stay open).

``play`` returns a future that is done when the clip has been sent; ``clear``
drops what is queued and pending live audio (a barge-in, a bridge, hold).
"""

from __future__ import annotations

import asyncio
import collections

import numpy as np

from media.mixer import LiveMixer
from media.wavtrack import FRAME, SEND_RATE, PacedAudioTrack, to_send_rate

MAX_QUEUED_SECONDS = 120.0
# Live audio (the other party of a bridge) is kept short: older samples are dropped
# so the conversation never drifts behind. The bound is per voice (media/mixer.py).
MAX_LIVE_SAMPLES = SEND_RATE * 3 // 10


class OutboundAudioTrack(PacedAudioTrack):
    def __init__(self) -> None:
        super().__init__()
        self._clips: collections.deque[tuple[np.ndarray, asyncio.Future[None]]] = (
            collections.deque()
        )
        self._current: np.ndarray | None = None
        self._current_done: asyncio.Future[None] | None = None
        self._pos = 0
        self._live = LiveMixer(MAX_LIVE_SAMPLES)
        self.speech_frames_sent = 0
        self._background: np.ndarray | None = None
        self._background_pos = 0

    @property
    def queued_seconds(self) -> float:
        left = 0 if self._current is None else len(self._current) - self._pos
        return (left + sum(len(c) for c, _ in self._clips)) / SEND_RATE

    def play(self, pcm: np.ndarray, rate: int) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        clip = to_send_rate(pcm.astype(np.int16), rate)
        if self.queued_seconds + len(clip) / SEND_RATE > MAX_QUEUED_SECONDS:
            done.set_exception(OverflowError("outbound audio queue is full"))
            return done
        self._clips.append((clip, done))
        return done

    @property
    def live_dropped(self) -> int:
        """Live samples dropped so far: a voice too far behind, or one voice too many."""
        return self._live.dropped

    def push_live(self, pcm48: np.ndarray, source: str = "live") -> None:
        """Feed 48 kHz mono audio of one voice (``source``: the leg it comes from) to be
        mixed with the others; clips queued with ``play`` go first."""
        self._live.push(source, pcm48)

    def drop_live(self, source: str) -> None:
        """Drop what ``source`` has queued (a voice this party no longer hears)."""
        self._live.remove(source)

    def set_background(self, loop48: np.ndarray | None) -> None:
        """Loop this 48 kHz audio whenever nothing else is sent (None: silence)."""
        self._background = None if loop48 is None or not len(loop48) else loop48
        self._background_pos = 0

    def _take_background(self, out: np.ndarray) -> None:
        loop = self._background
        if loop is None:
            return
        filled = 0
        while filled < FRAME:
            take = min(FRAME - filled, len(loop) - self._background_pos)
            out[filled : filled + take] = loop[self._background_pos : self._background_pos + take]
            filled += take
            self._background_pos = (self._background_pos + take) % len(loop)

    def _take_live(self, out: np.ndarray) -> bool:
        mixed = self._live.mix(FRAME)
        if mixed is None:
            return False
        out[:] = mixed
        return True

    def clear(self) -> None:
        self._live.clear()
        for _, fut in self._clips:
            if not fut.done():
                fut.cancel()
        self._clips.clear()
        if self._current_done is not None and not self._current_done.done():
            self._current_done.cancel()
        self._current = self._current_done = None

    def _next_samples(self) -> np.ndarray:
        out = np.zeros(FRAME, dtype=np.int16)
        filled = 0
        while filled < FRAME:
            if self._current is None:
                if not self._clips:
                    break
                self._current, self._current_done = self._clips.popleft()
                self._pos = 0
            take = min(FRAME - filled, len(self._current) - self._pos)
            out[filled : filled + take] = self._current[self._pos : self._pos + take]
            filled += take
            self._pos += take
            if self._pos >= len(self._current):
                if self._current_done is not None and not self._current_done.done():
                    self._current_done.set_result(None)
                self._current = self._current_done = None
        if filled or (not self._clips and self._current is None and self._take_live(out)):
            self.speech_frames_sent += 1
        else:
            self._take_background(out)
        return out

    def stop(self) -> None:
        self.clear()
        super().stop()
