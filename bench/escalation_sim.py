"""Escalation rule variants on the tuning part, out of fold.

    python -m bench.escalation_sim

Reads only the tuning part of the emotion set. Each utterance's fused probabilities
are out of fold as ``bench.emotion_fusion.fusion_main`` computes them: the fusion's
inputs, prior weight and L2 as chosen in media/emotion_fusion.json, the text model's
probabilities from folds over the sentences, the fusion fitted with the utterance's
voice left out, and one temperature fitted on those out-of-fold logits.

Each call is then walked as ``bench.emotion_eval.track`` walks it: an utterance with no
recognised words is skipped; the others go through ``CallEscalation(default_rules())``
(``observe_utterance`` with the heard text, then ``observe_emotion``). A call escalates
if a rule routes it to a person: the phrase rules on the heard words, or the upset
rule under test in place of ``upset_streak``. The truth is
``bench.emotion_eval._should_escalate``. The baseline and the ``min_probability``
variants are run through the engine's own rule; the others (hysteresis, 2 of the last
3) are simulated here, with the engine's reading of "upset at threshold t": labelled
angry or frustrated, or their summed probability >= t.

Recommended: the variant with the most recall, both bands pooled, whose pooled
precision is at most 0.01 below the baseline's (ties: the more precise, then the first
listed). Every number is of the tuning part: a choice among ~40 variants on 218 calls
that should escalate, where one call is 0.005 of recall and ~0.01 of precision.

The trend (``trend_below``) is passed as 0: that rule raises priority and alerts, but
never routes to a person, so it does not change what is counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.emotion_eval import UPSET, _should_escalate
from bench.emotion_fusion import (
    BANDS,
    INPUTS,
    Said,
    _stack,
    _temperature,
    input_names,
    oof_logits,
    softmax,
    tuning_parts,
)
from engine.escalation import CallEscalation, EmotionSample, Rule, Utterance, default_rules
from media.emotion import FUSION
from media.emotion_text import LABELS

STREAK = "upset_streak"
# the engine's own streak (default_rules): the simulation is checked against it
SHIPPED = next(r for r in default_rules() if r.id == STREAK)


@dataclass(frozen=True)
class Heard:
    """One utterance the engine judged: its label and scores (rounded as the tracker
    rounds them), and the summed upset probability."""

    label: str
    scores: dict[str, float]

    @property
    def upset(self) -> float:
        return sum(self.scores[k] for k in UPSET)

    def counts(self, t: float) -> bool:
        """Upset at threshold ``t``, as ``CallEscalation._run_of`` reads it."""
        return self.label in UPSET or self.upset >= t


@dataclass
class Call:
    band: str
    truth: bool
    phrase: bool  # a phrase rule routed the call to a person (heard words)
    streak: bool  # the engine's upset_streak (default rules) fired
    heard: list[Heard]
    engine_mp: dict[float, bool]  # the engine's rule at min_probability t fired


def oof_probabilities() -> tuple[dict[str, list[list[Said]]], dict[str, list[list[np.ndarray]]]]:
    """Per band, the tuning calls, and each utterance's out-of-fold fused probabilities."""
    chosen = json.loads(FUSION.read_text())
    names, pw, l2 = chosen["names"], chosen["prior_weight"], chosen["l2"]
    inputs = next((k for k in INPUTS if input_names(k) == names), None)
    by_band, band_priors, text_p = tuning_parts()
    x, y, g, rows = _stack(by_band, text_p, band_priors, pw, names)
    oof = oof_logits(x, y, g, l2)
    temperature, _ = _temperature(oof, y)
    probs = softmax(oof / temperature)
    right = float((np.argmax(probs, axis=1) == y).mean())
    print(f"fusion: {inputs} voice inputs, prior counts {pw:g} utterances, l2 {l2:g}; "
          f"out-of-fold temperature {temperature:.2f} (file: {chosen['temperature']}); "
          f"utterance accuracy, each voice left out in turn, {right:.3f}")  # fmt: skip
    out: dict[str, list[list[np.ndarray]]] = {b: [] for b in BANDS}
    i = 0
    for b in BANDS:
        for call in by_band[b]:
            assert all(rows[i + k][:2] == (b, u.spoken.call) for k, u in enumerate(call))
            out[b].append([probs[i + k] for k in range(len(call))])
            i += len(call)
    assert i == len(y)
    return by_band, out


