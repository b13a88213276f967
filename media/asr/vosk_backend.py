"""vosk (Kaldi) streaming recognizer: the default wherever a vosk model is present."""

from __future__ import annotations

import json
import threading
from typing import Any

import vosk

from media.asr.base import AsrResult, Recognizer, RecognizerFactory, Word
from media.audio import ANALYSIS_RATE

vosk.SetLogLevel(-1)


class VoskRecognizer(Recognizer):
    def __init__(self, model: vosk.Model, phrases: list[str] | None) -> None:
        if phrases:
            grammar = json.dumps([*phrases, "[unk]"], ensure_ascii=False)
            self._rec = vosk.KaldiRecognizer(model, ANALYSIS_RATE, grammar)
        else:
            self._rec = vosk.KaldiRecognizer(model, ANALYSIS_RATE)
        self._rec.SetWords(True)
        self._fed = 0  # samples fed over the recognizer's life
        self._utt_offset = 0.0
        self._pieces: list[dict[str, Any]] = []
        self._last_partial = ""

    def accept(self, pcm: bytes) -> str | None:
        self._fed += len(pcm) // 2
        if self._rec.AcceptWaveform(pcm):
            # vosk's own endpointer closed a segment inside our utterance: keep
            # it and carry on, the utterance ends when our VAD says so.
            self._pieces.append(json.loads(self._rec.Result()))
            partial = ""
        else:
            partial = json.loads(self._rec.PartialResult()).get("partial", "")
        text = " ".join([*(p.get("text", "") for p in self._pieces), partial]).split()
        joined = " ".join(w for w in text if w != "[unk]")
        if joined != self._last_partial:
            self._last_partial = joined
            return joined
        return None

    def peek(self) -> AsrResult:
        return AsrResult(self._last_partial)

    def finish(self) -> AsrResult:
        self._pieces.append(json.loads(self._rec.FinalResult()))
        words: list[Word] = []
        for piece in self._pieces:
            for w in piece.get("result", []):
                if w["word"] == "[unk]":
                    continue
                # vosk counts time over the recognizer's whole life
                words.append(
                    Word(
                        w["word"],
                        round(max(0.0, w["start"] - self._utt_offset), 3),
                        round(max(0.0, w["end"] - self._utt_offset), 3),
                        float(w.get("conf", 1.0)),
                    )
                )
        self._pieces = []
        self._last_partial = ""
        self._utt_offset = self._fed / ANALYSIS_RATE
        return AsrResult(" ".join(w.word for w in words), words)


class VoskFactory(RecognizerFactory):
    backend = "vosk"

    def __init__(self, language: str, model_path: str) -> None:
        self.language = language
        self.model_path = model_path
        self._model: vosk.Model | None = None
        self._lock = threading.Lock()

    def load(self) -> vosk.Model:
        with self._lock:
            if self._model is None:
                self._model = vosk.Model(self.model_path)
            return self._model

    def create(self, phrases: list[str] | None = None) -> Recognizer:
        return VoskRecognizer(self.load(), phrases)
