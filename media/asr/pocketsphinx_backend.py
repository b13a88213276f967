"""pocketsphinx: the offline English fallback whose model ships inside its wheel."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from pocketsphinx import Decoder

from media.asr.base import AsrResult, Recognizer, RecognizerFactory, Word
from media.audio import ANALYSIS_RATE

FRAMES_PER_SECOND = 100  # pocketsphinx's default frame rate (10 ms shift)
_FILLER = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+\+.*\+\+)$")
_ALT_PRON = re.compile(r"\(\d+\)$")


MAX_IDLE_DECODERS = 16  # kept for the next calls; more are freed (~100 MB each)


def _new_decoder(model_dir: str) -> Decoder:
    return Decoder(
        hmm=f"{model_dir}/en-us",
        lm=f"{model_dir}/en-us.lm.bin",
        dict=f"{model_dir}/cmudict-en-us.dict",
        samprate=ANALYSIS_RATE,
        loglevel="FATAL",
    )


class PocketsphinxRecognizer(Recognizer):
    def __init__(self, decoder: Decoder, release: Callable[[Decoder], None]) -> None:
        self._dec = decoder
        self._release: Callable[[Decoder], None] | None = release
        self._in_utt = False
        self._last_partial = ""
        # a decode may still run on a worker thread when a stuck call is torn down: such a
        # decoder must not be handed to the next call
        self._busy = threading.Lock()

    def accept(self, pcm: bytes) -> str | None:
        with self._busy:
            return self._accept(pcm)

    def _accept(self, pcm: bytes) -> str | None:
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

    def peek(self) -> AsrResult:
        with self._busy:
            hyp = self._dec.hyp() if self._in_utt else None
        return AsrResult(hyp.hypstr if hyp is not None else "")

    def finish(self) -> AsrResult:
        with self._busy:
            return self._finish()

    def _finish(self) -> AsrResult:
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

    def close(self) -> None:
        """Back to the factory's pool: the next call starts without loading a model."""
        release, self._release = self._release, None
        if release is None or not self._busy.acquire(blocking=False):
            return  # closed already, or still decoding on a thread: let it go
        try:
            if self._in_utt:
                self._dec.end_utt()  # an utterance cut off by the hang-up: nobody wants it
                self._in_utt = False
            release(self._dec)
        finally:
            self._busy.release()


class PocketsphinxFactory(RecognizerFactory):
    """Building a decoder loads the model (0.28 CPU-s on the test machine), more than a
    second of speech costs to decode; decoders are therefore pooled across calls."""

    backend = "pocketsphinx"

    def __init__(self, language: str, model_path: str) -> None:
        self.language = language
        self.model_path = model_path
        self._idle: list[Decoder] = []
        self._lock = threading.Lock()  # create/close run on executor threads

    def create(self, phrases: list[str] | None = None) -> Recognizer:
        # The shipped English model has no runtime grammar hook we rely on yet;
        # phrase lists are a vosk feature.
        with self._lock:
            decoder = self._idle.pop() if self._idle else None
        return PocketsphinxRecognizer(decoder or _new_decoder(self.model_path), self._release)

    def _release(self, decoder: Decoder) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE_DECODERS:
                self._idle.append(decoder)
