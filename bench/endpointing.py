"""End of speech: how soon finals land after the caller stops, and how often a
sentence is split in two, on the project's own speech.

    python -m bench.endpointing [--part heldout|tuning|both] [--legs 2]
                                [--set short_end_ms=240 ...] [--rows all|new|fixed]
                                [--band wide|phone] [--show] [--replay]

Each script is a caller's turn of several sentences with a 0.9 s pause between them
(some with commas, where a speaker pauses mid-sentence). It is played in real time,
20 ms a frame, through the engine's leg pipeline with the Moonshine recognizer. The
latency of a final is from the real end of its sentence, where its sound ends (the
last 20 ms frame above -45 dBFS: the script is synthesised here, so its ends are
known) to the final, decode included; the engine's own ``asr_latency`` (from the last
frame its VAD called voiced) is the second column. A sentence is split when the
script gave more finals than it has sentences. Endpointers in the same run:
  adaptive  the default: at a 200 ms pause the recognizer is asked what was said;
            a complete sentence ends after SHORT ms of silence (SURE ms when the
            decoder is sure the sentence ends there, FRAGMENT ms when it is one or two
            words, often a lead-in before a comma), anything else after INCOMPLETE
            ms; silence counts from the last frame that is voiced by webrtcvad and by
            the level gate (media/vad.py VoicedGate);
  words     the same without the decoder's odds (every complete sentence waits
            SHORT ms): what the odds buy;
  before    the same rule with the windows it had (260 / 400 / 400 ms) counted from
            webrtcvad's own last voiced frame, 100-250 ms after the sound ended (its
            overhang): the baseline;
  fixed     the ratio rule alone (what a recognizer that does not punctuate gets).
Tuning and held-out parts differ in sentences and voices (piper joe at its own pitch,
slowed, and on a line with pink noise for tuning; piper shifted in pitch and tempo, also
with noise, and espeak-ng, for held-out). Under noise the sentence ends are the clean
speech's. "decodes at pauses" counts the recognizer's looks at pauses (CPU).
Reported: the held-out part (``--part tuning`` shows the other). ``--band phone`` sends
the speech through a phone line first (300-3400 Hz at 8 kHz, G.711 u-law and back: what
the engine decodes from a G.711 SIP caller) and starts from the settings the engine gives
such a leg (``VadSettings.for_phone``). ``--set`` changes a
VadSettings field of the adaptive and fixed rows (to tune on the tuning part);
``--replay`` gives, in seconds rather than minutes, the splits and waits of a range of
complete windows from each pause replayed (its length, what the recognizer read).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np

from media.asr.base import AsrResult, ends_sentence
from media.asr.local import LocalRecognizer
from media.asr.moonshine_backend import MoonshineFactory
from media.asr.moonshine_convert import cache_dir, ensure
from media.audio import FRAME_MS, FRAME_SAMPLES, AnalysisResampler
from media.events import MediaEvent, TranscriptFinal
from media.pipeline import LegPipeline
from media.vad import PauseDetected, SpeechFrame, SpeechSegmenter, UtteranceEnded, VadSettings
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
    # lead-ins and tags after a comma, where a speaker pauses mid-sentence
    ["Right, I will hold on.", "Is there a faster way, maybe?"],
    ["Alright, let me check my email.", "I see it now, thanks."],
    ["Hello, is anybody there?", "I have been waiting a while, you know."],
    ["Actually, I need to update my card.", "The old one expired, sadly."],
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
# (name, how, noise): piper effects via sox, or an espeak-ng voice; pink noise this
# many dB below the speech (None: a clean line)
Voice = tuple[str, list[str] | str, float | None]
TUNING_VOICES: list[Voice] = [
    ("piper", [], None),
    ("piper, noise at 20 dB SNR", [], 20.0),
    ("piper slow", ["tempo", "0.85"], None),  # longer pauses at commas
]
HELDOUT_VOICES: list[Voice] = [
    ("piper low slow", ["pitch", "-200", "tempo", "0.92"], None),
    ("piper high fast", ["pitch", "250", "tempo", "1.1"], None),
    ("espeak en-us", "en-us", None),
    ("piper high fast, noise at 15 dB SNR", ["pitch", "250", "tempo", "1.1"], 15.0),
]
TAIL_S = 1.0  # silence after a turn: its last sentence ends too
Band = Literal["wide", "phone"]
# the endpointer as it was before the level gate: the baseline row
BEFORE = VadSettings(
    level_gate=False, pause_ms=100, short_end_ms=260, sure_end_ms=260, fragment_end_ms=400,
    incomplete_end_ms=400, end_window_ms=600, end_ratio=0.85,
)  # fmt: skip


@dataclass(frozen=True)
class Endpointer:
    name: str
    punctuated: bool  # the adaptive rule (a punctuating recognizer) or the ratio rule alone
    vad: VadSettings


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # from the sound's end
    engine_latencies: list[float] = field(default_factory=list)  # asr_latency
    sentences: int = 0
    finals: int = 0
    split: int = 0
    unanswered: int = 0  # sentences no final came for
    peeks: int = 0
    errors: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Turn:
    script: list[str]
    wav: Path
    ends: list[float]  # seconds into the WAV where each sentence's sound ends


def synthesise(part: str, workdir: Path, band: Band = "wide") -> list[Turn]:
    scripts, voices = (TUNING, TUNING_VOICES) if part == "tuning" else (HELDOUT, HELDOUT_VOICES)
    out = []
    for v, (_, how, snr) in enumerate(voices):
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
            clean, rate = read_wav_mono(str(path))
            clean = np.concatenate([clean, np.zeros(int(TAIL_S * rate), np.int16)])
            # the ends are the clean speech's: under noise they are where the words stop
            ends = sentence_ends(clean, rate, len(script))
            heard = clean if snr is None else speech.with_noise(clean, rate, snr, workdir)
            speech.write_wav(path, heard, rate)
            if band == "phone":
                speech.phone_line(path, path)
            out.append(Turn(script, path, ends))
    line = "a phone line (300-3400 Hz, 8 kHz, G.711)" if band == "phone" else "16 kHz"
    print(f"{part}: {len(out)} turns, {sum(len(t.script) for t in out)} sentences, "
          f"voices: {', '.join(n for n, _, _ in voices)}; {line}")  # fmt: skip
    return out


def sentence_ends(pcm: np.ndarray, rate: int, n: int) -> list[float]:
    """Where each of the script's ``n`` sentences stops sounding, in seconds. A long
    pause after a comma can part a sentence in two stretches: the closest stretches are
    joined until there are ``n``."""
    spans = speech.sentence_spans(pcm, rate)
    while len(spans) > n:
        k = min(range(len(spans) - 1), key=lambda i: spans[i + 1][0] - spans[i][1])
        spans[k : k + 2] = [(spans[k][0], spans[k + 1][1])]
    return [e for _, e in spans]


def from_ends(ends: list[float], came: list[float]) -> list[float | None]:
    """For each sentence end, the wait until the first final that came after it (and
    before the next sentence ended): None if none did."""
    out: list[float | None] = []
    for k, end in enumerate(ends):
        until = ends[k + 1] if k + 1 < len(ends) else float("inf")
        after = [c for c in came if end <= c < until]
        out.append(min(after) - end if after else None)
    return out


async def play(
    turn: Turn, factory: MoonshineFactory, executor: ThreadPoolExecutor, ep: Endpointer,
    result: Result,
) -> None:  # fmt: skip
    script, wav = turn.script, turn.wav
    audio, rate = read_wav_mono(str(wav))
    finals: list[tuple[TranscriptFinal, float]] = []

    def emit(ev: MediaEvent) -> None:
        if isinstance(ev, TranscriptFinal):
            finals.append((ev, time.monotonic()))

    rec = LocalRecognizer(factory.create(), executor)
    peek = rec.peek

    async def counted_peek() -> AsrResult:
        result.peeks += 1
        return await peek()

    rec.peek = counted_peek  # type: ignore[method-assign]  # counts the decodes at pauses

    async def opener() -> LocalRecognizer:
        return rec

    pipeline = LegPipeline("bench", opener, executor, emit, punctuated=ep.punctuated, vad=ep.vad)
    await pipeline.start()
    step = rate * FRAME_SAMPLES // 16000
    t0 = time.monotonic()
    for n, i in enumerate(range(0, len(audio), step)):
        pipeline.push_pcm(audio[i : i + step], rate, 1)
        await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.02 - time.monotonic()))
    await pipeline.close()
    # frame n (ending at audio time (n + 1) * 20 ms) was pushed at t0 + n * 20 ms: the
    # moment the engine had the audio up to a sentence's end, as asr_latency counts
    ends = [t0 + e - 0.02 for e in turn.ends]
    waits = from_ends(ends, [came for _, came in finals])
    result.latencies += [w for w in waits if w is not None]
    result.unanswered += sum(w is None for w in waits)
    result.engine_latencies += [f.asr_latency for f, _ in finals]
    result.sentences += len(script)
    result.finals += len(finals)
    result.split += max(0, len(finals) - len(script))
    said = " ".join(f.text for f, _ in finals)
    result.errors.append(speech.wer(" ".join(script), said))
    if SHOW:
        print(
            f"  {ep.name} {wav.name}: {' | '.join(f.text for f, _ in finals)}  "
            f"[{', '.join('-' if w is None else f'{1000 * w:.0f}' for w in waits)} ms]"
        )


SHOW = False  # --show: each turn's finals


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def defaults(band: Band, changes: dict[str, int | float]) -> VadSettings:
    """The engine's settings for a leg on this kind of line, with ``changes`` (--set)."""
    base = VadSettings().for_phone() if band == "phone" else VadSettings()
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]  # checked in main


