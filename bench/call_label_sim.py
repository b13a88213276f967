"""Call-label rule variants on the tuning part, out of fold at the call level too.

    python -m bench.call_label_sim

Reads only the tuning part of the emotion set. Each utterance's fused probabilities are
out of fold as ``bench.emotion_fusion.fusion_main`` computes them
(``bench.escalation_sim.oof_probabilities``: the fusion fitted with the utterance's
voice left out, the text model's probabilities from folds over the sentences, one
temperature). Each call is walked as ``bench.emotion_eval.track`` walks it: an
utterance with no recognised words is skipped (the engine labels it not at all), and
the call's label is the one after the last utterance heard.

The truth is the script's ``call_label`` (bench/emotion_scripts.py ``CALLS``):
positive if the call ends with a positive utterance, else angry if the caller was angry
at any point (one angry utterance is enough), else frustrated if frustrated at any
point, else neutral.

Every rule's thresholds are fitted by grid search as ``fit_call_rule`` fits them (the
first of the grid with the most calls right), but out of fold at the call level as
well: fitted on the calls of the other six voices (both bands), scored on the left-out
voice's calls, voice by voice. The current rule (media.emotion.CallMood) is scored the
same way, and also with the thresholds of media/emotion_fusion.json, which were fitted
on these very calls (in sample, flattering). A last row chooses the variant out of fold
too (per left-out voice, the variant and thresholds with the most right on the other
voices): the price of picking among the variants on these calls.

Recommended: the variant with the most calls right, both bands pooled, at least 3 calls
more than the current rule (scored the same way) and no fewer in either band.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

from bench.emotion_fusion import BANDS
from bench.escalation_sim import oof_probabilities
from media.emotion import FUSION, CallMood, CallRule
from media.emotion_text import LABELS

P, N, F, A = (LABELS.index(k) for k in ("positive", "neutral", "frustrated", "angry"))


@dataclass
class Call:
    band: str
    voice: str
    kind: str  # the script's template
    truth: str
    said: list[str]  # each utterance's scripted class
    heard_said: list[str]  # the scripted class of each utterance heard
    heard: np.ndarray  # fused probabilities of the utterances with words, in order
    skipped: int  # utterances with no words (not labelled by the engine)

    @property
    def upset(self) -> np.ndarray:
        return self.heard[:, F] + self.heard[:, A]


def load() -> list[Call]:
    by_band, probs = oof_probabilities()
    out = []
    for b in BANDS:
        for call, p in zip(by_band[b], probs[b], strict=True):
            kept = [(u.spoken.label, q) for u, q in zip(call, p, strict=True) if u.heard.text]
            s = call[0].spoken
            heard = np.array([q for _, q in kept]) if kept else np.zeros((0, len(LABELS)))
            said = [u.spoken.label for u in call]
            heard_said = [k for k, _ in kept]
            out.append(
                Call(
                    b, s.voice, s.kind, s.call_label, said, heard_said, heard, len(call) - len(kept)
                )
            )
    return out


# A rule: its parameters -> (call -> label); and its grid, in the order it is searched
Rule = Callable[..., Callable[[Call], str]]
GRID = [round(0.05 * k, 2) for k in range(1, 31)]  # fit_call_rule's
BARS = [round(0.05 * k, 2) for k in range(4, 20)]  # 0.20 .. 0.95, for probabilities
WELL = (0.3, 0.4, 0.5, 0.6)


def _ended_well(c: Call, well: float, back: int = 1, calm_well: float | None = None) -> bool:
    """The call ends well: one of the last ``back`` utterances heard reads positive (its
    top class, at least ``well`` sure), and none after it reads upset (top class
    frustrated or angry). ``calm_well``: in a call where no utterance read upset, the
    last utterance ends it well if it is at least this positive, top class or not."""
    h = c.heard
    if not len(h):
        return False
    top = np.argmax(h, axis=1)
    if calm_well is not None and not np.isin(top, (F, A)).any() and h[-1, P] >= calm_well:
        return True
    for i in range(len(h) - 1, max(-1, len(h) - 1 - back), -1):
        if top[i] == P and h[i, P] >= well:
            return True
        if top[i] in (F, A):
            return False
    return False


def _calm(c: Call) -> str:
    h = c.heard
    return "positive" if h[:, P].sum() > h[:, N].sum() else "neutral"


def _reading(well: float, upset: Callable[[Call], str | None]) -> Callable[[Call], str]:
    """A call-label rule: ended well; else what ``upset`` reads of the call (angry,
    frustrated, or None: not upset); else calm."""

    def label(c: Call) -> str:
        if not len(c.heard):
            return "none"
        if _ended_well(c, well):
            return "positive"
        return upset(c) or _calm(c)

    return label


def current(well: float, angry: float, upset: float, floor: float = 0.3) -> Callable[[Call], str]:
    """The engine's CallMood: ended well; else anger, then frustration and anger
    together, summed over the call above a floor per utterance."""

    def read(c: Call) -> str | None:
        if np.maximum(0.0, c.heard[:, A] - floor).sum() >= angry:
            return "angry"
        if np.maximum(0.0, c.upset - floor).sum() >= upset:
            return "frustrated"
        return None

    return _reading(well, read)


def peak(well: float, angry: float, upset: float) -> Callable[[Call], str]:
    """Ended well; else angry if one utterance is angry at least ``angry`` surely; else
    frustrated if one is upset (frustrated + angry) at least ``upset`` surely."""

    def read(c: Call) -> str | None:
        if c.heard[:, A].max() >= angry:
            return "angry"
        if c.upset.max() >= upset:
            return "frustrated"
        return None

    return _reading(well, read)


def _which_upset(h: np.ndarray, upset_rows: np.ndarray) -> str:
    """Angry or frustrated: which the upset utterances lean to, summed."""
    return "angry" if h[upset_rows, A].sum() >= h[upset_rows, F].sum() else "frustrated"


def peak_dominant(well: float, upset: float) -> Callable[[Call], str]:
    """Ended well; else upset if one utterance is upset at least ``upset`` surely, angry
    or frustrated as the upset utterances lean, summed."""

    def read(c: Call) -> str | None:
        rows = c.upset >= upset
        return _which_upset(c.heard, rows) if rows.any() else None

    return _reading(well, read)


def two_or_strong(well: float, upset: float, strong: float) -> Callable[[Call], str]:
    """Ended well; else upset if two utterances are upset at least ``upset`` surely, or
    one at least ``strong``; angry or frustrated as those utterances lean, summed."""

    def read(c: Call) -> str | None:
        rows = c.upset >= upset
        if rows.sum() >= 2 or c.upset.max() >= strong:
            return _which_upset(c.heard, rows | (c.upset >= strong))
        return None

    return _reading(well, read)


def tops(well: float) -> Callable[[Call], str]:
    """The script's own definition read off each utterance's top class: ended well;
    else angry if one utterance's top class is angry; else frustrated if one's is
    frustrated; else calm."""

    def read(c: Call) -> str | None:
        top = np.argmax(c.heard, axis=1)
        if (top == A).any():
            return "angry"
        if (top == F).any():
            return "frustrated"
        return None

    return _reading(well, read)


def with_ending(
    base: Callable[..., Callable[[Call], str]], back: int, calm: bool
) -> Callable[..., Callable[[Call], str]]:
    """``base`` with another reading of "ended well": one of the last ``back``
    utterances positive with nothing upset after it; ``calm``: a call where nothing read
    upset ends well if its last utterance is at least ``calm_well`` positive (the second
    parameter), top class or not."""

    def make(well: float, *rest: float) -> Callable[[Call], str]:
        calm_well = rest[0] if calm else None
        inner = base(9.9, *(rest[1:] if calm else rest))  # its own ending never fires

        def label(c: Call) -> str:
            if len(c.heard) and _ended_well(c, well, back, calm_well):
                return "positive"
            return inner(c)

        return label

    return make


@dataclass(frozen=True)
class Variant:
    name: str
    rule: Rule
    grid: Sequence[tuple[float, ...]]


def variants() -> list[Variant]:
    cur = list(product(WELL, GRID, GRID))
    pk = list(product(WELL, BARS, BARS))
    pd = list(product(WELL, BARS))
    tw = [(w,) for w in (0.0, *WELL)]
    two = [(w, u, s) for w, u, s in product(WELL, BARS, BARS) if s >= u]
    out = [
        Variant("current: floor-sums (floor 0.3)", current, cur),
        Variant(
            "current, floor fitted too", current, list(product(WELL, GRID, GRID, (0.2, 0.4, 0.5)))
        ),
        Variant("peak: max anger, max upset", peak, pk),
        Variant("peak upset, angry vs frustrated by which leans", peak_dominant, pd),
        Variant("2 upset, or 1 above a high bar; angry vs frustrated by lean", two_or_strong, two),
        Variant("top classes: the script's definition on each utterance's top class", tops, tw),
    ]
    calm_bars = (0.1, 0.15, 0.2, 0.25, 0.3)
    for back, calm in ((1, True), (2, False), (2, True)):
        what = (f"ending over last {back}" if back > 1 else "ending") + (
            ", calm call ends well at a lower bar" if calm else ""
        )

        def grid(g: Sequence[tuple[float, ...]], calm: bool = calm) -> Sequence[tuple[float, ...]]:
            return [(x[0], b, *x[1:]) for x in g for b in calm_bars] if calm else g

        if not calm:
            out.append(Variant(f"current + {what}", with_ending(current, back, calm), cur))
            out.append(Variant(f"top classes + {what}", with_ending(tops, back, calm), tw))
        out += [
            Variant(f"peak + {what}", with_ending(peak, back, calm), grid(pk)),
            Variant(f"peak/lean + {what}", with_ending(peak_dominant, back, calm), grid(pd)),
            Variant(
                f"2-or-strong/lean + {what}", with_ending(two_or_strong, back, calm), grid(two)
            ),
        ]
    return out


def labels(rule: Rule, grid: Sequence[tuple[float, ...]], calls: list[Call]) -> np.ndarray:
    """Whether each call is labelled right under each grid point: (grid, calls)."""
    return np.array([[f(c) == c.truth for c in calls] for f in map(lambda g: rule(*g), grid)])


def out_of_fold(
    v: Variant, calls: list[Call], right: np.ndarray
) -> tuple[np.ndarray, dict[str, tuple[float, ...]], list[str]]:
    """Each call's label right or not, its thresholds fitted on the other voices' calls
    (the first of the grid with the most right, as fit_call_rule); the thresholds per
    left-out voice; each call's label so read."""
    voices = np.array([c.voice for c in calls])
    out = np.zeros(len(calls), bool)
    chosen = {}
    guess = [""] * len(calls)
    for voice in sorted(set(voices)):
        test = voices == voice
        best = int(np.argmax(right[:, ~test].sum(axis=1)))
        out[test] = right[best, test]
        chosen[voice] = v.grid[best]
        f = v.rule(*v.grid[best])
        for i in np.flatnonzero(test):
            guess[i] = f(calls[i])
    return out, chosen, guess


