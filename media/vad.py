"""Voice activity: webrtcvad decisions turned into utterance boundaries.

Theory of operation
-------------------
webrtcvad classifies each 20 ms frame as speech or not; single frames flicker,
so the segmenter keeps a sliding window of the last ``window_frames`` decisions:

    state     condition over the window                 -> action
    SILENCE   voiced ratio >= start_ratio               -> SPEECH, emit UtteranceStarted
                                                           with the window as pre-roll
    SPEECH    pause_ms of unvoiced frames in a row      -> emit PauseDetected (once a pause)
    SPEECH    hint(complete=True) and >= short_end_ms     -> SILENCE, emit UtteranceEnded
              of unvoiced frames in a row (fragment_end_ms
              for a sentence of <= fragment_words words;
              incomplete_end_ms after hint(complete=False))
    SPEECH    unvoiced ratio over end_window >= end_ratio -> SILENCE, emit UtteranceEnded
    SPEECH    utterance longer than max_utterance_s      -> SILENCE, emit UtteranceEnded
                                                           (cut=True)
    SPEECH    a voiced frame                             -> the pause and its hint are over

Why adaptive: a fixed window long enough not to split a sentence at a breath
(~520 ms) is too slow to answer in 300 ms; one short enough splits sentences. At a
pause the pipeline asks the recognizer what was said so far; when that reads as a
complete sentence (a punctuating recognizer ends it with . ? !) the utterance ends
after ``short_end_ms``, otherwise the long ratio rule decides.

Frames of an utterance (pre-roll included) are returned as ``SpeechFrame`` so the
recognizer sees speech only; silence between utterances never leaves this module.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import webrtcvad

from media.audio import ANALYSIS_RATE, FRAME_MS, PcmFrame


@dataclass(frozen=True, slots=True)
class UtteranceStarted:
    start: float


@dataclass(frozen=True, slots=True)
class SpeechFrame:
    frame: PcmFrame
    voiced: bool


@dataclass(frozen=True, slots=True)
class PauseDetected:
    """The speaker stopped for ``pause_ms``: a good moment to ask if they are done."""

    at: float


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    start: float
    end: float
    voiced_frames: int
    total_frames: int
    cut: bool = False  # ended by the length cap, not by silence

    @property
    def pause_ratio(self) -> float:
        return 1.0 - self.voiced_frames / self.total_frames if self.total_frames else 0.0


VadEvent = UtteranceStarted | SpeechFrame | PauseDetected | UtteranceEnded


@dataclass(slots=True)
class VadSettings:
    aggressiveness: int = 2  # 0 (lenient) .. 3 (strict), webrtcvad's own scale
    window_ms: int = 300
    start_ratio: float = 0.6
    end_window_ms: int = 600
    end_ratio: float = 0.85
    max_utterance_s: float = 15.0
    pause_ms: int = 100
    short_end_ms: int = 260
    # a complete "sentence" this short is often a lead-in said before a comma
    # ("Okay, ...", "Good afternoon, ..."): it waits longer
    fragment_words: int = 2
    fragment_end_ms: int = 400
    # not a complete sentence (no . ? !): more time to go on, still short of the ratio
    # rule's ~520 ms (Moonshine ended "...a real person right now" with a comma). 400
    # splits no more sentences than 440 did on either part of bench.endpointing (380
    # neither) and takes 40 ms off the slowest finals, the ones that end this way
    incomplete_end_ms: int = 400

    def __post_init__(self) -> None:
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError("VAD aggressiveness must be 0..3")


@dataclass
class SpeechSegmenter:
    settings: VadSettings = field(default_factory=VadSettings)

    def __post_init__(self) -> None:
        self._vad = webrtcvad.Vad(self.settings.aggressiveness)
        self._start_win: collections.deque[tuple[PcmFrame, bool]] = collections.deque(
            maxlen=max(1, self.settings.window_ms // FRAME_MS)
        )
        self._end_win: collections.deque[bool] = collections.deque(
            maxlen=max(1, self.settings.end_window_ms // FRAME_MS)
        )
        self._in_speech = False
        self._utt_start = 0.0
        self._voiced = 0
        self._total = 0
        self._quiet = 0  # unvoiced frames in a row
        self._complete_after = 0  # ms of silence that end the utterance, by the hint; 0: none
        self._pause_at = -1.0  # when the pause in progress was detected
        self._last_end = 0.0
        self.frames_seen = 0
        self.speech_frames = 0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def is_speech(self, frame: PcmFrame) -> bool:
        return bool(self._vad.is_speech(frame.to_bytes(), ANALYSIS_RATE))

    def push(self, frame: PcmFrame) -> list[VadEvent]:
        self.frames_seen += 1
        voiced = self.is_speech(frame)
        events: list[VadEvent] = []
        if not self._in_speech:
            self._start_win.append((frame, voiced))
            n_voiced = sum(1 for _, v in self._start_win if v)
            full = len(self._start_win) == self._start_win.maxlen
            if full and n_voiced >= self.settings.start_ratio * len(self._start_win):
                self._in_speech = True
                first = self._start_win[0][0]
                self._utt_start = first.start
                self._voiced = n_voiced
                self._total = len(self._start_win)
                events.append(UtteranceStarted(first.start))
                events.extend(SpeechFrame(f, v) for f, v in self._start_win)
                self.speech_frames += len(self._start_win)
                self._end_win.clear()
                self._end_win.extend(v for _, v in self._start_win)
                self._start_win.clear()
            return events

        events.append(SpeechFrame(frame, voiced))
        self.speech_frames += 1
        self._voiced += voiced
        self._total += 1
        self._last_end = frame.end
        self._end_win.append(voiced)
        if voiced:
            self._quiet = 0
            self._complete_after = 0
        else:
            self._quiet += 1
            if self._quiet * FRAME_MS == self.settings.pause_ms:
                self._pause_at = frame.end
                events.append(PauseDetected(frame.end))
        unvoiced = sum(1 for v in self._end_win if not v)
        too_long = frame.end - self._utt_start >= self.settings.max_utterance_s
        if (
            (len(self._end_win) == self._end_win.maxlen
             and unvoiced >= self.settings.end_ratio * len(self._end_win))
            or self._short_end()
            or too_long
        ):  # fmt: skip
            events.append(self._end(frame.end, cut=too_long))
        return events

    def _short_end(self) -> bool:
        return 0 < self._complete_after <= self._quiet * FRAME_MS

    def hint(self, pause: PauseDetected, complete: bool, words: int) -> list[VadEvent]:
        """What the recognizer made of the speech before ``pause``: a complete
        sentence or not, of how many words. Ignored once the speaker has gone on (a
        voiced frame) or the utterance has ended."""
        if not self._in_speech or self._quiet == 0 or pause.at != self._pause_at:
            return []
        st = self.settings
        if not complete:
            self._complete_after = st.incomplete_end_ms
        elif words <= st.fragment_words:
            self._complete_after = st.fragment_end_ms
        else:
            self._complete_after = st.short_end_ms
        return [self._end(self._last_end, cut=False)] if self._short_end() else []

    def flush(self, now: float) -> list[VadEvent]:
        """End an utterance in progress (the leg is closing)."""
        return [self._end(now, cut=True)] if self._in_speech else []

    def _end(self, end: float, *, cut: bool) -> UtteranceEnded:
        self._in_speech = False
        self._quiet = 0
        self._complete_after = 0
        self._end_win.clear()
        self._start_win.clear()
        return UtteranceEnded(self._utt_start, end, self._voiced, self._total, cut)
