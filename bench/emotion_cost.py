"""CPU per utterance of the emotion and intent stages (`make bench` prints this table).

Twelve held-out sentences of the emotion set, said by piper, at 16 kHz; each stage is
timed with ``time.process_time`` over every sentence, repeated. The baseline row is what
the words cost before: VADER alone, measured in the same run.

    python -m bench.emotion_cost [--repeat 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.emotion_scripts import HELDOUT
from engine.escalation import CallEscalation, EmotionSample, Utterance, default_rules
from media import emotion as em
from media.audio import AnalysisResampler
from media.emotion import EmotionTracker, prosody
from media.emotion_text import TextModel
from media.wavtrack import read_wav_mono
from tests import speech

GOAL_MS = 5.0  # issue 13: emotion and intent together, per utterance


def sentences() -> list[tuple[str, np.ndarray]]:
    said = [
        s for label in ("neutral", "positive", "frustrated", "angry") for s in HELDOUT[label][:3]
    ]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, s in enumerate(said):
            wav = speech.piper_script([s], Path(tmp) / f"{n}.wav")
            pcm, rate = read_wav_mono(str(wav))
            frames = AnalysisResampler().push(pcm, rate)
            out.append((s, np.concatenate([f.samples for f in frames])))
    return out


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()  # warm: caches, lazy loads
    out = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        out.append(1000 * (time.process_time() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    said = sentences()
    text_model = TextModel.load()
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    measured = [prosody(x, words=len(s.split()), speech_seconds=len(x) / 16000) for s, x in said]
    tracker = EmotionTracker()
    rules = default_rules()
    # each sentence's voiced windows, as prosody takes them
    voiced = [em.voiced_windows(x / 32768.0, em.pitch_track(x)) for _, x in said]

    def each(step: Callable[[int], object]) -> Callable[[], None]:
        return lambda: [step(i) for i in range(len(said))] and None

    def emotion(i: int) -> object:
        return tracker.update(measured[i], said[i][0])

    def intent(i: int) -> object:
        esc = CallEscalation(rules)  # a fresh call: every rule is open
        est = EmotionSample(str(i), 1.0, "angry", -0.5, {"angry": 0.9})
        return esc.observe_utterance(Utterance(str(i), said[i][0], 0, 1)) + esc.observe_emotion(est)

    stages = [
        ("prosody: pitch, loudness, centroid (numpy)",
         each(lambda i: prosody(said[i][1], words=8, speech_seconds=2.0))),
        ("  of which the spectral centroid (new in this model)",
         each(lambda i: em.brightness(voiced[i]))),
        ("words: the text model", each(lambda i: text_model.probabilities(said[i][0]))),
        ("emotion: words + voice fused (EmotionTracker.update)", each(emotion)),
        ("intent: the default escalation rules", each(intent)),
        ("baseline: VADER alone (the words before)",
         each(lambda i: vader.polarity_scores(said[i][0]))),
    ]  # fmt: skip
    n = len(said)
    rows = {name: np.array(timed(fn, a.repeat)) / n for name, fn in stages}
    print(f"\n## Emotion and intent: CPU per utterance ({n} sentences x {a.repeat})\n")
    print("| stage | p50 ms | p95 ms |\n|---|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {np.percentile(ms, 50):.3f} | {np.percentile(ms, 95):.3f} |")
    total = (
        rows["emotion: words + voice fused (EmotionTracker.update)"]
        + rows["intent: the default escalation rules"]
    )
    total = total + rows["  of which the spectral centroid (new in this model)"]
    print(f"| added by emotion + intent: fused, rules, centroid (goal <= {GOAL_MS:g} ms) | "
          f"{np.percentile(total, 50):.3f} | {np.percentile(total, 95):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
