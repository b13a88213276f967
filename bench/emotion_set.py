"""The emotion set as audio: calls made of scripted utterances, each said by an offline
voice in its class's delivery, heard at 16 kHz or over a phone line, recognised by the
engine's recognizer. Built once and cached (bench/out/emotion-set/); ``python -m
bench.emotion_set`` builds both parts.

Voices. Tuning: piper joe as it is and higher and faster (sox), espeak-ng en-us+m3,
en-gb+f2, en-us+f2, en-gb-x-rp+m4 and en-029+m2. Held-out: piper joe a fourth lower and
slower (sox), espeak-ng en-us+f4 and en-gb-scotland+m5. Fresh held-out (its own
sentences too, bench/emotion_scripts.py ``FRESH``): flite's slt, rms, awb and kal16
(Debian ``flite``), a synthesiser none of the others is made with. Second fresh
held-out part (``FRESH2``, its own sentences again): festival's ked and slt (HTS)
(Debian ``festival``, ``festvox-kdlpc16k``, ``festvox-us-slt-hts``) and espeak-ng's New
York, Lancaster and West Midlands accents. Those three were each read at tuning steps, and
have joined the tuning side (bench/emotion_scripts.py ``TUNING_SIDE``). The held-out part
now is ``FRESH3``: espeak-ng's Klatt synthesiser (en-us+klatt4, en-gb+klatt2) and its
Belinda, shelby and Annie (Received Pronunciation) variants, none used by another part,
saying sentences written for it after the models were trained.

Delivery. No offline voice acts a feeling, so each class is said in a style shaped with
sox, its strength drawn per utterance from a range (below): angry is louder, faster and
higher, frustrated slower and lower, positive a little higher and brighter. Each call
also gets its own line gain (-3..+3 dB), so loudness is only comparable within a call.
This is the limit of the set: real anger changes voice quality in ways sox cannot make,
and the report says so.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.emotion_scripts import CALLS, PARTS

OUT = Path(__file__).parent / "out" / "emotion-set"
# (name, engine, how): piper with sox effects, or an espeak-ng voice at a speed
VOICES: dict[str, list[tuple[str, str, list[str] | tuple[str, int]]]] = {
    "tuning": [
        ("piper joe", "piper", []),
        ("espeak en-us+m3", "espeak", ("en-us+m3", 150)),
        ("espeak en-gb+f2", "espeak", ("en-gb+f2", 160)),
        # more voices, so that what the fusion learns of the voice is checked, voice by
        # voice, on voices it did not learn from (three were too few: the weights picked
        # leaned on voice cues that did not carry to the held-out voices)
        ("piper joe, higher and faster", "piper", ["pitch", "300", "tempo", "1.06"]),
        ("espeak en-us+f2", "espeak", ("en-us+f2", 170)),
        ("espeak en-gb-x-rp+m4", "espeak", ("en-gb-x-rp+m4", 140)),
        ("espeak en-029+m2", "espeak", ("en-029+m2", 150)),
    ],
    "heldout": [
        ("piper joe, lower and slower", "piper", ["pitch", "-400", "tempo", "0.93"]),
        ("espeak en-us+f4", "espeak", ("en-us+f4", 145)),
        ("espeak en-gb-scotland+m5", "espeak", ("en-gb-scotland+m5", 155)),
    ],
    "fresh": [
        ("flite slt", "flite", ("slt", 100)),  # US English, female
        ("flite rms", "flite", ("rms", 100)),  # US English, male
        ("flite awb", "flite", ("awb", 100)),  # Scottish English, male
        ("flite kal16", "flite", ("kal16", 100)),  # US English, male, diphones
    ],
    "fresh2": [
        ("festival ked", "festival", ("ked_diphone", 100)),  # US English, male, diphones
        ("festival slt hts", "festival", ("cmu_us_slt_arctic_hts", 100)),  # US, female, HMM
        ("espeak en-us-nyc+m7", "espeak", ("en-us-nyc+m7", 150)),
        ("espeak en-gb-x-gbclan+f3", "espeak", ("en-gb-x-gbclan+f3", 160)),
        ("espeak en-gb-x-gbcwmd+m6", "espeak", ("en-gb-x-gbcwmd+m6", 145)),
    ],
    "fresh3": [
        # espeak-ng's Klatt synthesiser (a formant model none of the other parts uses)
        ("espeak en-us+klatt4", "espeak", ("en-us+klatt4", 150)),
        ("espeak en-gb+klatt2", "espeak", ("en-gb+klatt2", 155)),
        # voice variants of espeak-ng no other part uses
        ("espeak en-us+Belinda", "espeak", ("en-us+Belinda", 160)),
        ("espeak en-gb+shelby", "espeak", ("en-gb+shelby", 150)),
        ("espeak en-gb-x-rp+Annie", "espeak", ("en-gb-x-rp+Annie", 145)),
    ],
}
# class -> ranges of (tempo, pitch in cents, gain in dB)
STYLE: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "neutral": ((0.97, 1.03), (-30, 30), (-1, 1)),
    "positive": ((1.0, 1.06), (60, 150), (0, 2)),
    "frustrated": ((0.88, 0.96), (-120, -30), (-2, 0)),
    "angry": ((1.08, 1.18), (180, 320), (4, 7)),
}
# times through the call list per voice
PASSES = {"tuning": 3, "heldout": 2, "fresh": 2, "fresh2": 2, "fresh3": 2}


@dataclass(frozen=True)
class Spoken:
    part: str
    voice: str
    call: int  # index of the call within the part
    kind: str  # the call's template name
    call_label: str
    position: int
    label: str
    sentence: str
    effects: list[str]


def plan(part: str) -> list[list[Spoken]]:
    """The part's calls: every voice goes through the call templates PASSES times,
    drawing sentences of each class in a shuffled order (so each voice says most of the
    part's sentences, in different calls)."""
    pools = PARTS[part]
    calls: list[list[Spoken]] = []
    for name, _, _ in VOICES[part]:
        rng = random.Random(zlib.crc32(f"{part}/{name}".encode()))
        queues = {c: rng.sample(s, len(s)) for c, s in pools.items()}
        for _ in range(PASSES[part]):
            for kind, labels, call_label in CALLS:
                gain = rng.uniform(-3, 3)
                n = len(calls)
                said = []
                for pos, label in enumerate(labels):
                    if not queues[label]:
                        queues[label] = rng.sample(pools[label], len(pools[label]))
                    sentence = queues[label].pop()
                    (t0, t1), (p0, p1), (g0, g1) = STYLE[label]
                    effects = [
                        "tempo", f"{rng.uniform(t0, t1):.3f}",
                        "pitch", f"{rng.uniform(p0, p1):.0f}",
                        "gain", f"{gain + rng.uniform(g0, g1):.2f}",
                    ]  # fmt: skip
                    said.append(
                        Spoken(part, name, n, kind, call_label, pos, label, sentence, effects)
                    )
                calls.append(said)
    return calls


def _say(voice: tuple[str, str, list[str] | tuple[str, int]], s: Spoken, dst: Path) -> Path:
    from tests import speech

    _, engine, how = voice
    if engine == "piper":
        assert isinstance(how, list)
        return speech.piper_script([s.sentence], dst, [*how, *s.effects])
    assert isinstance(how, tuple)
    raw = dst.with_suffix(f".{engine}.wav")
    if engine == "flite":  # the speed: 100 is the voice's own
        stretch = f"duration_stretch={100 / how[1]:.2f}"
        cmd = ["flite", "-voice", how[0], "--setf", stretch, "-t", s.sentence, "-o", str(raw)]
    elif engine == "festival":  # text2wave reads the sentence from a file
        said = dst.with_suffix(".txt")
        said.write_text(s.sentence)
        voice_cmd = f"(voice_{how[0]})"
        stretch_cmd = f"(Parameter.set 'Duration_Stretch {100 / how[1]:.2f})"
        cmd = ["text2wave", "-eval", voice_cmd, "-eval", stretch_cmd, str(said), "-o", str(raw)]
    else:
        cmd = ["espeak-ng", "-v", how[0], "-s", str(how[1]), "-w", str(raw), s.sentence]
    subprocess.run(cmd, check=True)
    # the synthesiser's level is its own: normalised like piper's (-12 dBFS peak) first
    speech.sox(raw, dst, ["gain", "-n", "-12", *s.effects], rate=48000)
    raw.unlink()
    return dst


@dataclass
class Heard:
    """One utterance as the engine's analysis sees it."""

    samples: np.ndarray  # 16 kHz int16, the sentence with the pipeline's margins
    text: str
    words: int
    speech_seconds: float | None
    pause_ratio: float


def _key(s: Spoken, band: str) -> str:
    return f"{s.part}-{s.call:03d}-{s.position}-{band}"


def hear(s: Spoken, band: str) -> Heard:
    """Synthesise, pass through the band, trim as the VAD would, recognise (cached)."""
    import webrtcvad

    from media.audio import ANALYSIS_RATE, AnalysisResampler
    from media.wavtrack import read_wav_mono
    from tests import speech

    cache = OUT / f"{_key(s, band)}.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        return Heard(z["samples"], meta["text"], meta["words"], meta["speech_s"], meta["pause"])
    voice = next(v for v in VOICES[s.part] if v[0] == s.voice)
    with tempfile.TemporaryDirectory() as tmp:
        wav = _say(voice, s, Path(tmp) / "said.wav")
        if band == "phone":
            wav = speech.phone_line(wav, Path(tmp) / "phone.wav")
        pcm, rate = read_wav_mono(str(wav))
    frames = AnalysisResampler().push(pcm, rate)
    x = np.concatenate([f.samples for f in frames]) if frames else np.zeros(0, np.int16)
    # the utterance as the VAD hands it on: from its first voiced frame to 280 ms of
    # quiet after its last (the sure window), voiced share counted over that span
    vad = webrtcvad.Vad(2)
    step = ANALYSIS_RATE // 50
    voiced = [vad.is_speech(x[i : i + step].tobytes(), ANALYSIS_RATE)
              for i in range(0, len(x) - step + 1, step)]  # fmt: skip
    idx = [i for i, v in enumerate(voiced) if v]
    first, last = (idx[0], idx[-1]) if idx else (0, len(voiced) - 1)
    end = min(len(voiced), last + 1 + 14)
    span = voiced[first:end]
    samples = x[first * step : end * step]
    pause = 1.0 - sum(span) / len(span) if span else 0.0
    rec = speech.english().create()
    for f in frames:
        rec.accept(f.to_bytes())
    result = rec.finish()
    words = len(result.words)
    speech_s = result.words[-1].end - result.words[0].start if words > 1 else None
    heard = Heard(samples, result.text, words, speech_s, pause)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"text": heard.text, "words": words, "speech_s": speech_s, "pause": pause}
    np.savez(cache, samples=samples, meta=json.dumps(meta))
    return heard


def _hear_all(job: tuple[list[Spoken], str]) -> int:
    said, band = job
    for s in said:
        hear(s, band)
    return len(said)


def build(parts: list[str], bands: list[str], workers: int = 2) -> None:
    jobs = [(call, band) for part in parts for call in plan(part) for band in bands]
    OUT.mkdir(parents=True, exist_ok=True)
    done = 0
    with ProcessPoolExecutor(workers) as pool:
        for n in pool.map(_hear_all, jobs):
            done += n
    print(f"emotion set: {done} utterances heard ({', '.join(parts)}; {', '.join(bands)})")


def manifest(part: str) -> list[dict[str, object]]:
    return [asdict(s) for call in plan(part) for s in call]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=[*PARTS, "all"], default="all")
    ap.add_argument("--band", choices=["wide", "phone", "both"], default="both")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    build(
        list(PARTS) if a.part == "all" else [a.part],
        ["wide", "phone"] if a.band == "both" else [a.band],
        a.workers,
    )