def endpointers(rows: str, new: VadSettings) -> list[Endpointer]:
    eps = [Endpointer("adaptive (default)", True, new)]
    if rows == "fixed":
        eps = [Endpointer("fixed (ratio rule alone)", False, new)]
    if rows == "all":
        words_only = dataclasses.replace(new, sure_end_ms=new.short_end_ms)
        eps = [
            Endpointer("fixed (ratio rule alone)", False, new),
            Endpointer("before: adaptive, webrtcvad's voiced (baseline)", True, BEFORE),
            Endpointer("adaptive, the words alone (no decoder odds)", True, words_only),
            *eps,
        ]
    return eps


async def run(parts: list[str], legs: int, eps: list[Endpointer], band: Band) -> None:
    model = ensure(cache_dir(ROOT / "models"), print)
    factory = MoonshineFactory("en", str(model))
    factory.load()
    executor = ThreadPoolExecutor(legs)
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            turns = synthesise(part, Path(tmp), band)
            rows = []
            for ep in eps:
                result = Result()
                for k in range(0, len(turns), legs):
                    await asyncio.gather(
                        *(play(t, factory, executor, ep, result)
                          for t in turns[k : k + legs])
                    )  # fmt: skip
                rows.append((ep, result))
            print(f"\n{part}: {legs} legs at once, Moonshine, real time")
            for ep, _ in rows:
                v = ep.vad
                print(f"  {ep.name}: gate {v.level_gate}, pause {v.pause_ms} ms, complete "
                      f"{v.short_end_ms} (sure {v.sure_end_ms} at odds >= "
                      f"{v.sure_end_odds:g}) / fragment {v.fragment_end_ms} / incomplete "
                      f"{v.incomplete_end_ms} ms, ratio {v.end_ratio:g} over "
                      f"{v.end_window_ms} ms")  # fmt: skip
            print("| endpointer | sentences | finals | split | final after the end of the "
                  "sentence's sound p50 | p95 | asr_latency (from the last voiced frame) "
                  "p50 | p95 | decodes at pauses / sentence | WER |")  # fmt: skip
            print("|---|---|---|---|---|---|---|---|---|---|")
            for ep, r in rows:
                missed = f", {r.unanswered} without a final" if r.unanswered else ""
                print(f"| {ep.name} | {r.sentences} | {r.finals} | "
                      f"{r.split} ({100 * r.split / r.sentences:.1f} %{missed}) | "
                      f"{1000 * pct(r.latencies, 50):.0f} ms | "
                      f"{1000 * pct(r.latencies, 95):.0f} ms | "
                      f"{1000 * pct(r.engine_latencies, 50):.0f} ms | "
                      f"{1000 * pct(r.engine_latencies, 95):.0f} ms | "
                      f"{r.peeks / r.sentences:.2f} | "
                      f"{100 * statistics.mean(r.errors):.1f} % |")  # fmt: skip
    executor.shutdown()