def engine_label(rule: CallRule, c: Call) -> str:
    mood = CallMood(rule)
    for p in c.heard:
        mood.add(dict(zip(LABELS, map(float, p), strict=True)))
    return mood.label if len(c.heard) else "none"


def confusion(calls: list[Call], guess: list[str]) -> str:
    cols = [*LABELS, "none"] if "none" in guess else list(LABELS)
    m = Counter(zip((c.truth for c in calls), guess, strict=True))
    lines = ["| truth \\ labelled | " + " | ".join(cols) + " | right |"]
    lines.append("|---" * (len(cols) + 2) + "|")
    for t in LABELS:
        n = sum(m[(t, g)] for g in cols)
        lines.append(
            f"| {t} | " + " | ".join(str(m[(t, g)]) for g in cols) + f" | {m[(t, t)]}/{n} |"
        )
    return "\n".join(lines)


def error_kind(c: Call, guess: str) -> str:
    """What went wrong, as a supervisor would read it."""
    h = c.heard
    top = [LABELS[int(i)] for i in np.argmax(h, axis=1)]
    upset_said = [s for s in c.said if s in ("frustrated", "angry")]
    false_upset = sum(
        1
        for s, t in zip(c.heard_said, top, strict=True)
        if s in ("neutral", "positive") and t in ("frustrated", "angry")
    )
    if c.truth == "positive":
        if guess in ("frustrated", "angry") and upset_said:
            return "positive ending missed after an upset call (the upset sticks)"
        if guess in ("frustrated", "angry"):
            return "positive ending missed, and a false upset utterance"
        return "positive ending missed (last utterance not read positive)"
    if c.truth == "neutral":
        if guess in ("frustrated", "angry"):
            if len(c.said) == 1:
                return "one-utterance calm call read upset"
            n = false_upset
            return f"calm call read upset ({n} utterance{'s' if n != 1 else ''} top-labelled upset)"
        return "calm call read positive (positive ending / leaning)"
    # truth frustrated or angry
    if guess == "positive":
        return "upset call read as ending well (an utterance misread positive at the end)"
    if guess == "neutral":
        return "upset missed (no utterance upset enough)"
    if guess == "none":
        return "nothing heard"
    if c.truth == "frustrated" and guess == "angry":
        return "frustrated call read angry (anger over the bar)"
    if c.truth == "angry" and guess == "frustrated":
        return "angry call read frustrated (anger under the bar)"
    return f"{c.truth} read {guess}"


