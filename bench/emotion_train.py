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

from bench.emotion_scripts import TEXT_ONLY, TUNING
from media import emotion_text
from media.emotion_text import LABELS

Matrix = np.ndarray


def softmax(z: Matrix) -> Matrix:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_logistic(x: Matrix, y: np.ndarray, l2: float, steps: int = 800) -> Matrix:
    """Multinomial logistic regression, full-batch gradient descent with momentum;
    weights (features x classes). The bias is the first column of ``x`` and is not
    penalised."""
    n, d = x.shape
    w = np.zeros((d, len(LABELS)))
    v = np.zeros_like(w)
    onehot = np.eye(len(LABELS))[y]
    penalty = np.full((d, 1), l2)
    penalty[0] = 0.0
    lr = 0.5
    for _ in range(steps):
        grad = x.T @ (softmax(x @ w) - onehot) / n + penalty * w
        v = 0.9 * v - lr * grad
        w = w + v
    return w


def corpus() -> list[tuple[str, str, int]]:
    """(sentence, text, class) of each tuning and text-only sentence, as written.

    Tried and left out: adding each tuning utterance as the recognizer heard it (both
    bands). The fusion's voice-by-voice accuracy on the tuning audio fell from 0.81 to
    0.77: fourteen heard copies of each tuning sentence outweigh the rest of the corpus."""
    out = []
    for pools in (TUNING, TEXT_ONLY):
        for label, sentences in pools.items():
            out += [(s, s, LABELS.index(label)) for s in sentences]
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


def train_text(items: list[tuple[str, str, int]], l2: float) -> emotion_text.TextModel:
    # every text also as a plain recognizer writes it: lower case, no punctuation
    texts = [t for _, t, _ in items] + [
        t.lower().replace("!", "").replace("?", "") for _, t, _ in items
    ]
    y = np.array([c for _, _, c in items] * 2)
    x, names = _design(texts)
    w = fit_logistic(x, y, l2)
    return emotion_text.TextModel({n: [float(v) for v in w[i]] for i, n in enumerate(names)})


def cross_validate(items: list[tuple[str, str, int]], l2: float, folds: int = 5) -> float:
    """Accuracy on sentences left out (as written and as heard), 5 folds."""
    sentences = sorted({s for s, _, _ in items})
    random.Random(7).shuffle(sentences)
    right = total = 0
    for k in range(folds):
        held = set(sentences[k::folds])
        model = train_text([c for c in items if c[0] not in held], l2)
        for s, t, c in items:
            if s in held:
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
        json.dumps({"l2": best[1], "labels": LABELS, "weights": weights}, indent=0) + "\n"
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