def setting(text: str) -> tuple[str, int | float]:
    name, _, value = text.partition("=")
    known = {f.name: f.type for f in fields(VadSettings)}
    if name not in known or known[name] not in ("int", "float"):
        numeric = [n for n, t in known.items() if t in ("int", "float")]
        raise argparse.ArgumentTypeError(f"{name!r}: one of {', '.join(numeric)}")
    try:
        return name, int(value) if known[name] == "int" else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: {value!r} is not a number") from None


@dataclass
class Pause:
    gap_ms: float  # silence it lasted (inf: the sentence ended there)
    complete: bool  # what the recognizer made of the words before it
    words: int
    end_odds: float | None  # how sure it was that the sentence ended there
    # at a sentence's end: its last voiced frame after the end of its sound (the level
    # gate's lateness, which every window adds to)
    late_ms: float = 0.0


def pauses(turn: Turn, factory: MoonshineFactory, vad: VadSettings) -> list[Pause]:
    """Every pause the endpointer asks the recognizer about in ``turn``, as fast as the
    CPU goes: how long it lasted and what the recognizer read before it. An utterance
    ends only at a sentence's 0.9 s gap here, so every mid-sentence pause is seen."""
    pcm, rate = read_wav_mono(str(turn.wav))
    # the windows are the replay's to try; the gate and the pause are the leg's
    seg = SpeechSegmenter(dataclasses.replace(vad, end_window_ms=800, end_ratio=0.99))
    rec = factory.create()
    rec.defer_partials = True  # partials cost decodes and tell the endpointer nothing
    out: list[Pause] = []
    going: Pause | None = None  # the pause in progress
    voiced_to = 0.0  # the end of the last voiced frame
    for frame in AnalysisResampler().push(pcm, rate):
        for ev in seg.push(frame):
            if isinstance(ev, SpeechFrame):
                rec.accept(ev.frame.to_bytes())
                voiced_to = ev.frame.end if ev.voiced else voiced_to
                if going is not None and ev.voiced:
                    going = None
                elif going is not None:
                    going.gap_ms += FRAME_MS
            elif isinstance(ev, PauseDetected):
                said = rec.peek()
                going = Pause(
                    vad.pause_ms, ends_sentence(said.text), len(said.text.split()), said.end_odds
                )
                out.append(going)
            elif isinstance(ev, UtteranceEnded):
                rec.finish()
                if going is not None:
                    going.gap_ms = float("inf")
                    end = min(turn.ends, key=lambda e: abs(e - voiced_to))
                    # a cut utterance, or one that a long pause ended mid-sentence, has
                    # no sentence end of its own to be late for (the phone line's
                    # filters add ~4 ms: at most a frame at the p50)
                    if not ev.cut and abs(voiced_to - end) <= LATE_MATCH_S:
                        going.late_ms = 1000 * (voiced_to - end)
                    else:
                        going.late_ms = math.nan
                going = None
    return out