def main() -> None:
    calls = load()
    rule = CallRule(**json.loads(FUSION.read_text())["call_rule"])
    shipped = [engine_label(rule, c) for c in calls]
    # this script's reading of the current rule is the engine's, call for call
    check = current(rule.ended_well, rule.angry, rule.upset, rule.floor)
    assert all(check(c) == g for c, g in zip(calls, shipped, strict=True))
    skipped = sum(c.skipped for c in calls)
    per_band = ", ".join(f"{b} {sum(c.band == b for c in calls)}" for b in BANDS)
    print(f"\n{len(calls)} tuning calls ({per_band}); "
          f"{skipped} utterances with no words skipped, as the engine does")  # fmt: skip
    print(f"\n## The current rule, {rule} (media/emotion_fusion.json; fitted on these calls)")
    for b in BANDS:
        idx = [i for i, c in enumerate(calls) if c.band == b]
        r = sum(shipped[i] == calls[i].truth for i in idx)
        print(f"\n{b}: {r}/{len(idx)} = {r / len(idx):.3f}\n")
        print(confusion([calls[i] for i in idx], [shipped[i] for i in idx]))
    print_kinds("errors by kind", calls, shipped)
    gaps = sum(g != c.truth for c, g in zip(calls, shipped, strict=True) if c.skipped)
    print(f"- of these, in a call with an utterance skipped (no words): {gaps}")
    table(calls, shipped)


