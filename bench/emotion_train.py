"""Train the emotion models from the tuning side only, and write their weights.

    python -m bench.emotion_train text     # media/emotion_text.json from the corpus
    python -m bench.emotion_train fusion   # media/emotion_fusion.json from the tuning audio

The text model is a multinomial logistic regression over ``media.emotion_text.features``
of the tuning sentences and the text-only corpus (bench/emotion_scripts.py), its L2
strength picked by 5-fold cross-validation. The fusion model learns, from the tuning
part's audio as the recognizer heard it (bench/emotion_set.py), how much to trust the
words against the voice: its text inputs are out-of-fold (each call's text
probabilities come from a text model that never saw that call's sentences), so it does
not learn to trust words more than they deserve. Its probabilities are then calibrated
by one temperature, fitted on the same out-of-fold predictions.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.emotion_scripts import PARTS, TEXT_ONLY, TEXT_ONLY_2, TUNING_SIDE
from media import emotion_text
from media.emotion_text import LABELS

Matrix = np.ndarray


def softmax(z: Matrix) -> Matrix:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_logistic(
    x: Matrix, y: np.ndarray, l2: float, steps: int = 800, weights: np.ndarray | None = None
) -> Matrix:
    """Multinomial logistic regression, full-batch gradient descent with momentum;
    weights (features x classes). The bias is the first column of ``x`` and is not
    penalised. ``weights``: how much each row counts (default: alike)."""
    n, d = x.shape
    rows = np.ones(n) if weights is None else weights
    rows = (rows / rows.sum())[:, None]
    w = np.zeros((d, len(LABELS)))
    v = np.zeros_like(w)
    onehot = np.eye(len(LABELS))[y]
    penalty = np.full((d, 1), l2)
    penalty[0] = 0.0
    lr = 0.5
    for _ in range(steps):
        grad = x.T @ (rows * (softmax(x @ w) - onehot)) + penalty * w
        v = 0.9 * v - lr * grad
        w = w + v
    return w


Item = tuple[str, str, int, float]  # sentence, text, class, weight
# How much the recognizer's versions of a tuning sentence count, all of them together,
# against the sentence as written (1). Off: by the fusion's voice-by-voice accuracy on
# the tuning audio, they did not help. Fourteen copies at full weight (7 voices, 2
# bands) gave 0.77 against 0.81 without; weighing 1 together, 0.810 against 0.824.
HEARD_WEIGHT = 0.0


def readable_json(d: dict[str, object]) -> str:
    """JSON with one weight row per line: a retrained model's diff shows what moved."""
    parts = []
    for k, v in d.items():
        if isinstance(v, dict) and len(v) > 8:
            inner = ",\n".join(f" {json.dumps(a)}: {json.dumps(b)}" for a, b in v.items())
            parts.append(f"{json.dumps(k)}: {{\n{inner}\n}}")
        elif isinstance(v, list) and len(v) > 8:
            inner = ",\n".join(f" {json.dumps(x)}" for x in v)
            parts.append(f"{json.dumps(k)}: [\n{inner}\n]")
        else:
            parts.append(f"{json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def corpus(heard_weight: float = HEARD_WEIGHT) -> list[Item]:
    """Each tuning and text-only sentence as written, and each tuning utterance as the
    recognizer heard it at 16 kHz and over a phone line (its mistakes are what the
    model meets in calls), those together weighing ``heard_weight``."""
    from bench.emotion_set import OUT, hear, plan

    out: list[Item] = []
    for pools in [*(PARTS[p] for p in TUNING_SIDE), TEXT_ONLY, TEXT_ONLY_2]:
        for label, sentences in pools.items():
            out += [(s, s, LABELS.index(label), 1.0) for s in sentences]
    if heard_weight <= 0 or not OUT.exists():  # the set: bench.emotion_set
        return out
    heard: dict[str, list[tuple[str, int]]] = {}
    for call in (c for part in TUNING_SIDE for c in plan(part)):
        for u in call:
            for band in ("wide", "phone"):
                text = hear(u, band).text
                if text:
                    heard.setdefault(u.sentence, []).append((text, LABELS.index(u.label)))
    for sentence, versions in heard.items():
        out += [(sentence, t, c, heard_weight / len(versions)) for t, c in versions]
    return out


def _design(texts: Sequence[str], names: list[str] | None = None) -> tuple[Matrix, list[str]]:
    feats = [emotion_text.features(t) for t in texts]
    if names is None:
        names = ["bias"] + sorted({k for f in feats for k in f} - {"bias"})
    index = {k: i for i, k in enumerate(names)}
    x = np.zeros((len(texts), len(names)))
    for r, f in enumerate(feats):
        for k, v in f.items():
            if k in index:
                x[r, index[k]] = v
    return x, names


def train_text(items: list[Item], l2: float) -> emotion_text.TextModel:
    # every text also as a plain recognizer writes it: lower case, no punctuation
    texts = [t for _, t, _, _ in items] + [
        t.lower().replace("!", "").replace("?", "") for _, t, _, _ in items
    ]
    y = np.array([c for _, _, c, _ in items] * 2)
    x, names = _design(texts)
    w = fit_logistic(x, y, l2, weights=np.array([w for _, _, _, w in items] * 2))
    return emotion_text.TextModel({n: [float(v) for v in w[i]] for i, n in enumerate(names)})


def cross_validate(items: list[Item], l2: float, folds: int = 5) -> float:
    """Accuracy on sentences left out (as written and as heard), 5 folds."""
    sentences = sorted({s for s, _, _, _ in items})
    random.Random(7).shuffle(sentences)
    right = total = 0
    for k in range(folds):
        held = set(sentences[k::folds])
        model = train_text([c for c in items if c[0] not in held], l2)
        for s, t, c, _ in items:
            if s in held and s == t:  # scored on sentences as written
                p = model.probabilities(t)
                right += max(p, key=lambda lab: p[lab]) == LABELS[c]
                total += 1
    return right / total


def text_main() -> None:
    items = corpus()
    scores = [(cross_validate(items, l2), l2) for l2 in (0.0003, 0.001, 0.003, 0.01, 0.03)]
    for acc, l2 in scores:
        print(f"text model, l2 {l2}: 5-fold accuracy on the tuning corpus {acc:.3f}")
    best = max(scores)
    model = train_text(items, best[1])
    weights = {k: [round(v, 4) for v in w] for k, w in model.weights.items()
               if max(abs(v) for v in w) >= 1e-3}  # fmt: skip
    emotion_text.WEIGHTS.write_text(
        readable_json({"l2": best[1], "labels": LABELS, "weights": weights})
    )
    print(f"wrote {emotion_text.WEIGHTS} ({len(weights)} features, l2 {best[1]})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["text", "fusion"])
    a = ap.parse_args()
    if a.what == "text":
        text_main()
    else:
        from bench.emotion_fusion import fusion_main

        fusion_main(Path(__file__).parent)