def _rules(min_probability: float | None) -> list[Rule]:
    rules = default_rules()
    if min_probability is None:
        return rules
    update = {"min_probability": min_probability, "peak_probability": None}
    return [r.model_copy(update=update) if r.id == STREAK else r for r in rules]


def walk(
    call: list[Said], probs: list[np.ndarray], rules: list[Rule]
) -> tuple[set[str], list[Heard]]:
    """The call as ``bench.emotion_eval.track`` walks it, the tracker's estimate replaced
    by the out-of-fold one: the rules that routed it to a person, and what was heard."""
    esc = CallEscalation(rules)
    routed: set[str] = set()
    heard: list[Heard] = []
    for i, (u, p) in enumerate(zip(call, probs, strict=True)):
        if not u.heard.text:  # as the engine: nothing said, nothing judged
            continue
        fused = dict(zip(LABELS, map(float, p), strict=True))
        label = max(fused, key=lambda k: fused[k])
        scores = {k: round(v, 4) for k, v in fused.items()}
        decisions = esc.observe_utterance(Utterance(str(i), u.heard.text, i, i + 1))
        loud = u.prosody.energy_db if u.prosody.f0_median_st is not None else None
        decisions += esc.observe_emotion(EmotionSample(str(i), i + 1, label, 0.0, scores, loud))
        routed |= {d.rule_id for d in decisions if d.routes_to_human}
        heard.append(Heard(label, scores))
    return routed, heard


MIN_PROBABILITIES = [0.30, 0.35, 0.40, 0.45, 0.50]


def simulate() -> list[Call]:
    by_band, probs = oof_probabilities()
    out = []
    for b in BANDS:
        for call, p in zip(by_band[b], probs[b], strict=True):
            routed, heard = walk(call, p, _rules(None))
            engine_mp = {t: STREAK in walk(call, p, _rules(t))[0] for t in MIN_PROBABILITIES}
            phrase = bool(routed - {STREAK})
            out.append(Call(b, _should_escalate(call), phrase, STREAK in routed, heard, engine_mp))
    return out


# The upset rules under test: what was heard -> whether the rule fires
Variant = Callable[[list[Heard]], bool]


def run(t: float, count: int = 2) -> Variant:
    """``count`` utterances in a row upset at ``t`` (the engine's emotion_streak)."""

    def fires(h: list[Heard]) -> bool:
        n = 0
        for u in h:
            n = n + 1 if u.counts(t) else 0
            if n >= count:
                return True
        return False

    return fires


def hysteresis(low: float, high: float) -> Variant:
    """Two utterances in a row upset at ``low``, one of them at ``high``."""

    def fires(h: list[Heard]) -> bool:
        return any(
            a.counts(low) and b.counts(low) and (a.counts(high) or b.counts(high))
            for a, b in zip(h, h[1:], strict=False)
        )

    return fires


def shipped() -> Variant:
    """The engine's default streak as simulated: 2 in a row at its bar, one of them at
    its peak if it has one."""
    low, high = SHIPPED.min_probability, SHIPPED.peak_probability
    assert SHIPPED.count == 2
    return run(low) if high is None else hysteresis(low, high)


def k_of_n(t: float, k: int = 2, n: int = 3) -> Variant:
    """``k`` of the last ``n`` utterances upset at ``t``."""

    def fires(h: list[Heard]) -> bool:
        flags = [u.counts(t) for u in h]
        return any(sum(flags[max(0, i - n + 1) : i + 1]) >= k for i in range(len(flags)))

    return fires


