"""Live emotion per utterance: the voice and the words, fused, with a calibrated
confidence and the evidence behind it.

Theory of operation
-------------------
The voice. For each utterance we measure, with numpy only:
  * F0 (autocorrelation pitch per 40 ms window, voiced windows only): median and
    range in semitones;
  * RMS energy of the voiced windows in dBFS;
  * spectral centroid of the voiced windows (100-4000 Hz, so both bands compare);
  * speaking rate in words per second (from the recognizer's word times);
  * pause ratio (unvoiced share of the utterance, from the VAD).
Each is compared with the caller's usual (``Baseline``): a population prior per band
(wideband or phone line), learned from the tuning part's neutral utterances and
counted as a few utterances, pulled towards the caller's own calm utterances as the
call goes on. So the first utterance is already judged (against the population), and
a naturally loud caller stops reading as agitated once they have spoken calmly.

The words. ``media/emotion_text.py``: a text model for contact-center speech, where
courtesy is neutral and complaints, demands, threats and sarcasm are not.

Fusion. A multinomial logistic regression over the words' log-probabilities, the
voice's z-scores and the voice crossed with how upset the words are, learned on the
tuning part (``bench/emotion_train.py fusion``), then divided by one temperature so its
probabilities are calibrated: a label given with 0.8 is right about 80 % of the time
(``make eval`` prints the reliability table). An utterance the recognizer heard no
words in is judged by a second regression over the voice alone, fitted the same way;
its voice does not teach the caller's baseline. The call's label is an exponential
moving average of the utterances' probabilities where upset states take hold fast and
fade slowly; the trend is a moving average of mood (the words' valence pulled down by
agitation).

A typed line (a chat) has words and no voice: ``EmotionTracker.update_words`` judges
it by the text model alone. The fusion was trained on voice and words together, so it
is not fed a voice that was never heard; the line teaches the voice baseline nothing,
and it counts towards the call's label and trend like an utterance.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from media.audio import ANALYSIS_RATE
from media.emotion_text import LABELS, TextModel, text_cues

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
    # spectral centroid of the voiced windows (100-4000 Hz), semitones re 1 kHz:
    # tense, raised voices put more energy into the upper formants
    brightness_st: float | None = None


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
        windows = voiced_windows(x, f0)
        rms = float(np.sqrt(np.mean(windows**2)))
        bright: float | None = brightness(windows)
    else:
        median, spread, bright = None, 0.0, None
        rms = float(np.sqrt(np.mean(x**2))) if len(x) else 0.0
    energy = 20 * math.log10(rms) if rms > 1e-6 else -120.0
    duration = speech_seconds if speech_seconds is not None else len(samples) / ANALYSIS_RATE
    rate = words / duration if words and duration > 0.3 else None
    return Prosody(
        median,
        spread,
        energy,
        rate,
        pause_ratio,
        float(voiced.mean()) if len(f0) else 0.0,
        bright,
    )


_BAND = (100.0, 4000.0)  # what a phone line keeps, so both bands measure alike


def voiced_windows(x: np.ndarray, f0: np.ndarray) -> np.ndarray:
    """The 40 ms windows of ``x`` that ``pitch_track`` found voiced (``f0`` > 0), one
    per row."""
    idx = np.flatnonzero(f0 > 0)
    return x[idx[:, None] * HOP + np.arange(WINDOW)[None, :]]


def brightness(windows: np.ndarray) -> float | None:
    """Spectral centroid of ``windows`` (100-4000 Hz), in semitones re 1 kHz."""
    power = (np.abs(np.fft.rfft(windows * _HANN, axis=1)) ** 2).mean(axis=0)
    hz = np.fft.rfftfreq(WINDOW, 1 / ANALYSIS_RATE)
    keep = (hz >= _BAND[0]) & (hz <= _BAND[1])
    total = float(power[keep].sum())
    if total <= 0:
        return None
    return 12.0 * math.log2(float((hz[keep] * power[keep]).sum()) / total / 1000.0)


# -- the model ------------------------------------------------------------------------

# What the voice is measured by, each against the caller's usual (see Baseline)
# The pause ratio is measured (Prosody.pause_ratio) but not a cue: the engine's comes
# from the level-gated segmenter, whose end windows make it ~0.46 where a plain VAD over
# the sentence reads ~0.14, so a prior learned offline would call every live utterance
# "more pauses than usual"
ACOUSTIC = ("energy", "f0", "range", "rate", "bright")
Z_LIMIT = 4.0
# how each cue reads to a person, for the evidence ("voice louder than usual, +6 dB")
_CUE_TEXT = {
    "energy": ("louder", "quieter", "dB"),
    "f0": ("higher pitch", "lower pitch", "semitones"),
    "range": ("more pitch movement", "flatter pitch", "semitones"),
    "rate": ("faster", "slower", "words/s"),
    "bright": ("tenser voice", "softer voice", "semitones"),
}
# arousal for display and the trend: how stirred up the voice is, from its z-scores
AROUSAL_WEIGHT = {"energy": 1.0, "f0": 0.8, "range": 0.4, "rate": 0.6, "bright": 0.3}
FUSION = Path(__file__).with_name("emotion_fusion.json")
Band = Literal["wide", "phone"]


def acoustic_values(p: Prosody) -> dict[str, float]:
    """The voice cues of an utterance; none when nothing in it was voiced (its loudness
    would be the whole stretch's, -120 dB for digital silence: judged, or learned as the
    caller's usual, it would make every later sentence read as shouted)."""
    if p.f0_median_st is None:
        return {}
    values = {"energy": p.energy_db, "f0": p.f0_median_st, "range": p.f0_range_st}
    if p.rate_wps is not None:
        values["rate"] = p.rate_wps
    if p.brightness_st is not None:
        values["bright"] = p.brightness_st
    return {k: v for k, v in values.items() if k in ACOUSTIC}


@dataclass(frozen=True)
class Logistic:
    """A multinomial logistic regression over named inputs, divided by a temperature."""

    names: list[str]  # input names, in weight order
    weights: list[list[float]]  # len(names) x len(LABELS)
    temperature: float

    def probabilities(self, inputs: dict[str, float]) -> dict[str, float]:
        logits = [0.0] * len(LABELS)
        for name, w in zip(self.names, self.weights, strict=True):
            x = inputs.get(name, 0.0)
            if x:
                for k in range(len(LABELS)):
                    logits[k] += x * w[k]
        probs = _softmax([v / self.temperature for v in logits])
        return dict(zip(LABELS, probs, strict=True))


@dataclass(frozen=True)
class FusionModel:
    """Population priors per band, the fusion's weights and its temperature, and the
    voice-only model for an utterance the recognizer heard no words in."""

    priors: dict[str, dict[str, tuple[float, float]]]  # band -> cue -> (mean, sd)
    prior_weight: float  # how many utterances the population prior counts for
    names: list[str]  # fusion input names, in weight order
    weights: list[list[float]]  # len(names) x len(LABELS)
    temperature: float
    call_rule: CallRule
    # No words: no text probabilities to fuse. Uniform ones read as "unsure between
    # all four", which the fusion never met in training (there an empty transcript
    # read as the text model's bias, mostly neutral), and it labelled them positive or
    # upset at random; this model, fitted on the voice alone, judges them by the voice.
    voice_only: Logistic | None = None
    # A typed line is judged by the text model alone, whose probabilities the fusion
    # tempers for a call: this temperature, fitted the same way on the text model's
    # out-of-fold reading of the tuning side, makes them honest alone
    words_temperature: float = 1.0

    def words(self, text_p: dict[str, float]) -> dict[str, float]:
        """The text model's probabilities, tempered to be honest on their own."""
        t = self.words_temperature
        z = [math.log(max(text_p[k], 1e-12)) / t for k in LABELS]
        return dict(zip(LABELS, _softmax(z), strict=True))

    @property
    def fusion(self) -> Logistic:
        return Logistic(self.names, self.weights, self.temperature)

    @classmethod
    @functools.lru_cache(maxsize=1)
    def load(cls) -> FusionModel:
        with open(FUSION) as f:
            d = json.load(f)
        priors = {b: {k: (v[0], v[1]) for k, v in cues.items()} for b, cues in d["priors"].items()}
        return cls(
            priors,
            d["prior_weight"],
            d["names"],
            d["weights"],
            d["temperature"],
            CallRule(**d["call_rule"]) if "call_rule" in d else CallRule(),
            Logistic(**d["voice_only"]) if "voice_only" in d else None,
            d.get("words_temperature", 1.0),
        )


def fusion_inputs(
    text_p: dict[str, float], z: dict[str, float], band: Band = "wide"
) -> dict[str, float]:
    """What the fusion may use (the trained model names the inputs it does use): the
    words' log-probabilities, the voice's z-scores, and the voice crossed with how upset
    or how calm the words are; on a phone line each again as ``name@phone``, so the
    fusion may weigh words and voice differently where the recognizer errs more."""
    upset = text_p["frustrated"] + text_p["angry"]
    out = {"bias": 1.0}
    for label in LABELS:
        out[f"text:{label}"] = math.log(max(text_p[label], 1e-4))
    # the words' upset, frustration and anger together: a sentence the text model splits
    # between the two (0.15 each) is as upset as one that gives one of them 0.3
    out["text:upset"] = math.log(max(upset, 1e-4))
    for cue in ACOUSTIC:
        v = z.get(cue, 0.0)
        out[f"voice:{cue}"] = v
        out[f"voice:{cue}*upset"] = v * upset
        out[f"voice:{cue}*calm"] = v * (1.0 - upset)
    if band == "phone":
        out |= {f"{k}@phone": v for k, v in out.items()}
    return out


def voice_inputs(z: dict[str, float], band: Band = "wide") -> dict[str, float]:
    """What the voice-only model may use: the voice's z-scores (and on a phone line
    each again as ``name@phone``)."""
    out = {"bias": 1.0} | {f"voice:{cue}": z.get(cue, 0.0) for cue in ACOUSTIC}
    if band == "phone":
        out |= {f"{k}@phone": v for k, v in out.items()}
    return out


def heard_words(text: str) -> bool:
    """Whether the recognizer heard any words (an empty transcript says nothing of how
    the caller feels: the voice alone is judged)."""
    return bool(text.strip())


def calm_words(text_p: dict[str, float], text: str) -> bool:
    """Whether an utterance's words were calm enough for its voice to teach the
    caller's baseline (the tracker and the fusion's trainer both ask this). No words,
    no lesson: a shout the recognizer could not make out would become the usual."""
    return heard_words(text) and text_p["neutral"] + text_p["positive"] >= 0.5


@dataclass
class Baseline:
    """The caller's usual voice: the population prior (per band), counted as
    ``prior_weight`` utterances, pulled towards each utterance whose words were calm.

    The first utterance is judged against the population, so a caller who opens
    shouting is heard as shouting; later ones increasingly against the caller's own
    calm speech, so a naturally loud voice stops reading as agitated. Only calm
    utterances teach it: an angry caller does not make anger their normal."""

    prior: dict[str, tuple[float, float]]
    prior_weight: float
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def usual(self, cue: str) -> float:
        mean = self.prior[cue][0]
        n = self.counts.get(cue, 0)
        return (mean * self.prior_weight + self.sums.get(cue, 0.0)) / (self.prior_weight + n)

    def z(self, values: dict[str, float]) -> dict[str, float]:
        return {
            cue: max(-Z_LIMIT, min(Z_LIMIT, (value - self.usual(cue)) / self.prior[cue][1]))
            for cue, value in values.items()
        }

    def learn(self, values: dict[str, float]) -> None:
        for cue, value in values.items():
            self.sums[cue] = self.sums.get(cue, 0.0) + value
            self.counts[cue] = self.counts.get(cue, 0) + 1


@dataclass(frozen=True, slots=True)
class EmotionEstimate:
    label: str
    arousal: float
    valence: float
    scores: dict[str, float]  # calibrated probabilities
    trend: float
    prosody: Prosody | None  # None: a typed line, no voice to measure
    call_label: str  # how the call has gone so far (see CallMood)
    call_scores: dict[str, float]  # the scores smoothed over the call (see CALL_ALPHA)
    confidence: float = 0.0  # the label's probability
    evidence: tuple[str, ...] = ()  # the cues behind the label, as a person reads them
    # the utterance goes on with the caller's last (see TURN_GAP_S): it was read with it,
    # and replaces that one's reading in the call's label and trend, and in the rules
    continues: bool = False


# Smoothing of call-level scores: upset states take hold fast and fade slowly, so a
# caller who was angry one sentence ago still shows as upset to the agent.
CALL_ALPHA = {"neutral": 0.4, "positive": 0.4, "frustrated": 0.7, "angry": 0.7}


@dataclass(frozen=True, slots=True)
class CallRule:
    """How a call's label is read from its utterances (thresholds fitted on the tuning
    part by ``python -m bench.emotion_train fusion``; these are its fallbacks)."""

    ended_well: float = 0.3  # the last utterance is positive at least this surely
    angry: float = 0.35  # anger summed over the call, each utterance's above ``floor``
    upset: float = 0.35  # frustration and anger together, summed the same way
    # Below the floor an utterance adds nothing, so a long calm call, each utterance a
    # little unsure, never adds up to an upset one (the tuning calls are 1-5 long,
    # calls are longer; the floor was chosen for that, not fitted)
    floor: float = 0.3


# A sentence the endpointer split at a pause (a comma, a breath) is one turn of the
# caller's, and is judged as one: "After all that back and forth," alone reads
# frustrated, and with "it finally works, thank you so much" it is relief. The parts of
# a turn are at most this much silence apart, between the last voiced frame of one and
# the first of the next (media/pipeline.py): an utterance ends after 280-480 ms of
# silence (media/vad.py), so a split leaves 0.3-0.7 s; the tests' callers pause 0.9 s
# between sentences, and the emotion set plays its utterances 1.2 s apart.
TURN_GAP_S = 0.7


@dataclass(slots=True)
class CallMood:
    """How the call has gone: ``positive`` if the caller's latest utterance is, else the
    worst the caller has been (angry, then frustrated), else calm: neutral or positive
    as the call's mean leans. An angry caller who has calmed down still reads angry to
    the agent, and a call put right reads positive. This reads 0.83 of the tuning calls
    right out of fold where smoothing the scores read 0.79 (``bench.emotion_fusion``)."""

    rule: CallRule
    angry: float = 0.0
    upset: float = 0.0
    neutral: float = 0.0
    positive: float = 0.0
    last: dict[str, float] = field(default_factory=dict)

    def add(self, scores: dict[str, float]) -> str:
        r = self.rule
        self.angry += max(0.0, scores["angry"] - r.floor)
        self.upset += max(0.0, scores["frustrated"] + scores["angry"] - r.floor)
        self.neutral += scores["neutral"]
        self.positive += scores["positive"]
        self.last = scores
        return self.label

    @property
    def label(self) -> str:
        r, last = self.rule, self.last
        if (
            last
            and last["positive"] >= r.ended_well
            and max(last, key=lambda k: last[k]) == "positive"
        ):
            return "positive"
        if self.angry >= r.angry:
            return "angry"
        if self.upset >= r.upset:
            return "frustrated"
        return "positive" if self.positive > self.neutral else "neutral"


def call_mood(
    before: dict[str, float] | None, scores: dict[str, float], alpha: dict[str, float]
) -> dict[str, float]:
    """The call's scores after one more utterance: each class rises with weight
    ``alpha`` and falls with ``1 - alpha``."""
    if before is None:
        return dict(scores)
    out = {}
    for k, v in scores.items():
        a = alpha[k] if v >= before[k] else 1 - alpha[k]
        out[k] = a * v + (1 - a) * before[k]
    return out


def _softmax(z: list[float]) -> list[float]:
    top = max(z)
    e = [math.exp(v - top) for v in z]
    s = sum(e)
    return [v / s for v in e]


class EmotionTracker:
    """Per-leg emotion state: the caller's baseline, and the call's scores and trend."""

    def __init__(self, band: Band = "wide", trend_alpha: float = 0.4) -> None:
        self.model = FusionModel.load()
        self.text_model = TextModel.load()
        self.band = band
        self.baseline = Baseline(self.model.priors[band], self.model.prior_weight)
        self.trend_alpha = trend_alpha
        self.trend = 0.0
        self.count = 0
        self.call_scores: dict[str, float] = {}
        self.mood = CallMood(self.model.call_rule)
        # the call as it stood before the caller's current turn, and the turn's words
        # so far: a part that goes on with it is read again with them (update)
        self._before: tuple[float, dict[str, float], CallMood, int] | None = None
        self._turn = ""

    def scores(
        self, p: Prosody, text: str
    ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        """(fused probabilities, the words' probabilities, the voice's z-scores) of one
        utterance against the baseline as it stands; the baseline is not changed."""
        values = acoustic_values(p)
        z = self.baseline.z(values)
        if not heard_words(text):
            uniform = {label: 1.0 / len(LABELS) for label in LABELS}
            if self.model.voice_only is not None:
                return self.model.voice_only.probabilities(voice_inputs(z, self.band)), uniform, z
            text_p = uniform
        else:
            text_p = self.text_model.probabilities(text)
        fused = self.model.fusion.probabilities(fusion_inputs(text_p, z, self.band))
        return fused, text_p, z

    def update(self, p: Prosody, text: str, continues: bool = False) -> EmotionEstimate:
        """One utterance judged; ``continues``: it goes on with the last one (a sentence
        the endpointer split, TURN_GAP_S), so the turn is read whole, by its words so far
        and this part's voice, and replaces the last reading in the call's label and
        trend."""
        if continues and self._before is not None:
            trend, call_scores, mood, count = self._before
            self.trend, self.call_scores, self.count = trend, dict(call_scores), count
            self.mood = dataclasses.replace(mood, last=dict(mood.last))
            text = f"{self._turn} {text}"
        else:
            continues = False
            mood = dataclasses.replace(self.mood, last=dict(self.mood.last))
            self._before = (self.trend, dict(self.call_scores), mood, self.count)
        self._turn = text
        fused, text_p, z = self.scores(p, text)
        label = max(fused, key=lambda k: fused[k])
        values = acoustic_values(p)
        why = evidence(text, text_p, z, values, self.baseline, label)  # against the usual so far
        if calm_words(text_p, text):
            self.baseline.learn(values)
        arousal = math.tanh(sum(AROUSAL_WEIGHT[c] * v for c, v in z.items()) / 2.0)
        return dataclasses.replace(
            self._estimate(fused, text_p, arousal, p, why), continues=continues
        )

    def update_words(self, text: str) -> EmotionEstimate:
        """A line with words and no voice (typed in a chat): the text model's
        probabilities, tempered (``FusionModel.words``), are its scores, since the
        fusion never met words without a voice and must not be fed a made-up one. Its
        arousal is 0 (nothing was heard to be stirred up) and it teaches the voice
        baseline nothing."""
        text_p = self.model.words(self.text_model.probabilities(text))
        why = words_evidence(text, text_p) if heard_words(text) else ("words: none to read",)
        return self._estimate(text_p, text_p, 0.0, None, why)

    def _estimate(
        self,
        probs: dict[str, float],
        text_p: dict[str, float],
        arousal: float,
        p: Prosody | None,
        why: tuple[str, ...],
    ) -> EmotionEstimate:
        """The estimate of one utterance judged ``probs``, and the call's label,
        scores and trend once it counts."""
        label = max(probs, key=lambda k: probs[k])
        valence = text_p["positive"] - text_p["frustrated"] - text_p["angry"]
        scores = {k: round(v, 4) for k, v in probs.items()}
        mood = max(-1.0, min(1.0, valence - 0.5 * max(arousal, 0.0) * (valence < 0.05)))
        if self.count == 0:
            self.trend = mood
        else:
            self.trend = self.trend_alpha * mood + (1 - self.trend_alpha) * self.trend
        self.call_scores = call_mood(self.call_scores if self.count else None, scores, CALL_ALPHA)
        call_label = self.mood.add(probs)
        self.count += 1
        call_scores = {k: round(v, 4) for k, v in self.call_scores.items()}
        return EmotionEstimate(
            label,
            round(arousal, 4),
            round(valence, 4),
            scores,
            round(self.trend, 4),
            p,
            call_label,
            call_scores,
            scores[label],
            why,
        )


def evidence(
    text: str,
    text_p: dict[str, float],
    z: dict[str, float],
    values: dict[str, float],
    baseline: Baseline,
    label: str,
) -> tuple[str, ...]:
    """What a person can check: the words' cues and the voice's departures from usual
    (the amounts as measured, not as capped for the fusion)."""
    out = list(words_evidence(text, text_p))
    if not heard_words(text):
        out.append("words: none heard, the voice alone")
    voice = []
    for cue, v in sorted(z.items(), key=lambda kv: -abs(kv[1])):
        if abs(v) < 1.0:
            continue
        up, down, unit = _CUE_TEXT[cue]
        delta = values[cue] - baseline.usual(cue)
        voice.append(f"voice: {up if v > 0 else down} than usual, {delta:+.1f} {unit}")
    if not voice and label in ("frustrated", "angry"):
        voice.append("voice: as usual")  # upset by the words alone
    return tuple(out + voice)


def words_evidence(text: str, text_p: dict[str, float]) -> tuple[str, ...]:
    """What a person can check in the words: their cues, and how the text model read
    them (nothing when there were none)."""
    out = []
    cues = text_cues(text)
    if cues:
        out.append("words: " + "; ".join(f"{g} ({', '.join(ws)})" for g, ws in cues.items()))
    if heard_words(text):
        top = max(text_p, key=lambda k: text_p[k])
        out.append(f"words read as {top} ({text_p[top]:.0%})")
    return tuple(out)
