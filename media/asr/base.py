"""The recognizer interface every ASR backend implements.

A ``Recognizer`` belongs to one call leg and is fed only speech (the VAD has cut
the silence). Recognizers run in worker processes (``media.asr.pool``), never on the
event loop's process: pocketsphinx never releases the GIL while it decodes (an
asyncio timer lagged 31 ms p50 / 309 ms p99 beside one decoding thread), and a
neural model's decode is CPU that the media path must not wait behind.
Word times are seconds from the start of the current utterance.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from typing import Protocol


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
    # log odds that a sentence ends where the text stops, from a recognizer that can
    # tell (Moonshine's decoder, see moonshine_backend.Decoded); None: it cannot
    end_odds: float | None = None


# text that ends like this is a complete sentence (the endpointer asks at a pause)
_COMPLETE = re.compile(r"[.?!\u2026][\"')\]]*\s*$")


def ends_sentence(text: str) -> bool:
    return bool(_COMPLETE.search(text))


class RecognizerLost(Exception):
    """The process recognising a leg died or hung: what it had of the utterance is
    gone. ``reason`` says what happened; a new recognizer can be opened."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LegRecognizer(Protocol):
    """What a leg's pipeline talks to: a ``Recognizer`` running elsewhere (a worker
    process of ``media.asr.pool``). Any call may raise ``RecognizerLost``."""

    async def accept(self, pcm: bytes) -> str | None: ...

    async def peek(self) -> AsrResult: ...

    async def finish(self) -> AsrResult: ...

    async def close(self) -> None: ...


class Recognizer(abc.ABC):
    @abc.abstractmethod
    def accept(self, pcm: bytes) -> str | None:
        """Feed 16 kHz mono int16 speech; return the new partial text if it changed."""

    def peek(self) -> AsrResult:
        """What was said so far, without ending the utterance (the endpointer asks at a
        pause). Streaming backends answer with their current hypothesis."""
        return AsrResult("")

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
