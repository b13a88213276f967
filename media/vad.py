"""Voice activity: webrtcvad decisions turned into utterance boundaries.

Theory of operation
-------------------
webrtcvad classifies each 20 ms frame as speech or not, but keeps saying "speech"
for 100-250 ms after the words stop (its built-in overhang). A level gate
(``VoicedGate``) takes that tail off: a frame is *voiced* only if webrtcvad hears
speech in it and it is loud for this speaker on this line (its own table below), so
silence is counted from where the sound of the words ends, not from where the
overhang does. Single frames flicker, so the segmenter keeps a sliding window of the
last ``window_frames`` decisions:

    state     condition                                  -> action
    SILENCE   webrtcvad's speech ratio over the window   -> SPEECH, emit UtteranceStarted
              >= start_ratio                                with the window as pre-roll
    SPEECH    pause_ms of unvoiced frames in a row      -> emit PauseDetected (once a pause)
    SPEECH    hint(complete=True) and >= short_end_ms     -> SILENCE, emit UtteranceEnded
              of unvoiced frames in a row (sure_end_ms when
              the recognizer is sure the sentence ends,
              fragment_end_ms for a sentence of <=
              fragment_words words; incomplete_end_ms after
              hint(complete=False))
    SPEECH    unvoiced ratio over end_window >= end_ratio -> SILENCE, emit UtteranceEnded
    SPEECH    utterance longer than max_utterance_s      -> SILENCE, emit UtteranceEnded
                                                           (cut=True)
    SPEECH    a voiced frame                             -> the pause and its hint are over

The start is webrtcvad's alone: the overhang is at the end of speech, and a soft
onset must not delay the start. ``SpeechFrame.voiced`` is the gated decision (the
pipeline dates the end of speech by it).

Why adaptive: the ratio rule, which knows nothing of what was said, waits ~520 ms
so as not to split a sentence at a comma. At a pause the pipeline asks the recognizer
what was said so far; when that reads as a complete sentence (a punctuating recognizer
ends it with . ? !) the utterance ends after ``short_end_ms`` (``sure_end_ms`` when
the recognizer is also sure the sentence ends there: Moonshine's decoder wrote a full
stop at good odds against a comma, and nothing after it), otherwise after the
fragment or incomplete window. The windows were tuned on the tuning part of
``bench.endpointing`` (held-out results in the README). Pauses inside a sentence, at
a comma, run to ~450 ms of real silence and the recognizer often reads the words
before them as complete ("I would like a replacement." ... "please."), which is what
keeps ``short_end_ms`` near 400 ms: a shorter one splits sentences. The decoder's
odds tell many of those clauses from real sentence ends, since it hears the
intonation as well as the words: that is what lets ``sure_end_ms`` be 100 ms shorter.

Frames of an utterance (pre-roll included) are returned as ``SpeechFrame`` so the
recognizer sees speech only; silence between utterances never leaves this module.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
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


# What ended an utterance: a window after the recognizer's look at a pause (sure,
# complete, fragment, incomplete: see VadSettings.end_after), the ratio rule (silence),
# the length cap (cut), the leg closing (closed), or a turn in who hears the speaker
# (turn: a consult began or ended, media/pipeline.py LegPipeline.cut).
EndRule = Literal["sure", "complete", "fragment", "incomplete", "silence", "cut", "closed", "turn"]


@dataclass(frozen=True, slots=True)
class SpeechOnset:
    """Speech is beginning, before the window that starts an utterance is full: what
    a prompt playing to the speaker stops for (barge-in)."""

    at: float


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    start: float
    end: float
    voiced_frames: int
    total_frames: int
    rule: EndRule = "silence"

    @property
    def cut(self) -> bool:
        """Ended by the length cap, the leg closing or a turn, not by silence."""
        return self.rule in ("cut", "closed", "turn")

    @property
    def pause_ratio(self) -> float:
        return 1.0 - self.voiced_frames / self.total_frames if self.total_frames else 0.0


VadEvent = UtteranceStarted | SpeechFrame | PauseDetected | UtteranceEnded | SpeechOnset


# A phone line (300-3400 Hz at 8 kHz through G.711) cuts what carries many word edges:
# the hiss of s, f and th lies mostly above 3.4 kHz, so what is left of it is 20-30 dB
# under the vowels and the level gate, at 20 dB, took the pause at "expired, sadly" in
# bench.endpointing's tuning part for 480 ms of silence (360 at 16 kHz). At 30 dB the
# tuning part splits 3 of 60 sentences on a phone line (5 at 20 dB, 6 at 25) for one
# frame more at the end of the words (`bench.endpointing --band phone --replay --part
# tuning --set speech_margin_db=30`); at 16 kHz 30 dB splits more (4 against 3), so it
# is for G.711 SIP legs only.
PHONE_SPEECH_MARGIN_DB = 30.0


@dataclass(slots=True)
class VadSettings:
    aggressiveness: int = 2  # 0 (lenient) .. 3 (strict), webrtcvad's own scale
    window_ms: int = 300
    start_ratio: float = 0.6
    # the ratio rule (a recognizer that does not punctuate): ~520 ms after the words;
    # 500 ms at 0.85 and 540 ms at 0.8 split one more sentence on the tuning part
    end_window_ms: int = 600
    end_ratio: float = 0.85
    max_utterance_s: float = 15.0
    # every window counts silence from where the sound of the words ends (the level
    # gate), not from webrtcvad's last voiced frame 100-250 ms later, so each is the
    # silence a speaker really left. Tuned on the tuning part of bench.endpointing
    # (held-out numbers in the README) for the fewest splits, then the soonest finals:
    # at 200 ms the recognizer is asked a quarter less often mid-sentence than at 140,
    # and reads more pauses at commas as incomplete (at 100 ms Moonshine also repeated
    # words: "My internet keeps dropping. My internet keeps dropping.")
    pause_ms: int = 200
    # a complete sentence: pauses after a clause that reads as complete run to 380 ms
    # ("I see it now, thanks.", "Is there a faster way, maybe?"); 380 splits no more
    # than 420 did there, 340 more than twice as many
    short_end_ms: int = 380
    # ... unless the recognizer is sure the sentence ends there: its decoder, which
    # hears the intonation, put a full stop rather than a comma and nothing after it,
    # each at odds of at least sure_end_odds (2.2: 9 to 1). On the tuning part that
    # takes 55 % of sentence ends to 280 ms and splits no sentence more than 380 did;
    # half the clauses said before a comma that read complete scored under 1
    sure_end_ms: int = 280
    sure_end_odds: float = 2.2
    # a complete "sentence" this short is often a lead-in said before a comma
    # ("Okay, ...", "Good afternoon, ..."): it waits longer (pauses there reach 440 ms)
    fragment_words: int = 2
    fragment_end_ms: int = 480
    # not a complete sentence (no . ? !): more time to go on (pauses reach 400 ms)
    incomplete_end_ms: int = 440
    # the level gate (VoicedGate): a frame is voiced only within speech_margin_db of
    # the speaker's recent peak and floor_margin_db above the noise floor
    level_gate: bool = True  # False: webrtcvad's own voiced, overhang and all
    speech_margin_db: float = 20.0
    floor_margin_db: float = 6.0

    def end_after(self, complete: bool, words: int, end_odds: float | None) -> int:
        """The silence, in ms, that ends an utterance after what the recognizer read at
        a pause (see SpeechSegmenter.hint)."""
        return self.end_window(complete, words, end_odds)[1]

    def end_window(self, complete: bool, words: int, end_odds: float | None) -> tuple[EndRule, int]:
        """``end_after`` with the name of the window it chose."""
        if not complete:
            return "incomplete", self.incomplete_end_ms
        if words <= self.fragment_words:
            return "fragment", self.fragment_end_ms
        if end_odds is not None and end_odds >= self.sure_end_odds:
            return "sure", self.sure_end_ms
        return "complete", self.short_end_ms

    def for_phone(self) -> VadSettings:
        """These settings for a phone line (a G.711 SIP leg): a level gate that keeps
        what the line leaves of soft consonants, see PHONE_SPEECH_MARGIN_DB."""
        return dataclasses.replace(
            self, speech_margin_db=max(self.speech_margin_db, PHONE_SPEECH_MARGIN_DB)
        )

    def __post_init__(self) -> None:
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError("VAD aggressiveness must be 0..3")
        if self.speech_margin_db <= 0 or self.floor_margin_db < 0:
            raise ValueError("VAD level gate margins must be > 0 (speech) and >= 0 (floor) dB")


# Barge-in: speech in 4 of the last 5 frames (80 ms of it at least), 3 of them loud for
# the speaker. The utterance start waits for 9 of 15 (180 ms); a prompt cut off by a
# cough is the price of stopping within 200 ms of a caller's first word.
ONSET_FRAMES, ONSET_HEARD, ONSET_VOICED = 5, 4, 3


@dataclass
class SpeechSegmenter:
    settings: VadSettings = field(default_factory=VadSettings)

    def __post_init__(self) -> None:
        self._vad = webrtcvad.Vad(self.settings.aggressiveness)
        st = self.settings
        self._gate = VoicedGate(st.speech_margin_db, st.floor_margin_db) if st.level_gate else None
        # (frame, webrtcvad's voiced, voiced by the gate)
        self._start_win: collections.deque[tuple[PcmFrame, bool, bool]] = collections.deque(
            maxlen=max(1, self.settings.window_ms // FRAME_MS)
        )
        self._end_win: collections.deque[bool] = collections.deque(
            maxlen=max(1, self.settings.end_window_ms // FRAME_MS)
        )
        self._in_speech = False
        self._onset_sent = False  # this stretch of quiet has had its SpeechOnset
        self._utt_start = 0.0
        self._voiced = 0
        self._total = 0
        self._quiet = 0  # unvoiced frames in a row
        self._complete_after = 0  # ms of silence that end the utterance, by the hint; 0: none
        self._complete_rule: EndRule = "complete"  # the hint's window, by name
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
        heard = self.is_speech(frame)
        voiced = heard if self._gate is None else self._gate.push(level_dbfs(frame), heard)
        events: list[VadEvent] = []
        if not self._in_speech:
            # the start is webrtcvad's alone: its overhang is at the end, and a soft
            # onset must not delay it
            self._start_win.append((frame, heard, voiced))
            onset = self._onset(frame)
            if onset is not None:
                events.append(onset)
            n_heard = sum(1 for _, h, _ in self._start_win if h)
            full = len(self._start_win) == self._start_win.maxlen
            if full and n_heard >= self.settings.start_ratio * len(self._start_win):
                self._in_speech = True
                first = self._start_win[0][0]
                self._utt_start = first.start
                self._voiced = sum(1 for _, _, v in self._start_win if v)
                self._total = len(self._start_win)
                events.append(UtteranceStarted(first.start))
                events.extend(SpeechFrame(f, v) for f, _, v in self._start_win)
                self.speech_frames += len(self._start_win)
                self._end_win.clear()
                self._end_win.extend(v for _, _, v in self._start_win)
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
        full = len(self._end_win) == self._end_win.maxlen
        too_long = frame.end - self._utt_start >= self.settings.max_utterance_s
        if too_long:
            events.append(self._end(frame.end, "cut"))
        elif self._short_end():
            events.append(self._end(frame.end, self._complete_rule))
        elif full and unvoiced >= self.settings.end_ratio * len(self._end_win):
            events.append(self._end(frame.end, "silence"))
        return events

    def _short_end(self) -> bool:
        return 0 < self._complete_after <= self._quiet * FRAME_MS

    def hint(
        self, pause: PauseDetected, complete: bool, words: int, end_odds: float | None = None
    ) -> list[VadEvent]:
        """What the recognizer made of the speech before ``pause``: a complete
        sentence or not, of how many words, and how sure it is that the sentence ends
        there (log odds; None: it cannot tell). Ignored once the speaker has gone on (a
        voiced frame) or the utterance has ended."""
        if not self._in_speech or self._quiet == 0 or pause.at != self._pause_at:
            return []
        self._complete_rule, self._complete_after = self.settings.end_window(
            complete, words, end_odds
        )
        if not self._short_end():
            return []
        return [self._end(self._last_end, self._complete_rule)]

    def flush(self, now: float) -> list[VadEvent]:
        """End an utterance in progress (the leg is closing)."""
        return [self._end(now, "closed")] if self._in_speech else []

    def cut(self, now: float) -> list[VadEvent]:
        """End an utterance in progress at ``now`` (a turn: what comes next is heard by
        others), and forget the frames before it that an utterance starting next would
        take as its pre-roll: no audio crosses the turn."""
        self._start_win.clear()
        self._onset_sent = False
        return [self._end(now, "turn")] if self._in_speech else []

    def _onset(self, frame: PcmFrame) -> SpeechOnset | None:
        """``ONSET_HEARD`` of the last ``ONSET_FRAMES`` frames speech to webrtcvad, and
        ``ONSET_VOICED`` of them loud for this speaker: once per stretch of quiet (it is
        re-armed when those frames are all quiet again, or an utterance ends)."""
        recent = list(self._start_win)[-ONSET_FRAMES:]
        heard = sum(1 for _, h, _ in recent if h)
        if heard == 0:
            self._onset_sent = False
            return None
        voiced = sum(1 for _, h, v in recent if h and v)
        if self._onset_sent or heard < ONSET_HEARD or voiced < ONSET_VOICED:
            return None
        self._onset_sent = True
        return SpeechOnset(frame.end)

    def _end(self, end: float, rule: EndRule) -> UtteranceEnded:
        self._onset_sent = False
        self._in_speech = False
        self._quiet = 0
        self._complete_after = 0
        self._end_win.clear()
        self._start_win.clear()
        return UtteranceEnded(self._utt_start, end, self._voiced, self._total, rule)


def level_dbfs(frame: PcmFrame) -> float:
    """media.audio.rms_dbfs of one frame, a third of its cost (it runs on every frame
    of every leg, on the event loop): float32 and one dot product."""
    x = frame.samples.astype(np.float32)
    energy = float(np.dot(x, x)) / len(x)
    return 10.0 * math.log10(energy / 32768.0**2) if energy > 32768.0**2 * 1e-12 else -120.0


@dataclass
class VoicedGate:
    """webrtcvad's "voiced", without its overhang.

    webrtcvad keeps calling frames speech for 100-250 ms after the last word ends, so
    silence counted from its last voiced frame starts that late. Those trailing frames
    are near the noise floor, far below the words before them. Per frame (level: its
    RMS in dBFS; heard: webrtcvad's decision):

        heard   level                                         -> voiced
        no      any                                           -> no
        yes     >= floor + floor_margin_db and
                >= peak - speech_margin_db                    -> yes
        yes     below either                                  -> no

        floor   the quietest frame of the last floor_window_s (minimum statistics:
                on a noisy line, the noise; every frame counts)
        peak    the loudest heard frame, decaying peak_decay_db a heard frame; none
                before the first speech, so then only the floor applies

    Both thresholds are relative, so the gate works the same on a quiet clean line
    and a loud noisy one (an absolute level would only fit one of them). A soft
    consonant within speech_margin_db of the peak stays voiced; a mid-sentence gap the
    overhang used to bridge now counts as a pause (the windows allow for it).
    """

    speech_margin_db: float = 20.0
    floor_margin_db: float = 6.0
    floor_window_s: float = 1.5
    peak_decay_db: float = 0.05  # 2.5 dB a second of speech

    def __post_init__(self) -> None:
        self._levels: collections.deque[float] = collections.deque(
            maxlen=max(1, int(self.floor_window_s * 1000) // FRAME_MS)
        )
        self._peak = -200.0

    def push(self, level_db: float, vad_voiced: bool) -> bool:
        self._levels.append(level_db)
        floor = min(self._levels)
        if vad_voiced:
            self._peak = max(level_db, self._peak - self.peak_decay_db)
        threshold = max(floor + self.floor_margin_db, self._peak - self.speech_margin_db)
        return vad_voiced and level_db >= threshold
