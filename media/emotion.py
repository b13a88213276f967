"""Live emotion per utterance: acoustic arousal + text valence -> label.

Theory of operation
-------------------
Arousal comes from prosody. For each utterance we measure, with numpy only:
  * F0 (autocorrelation pitch per 40 ms window, voiced windows only): median
    and range in semitones;
  * RMS energy of the voiced windows in dBFS;
  * speaking rate in words per second (from the recognizer's word times);
  * pause ratio (unvoiced share of the utterance, from the VAD).
Each feature is compared with the *caller's* baseline, a running mean that starts
at population norms and moves towards this caller's own first utterances
(Bayesian shrinkage with ``prior_weight`` pseudo-utterances). A naturally loud or
high-pitched caller therefore drifts back to neutral arousal, while a change
relative to how they sounded at the start still registers. Weighted z-scores are
squashed with tanh into arousal in [-1, 1].

Valence comes from the words: VADER's compound score in [-1, 1].

The label is the arg-max of four scores (neutral, positive, frustrated, angry)
computed from (valence, arousal) by ``label_scores``; the call trend is an
exponential moving average of per-utterance mood (valence pulled down by
agitation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from media.audio import ANALYSIS_RATE

LABELS = ("neutral", "positive", "frustrated", "angry")
F0_MIN, F0_MAX = 60.0, 400.0
WINDOW = int(0.04 * ANALYSIS_RATE)
HOP = int(0.02 * ANALYSIS_RATE)
VOICING_THRESHOLD = 0.45


@dataclass(frozen=True, slots=True)
class Prosody:
    f0_median_st: float | None  # semitones re 100 Hz; None when nothing was voiced
    f0_range_st: float
    energy_db: float
    rate_wps: float | None
    pause_ratio: float
    voiced_share: float


def _semitones(hz: np.ndarray) -> np.ndarray:
    return 12.0 * np.log2(hz / 100.0)


def pitch_track(samples: np.ndarray, rate: int = ANALYSIS_RATE) -> np.ndarray:
    """F0 in Hz per 40 ms window (20 ms hop); 0 where the window is unvoiced."""
    x = samples.astype(np.float64) / 32768.0
    if len(x) < WINDOW:
        return np.zeros(0)
    n = 1 + (len(x) - WINDOW) // HOP
    idx = np.arange(WINDOW)[None, :] + HOP * np.arange(n)[:, None]
    frames = x[idx]
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = np.sqrt((frames**2).mean(axis=1))
    # autocorrelation of every window at once via FFT
    nfft = 1 << (2 * WINDOW - 1).bit_length()
    spec = np.fft.rfft(frames * np.hanning(WINDOW), nfft, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, nfft, axis=1)[:, :WINDOW]
    lag_min, lag_max = int(rate / F0_MAX), int(rate / F0_MIN)
    seg = ac[:, lag_min:lag_max]
    best = seg.argmax(axis=1)
    peak = seg[np.arange(n), best] / np.maximum(ac[:, 0], 1e-12)
    lag = (best + lag_min).astype(np.float64)
    # parabolic interpolation around the peak for sub-sample lag accuracy
    i = best + lag_min
    ok = (i > 0) & (i < WINDOW - 1)
    a, b, c = (
        ac[np.arange(n), i - 1],
        ac[np.arange(n), i],
        ac[np.arange(n), np.minimum(i + 1, WINDOW - 1)],
    )
    denom = a - 2 * b + c
    shift = np.where(
        ok & (np.abs(denom) > 1e-12), 0.5 * (a - c) / np.where(denom == 0, 1, denom), 0
    )
    f0 = rate / (lag + shift)
    voiced = (peak > VOICING_THRESHOLD) & (energy > 10 ** (-50 / 20))
    return np.where(voiced, f0, 0.0)


def prosody(
    samples: np.ndarray,
    *,
    words: int = 0,
    speech_seconds: float | None = None,
    pause_ratio: float = 0.0,
) -> Prosody:
    f0 = pitch_track(samples)
    voiced = f0 > 0
    x = samples.astype(np.float64) / 32768.0
    if voiced.any():
        st = _semitones(f0[voiced])
        median: float | None = float(np.median(st))
        spread = float(np.percentile(st, 90) - np.percentile(st, 10))
        # energy over voiced windows only, so pauses don't dilute loudness
        idx = np.flatnonzero(voiced)
        parts = [x[j * HOP : j * HOP + WINDOW] for j in idx]
        rms = float(np.sqrt(np.mean(np.concatenate(parts) ** 2)))
    else:
        median, spread = None, 0.0
        rms = float(np.sqrt(np.mean(x**2))) if len(x) else 0.0
    energy = 20 * math.log10(rms) if rms > 1e-6 else -120.0
    duration = speech_seconds if speech_seconds is not None else len(samples) / ANALYSIS_RATE
    rate = words / duration if words and duration > 0.3 else None
    return Prosody(
        median, spread, energy, rate, pause_ratio, float(voiced.mean()) if len(f0) else 0.0
    )


@dataclass(frozen=True, slots=True)
class EmotionEstimate:
    label: str
    arousal: float
    valence: float
    scores: dict[str, float]
    trend: float
    prosody: Prosody


def label_scores(valence: float, arousal: float) -> dict[str, float]:
    """Softmax over four hand-set logits in the (valence, arousal) plane."""
    agitation = max(arousal, 0.0)
    logits = {
        "neutral": 1.0 - 3.0 * abs(valence) - 1.5 * agitation,
        "positive": 4.0 * valence - 0.6,
        "frustrated": -4.0 * valence - 0.8 - 1.0 * agitation,
        "angry": -3.0 * valence - 1.6 + 3.5 * agitation,
    }
    top = max(logits.values())
    exp = {k: math.exp(v - top) for k, v in logits.items()}
    total = sum(exp.values())
    return {k: round(v / total, 4) for k, v in exp.items()}


# Population norms for conversational speech (starting point of every baseline)
# and how much a one-sigma change moves arousal.
PRIOR = {"f0": 2.0, "range": 6.0, "energy": -26.0, "rate": 2.6, "pause": 0.25}
SCALE = {"f0": 2.5, "range": 3.0, "energy": 4.0, "rate": 0.6, "pause": 0.15}
WEIGHT = {"f0": 0.8, "range": 0.4, "energy": 1.0, "rate": 0.6, "pause": -0.3}


@dataclass
class CallerBaseline:
    prior_weight: float = 3.0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def mean(self, key: str) -> float:
        n = self.counts.get(key, 0)
        return (PRIOR[key] * self.prior_weight + self.sums.get(key, 0.0)) / (self.prior_weight + n)

    def add(self, key: str, value: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value
        self.counts[key] = self.counts.get(key, 0) + 1


def _feature_values(p: Prosody) -> dict[str, float]:
    values = {"energy": p.energy_db, "pause": p.pause_ratio}
    if p.f0_median_st is not None:
        values["f0"] = p.f0_median_st
        values["range"] = p.f0_range_st
    if p.rate_wps is not None:
        values["rate"] = p.rate_wps
    return values


class EmotionTracker:
    """Per-leg emotion state: baseline, last estimate, and the call trend."""

    _vader: SentimentIntensityAnalyzer | None = None

    def __init__(self, prior_weight: float = 3.0, trend_alpha: float = 0.4) -> None:
        self.baseline = CallerBaseline(prior_weight)
        self.trend_alpha = trend_alpha
        self.trend = 0.0
        self.count = 0

    @classmethod
    def valence(cls, text: str) -> float:
        if not text.strip():
            return 0.0
        if cls._vader is None:
            cls._vader = SentimentIntensityAnalyzer()
        return float(cls._vader.polarity_scores(text)["compound"])

    def arousal(self, p: Prosody) -> float:
        values = _feature_values(p)
        z = sum(WEIGHT[k] * (v - self.baseline.mean(k)) / SCALE[k] for k, v in values.items())
        return math.tanh(z / 2.0)

    def update(self, p: Prosody, text: str) -> EmotionEstimate:
        arousal = self.arousal(p)  # against the baseline *before* this utterance
        for k, v in _feature_values(p).items():
            self.baseline.add(k, v)
        valence = self.valence(text)
        scores = label_scores(valence, arousal)
        label = max(scores, key=lambda k: scores[k])
        mood = max(-1.0, min(1.0, valence - 0.5 * max(arousal, 0.0) * (valence < 0.05)))
        self.trend = (
            mood
            if self.count == 0
            else (self.trend_alpha * mood + (1 - self.trend_alpha) * self.trend)
        )
        self.count += 1
        return EmotionEstimate(
            label, round(arousal, 4), round(valence, 4), scores, round(self.trend, 4), p
        )