LATE_MATCH_S = 0.3  # a last voiced frame this far from any sentence end is not at one

SURE_ODDS = (1.0, 1.5, 1.8, 2.0, 2.2, 2.6, 3.0)  # log odds: 2.7, 4.5, 6, 7.4, 9, 13.5, 20 to 1


def replay(parts: list[str], vad: VadSettings, band: Band) -> None:
    """Splits and the silence waited at sentence ends, for complete windows from 220 to
    460 ms (the sure, fragment and incomplete windows as set), for sure windows from 220
    to 380 ms (the complete window as set), and for the odds that make an end sure
    (``SURE_ODDS``, the windows as set), from each pause replayed: no real
    time, no decode time (the bench proper adds it)."""
    factory = MoonshineFactory("en", str(ensure(cache_dir(ROOT / "models"), print)))
    factory.load()
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            turns = synthesise(part, Path(tmp), band)
            found = [p for t in turns for p in pauses(t, factory, vad)]
            n = sum(len(t.script) for t in turns)
            late = [p.late_ms for p in found if p.gap_ms == float("inf")]
            late = [x for x in late if not math.isnan(x)]
            print(f"\n{part}: pause {vad.pause_ms} ms, fragment {vad.fragment_end_ms} ms, "
                  f"incomplete {vad.incomplete_end_ms} ms, sure at odds >= "
                  f"{vad.sure_end_odds:g}, level gate {vad.speech_margin_db:g} dB under the "
                  f"peak and {vad.floor_margin_db:g} over the floor, replayed; the last voiced "
                  f"frame of a sentence is {pct(late, 50):.0f} / {pct(late, 95):.0f} ms (p50 / "
                  f"p95) after the end of its sound")  # fmt: skip
            print("| complete window | sure window | sure at odds >= | split | silence waited "
                  "at sentence ends p50 | p95 | sentence ends sure |")  # fmt: skip
            print("|---|---|---|---|---|---|---|")
            rows = [(short, vad.sure_end_ms, vad.sure_end_odds) for short in range(220, 461, 40)]
            rows += [(vad.short_end_ms, sure, vad.sure_end_odds) for sure in range(220, 381, 40)]
            rows += [(vad.short_end_ms, vad.sure_end_ms, odds) for odds in SURE_ODDS]
            for short, sure, odds in rows:
                windows = dataclasses.replace(
                    vad, short_end_ms=short, sure_end_ms=sure, sure_end_odds=odds
                )

                def window(p: Pause, windows: VadSettings = windows) -> int:
                    return windows.end_after(p.complete, p.words, p.end_odds)

                def rule(p: Pause, windows: VadSettings = windows) -> str:
                    return windows.end_window(p.complete, p.words, p.end_odds)[0]

                split = sum(p.gap_ms >= window(p) for p in found if p.gap_ms != float("inf"))
                ends = [p for p in found if p.gap_ms == float("inf")]
                waits = [float(window(p)) for p in ends]
                sure_ends = sum(rule(p) == "sure" for p in ends)
                print(f"| {short} ms | {sure} ms | {odds:g} | {split} ({100 * split / n:.1f} %) | "
                      f"{pct(waits, 50):.0f} ms | {pct(waits, 95):.0f} ms | "
                      f"{sure_ends} of {len(waits)} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--part", choices=["heldout", "tuning", "both"], default="heldout")
    ap.add_argument("--legs", type=int, default=2)
    ap.add_argument(
        "--set", type=setting, action="append", default=[], metavar="FIELD=VALUE",
        help="change a VadSettings field of the adaptive and fixed rows (tuning)",
    )  # fmt: skip
    ap.add_argument(
        "--rows", choices=["all", "new", "fixed"], default="all",
        help="new: only the default adaptive row; fixed: only the ratio rule",
    )  # fmt: skip
    ap.add_argument(
        "--band", choices=["wide", "phone"], default="wide",
        help="phone: the speech through a phone line (8 kHz, G.711), with the settings the "
        "engine gives G.711 SIP legs",
    )  # fmt: skip
    ap.add_argument("--show", action="store_true", help="print each turn's finals")
    ap.add_argument(
        "--replay", action="store_true",
        help="no real time: replay each pause for a range of complete windows (tuning)",
    )  # fmt: skip
    args = ap.parse_args()
    global SHOW
    SHOW = args.show
    parts = ["tuning", "heldout"] if args.part == "both" else [args.part]
    vad = defaults(args.band, dict(args.set))
    if args.replay:
        replay(parts, vad, args.band)
        return
    asyncio.run(run(parts, args.legs, endpointers(args.rows, vad), args.band))


if __name__ == "__main__":
    main()
