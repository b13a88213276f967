"""pocketsphinx: the offline English fallback whose model ships inside its wheel."""

from __future__ import annotations

import re

from pocketsphinx import Decoder

from media.asr.base import AsrResult, Recognizer, RecognizerFactory, Word
from media.audio import ANALYSIS_RATE

FRAMES_PER_SECOND = 100  # pocketsphinx's default frame rate (10 ms shift)
_FILLER = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+\+.*\+\+)$")
_ALT_PRON = re.compile(r"\(\d+\)$")


class PocketsphinxRecognizer(Recognizer):
    def __init__(self, model_dir: str) -> None:
        self._dec = Decoder(
            hmm=f"{model_dir}/en-us",
            lm=f"{model_dir}/en-us.lm.bin",
            dict=f"{model_dir}/cmudict-en-us.dict",
            samprate=ANALYSIS_RATE,
            loglevel="FATAL",
        )
        self._in_utt = False
        self._last_partial = ""

    def accept(self, pcm: bytes) -> str | None:
        if not self._in_utt:
            self._dec.start_utt()
            self._in_utt = True
        self._dec.process_raw(pcm, False, False)
        hyp = self._dec.hyp()
        text = hyp.hypstr if hyp is not None else ""
        if text and text != self._last_partial:
            self._last_partial = text
            return text
        return None

    def finish(self) -> AsrResult:
        if not self._in_utt:
            return AsrResult("")
        self._dec.end_utt()
        self._in_utt = False
        self._last_partial = ""
        words = [
            Word(
                _ALT_PRON.sub("", seg.word),
                seg.start_frame / FRAMES_PER_SECOND,
                (seg.end_frame + 1) / FRAMES_PER_SECOND,
                1.0,
            )
            for seg in self._dec.seg()
            if not _FILLER.match(seg.word)
        ]
        return AsrResult(" ".join(w.word for w in words), words)


class PocketsphinxFactory(RecognizerFactory):
    backend = "pocketsphinx"

    def __init__(self, language: str, model_path: str) -> None:
        self.language = language
        self.model_path = model_path

    def create(self, phrases: list[str] | None = None) -> Recognizer:
        # The shipped English model has no runtime grammar hook we rely on yet;
        # phrase lists are a vosk feature.
        return PocketsphinxRecognizer(self.model_path)
