"""The recognizer interface every ASR backend implements.

A ``Recognizer`` belongs to one call leg and is fed only speech (the VAD has cut
the silence). It is driven from a worker thread: both backends release the GIL
while decoding, so one slow leg never stalls the event loop or another leg.
Word times are seconds from the start of the current utterance.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Word:
    word: str
    start: float
    end: float
    conf: float = 1.0


@dataclass(frozen=True, slots=True)
class AsrResult:
    text: str
    words: list[Word] = field(default_factory=list)


class Recognizer(abc.ABC):
    @abc.abstractmethod
    def accept(self, pcm: bytes) -> str | None:
        """Feed 16 kHz mono int16 speech; return the new partial text if it changed."""

    @abc.abstractmethod
    def finish(self) -> AsrResult:
        """End the utterance: return its final result and get ready for the next."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold no OS resources
        """Release what the recognizer holds."""


class RecognizerFactory(abc.ABC):
    """Loads a model once and makes one recognizer per leg."""

    backend: str
    language: str
    model_path: str

    @abc.abstractmethod
    def create(self, phrases: list[str] | None = None) -> Recognizer:
        """A new recognizer; ``phrases`` restricts the vocabulary where supported."""

    def warm(self, count: int) -> None:  # noqa: B027 - only backends with costly recognizers
        """Make ``count`` recognizers ahead of the first calls, where that saves time."""