def table(calls: list[Call], shipped: list[str]) -> None:
    bands = np.array([c.band for c in calls])
    print("\n## Variants, each voice's calls scored with thresholds fitted on the other voices'\n")
    print("| rule | wide | phone | both | thresholds per left-out voice |")
    print("|---|---|---|---|---|")
    ok = np.array([g == c.truth for c, g in zip(calls, shipped, strict=True)])
    cells = " | ".join(f"{ok[bands == b].sum()}/{(bands == b).sum()}" for b in BANDS)
    print(f"| current, json thresholds (in sample) | {cells} | {ok.sum()}/{len(ok)} | |")
    results = []
    rights: list[np.ndarray] = []
    voices = np.array([c.voice for c in calls])
    for v in variants():
        rights.append(labels(v.rule, v.grid, calls))
        right, chosen, guess = out_of_fold(v, calls, rights[-1])
        per = {b: int(right[bands == b].sum()) for b in BANDS}
        results.append((v, per, int(right.sum()), guess))
        seen = Counter(chosen.values()).most_common()
        fits = "; ".join(f"{'/'.join(f'{x:g}' for x in g)} x{n}" for g, n in seen)
        cells = " | ".join(f"{per[b]}/{(bands == b).sum()}" for b in BANDS)
        print(f"| {v.name} | {cells} | {right.sum()}/{len(right)} = {right.mean():.3f} | {fits} |",
              flush=True)  # fmt: skip
    # the choice of variant made out of fold too: for each left-out voice, the variant
    # and thresholds with the most right on the other voices' calls
    nested = np.zeros(len(calls), bool)
    picked = []
    for voice in sorted(set(voices)):
        test = voices == voice
        k, g = max(
            ((k, int(np.argmax(r[:, ~test].sum(axis=1)))) for k, r in enumerate(rights)),
            key=lambda kg: rights[kg[0]][kg[1], ~test].sum(),
        )
        nested[test] = rights[k][g, test]
        picked.append(results[k][0].name)
    cells = " | ".join(f"{nested[bands == b].sum()}/{(bands == b).sum()}" for b in BANDS)
    names = "; ".join(f"{n} x{m}" for n, m in Counter(picked).items())
    print(f"| variant chosen out of fold too | {cells} | {nested.sum()}/{len(nested)} = "
          f"{nested.mean():.3f} | {names} |")  # fmt: skip
    base_v, base, base_all, _ = results[0]
    better = [
        r for r in results[1:]
        if r[2] >= base_all + 3 and all(r[1][b] >= base[b] for b in BANDS)
    ]  # fmt: skip
    if not better:
        print(f"\nrecommended: none is better than {base_v.name} ({base_all}) by 3 calls pooled "
              "without being worse in a band")  # fmt: skip
        return
    v, per, n, guess = max(better, key=lambda r: r[2])
    print(f"\nrecommended: {v.name}: {n} right pooled (current {base_all}); "
          + ", ".join(f"{b} {per[b]} (current {base[b]})" for b in BANDS))  # fmt: skip
    for b in BANDS:
        idx = [i for i, c in enumerate(calls) if c.band == b]
        print(f"\n{b}, {v.name}, out of fold:\n")
        print(confusion([calls[i] for i in idx], [guess[i] for i in idx]))
    print_kinds("its errors by kind", calls, guess)


def print_kinds(title: str, calls: list[Call], guess: list[str]) -> None:
    """How many calls ``guess`` got wrong, by kind of error, per band."""
    kinds = Counter(
        (c.band, error_kind(c, g)) for c, g in zip(calls, guess, strict=True) if g != c.truth
    )
    print(f"\n{title} (wide / phone / both):\n")
    for k in sorted(
        {k for _, k in kinds}, key=lambda k: (-(kinds[("wide", k)] + kinds[("phone", k)]), k)
    ):
        w, p = kinds[("wide", k)], kinds[("phone", k)]
        print(f"- {k}: {w} / {p} / {w + p}")


if __name__ == "__main__":
    main()
