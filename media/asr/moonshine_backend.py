"""Moonshine base-en through onnxruntime: the default English recognizer.

One model (an encoder and a merged decoder session, one intra-op thread each) is
loaded per process and shared by every leg that process serves. Moonshine is not
a streaming model: a leg keeps its utterance's audio and the whole utterance is
decoded at its end (~0.015 CPU-s per second of audio, greedy search).

Partial text costs a re-decode of the growing utterance, so it is bounded: at most
once per ``PARTIAL_EVERY_S`` of new speech, and not at all while the process has
other work waiting (the worker sets ``defer_partials``). Moonshine gives no word
times; they are estimated from where the utterance's audio is voiced (see
``estimate_word_times``), which is what speaking rate, captions and WebVTT need.

Its text has capitals, punctuation and digits ("My order number is 83016.").
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np

from media.asr.base import AsrResult, Recognizer, RecognizerFactory, Word
from media.asr.moonshine_convert import PARTS, TOKENIZER, ModelPrepareError, verify
from media.audio import ANALYSIS_RATE

START_TOKEN = 1
END_TOKEN = 2
FIRST_TEXT_TOKEN = 3  # 0..2 are <unk>, <s>, </s>
TOKENS_PER_SECOND = 6.5  # an upper bound on speech; more means the decoder is looping
MIN_SAMPLES = ANALYSIS_RATE // 4  # the encoder's convolutions need a little audio
PARTIAL_EVERY_S = 1.0
# On long, dense speech the model may answer nothing at all (its first token is the end
# token: seen at 8.0 s of one sentence said three times, and on 10 s of our speech), so
# longer audio is decoded in pieces cut at its quietest point, and a long piece that
# still comes back empty is decoded again in two halves
MAX_PIECE_S = 7.0
MIN_PIECE_S = 3.0
RETRY_OVER_S = 4.0
# It also answers nothing on some utterances that start with the first word, with no
# quiet before it (the VAD's pre-roll is often all voice): 73 of 651 phone-line
# utterances of the emotion set's tuning part came back empty, 2-4 s of clear speech
# each, and with a quarter second of silence put before them 20 of 20 tried were read
# (silence after them: 1 of 20). An empty answer on audio this long is tried once more
# with that lead-in; the usual decode is as it was, so it costs nothing when it works
LEAD_IN_S = 0.25
RETRY_LEAD_IN_OVER_S = 0.5
_SPACE = "\u2581"  # sentencepiece's word marker
_WORD_FRAME = ANALYSIS_RATE // 100  # 10 ms frames for the voicing estimate


class Decoded(NamedTuple):
    text: str
    # how sure the decoder is that a sentence ends where its text stops, as log odds:
    # the smaller of P(. ? !) against P(,) where it wrote the last token, and P(end)
    # against P(more) after it. The decoder hears the intonation: a clause said before
    # a comma ("I see it now, thanks.") reads complete but scores low here
    end_odds: float | None = None


def load_tokens(path: Path) -> list[bytes]:
    """``tokenizer.bin``: for each token id in order, one length byte and the bytes."""
    data = path.read_bytes()
    tokens: list[bytes] = []
    i = 0
    while i < len(data):
        n = data[i]
        if i + 1 + n > len(data):
            raise ModelPrepareError(f"{path} is truncated at token {len(tokens)}")
        tokens.append(data[i + 1 : i + 1 + n])
        i += 1 + n
    return tokens


class MoonshineModel:
    """The two sessions and the tokenizer; thread-safe (onnxruntime's ``run`` is)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        verify(path)
        options = ort.SessionOptions()
        # one thread each: a worker process per core gives the parallelism, and
        # threads fighting over the same cores only add latency
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # no arena: it would keep each thread's largest activations for good; malloc
        # serves them as fast (measured) and frees them
        options.enable_cpu_mem_arena = False
        try:
            self._encoder, self._decoder = (
                ort.InferenceSession(
                    str(path / f"{part}.onnx"), options, providers=["CPUExecutionProvider"]
                )
                for part in PARTS
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelPrepareError(f"cannot load the Moonshine model in {path}: {exc}") from exc
        self._tokens = load_tokens(path / TOKENIZER)
        self._stops = np.array(
            [i for i, t in enumerate(self._tokens) if t.rstrip().endswith((b".", b"?", b"!"))]
        )
        self._commas = np.array([i for i, t in enumerate(self._tokens) if b"," in t])
        self._past = [i.name for i in self._decoder.get_inputs() if i.name.startswith("past_")]
        self._outputs = [o.name for o in self._decoder.get_outputs()]

    def transcribe(self, audio: np.ndarray) -> str:
        """16 kHz float32 mono in [-1, 1] -> text, in pieces of at most MAX_PIECE_S."""
        return self.decode(audio).text

    def decode(self, audio: np.ndarray) -> Decoded:
        """``transcribe``, with the end odds of its last piece."""
        pieces = []
        while len(audio) > MAX_PIECE_S * ANALYSIS_RATE:
            cut = quietest(audio, MIN_PIECE_S, MAX_PIECE_S)
            pieces.append(self._piece(audio[:cut]))
            audio = audio[cut:]
        pieces.append(self._piece(audio))
        return Decoded(" ".join(p.text for p in pieces if p.text), pieces[-1].end_odds)

    def _piece(self, audio: np.ndarray) -> Decoded:
        decoded = self._transcribe(audio)
        seconds = len(audio) / ANALYSIS_RATE
        if decoded.text or seconds <= RETRY_LEAD_IN_OVER_S:
            return decoded
        quiet = np.zeros(int(LEAD_IN_S * ANALYSIS_RATE), np.float32)
        decoded = self._transcribe(np.concatenate([quiet, audio.astype(np.float32)]))
        if decoded.text or seconds <= RETRY_OVER_S:
            return decoded
        # the model gave up on it (see MAX_PIECE_S): once more, in halves (a silent piece
        # costs two more encoder runs, rarely: the endpointer ends utterances on silence)
        cut = quietest(audio, seconds / 4, 3 * seconds / 4)
        halves = (self._transcribe(audio[:cut]), self._transcribe(audio[cut:]))
        return Decoded(" ".join(h.text for h in halves if h.text), halves[1].end_odds)

    def _transcribe(self, audio: np.ndarray) -> Decoded:
        """One piece, greedy search."""
        if len(audio) < MIN_SAMPLES:
            audio = np.pad(audio, (0, MIN_SAMPLES - len(audio)))
        hidden = self._encoder.run(None, {"input_values": audio[None, :].astype(np.float32)})[0]
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.array([[START_TOKEN]], np.int64),
            "encoder_hidden_states": hidden,
            "use_cache_branch": np.array([False]),
        }
        for name in self._past:
            feeds[name] = np.zeros((1, 8, 0, 52), np.float32)
        ids: list[int] = []
        # the logits of the last two steps: the last token written, and the end
        before: np.ndarray | None = None
        last: np.ndarray | None = None
        for step in range(int(len(audio) / ANALYSIS_RATE * TOKENS_PER_SECOND) + 4):
            out = dict(zip(self._outputs, self._decoder.run(None, feeds), strict=True))
            before, last = last, out["logits"][0, -1]
            token = int(last.argmax())
            if token == END_TOKEN:
                break
            ids.append(token)
            feeds["input_ids"] = np.array([[token]], np.int64)
            feeds["use_cache_branch"] = np.array([True])
            for name in self._past:
                # the encoder's keys and values are made on the first step only
                if step == 0 or ".decoder." in name:
                    feeds[name] = out[name.replace("past_key_values", "present")]
        text = self.detokenize(ids)
        if before is None or last is None or int(last.argmax()) != END_TOKEN:
            return Decoded(text)  # nothing, or cut off by the token bound
        return Decoded(text, self._end_odds(before, last))

    def _end_odds(self, wrote: np.ndarray, ended: np.ndarray) -> float:
        """See ``Decoded.end_odds``: two softmaxes, once per decode."""
        p = _softmax(wrote)
        stop = float(p[self._stops].sum()) if len(self._stops) else 0.0
        comma = float(p[self._commas].sum()) if len(self._commas) else 0.0
        p_end = float(_softmax(ended)[END_TOKEN])
        tiny = 1e-9
        return min(
            math.log((stop + tiny) / (comma + tiny)), math.log((p_end + tiny) / (1 - p_end + tiny))
        )

    def detokenize(self, ids: list[int]) -> str:
        raw = b"".join(self._tokens[i] for i in ids if FIRST_TEXT_TOKEN <= i < len(self._tokens))
        return raw.decode("utf-8", "replace").replace(_SPACE, " ").strip()


def _softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def quietest(audio: np.ndarray, lo: float, hi: float) -> int:
    """The sample between ``lo`` and ``hi`` seconds where the audio is quietest (a
    200 ms moving energy), where a cut splits no word."""
    window = ANALYSIS_RATE // 5
    a, b = int(lo * ANALYSIS_RATE), int(hi * ANALYSIS_RATE)
    energy = np.convolve(audio[a:b] ** 2, np.ones(window, np.float32), mode="same")
    return a + int(np.argmin(energy[::_WORD_FRAME])) * _WORD_FRAME


def estimate_word_times(text: str, samples: np.ndarray) -> list[Word]:
    """Spread the words over the voiced part of the audio, in proportion to their
    length in letters: good to a few hundred ms, enough for speaking rate, captions
    and exports. Times are seconds from the start of ``samples``."""
    words = text.split()
    if not words:
        return []
    n = len(samples) // _WORD_FRAME
    if n == 0:
        return [Word(w, 0.0, 0.0, 1.0) for w in words]
    frames = samples[: n * _WORD_FRAME].astype(np.float32).reshape(n, _WORD_FRAME)
    db = 10 * np.log10(np.mean(frames * frames, axis=1) + 1.0)
    voiced = db >= max(db.max() - 30.0, 35.0)  # 35 dB ~ -55 dBFS on int16
    if not voiced.any():
        voiced[:] = True
    voiced_at = np.flatnonzero(voiced)  # frame indices, in order
    weights = np.array([max(1, sum(c.isalnum() for c in w)) for w in words], np.float64)
    edges = np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum() * len(voiced_at)
    step = _WORD_FRAME / ANALYSIS_RATE
    out = []
    for i, w in enumerate(words):
        first = voiced_at[min(int(edges[i]), len(voiced_at) - 1)]
        last = voiced_at[max(int(np.ceil(edges[i + 1])) - 1, int(edges[i]))]
        out.append(Word(w, round(float(first * step), 3), round(float((last + 1) * step), 3), 1.0))
    return out


class MoonshineRecognizer(Recognizer):
    def __init__(self, model: MoonshineModel) -> None:
        self._model = model
        self._chunks: list[np.ndarray] = []
        self._samples = 0
        self._partial_at = 0
        self._last_partial = ""
        self._peeked: tuple[int, AsrResult] | None = None
        # set by the worker for each chunk: skip partial decodes while work is waiting
        self.defer_partials = False

    def _audio(self) -> np.ndarray:
        if not self._chunks:
            return np.zeros(0, np.int16)
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0]

    def _decode(self) -> AsrResult:
        pcm = self._audio()
        if len(pcm) == 0:
            return AsrResult("")
        text, odds = self._model.decode(pcm.astype(np.float32) / 32768.0)
        return AsrResult(text, estimate_word_times(text, pcm), end_odds=odds)

    def accept(self, pcm: bytes) -> str | None:
        self._chunks.append(np.frombuffer(pcm, dtype="<i2"))
        self._samples += len(pcm) // 2
        due = self._samples - self._partial_at >= PARTIAL_EVERY_S * ANALYSIS_RATE
        if self.defer_partials or not due:
            return None
        self._partial_at = self._samples
        text = self._decode().text
        if text and text != self._last_partial:
            self._last_partial = text
            return text
        return None

    def peek(self) -> AsrResult:
        result = self._decode()
        self._peeked = (self._samples, result)
        return result

    def finish(self) -> AsrResult:
        if self._peeked is not None and self._peeked[0] == self._samples:
            result = self._peeked[1]  # nothing new since the endpointer's look: reuse it
        else:
            result = self._decode()
        self._chunks = []
        self._samples = self._partial_at = 0
        self._last_partial = ""
        self._peeked = None
        return result


class MoonshineFactory(RecognizerFactory):
    backend = "moonshine"

    def __init__(self, language: str, model_path: str) -> None:
        self.language = language
        self.model_path = model_path
        self._model: MoonshineModel | None = None
        self._lock = threading.Lock()

    def load(self) -> MoonshineModel:
        with self._lock:
            if self._model is None:
                self._model = MoonshineModel(Path(self.model_path))
            return self._model

    def create(self, phrases: list[str] | None = None) -> Recognizer:
        return MoonshineRecognizer(self.load())
