"""End of speech: how soon finals land after the caller stops, and how often a
sentence is split in two, on the project's own speech.

    python -m bench.endpointing [--part heldout|tuning|both] [--legs 2]

Each script is a caller's turn of several sentences with a 0.9 s pause between them
(some with commas, where a speaker pauses mid-sentence). It is played in real time,
20 ms a frame, through the engine's leg pipeline with the Moonshine recognizer, and
every final's latency (last voiced audio -> final) is kept. A sentence is split when
the script gave more finals than it has sentences. Two endpointers in the same run:
  adaptive  the default: at a 100 ms pause the recognizer is asked what was said;
            a complete sentence ends after 260 ms of silence (400 ms when it is one
            or two words, often a lead-in before a comma), anything else after 400 ms;
  fixed     the ratio rule alone (85 % unvoiced over 600 ms, ~520 ms after the last
            word): what the engine did before, the baseline.
Tuning and held-out parts differ in sentences and voices (piper joe at its own pitch
for tuning; piper shifted in pitch and tempo, and espeak-ng, for held-out).
Reported: the held-out part (``--part tuning`` shows the other).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from media.asr.local import LocalRecognizer
from media.asr.moonshine_backend import MoonshineFactory
from media.asr.moonshine_convert import cache_dir, ensure
from media.audio import FRAME_SAMPLES
from media.events import MediaEvent, TranscriptFinal
from media.pipeline import LegPipeline
from media.vad import VadSettings
from media.wavtrack import read_wav_mono
from tests import speech
from tests.engine_proc import ROOT

TUNING = [
    ["Hi, I am calling about my bill.", "It looks higher than usual this month."],
    ["I need to change my delivery address.", "I moved last week."],
    ["Can you tell me why my payment is still pending?", "I paid it on Monday."],
    ["My internet keeps dropping, every evening around eight.", "Can someone look at it?"],
    ["I would like to cancel my subscription.", "Thank you for your help."],
    ["Yes, that is right.", "My date of birth is the fourth of July."],
]
HELDOUT = [
    ["Good afternoon, I have a question about my order.", "It has not arrived yet."],
    ["The package was damaged when it came.", "I would like a replacement, please."],
    ["Honestly, this is the third time I am calling.", "Nobody has fixed it."],
    ["I was charged twice for the same thing.", "Can you refund one of them?"],
    ["My account number is four five six seven eight.", "The name is Maria Lopez."],
    ["Okay, so what happens next?", "Will I get an email?"],
    ["Could you transfer me to someone in billing?", "I want to talk to a person."],
    ["Sure, I can wait.", "How long will it take, roughly?"],
    ["I got a text saying my card was blocked.", "I did not do anything wrong."],
    ["Well, the app will not let me log in.", "It says my password is wrong."],
    ["We are moving to a new house next month.", "Can I keep the same plan?"],
    ["No, that is not my phone number.", "It ends in two two nine."],
]
# (name, how): piper effects via sox, or an espeak-ng voice
TUNING_VOICES: list[tuple[str, list[str] | str]] = [("piper", [])]
HELDOUT_VOICES: list[tuple[str, list[str] | str]] = [
    ("piper low slow", ["pitch", "-200", "tempo", "0.92"]),
    ("piper high fast", ["pitch", "250", "tempo", "1.1"]),
    ("espeak en-us", "en-us"),
]
SHORT_END_MS = 0  # 0: the engine's default (--short-end-ms tries another)
INCOMPLETE_END_MS = 0  # 0: the engine's default (--incomplete-end-ms tries another)


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    sentences: int = 0
    finals: int = 0
    split: int = 0
    errors: list[float] = field(default_factory=list)


def synthesise(part: str, workdir: Path) -> list[tuple[list[str], Path]]:
    scripts, voices = (TUNING, TUNING_VOICES) if part == "tuning" else (HELDOUT, HELDOUT_VOICES)
    out = []
    for v, (_, how) in enumerate(voices):
        for i, script in enumerate(scripts):
            path = workdir / f"{part}-{v}-{i}.wav"
            if isinstance(how, str):
                pieces = [speech.espeak(s, how, workdir / f"{part}-{v}-{i}-{j}.wav", 150)
                          for j, s in enumerate(script)]  # fmt: skip
                pcm = [read_wav_mono(str(p))[0] for p in pieces]
                gap = np.zeros(int(speech.PAUSE_S * 16000), np.int16)
                joined = np.concatenate([x for p in pcm for x in (p, gap)])
                speech.write_wav(path, joined, 16000)
            else:
                speech.piper_script(script, path, how or None)
            out.append((script, path))
    print(f"{part}: {len(out)} turns, {sum(len(s) for s, _ in out)} sentences, "
          f"voices: {', '.join(n for n, _ in voices)}")  # fmt: skip
    return out


async def play(
    script: list[str], wav: Path, factory: MoonshineFactory, executor: ThreadPoolExecutor,
    adaptive: bool, result: Result,
) -> None:  # fmt: skip
    pcm, rate = read_wav_mono(str(wav))
    finals: list[TranscriptFinal] = []

    def emit(ev: MediaEvent) -> None:
        if isinstance(ev, TranscriptFinal):
            finals.append(ev)

    rec = LocalRecognizer(factory.create(), executor)

    async def opener() -> LocalRecognizer:
        return rec

    tried = {"short_end_ms": SHORT_END_MS, "incomplete_end_ms": INCOMPLETE_END_MS}
    vad = VadSettings(**{k: v for k, v in tried.items() if v}) if any(tried.values()) else None
    pipeline = LegPipeline("bench", opener, executor, emit, punctuated=adaptive, vad=vad)
    await pipeline.start()
    step = rate * FRAME_SAMPLES // 16000
    tail = np.zeros(rate, np.int16)  # a second of silence: the last sentence ends too
    audio = np.concatenate([pcm, tail])
    t0 = time.monotonic()
    for n, i in enumerate(range(0, len(audio), step)):
        pipeline.push_pcm(audio[i : i + step], rate, 1)
        await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.02 - time.monotonic()))
    await pipeline.close()
    result.latencies += [f.asr_latency for f in finals]
    result.sentences += len(script)
    result.finals += len(finals)
    result.split += max(0, len(finals) - len(script))
    result.errors.append(speech.wer(" ".join(script), " ".join(f.text for f in finals)))


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def run(parts: list[str], legs: int) -> None:
    model = ensure(cache_dir(ROOT / "models"), print)
    factory = MoonshineFactory("en", str(model))
    factory.load()
    executor = ThreadPoolExecutor(legs)
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            turns = synthesise(part, Path(tmp))
            rows = []
            for name, adaptive in (("fixed (baseline)", False), ("adaptive", True)):
                result = Result()
                for k in range(0, len(turns), legs):
                    await asyncio.gather(
                        *(play(s, w, factory, executor, adaptive, result)
                          for s, w in turns[k : k + legs])
                    )  # fmt: skip
                rows.append((name, result))
            print(f"\n{part}: {legs} legs at once, Moonshine, real time")
            print("| endpointer | sentences | finals | split | final after end of speech "
                  "p50 | p95 | WER |")  # fmt: skip
            print("|---|---|---|---|---|---|---|")
            for name, r in rows:
                print(f"| {name} | {r.sentences} | {r.finals} | "
                      f"{r.split} ({100 * r.split / r.sentences:.1f} %) | "
                      f"{1000 * pct(r.latencies, 50):.0f} ms | "
                      f"{1000 * pct(r.latencies, 95):.0f} ms | "
                      f"{100 * statistics.mean(r.errors):.1f} % |")  # fmt: skip
    executor.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--part", choices=["heldout", "tuning", "both"], default="heldout")
    ap.add_argument("--legs", type=int, default=2)
    ap.add_argument("--short-end-ms", type=int, default=0, help="try another short window")
    ap.add_argument(
        "--incomplete-end-ms", type=int, default=0, help="try another incomplete window"
    )
    args = ap.parse_args()
    global SHORT_END_MS, INCOMPLETE_END_MS
    SHORT_END_MS, INCOMPLETE_END_MS = args.short_end_ms, args.incomplete_end_ms
    parts = ["tuning", "heldout"] if args.part == "both" else [args.part]
    asyncio.run(run(parts, args.legs))


if __name__ == "__main__":
    main()
