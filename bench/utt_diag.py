"""Per-utterance emotion errors on the tuning part, out of fold (reads no other part).

    python -m bench.utt_diag [--list] [--why] [--split FILE]

Per band: the fused confusion (each voice left out in turn, as ``fusion_main`` and
``bench.escalation_sim.oof_probabilities`` compute it, with the inputs, prior weight and
L2 of media/emotion_fusion.json), upset recall and precision, and the upset utterances
read with an upset probability under 0.10. ``--list`` prints those with the heard
text, the out-of-fold text model's probabilities and the voice-only model's (fitted
out of fold the same way). ``--why`` sorts every upset utterance read neutral or
positive: words lost by the recognizer (the sentence as written reads upset to the
out-of-fold text model, as heard it does not), phrasing the text model does not know
(neither reads upset), or heard upset and outvoted; and whether the voice alone read it
upset. ``--split FILE``: upset recall on the sentences listed in FILE (say, those looked
at while choosing a change) and on the rest.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass

import numpy as np

from bench.emotion_fusion import (
    BANDS,
    FOLDS,
    INPUTS,
    Said,
    _stack,
    _temperature,
    input_names,
    oof_logits,
    softmax,
    tuning_parts,
    voice_names,
)
from bench.emotion_train import corpus, train_text
from media.emotion import FUSION
from media.emotion_text import LABELS, WEIGHTS

UPSET = (LABELS.index("frustrated"), LABELS.index("angry"))


@dataclass
class Oof:
    y: np.ndarray  # true class per utterance (wide calls, then phone)
    fused: np.ndarray  # out-of-fold fused probabilities
    voice: np.ndarray  # out-of-fold voice-only probabilities
    text: np.ndarray  # out-of-fold text probabilities of the heard text
    utts: list[tuple[str, Said]]  # band, utterance

    def upset(self, p: np.ndarray) -> np.ndarray:
        return p[:, UPSET[0]] + p[:, UPSET[1]]


def oof_all() -> Oof:
    chosen = json.loads(FUSION.read_text())
    names, pw, l2 = chosen["names"], chosen["prior_weight"], chosen["l2"]
    inputs = next(k for k in INPUTS if input_names(k) == names)
    by_band, band_priors, text_p = tuning_parts()
    probs = {}
    for key, nm in (("fused", names), ("voice", voice_names(inputs))):
        x, y, g, _ = _stack(by_band, text_p, band_priors, pw, nm)
        oof = oof_logits(x, y, g, l2)
        t, _ = _temperature(oof, y)
        probs[key] = softmax(oof / t)
    utts = [(b, u) for b in BANDS for call in by_band[b] for u in call]
    text = np.array(
        [[text_p[b][(u.spoken.call, u.spoken.position)][k] for k in LABELS] for b, u in utts]
    )
    return Oof(y, probs["fused"], probs["voice"], text, utts)


def report(d: Oof, listing: bool) -> None:
    band = np.array([b for b, _ in d.utts])
    pred = np.argmax(d.fused, axis=1)
    text_up, voice_up = d.upset(d.text), d.upset(d.voice)
    for b in BANDS:
        m = band == b
        print(f"\n== {b}: {m.sum()} utterances, fused accuracy {np.mean(pred[m] == d.y[m]):.3f}, "
              f"text alone {np.mean(np.argmax(d.text[m], 1) == d.y[m]):.3f}, "
              f"voice alone {np.mean(np.argmax(d.voice[m], 1) == d.y[m]):.3f}")  # fmt: skip
        print("truth \\ read   " + " ".join(f"{lab[:6]:>6}" for lab in LABELS))
        for k, lab in enumerate(LABELS):
            row = [int(((d.y == k) & (pred == j) & m).sum()) for j in range(len(LABELS))]
            print(f"{lab:<13} " + " ".join(f"{v:>6}" for v in row))
        truth, read = np.isin(d.y, UPSET) & m, np.isin(pred, UPSET) & m
        print(f"upset recall {(truth & read).sum() / truth.sum():.3f}, "
              f"precision {(truth & read).sum() / max(read.sum(), 1):.3f}")  # fmt: skip
        low = truth & (d.upset(d.fused) < 0.10)
        misheard = np.array(
            [u.heard.text.strip().lower().rstrip(".?!") != u.spoken.sentence.lower().rstrip(".?!")
             for _, u in d.utts]
        )  # fmt: skip
        print(f"upset read with upset p < 0.10: {low.sum()} of {truth.sum()}; of them text "
              f"upset < 0.10: {(low & (text_up < 0.1)).sum()}, voice alone upset >= 0.5: "
              f"{(low & (voice_up >= 0.5)).sum()}, heard otherwise than said: "
              f"{(low & misheard).sum()}")  # fmt: skip
        if listing:
            for i in np.where(low)[0]:
                u = d.utts[i][1]
                print(f"  [{u.spoken.label} voice {u.spoken.voice}] heard {u.heard.text!r}\n"
                      f"      said {u.spoken.sentence!r}\n      text {np.round(d.text[i], 2)} "
                      f"voice {np.round(d.voice[i], 2)} "
                      f"fused {np.round(d.fused[i], 2)}")  # fmt: skip


def oof_written(d: Oof) -> dict[str, float]:
    """The upset probability of each tuning sentence as written, from the text model of
    the fold that left it out (``oof_text``'s folds)."""
    items = corpus()
    sentences = sorted({s for s, _, _, _ in items})
    random.Random(11).shuffle(sentences)
    l2 = json.loads(WEIGHTS.read_text())["l2"]
    wanted = {u.spoken.sentence for _, u in d.utts}
    out: dict[str, float] = {}
    for k in range(FOLDS):
        held = set(sentences[k::FOLDS]) & wanted
        model = train_text([c for c in items if c[0] not in held], l2)
        for s in held:
            p = model.probabilities(s)
            out[s] = p["frustrated"] + p["angry"]
    return out


def breakdown(d: Oof) -> None:
    written = oof_written(d)
    pred = np.argmax(d.fused, axis=1)
    text_up, voice_up = d.upset(d.text), d.upset(d.voice)
    for b in BANDS:
        idx = [i for i, (bb, _) in enumerate(d.utts)
               if bb == b and d.y[i] in UPSET and pred[i] not in UPSET]  # fmt: skip
        kinds: dict[str, int] = {}
        sents: dict[str, int] = {}
        for i in idx:
            s = d.utts[i][1].spoken.sentence
            w_up, h_up = written[s] >= 0.5, text_up[i] >= 0.5
            words = (
                "heard reads upset (outvoted)" if h_up
                else "written reads upset, heard does not (misrecognition)" if w_up
                else "written and heard read calm (phrasing unknown)"
            )  # fmt: skip
            key = f"{words}; voice alone {'upset' if voice_up[i] >= 0.5 else 'calm'}"
            kinds[key] = kinds.get(key, 0) + 1
            sents[s] = sents.get(s, 0) + 1
        print(f"\n{b}: {len(idx)} upset utterances read neutral/positive")
        for k, v in sorted(kinds.items()):
            print(f"  {v:>3}  {k}")
        top = sorted(sents.items(), key=lambda t: -t[1])[:8]
        print(f"  distinct sentences: {len(sents)}; most repeated: "
              + "; ".join(f"{n}x {s!r}" for s, n in top))  # fmt: skip


def split(d: Oof, seen: set[str]) -> None:
    pred = np.argmax(d.fused, axis=1)
    for b in BANDS:
        for name, want in (("looked at", True), ("the rest", False)):
            idx = [
                i
                for i, (bb, u) in enumerate(d.utts)
                if bb == b and d.y[i] in UPSET and (u.spoken.sentence in seen) == want
            ]
            r = sum(pred[i] in UPSET for i in idx)
            n = max(len(idx), 1)
            print(f"{b} upset recall, sentences {name}: {r}/{len(idx)} = {r / n:.3f}")


if __name__ == "__main__":
    d = oof_all()
    report(d, "--list" in sys.argv)
    if "--why" in sys.argv:
        breakdown(d)
    if "--split" in sys.argv:
        with open(sys.argv[sys.argv.index("--split") + 1]) as f:
            split(d, {line.strip() for line in f if line.strip()})
