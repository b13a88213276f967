"""Per-leg analysis chain: decoded PCM -> 16 kHz frames -> VAD -> ASR -> emotion.

The event loop does only the cheap per-frame work (resampling, VAD). Speech is
batched into 100 ms chunks and handed to a worker task that runs the recognizer
and the prosody maths in a thread pool, one chunk at a time, so results stay in
order while other legs keep running. The hand-off queue is bounded: a leg whose
recognizer cannot keep up loses audio (counted in ``dropped_chunks``), never
memory, and never delays another leg.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from media.asr.base import AsrResult, Recognizer, RecognizerFactory, Word
from media.audio import AnalysisResampler, PcmFrame
from media.emotion import EmotionTracker, prosody
from media.events import (
    EmotionEstimated,
    MediaEvent,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
)
from media.vad import SpeechFrame, SpeechSegmenter, UtteranceEnded, UtteranceStarted, VadSettings

log = logging.getLogger(__name__)

CHUNK_FRAMES = 5  # 100 ms of speech per recognizer call
MAX_QUEUED_CHUNKS = 300  # 30 s of speech waiting for the recognizer


@dataclass(frozen=True, slots=True)
class _Audio:
    pcm: bytes
    utterance_start: float


@dataclass(frozen=True, slots=True)
class _End:
    utterance: UtteranceEnded
    samples: np.ndarray
    last_voice_at: float  # time.monotonic() when the last speech audio arrived


class LegPipeline:
    def __init__(
        self,
        leg_id: str,
        factory: RecognizerFactory | None,
        executor: Executor,
        emit: Callable[[MediaEvent], None],
        *,
        vad: VadSettings | None = None,
        phrases: list[str] | None = None,
    ) -> None:
        self.leg_id = leg_id
        self._factory = factory
        self._executor = executor
        self._emit = emit
        self._phrases = phrases
        self._resampler = AnalysisResampler()
        self._segmenter = SpeechSegmenter(vad or VadSettings())
        self._queue: asyncio.Queue[_Audio | _End | None] = asyncio.Queue(MAX_QUEUED_CHUNKS)
        self._chunk: list[bytes] = []
        self._utt_samples: list[np.ndarray] = []
        self._utt_index = 0
        self._utt_start = 0.0
        self._last_voice_at = 0.0
        self._recognizer: Recognizer | None = None
        self._tracker = EmotionTracker()
        self._worker: asyncio.Task[None] | None = None
        self.frames_in = 0
        # sees every 20 ms frame of 16 kHz audio as it arrives (the audio fork)
        self.tap: Callable[[PcmFrame], None] | None = None
        self.dropped_chunks = 0
        self.seconds_in = 0.0

    async def start(self) -> None:
        if self._factory is not None:
            factory = self._factory
            loop = asyncio.get_running_loop()
            self._recognizer = await loop.run_in_executor(
                self._executor, lambda: factory.create(self._phrases)
            )
        self._worker = asyncio.create_task(self._work(), name=f"asr-{self.leg_id}")

    def push_pcm(self, pcm: np.ndarray, sample_rate: int, channels: int) -> int:
        """Feed decoded audio; returns the number of analysis frames produced."""
        frames = self._resampler.push(pcm, sample_rate, channels)
        now = time.monotonic()
        for frame in frames:
            if self.tap is not None:
                self.tap(frame)
            self.frames_in += 1
            self.seconds_in = frame.end
            for ev in self._segmenter.push(frame):
                if isinstance(ev, UtteranceStarted):
                    self._utt_samples = []
                    self._utt_start = ev.start
                    self._emit(SpeechStarted(self.leg_id, ev.start))
                elif isinstance(ev, SpeechFrame):
                    self._utt_samples.append(ev.frame.samples)
                    self._chunk.append(ev.frame.to_bytes())
                    if ev.voiced:
                        self._last_voice_at = now
                    if len(self._chunk) >= CHUNK_FRAMES:
                        self._flush_chunk()
                elif isinstance(ev, UtteranceEnded):
                    self._end_utterance(ev)
        return len(frames)

    def _put(self, item: _Audio | _End) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped_chunks += 1
            if self.dropped_chunks in (1, 10, 100) or self.dropped_chunks % 1000 == 0:
                log.warning(
                    "leg %s: recognizer behind, dropped %d chunks", self.leg_id, self.dropped_chunks
                )

    def _flush_chunk(self) -> None:
        if self._chunk:
            self._put(_Audio(b"".join(self._chunk), self._utt_start))
            self._chunk = []

    def _end_utterance(self, ev: UtteranceEnded) -> None:
        self._flush_chunk()
        samples = np.concatenate(self._utt_samples) if self._utt_samples else np.zeros(0, np.int16)
        self._utt_samples = []
        # an _End must never be lost, or the next utterance would merge into this one
        while self._queue.full():
            self._queue.get_nowait()
            self.dropped_chunks += 1
        self._queue.put_nowait(_End(ev, samples, self._last_voice_at or time.monotonic()))

    async def close(self) -> None:
        """Finish the utterance in flight and wait for its results (bounded by the caller)."""
        for ev in self._segmenter.flush(self.seconds_in):
            if isinstance(ev, UtteranceEnded):
                self._end_utterance(ev)
        if self._worker is None:
            return
        while True:
            try:
                self._queue.put_nowait(None)
                break
            except asyncio.QueueFull:
                await asyncio.sleep(0.01)
        try:
            await self._worker
        finally:
            if self._recognizer is not None:
                self._recognizer.close()

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        rec = self._recognizer
        while (item := await self._queue.get()) is not None:
            if isinstance(item, _Audio):
                if rec is None:
                    continue
                partial = await loop.run_in_executor(self._executor, rec.accept, item.pcm)
                if partial:
                    self._emit(
                        TranscriptPartial(
                            self.leg_id, self._utt_index, partial, item.utterance_start
                        )
                    )
                continue
            await self._finish(loop, rec, item)

    async def _finish(
        self, loop: asyncio.AbstractEventLoop, rec: Recognizer | None, item: _End
    ) -> None:
        utt = item.utterance
        result = await loop.run_in_executor(self._executor, rec.finish) if rec else AsrResult("")
        latency = time.monotonic() - item.last_voice_at
        index = self._utt_index
        self._utt_index += 1
        words = [
            Word(w.word, round(utt.start + w.start, 3), round(utt.start + w.end, 3), w.conf)
            for w in result.words
        ]
        if not result.text:
            return  # noise the VAD took for speech: nothing was said
        self._emit(
            TranscriptFinal(
                self.leg_id, index, result.text, utt.start, utt.end, words, latency, utt.cut
            )
        )
        speech_s = (words[-1].end - words[0].start) if len(words) > 1 else None
        p = await loop.run_in_executor(
            self._executor,
            lambda: prosody(
                item.samples,
                words=len(words),
                speech_seconds=speech_s,
                pause_ratio=utt.pause_ratio,
            ),
        )
        estimate = self._tracker.update(p, result.text)
        self._emit(EmotionEstimated(self.leg_id, index, utt.end, estimate))
