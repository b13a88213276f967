"""`make eval`: emotion and escalation on the held-out part of the emotion set.

Speech the tuning never saw (other voices, other sentences: bench/emotion_scripts.py,
bench/emotion_set.py), at 16 kHz and over a phone line, recognised by the engine's
recognizer, labelled by the engine's EmotionTracker walking each call in order.
Prints, per band: the per-utterance confusion table, precision and recall per class,
accuracy of the words alone (the baseline measured in the same run), the call-level
label, the angry callers' first utterance, calibration (reliability table and expected
calibration error), escalation precision and recall under the default rules, and the
CPU time of the emotion and escalation stages per utterance.

The held-out part is ``fresh3``: espeak-ng's Klatt synthesiser and voice variants no
other part uses, and sentences written for it, blind to the models, after the tuning was
done. The parts held out before it (``heldout``, ``fresh``, ``fresh2``) were read at
tuning steps, so they have joined the tuning side (bench/emotion_scripts.py
``TUNING_SIDE``); they can still be read here, as tuning data.

    python -m bench.emotion_eval [--part fresh3|tuning|heldout|fresh|fresh2]
                                 [--band wide|phone|both]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from bench.emotion_fusion import Said, calls_of
from bench.emotion_scripts import PARTS
from engine.escalation import CallEscalation, EmotionSample, Utterance, default_rules
from media.emotion import EmotionEstimate, EmotionTracker
from media.emotion_text import LABELS, TextModel

UPSET = ("frustrated", "angry")
UNHEARD = "no words"


def _confusion(truth: list[str], guess: list[str]) -> str:
    """Said against labelled; the last column, utterances the engine labels not at all
    (no words recognised: the pipeline drops them as noise)."""
    cols = [*LABELS, UNHEARD]
    m = np.zeros((4, 5), int)
    for t, g in zip(truth, guess, strict=True):
        m[LABELS.index(t), cols.index(g)] += 1
    lines = ["| said \\ labelled | " + " | ".join(cols) + " | recall |", "|---" * 7 + "|"]
    for i, t in enumerate(LABELS):
        recall = m[i, i] / max(1, m[i].sum())
        lines.append(f"| {t} | " + " | ".join(str(v) for v in m[i]) + f" | {recall:.2f} |")
    precision = [m[i, i] / max(1, m[:, i].sum()) for i in range(4)]
    lines.append("| precision | " + " | ".join(f"{p:.2f}" for p in precision) + " | | |")
    return "\n".join(lines)


def _reliability(conf: list[float], right: list[bool]) -> tuple[str, float]:
    bins = [(0.25, 0.5), (0.5, 0.7), (0.7, 0.85), (0.85, 0.95), (0.95, 1.01)]
    c, r = np.array(conf), np.array(right, float)
    lines = ["| confidence | utterances | mean confidence | right |", "|---|---|---|---|"]
    ece = 0.0
    for lo, hi in bins:
        m = (c >= lo) & (c < hi)
        if m.any():
            ece += m.sum() / len(c) * abs(c[m].mean() - r[m].mean())
            lines.append(f"| {lo:.2f}-{min(hi, 1):.2f} | {m.sum()} | {c[m].mean():.2f} | "
                         f"{r[m].mean():.2f} |")  # fmt: skip
    return "\n".join(lines), ece


def _should_escalate(call: list[Said]) -> bool:
    """The truth: upset in two utterances in a row (upset_streak), or asked for a person
    or made a complaint in the script's own words (the phrase rules on what was said)."""
    labels = [u.spoken.label for u in call]
    if any(a in UPSET and b in UPSET for a, b in zip(labels, labels[1:], strict=False)):
        return True
    esc = CallEscalation(default_rules())
    return any(
        d.routes_to_human
        for i, u in enumerate(call)
        for d in esc.observe_utterance(Utterance(str(i), u.spoken.sentence, i, i + 1))
    )


@dataclass
class Tracked:
    """One call as the engine's tracker and escalation rules read it, utterance by
    utterance."""

    # None: no words were recognised, and the engine's pipeline drops such a final as
    # noise (media/pipeline.py) before emotion or any rule sees it
    estimates: list[EmotionEstimate | None]
    routed: list[str]  # the rules that routed the call to a person, in order
    cost: list[float]  # CPU seconds per utterance

    @property
    def fired(self) -> bool:
        return bool(self.routed)

    @property
    def call_label(self) -> str | None:
        """The call's label after its last utterance the engine heard."""
        heard = [e for e in self.estimates if e is not None]
        return heard[-1].call_label if heard else None


