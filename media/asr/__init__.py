"""Streaming speech recognition behind one interface (see ``base``)."""

from media.asr.base import AsrResult, Recognizer, RecognizerFactory, Word
from media.asr.models import ModelChoice, choose_model, create_factory

__all__ = [
    "AsrResult",
    "ModelChoice",
    "Recognizer",
    "RecognizerFactory",
    "Word",
    "choose_model",
    "create_factory",
]