def variants() -> list[tuple[str, Variant]]:
    out: list[tuple[str, Variant]] = [("baseline: 2 in a row, p >= 0.50", run(0.5))]
    out += [(f"2 in a row, p >= {t:.2f}", run(t)) for t in MIN_PROBABILITIES[:-1]]
    for low in (0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45):
        for high in (0.50, 0.55, 0.60, 0.65, 0.70):
            out.append((f"hysteresis: both >= {low:.2f}, one >= {high:.2f}", hysteresis(low, high)))
    out += [(f"2 of last 3, p >= {t:.2f}", k_of_n(t)) for t in (0.35, 0.40, 0.45, 0.50, 0.55, 0.60)]
    return out


@dataclass(frozen=True)
class Score:
    tp: int
    fp: int
    fn: int
    calls: int

    @property
    def precision(self) -> float:
        return self.tp / max(1, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return self.tp / max(1, self.tp + self.fn)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def cell(self) -> str:
        counts = f"{self.tp}/{self.fp}/{self.fn}"
        return f"{self.precision:.3f} | {self.recall:.3f} | {self.f1:.3f} | {counts}"


def score(calls: list[Call], fires: Variant) -> Score:
    guess = [c.phrase or fires(c.heard) for c in calls]
    tp = sum(g and c.truth for g, c in zip(guess, calls, strict=True))
    fp = sum(g and not c.truth for g, c in zip(guess, calls, strict=True))
    fn = sum(c.truth and not g for g, c in zip(guess, calls, strict=True))
    return Score(tp, fp, fn, len(calls))


def main() -> None:
    calls = simulate()
    # the simulation's 2-in-a-row rule is the engine's, threshold for threshold
    for c in calls:
        assert shipped()(c.heard) == c.streak, c
        for t, fired in c.engine_mp.items():
            assert run(t)(c.heard) == fired, (t, c)
    by_band = {b: [c for c in calls if c.band == b] for b in BANDS}
    for b, cs in by_band.items():
        print(f"{b}: {len(cs)} tuning calls, {sum(c.truth for c in cs)} should escalate, "
              f"{sum(c.phrase for c in cs)} routed by a phrase rule "
              f"({sum(c.phrase and not c.truth for c in cs)} of them wrongly)")  # fmt: skip
    print("\nP | R | F1 | TP/FP/FN per band, and both bands pooled\n")
    head = " | ".join(f"{b} P | {b} R | {b} F1 | {b} TP/FP/FN" for b in (*BANDS, "both"))
    print(f"| variant | {head} |")
    print("|---" * 13 + "|")
    results = []
    for name, fires in variants():
        s = {b: score(cs, fires) for b, cs in by_band.items()} | {"both": score(calls, fires)}
        results.append((name, s))
        print(f"| {name} | " + " | ".join(s[b].cell() for b in (*BANDS, "both")) + " |")
    base = results[0][1]["both"]
    floor = base.precision - 0.01
    ok = [(n, s) for n, s in results[1:] if s["both"].precision >= floor - 1e-9]
    print(f"\nbaseline, both bands pooled: precision {base.precision:.3f}, recall "
          f"{base.recall:.3f}; allowed precision >= {floor:.3f}")  # fmt: skip
    better = [(n, s) for n, s in ok if s["both"].recall > base.recall]
    if not better:
        print("recommended: none is better")
        return
    best = max(better, key=lambda r: (r[1]["both"].recall, r[1]["both"].precision))
    n, s = best
    print(f"recommended: {n}: " + "; ".join(
        f"{b} precision {s[b].precision:.3f} recall {s[b].recall:.3f}" for b in (*BANDS, "both")
    ))  # fmt: skip
    ties = [m for m, t in better if (t["both"].recall, t["both"].precision)
            == (s["both"].recall, s["both"].precision) and m != n]  # fmt: skip
    if ties:
        print("  tied with: " + "; ".join(ties))
    per_band = all(s[b].precision >= results[0][1][b].precision - 0.01 - 1e-9 for b in BANDS)
    print(f"  precision within 0.01 of the baseline's in each band alone too: {per_band}")


if __name__ == "__main__":
    main()
