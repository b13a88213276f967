"""Live emotion per utterance: acoustic arousal + text valence -> label.

Theory of operation
-------------------
Arousal comes from prosody. For each utterance we measure, with numpy only:
  * F0 (autocorrelation pitch per 40 ms window, voiced windows only): median
    and range in semitones;
  * RMS energy of the voiced windows in dBFS;
  * speaking rate in words per second (from the recognizer's word times);
  * pause ratio (unvoiced share of the utterance, from the VAD).
Each feature is compared with the *caller's* baseline: the mean of their first
few utterances. Loudness and pitch have no population norm (microphones, gain
and voices differ too much), so they count only once the caller has spoken;
rate and pauses start from population norms that the caller's own values pull
towards them (shrinkage). A naturally loud or high-pitched caller is therefore
neutral, while getting louder, higher or faster than they were still registers.
Weighted z-scores are squashed with tanh into arousal in [-1, 1].

Valence comes from the words: VADER's compound score in [-1, 1]. VADER reads
punctuation and capitals ("TERRIBLE!!!" is worse than "terrible"), so it gets the
transcript as written, only with typographic apostrophes folded: its negations are
spelled "don't", and "don’t" is not one of them.

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

from media.asr.text import fold
from media.audio import ANALYSIS_RATE

LABELS = ("neutral", "positive", "frustrated", "angry")
F0_MIN, F0_MAX = 60.0, 400.0
WINDOW = int(0.04 * ANALYSIS_RATE)
HOP = int(0.02 * ANALYSIS_RATE)
VOICING_THRESHOLD = 0.5
OCTAVE_TOLERANCE = 0.93
_HANN = np.hanning(WINDOW)
_HANN_AC = np.maximum(np.correlate(_HANN, _HANN, "full")[WINDOW - 1 :], 1e-3 * float(_HANN @ _HANN))


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
    spec = np.fft.rfft(frames * _HANN, nfft, axis=1)
    # Dividing by the window's own autocorrelation undoes its taper, so a long
    # period (low voice) is not penalised against its octave (Boersma 1993).
    ac = np.fft.irfft(np.abs(spec) ** 2, nfft, axis=1)[:, :WINDOW] / _HANN_AC
    lag_min, lag_max = int(rate / F0_MAX), int(rate / F0_MIN)
    seg = ac[:, lag_min:lag_max]
    rows = np.arange(n)
    # The peak at twice the period is often as high as the true one (octave
    # errors); take the *first* lag that comes close to the maximum, then climb to
    # its local top.
    top = seg.max(axis=1)
    best = np.argmax(seg >= OCTAVE_TOLERANCE * top[:, None], axis=1)
    for _ in range(lag_max - lag_min):
        step = (best + 1 < seg.shape[1]) & (
            seg[rows, np.minimum(best + 1, seg.shape[1] - 1)] > seg[rows, best]
        )
        if not step.any():
            break
        best = best + step
    peak = seg[rows, best] / np.maximum(ac[:, 0], 1e-12)
    i = best + lag_min
    # parabolic interpolation around the peak for sub-sample lag accuracy
    a = ac[rows, np.maximum(i - 1, 0)]
    b = ac[rows, i]
    c = ac[rows, np.minimum(i + 1, WINDOW - 1)]
    denom = a - 2 * b + c
    safe = np.where(np.abs(denom) > 1e-12, denom, 1.0)
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / safe, 0.0)
    f0 = rate / (i + np.clip(shift, -1, 1))
    loud_enough = energy > max(float(energy.max()) * 10 ** (-30 / 20), 10 ** (-55 / 20))
    voiced = (peak > VOICING_THRESHOLD) & loud_enough
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
        # fold residual octave errors back towards the median before measuring spread
        st = np.where(st - median > 9, st - 12, np.where(median - st > 9, st + 12, st))
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
    call_label: str  # the caller's state over the call so far (see CALL_ALPHA)
    call_scores: dict[str, float]


def label_scores(valence: float, arousal: float) -> dict[str, float]:
    """Softmax over four hand-set logits in the (valence, arousal) plane.

    Anger needs negative words *and* agitation; negative words said calmly read as
    frustration; agitation with neutral words stays neutral (it may be urgency or
    excitement, and the words have not said which).
    """
    neg, pos, agitation = max(-valence, 0.0), max(valence, 0.0), max(arousal, 0.0)
    logits = {
        "neutral": 1.0 - 3.0 * (neg + pos) - 0.8 * agitation,
        "positive": 4.0 * pos - 0.6,
        "frustrated": 4.0 * neg * (1.0 - 0.5 * agitation) - 0.8,
        "angry": 5.0 * neg * (0.4 + agitation) + agitation - 1.5,
    }
    top = max(logits.values())
    exp = {k: math.exp(v - top) for k, v in logits.items()}
    total = sum(exp.values())
    return {k: round(v / total, 4) for k, v in exp.items()}


# Rate and pauses have useful population norms; loudness and pitch depend on the
# microphone, its gain and the speaker, so they are judged only against how this
# caller sounded in their first utterances.
POPULATION = {"rate": 3.3, "pause": 0.25}
SCALE = {"f0": 2.0, "range": 3.0, "energy": 3.0, "rate": 0.8, "pause": 0.15}
WEIGHT = {"f0": 0.8, "range": 0.4, "energy": 1.0, "rate": 0.6, "pause": -0.3}


@dataclass
class CallerBaseline:
    """Mean features of the caller's first ``size`` utterances (then frozen).

    Population norms count as ``prior_weight`` pseudo-utterances where they exist;
    features without one give no evidence until the caller has spoken once.
    """

    size: int = 3
    prior_weight: float = 2.0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    utterances: int = 0

    def mean(self, key: str) -> float | None:
        n = self.counts.get(key, 0)
        if key in POPULATION:
            w = self.prior_weight
            return (POPULATION[key] * w + self.sums.get(key, 0.0)) / (w + n)
        return self.sums[key] / n if n else None

    def add(self, values: dict[str, float]) -> None:
        if self.utterances >= self.size:
            return
        self.utterances += 1
        for key, value in values.items():
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


# Smoothing of call-level scores: upset states take hold fast and fade slowly, so a
# caller who was angry one sentence ago still shows as upset to the agent.
CALL_ALPHA = {"neutral": 0.3, "positive": 0.3, "frustrated": 0.6, "angry": 0.6}


class EmotionTracker:
    """Per-leg emotion state: baseline, last estimate, and the call trend."""

    _vader: SentimentIntensityAnalyzer | None = None

    def __init__(self, baseline_utterances: int = 3, trend_alpha: float = 0.4) -> None:
        self.baseline = CallerBaseline(baseline_utterances)
        self.trend_alpha = trend_alpha
        self.trend = 0.0
        self.count = 0
        self.call_scores: dict[str, float] = {}

    @classmethod
    def valence(cls, text: str) -> float:
        if not text.strip():
            return 0.0
        if cls._vader is None:
            cls._vader = SentimentIntensityAnalyzer()
        return float(cls._vader.polarity_scores(fold(text))["compound"])

    def arousal(self, p: Prosody) -> float:
        z = 0.0
        for key, value in _feature_values(p).items():
            mean = self.baseline.mean(key)
            if mean is not None:
                z += WEIGHT[key] * (value - mean) / SCALE[key]
        return math.tanh(z / 2.0)

    def update(self, p: Prosody, text: str) -> EmotionEstimate:
        arousal = self.arousal(p)  # against the baseline *before* this utterance
        self.baseline.add(_feature_values(p))
        valence = self.valence(text)
        scores = label_scores(valence, arousal)
        label = max(scores, key=lambda k: scores[k])
        mood = max(-1.0, min(1.0, valence - 0.5 * max(arousal, 0.0) * (valence < 0.05)))
        if self.count == 0:
            self.trend = mood
            self.call_scores = dict(scores)
        else:
            self.trend = self.trend_alpha * mood + (1 - self.trend_alpha) * self.trend
            for k, v in scores.items():
                alpha = CALL_ALPHA[k] if v >= self.call_scores[k] else 1 - CALL_ALPHA[k]
                self.call_scores[k] = alpha * v + (1 - alpha) * self.call_scores[k]
        self.count += 1
        call_scores = {k: round(v, 4) for k, v in self.call_scores.items()}
        return EmotionEstimate(
            label,
            round(arousal, 4),
            round(valence, 4),
            scores,
            round(self.trend, 4),
            p,
            max(call_scores, key=lambda k: call_scores[k]),
            call_scores,
        )
