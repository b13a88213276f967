"""Per-leg analysis chain: decoded PCM -> 16 kHz frames -> VAD -> ASR -> emotion.

The event loop does only the cheap per-frame work (resampling, VAD). Speech is
batched into 100 ms chunks and handed to a worker task that sends them to the leg's
recognizer (a worker process, ``media.asr.pool``), one request at a time, so results
stay in order while other legs keep running; the prosody maths runs in a thread
pool. The hand-off queue is bounded: a leg whose recognizer cannot keep up loses
audio (counted in ``dropped_chunks``), never memory, and never delays another leg.

End of speech: at a pause (``PauseDetected``) the recognizer is asked what was said
so far, and the frames after the pause are held back. If the answer reads as a
complete sentence the segmenter ends the utterance early and the recognizer's final
is that same answer (nothing new was fed), so the final costs no second decode. If
the speaker goes on, the held frames are sent first. A recognizer whose worker dies
is reported (``RecognitionFailed``) and replaced for the next utterance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from media.asr.base import AsrResult, LegRecognizer, RecognizerLost, Word, ends_sentence
from media.audio import FRAME_MS, AnalysisResampler, PcmFrame
from media.emotion import TURN_GAP_S, Band, EmotionTracker, prosody
from media.events import (
    EmotionEstimated,
    MediaEvent,
    RecognitionFailed,
    SpeechOnset,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
)
from media.loss import OnLost
from media.vad import (
    PauseDetected,
    SpeechFrame,
    SpeechSegmenter,
    UtteranceEnded,
    UtteranceStarted,
    VadEvent,
    VadSettings,
)
from media.vad import SpeechOnset as VadSpeechOnset

log = logging.getLogger(__name__)

CHUNK_FRAMES = 5  # 100 ms of speech per recognizer call
FRAME_BYTES = 16000 * FRAME_MS // 1000 * 2  # one 20 ms frame of 16 kHz int16
MAX_QUEUED_CHUNKS = 300  # 30 s of speech waiting for the recognizer


@dataclass(frozen=True, slots=True)
class _Audio:
    pcm: bytes
    utterance_start: float
    end: float  # the leg's clock at the end of its last frame: where a partial's words end


@dataclass(frozen=True, slots=True)
class _Peek:
    pause: PauseDetected


@dataclass(frozen=True, slots=True)
class _End:
    utterance: UtteranceEnded
    samples: np.ndarray
    last_voice_at: float  # time.monotonic() when the last speech audio arrived
    # the leg's clock: the first and last voiced frame (None: nothing voiced), the
    # speech itself, without the VAD's pre-roll and closing silence
    voiced: tuple[float, float] | None = None


OpenRecognizer = Callable[[], Awaitable[LegRecognizer]]


def _why(exc: Exception) -> str:
    return exc.reason if isinstance(exc, RecognizerLost) else f"recognizer failed: {exc!r}"


class LegPipeline:
    def __init__(
        self,
        leg_id: str,
        open_recognizer: OpenRecognizer | None,
        executor: Executor,
        emit: Callable[[MediaEvent], None],
        *,
        vad: VadSettings | None = None,
        band: Band = "wide",
        punctuated: bool = False,
        on_lost: OnLost | None = None,
    ) -> None:
        """``open_recognizer`` makes the leg's recognizer (None: no transcription);
        ``punctuated``: its text ends sentences with punctuation, so pauses can be
        judged by it. ``executor`` runs the prosody maths. ``on_lost`` hears of speech
        dropped, as it is dropped, because the recognizer is behind (media/loss.py)."""
        self.leg_id = leg_id
        self._open = open_recognizer
        self._executor = executor
        self._emit = emit
        self._punctuated = punctuated
        self._on_lost = on_lost
        self._resampler = AnalysisResampler()
        self.vad = vad or VadSettings()
        self._segmenter = SpeechSegmenter(self.vad)
        self._queue: asyncio.Queue[_Audio | _Peek | _End | None] = asyncio.Queue(MAX_QUEUED_CHUNKS)
        self._chunk: list[bytes] = []
        self._chunk_end = 0.0  # the leg's clock at the end of the chunk's last frame
        self._held: list[bytes] | None = None  # frames since a pause, not yet sent on
        self._utt_samples: list[np.ndarray] = []
        self._utt_index = 0
        self._utt_start = 0.0
        self._last_voice_at = 0.0
        self._recognizer: LegRecognizer | None = None
        self._lost = False  # the utterance in progress lost its recognizer
        self._tracker = EmotionTracker(band)  # a phone line's voice has its own norms
        self._said_until: float | None = None  # the last voiced frame of words heard
        self._voiced_from: float | None = None  # the utterance's first voiced frame
        self._worker: asyncio.Task[None] | None = None
        self.frames_in = 0
        # sees every 20 ms frame of 16 kHz audio as it arrives (the audio fork)
        self.tap: Callable[[PcmFrame], None] | None = None
        self.dropped_chunks = 0
        self.seconds_in = 0.0
        # leg seconds at the end of the last frame the VAD heard a voice in: silence rules
        # read it, since a final comes only after the recognizer, which may lag
        self.voiced_until = 0.0

    async def start(self) -> None:
        if self._open is not None:
            try:
                self._recognizer = await self._open()
            except Exception as exc:  # no recognizer: the call goes on, untranscribed
                log.error("leg %s: no recognizer: %s", self.leg_id, exc)
                self._emit(RecognitionFailed(self.leg_id, 0, str(exc), recovered=False))
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
            self._vad_events(self._segmenter.push(frame), now)
        return len(frames)

    def _vad_events(self, events: list[VadEvent], now: float) -> None:
        for ev in events:
            if isinstance(ev, UtteranceStarted):
                self._utt_samples = []
                self._utt_start = ev.start
                self._voiced_from = None
                self._emit(SpeechStarted(self.leg_id, ev.start))
            elif isinstance(ev, VadSpeechOnset):
                self._emit(SpeechOnset(self.leg_id, ev.at))
            elif isinstance(ev, SpeechFrame):
                self._utt_samples.append(ev.frame.samples)
                if ev.voiced:
                    self._last_voice_at = now
                    self.voiced_until = ev.frame.end
                    if self._voiced_from is None:
                        self._voiced_from = ev.frame.start
                    if self._held is not None:  # the speaker went on after a pause
                        self._chunk.extend(self._held)
                        self._held = None
                if self._held is not None:
                    self._held.append(ev.frame.to_bytes())
                    continue
                self._chunk.append(ev.frame.to_bytes())
                self._chunk_end = ev.frame.end
                if len(self._chunk) >= CHUNK_FRAMES:
                    self._flush_chunk()
            elif isinstance(ev, PauseDetected):
                if self._punctuated and self._recognizer is not None:
                    self._flush_chunk()
                    self._held = []
                    self._put(_Peek(ev))
            elif isinstance(ev, UtteranceEnded):
                self._end_utterance(ev)

    @property
    def backlog_seconds(self) -> float:
        """Speech queued here for the recognizer (admission reads it)."""
        return self._queue.qsize() * CHUNK_FRAMES * FRAME_MS / 1000

    def _put(self, item: _Audio | _Peek | _End) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._dropped(item)
            if self.dropped_chunks in (1, 10, 100) or self.dropped_chunks % 1000 == 0:
                log.warning(
                    "leg %s: recognizer behind, dropped %d chunks", self.leg_id, self.dropped_chunks
                )

    def _dropped(self, item: _Audio | _Peek | _End) -> None:
        self.dropped_chunks += 1
        if self._on_lost is not None and isinstance(item, _Audio):
            self._on_lost("recognizer", len(item.pcm) // FRAME_BYTES)

    def _flush_chunk(self) -> None:
        if self._chunk:
            self._put(_Audio(b"".join(self._chunk), self._utt_start, self._chunk_end))
            self._chunk = []

    def _end_utterance(self, ev: UtteranceEnded) -> None:
        self._held = None  # silence after the last word: the recognizer needs none of it
        self._flush_chunk()
        samples = np.concatenate(self._utt_samples) if self._utt_samples else np.zeros(0, np.int16)
        self._utt_samples = []
        # an _End must never be lost, or the next utterance would merge into this one
        while self._queue.full():
            oldest = self._queue.get_nowait()
            if oldest is not None:
                self._dropped(oldest)
        voiced = None if self._voiced_from is None else (self._voiced_from, self.voiced_until)
        self._queue.put_nowait(_End(ev, samples, self._last_voice_at or time.monotonic(), voiced))

    def cut(self) -> None:
        """End the utterance in progress here, at ``seconds_in``: who hears the speaker
        changes now (a consult began or ended, engine/calls.py ``_analyse``). Its final
        is made from what was said before, and the VAD's pre-roll of the next starts
        after: no audio crosses the cut. (Up to a frame's worth of samples still in the
        resampler, and its filter's millisecond or two, go with the next push:
        engine/unheard.py allows for it.)"""
        for ev in self._segmenter.cut(self.seconds_in):
            if isinstance(ev, UtteranceEnded):
                self._end_utterance(ev)

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
                await self._recognizer.close()

    def cancel(self) -> None:
        """Give up on the recognizer (it did not finish in time): the speech still queued
        for it is counted lost, as a full queue's is."""
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                self._dropped(item)
        if self._worker is not None:
            self._worker.cancel()

    async def _work(self) -> None:
        while (item := await self._queue.get()) is not None:
            try:
                await self._handle(item)
            except Exception as exc:  # lost with its worker, or it failed: a new one
                await self._recognizer_lost(_why(exc))

    async def _handle(self, item: _Audio | _Peek | _End) -> None:
        rec = self._recognizer
        if isinstance(item, _End):
            await self._finish(rec, item)
        elif rec is None or self._lost:
            return  # no recognizer, or the rest of an utterance it lost
        elif isinstance(item, _Audio):
            partial = await rec.accept(item.pcm)
            if partial:
                self._emit(
                    TranscriptPartial(
                        self.leg_id, self._utt_index, partial, item.utterance_start, item.end
                    )
                )
        else:
            said = await rec.peek()
            now = time.monotonic()
            hint = self._segmenter.hint(
                item.pause, ends_sentence(said.text), len(said.text.split()), said.end_odds
            )
            self._vad_events(hint, now)

    async def _recognizer_lost(self, reason: str) -> None:
        """The worker died mid-utterance: say so, and get a new recognizer for the next
        utterance. The call goes on either way."""
        self._lost = True
        lost, self._recognizer = self._recognizer, None
        if lost is not None:
            await lost.close()
        if self._open is not None:
            try:
                self._recognizer = await self._open()
            except Exception as exc:  # the pool could not give one: untranscribed, but on
                log.error("leg %s: no recognizer after losing one: %s", self.leg_id, exc)
        log.warning("leg %s: recognizer lost (%s)", self.leg_id, reason)
        self._emit(
            RecognitionFailed(
                self.leg_id, self._utt_index, reason, recovered=self._recognizer is not None
            )
        )

    async def _finish(self, rec: LegRecognizer | None, item: _End) -> None:
        utt = item.utterance
        lost, self._lost = self._lost, False
        result = AsrResult("")
        if rec is not None and not lost:
            try:
                result = await rec.finish()
            except Exception as exc:
                await self._recognizer_lost(_why(exc))
                self._lost = False  # that utterance is over: the next one is heard
        latency = time.monotonic() - item.last_voice_at
        index = self._utt_index
        self._utt_index += 1
        words = [
            Word(w.word, round(utt.start + w.start, 3), round(utt.start + w.end, 3), w.conf)
            for w in result.words
        ]
        if not result.text:
            return  # noise the VAD took for speech: nothing was said
        final = TranscriptFinal(
            self.leg_id, index, result.text, utt.start, utt.end, words, latency, utt.cut, utt.rule
        )
        self._emit(final)
        loop = asyncio.get_running_loop()
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
        # a sentence split at a pause is one turn (media.emotion.TURN_GAP_S): the silence
        # between the last voiced frame of the utterance before and this one's first
        continues = (
            self._said_until is not None
            and item.voiced is not None
            and item.voiced[0] - self._said_until < TURN_GAP_S
        )
        if item.voiced is not None:
            self._said_until = item.voiced[1]
        estimate = self._tracker.update(p, result.text, continues)
        self._emit(EmotionEstimated(self.leg_id, index, utt.end, estimate))