def track(call: list[Said], band: str) -> Tracked:
    """Walk ``call`` in order through EmotionTracker and the default escalation rules."""
    tracker = EmotionTracker("phone" if band == "phone" else "wide")
    esc = CallEscalation(default_rules())
    out = Tracked([], [], [])
    for i, u in enumerate(call):
        if not u.heard.text:  # as the engine: nothing said, nothing judged
            out.estimates.append(None)
            continue
        t0 = time.process_time()
        est = tracker.update(u.prosody, u.heard.text)
        decisions = esc.observe_utterance(Utterance(str(i), u.heard.text, i, i + 1))
        # loudness as the engine passes it (none when nothing was voiced); talk-over
        # and silence need both sides and real times, which the set has not: the
        # escalation numbers are the routing rules' (phrases, repeats, upset streak)
        loud = u.prosody.energy_db if u.prosody.f0_median_st is not None else None
        decisions += esc.observe_emotion(
            EmotionSample(str(i), i + 1, est.label, est.trend, est.scores, loud)
        )
        out.cost.append(time.process_time() - t0)
        out.routed += [d.rule_id for d in decisions if d.routes_to_human]
        out.estimates.append(est)
    return out


def evaluate(part: str, band: str) -> None:
    calls = calls_of(part, band)
    truth, guess, words_only, first_angry = [], [], [], []
    conf: list[float] = []  # the confidence of each label given, and whether it was right
    right_conf: list[bool] = []
    call_right, esc_truth, esc_guess = [], [], []
    cost: list[float] = []
    missed: list[str] = []
    text_model = TextModel.load()
    for call in calls:
        tracked = track(call, band)
        fired = tracked.fired
        cost += tracked.cost
        for i, (u, est) in enumerate(zip(call, tracked.estimates, strict=True)):
            truth.append(u.spoken.label)
            guess.append(est.label if est is not None else UNHEARD)
            p = text_model.probabilities(u.heard.text)
            words_only.append(max(p, key=lambda k: p[k]) if est is not None else UNHEARD)
            if est is not None:
                conf.append(est.confidence)
                right_conf.append(est.label == u.spoken.label)
            if i == 0 and u.spoken.label == "angry":
                first_angry.append(est is not None and est.label == "angry")
        call_right.append(tracked.call_label == call[0].spoken.call_label)
        esc_truth.append(_should_escalate(call))
        esc_guess.append(fired)
        if esc_truth[-1] != fired:
            missed.append(
                f"{'missed' if esc_truth[-1] else 'false alarm'}: {call[0].spoken.kind} "
                f"({call[0].spoken.voice}): "
                + "; ".join(f"{u.spoken.label}->{g} '{u.heard.text}'"
                            for u, g in zip(call, guess[-len(call):], strict=True))
            )  # fmt: skip
    right = [t == g for t, g in zip(truth, guess, strict=True)]
    table, ece = _reliability(conf, right_conf)
    tp = sum(t and g for t, g in zip(esc_truth, esc_guess, strict=True))
    voices = sorted({c[0].spoken.voice for c in calls})
    where = "16 kHz" if band == "wide" else "phone line"
    print(f"\n## Emotion, {part} part, {where}: {len(truth)} utterances in {len(calls)} "
          f"calls; voices: {', '.join(voices)}\n")  # fmt: skip
    print(_confusion(truth, guess))
    words_acc = np.mean([t == g for t, g in zip(truth, words_only, strict=True)])
    print(f"\nper-utterance accuracy {np.mean(right):.3f} (the words alone: {words_acc:.3f}); "
          f"call-level {np.mean(call_right):.3f} ({sum(call_right)}/{len(call_right)}); "
          f"angry on an angry caller's first utterance "
          f"{sum(first_angry)}/{len(first_angry)}")  # fmt: skip
    print(f"utterances with no words recognised (no label, counted wrong): "
          f"{guess.count(UNHEARD)}")  # fmt: skip
    print(f"escalation precision {tp / max(1, sum(esc_guess)):.3f}, recall "
          f"{tp / max(1, sum(esc_truth)):.3f} ({sum(esc_truth)} calls should escalate, "
          f"{sum(esc_guess)} did)")  # fmt: skip
    for line in missed:
        print("  " + line)
    print(f"\ncalibration (expected calibration error {ece:.3f}):\n\n{table}")
    ms = 1000 * np.array(cost)
    print(f"\nemotion + escalation CPU per utterance: p50 {np.percentile(ms, 50):.2f} ms, "
          f"p95 {np.percentile(ms, 95):.2f} ms (prosody not included)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=list(PARTS), default="fresh3")
    ap.add_argument("--band", choices=["wide", "phone", "both"], default="both")
    a = ap.parse_args()
    for band in ("wide", "phone") if a.band == "both" else (a.band,):
        evaluate(a.part, band)


if __name__ == "__main__":
    main()
