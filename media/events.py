"""What the data plane reports about a leg. Plain dataclasses: the control plane
turns them into its own API events (media never imports engine)."""

from __future__ import annotations

from dataclasses import dataclass

from media.asr.base import Word
from media.emotion import EmotionEstimate
from media.vad import EndRule


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    leg_id: str
    start: float


@dataclass(frozen=True, slots=True)
class SpeechOnset:
    """The speaker began to talk (media.vad.SpeechOnset): sooner than SpeechStarted,
    for barge-in only."""

    leg_id: str
    at: float


@dataclass(frozen=True, slots=True)
class TranscriptPartial:
    """What the recognizer made of an utterance so far (each partial repeats the
    words of the one before): said over ``[start, end]`` of the leg's clock."""

    leg_id: str
    index: int  # utterance number within the leg
    text: str
    start: float
    # the end of the last audio the recognizer had heard for this partial (the
    # pipeline always says; None: up to the leg's latest audio, which covers more)
    end: float | None = None


@dataclass(frozen=True, slots=True)
class TranscriptFinal:
    leg_id: str
    index: int
    text: str
    start: float  # seconds from the start of the leg
    end: float
    words: list[Word]
    asr_latency: float  # seconds from the last voiced audio to this result
    cut: bool
    end_rule: EndRule  # what ended the utterance (media.vad.EndRule)


@dataclass(frozen=True, slots=True)
class EmotionEstimated:
    leg_id: str
    index: int
    at: float
    estimate: EmotionEstimate


@dataclass(frozen=True, slots=True)
class LegEnded:
    leg_id: str
    reason: str
    duration: float


@dataclass(frozen=True, slots=True)
class KeyPressed:
    """A DTMF digit (RFC 4733 or SIP INFO), reported once per key press."""

    leg_id: str
    digit: str
    at: float  # seconds of leg media


@dataclass(frozen=True, slots=True)
class RecognitionFailed:
    """The leg's recognizer was lost (its worker process died or hung): the utterance
    in progress is not transcribed; the next one is, by a new recognizer."""

    leg_id: str
    index: int  # the utterance that was lost
    reason: str
    recovered: bool  # a new recognizer is ready for the next utterance


MediaEvent = (
    SpeechStarted
    | SpeechOnset
    | TranscriptPartial
    | TranscriptFinal
    | EmotionEstimated
    | LegEnded
    | KeyPressed
    | RecognitionFailed
)
