import dataclasses

import numpy as np
import pytest

from media.emotion import (
    CallMood,
    CallRule,
    EmotionTracker,
    FusionModel,
    Prosody,
    pitch_track,
    prosody,
)
from media.emotion_text import TextModel, text_cues

RATE = 16000


def voice(f0: float, amp: float, seconds: float = 2.0, syllables_per_s: float = 4.0) -> np.ndarray:
    """A harmonic 'vowel' with syllable-like amplitude modulation."""
    t = np.arange(int(seconds * RATE)) / RATE
    glide = f0 * (1 + 0.05 * np.sin(2 * np.pi * 0.5 * t))  # a little intonation
    phase = 2 * np.pi * np.cumsum(glide) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * syllables_per_s * t) ** 2
    return (amp * x * envelope / 2.6 * 32767).astype(np.int16)


@pytest.mark.parametrize("f0", [85.0, 120.0, 210.0, 320.0])
def test_pitch_track_finds_f0(f0: float) -> None:
    t = np.arange(RATE) / RATE
    x = 0.3 * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * 32767 / 2.3
    track = pitch_track(x.astype(np.int16))
    assert np.median(track[track > 0]) == pytest.approx(f0, rel=0.01)


def test_pitch_track_ignores_noise_and_silence() -> None:
    rng = np.random.default_rng(1)
    noise = (rng.normal(0, 0.1, RATE) * 32767).astype(np.int16)
    assert (pitch_track(noise) > 0).mean() < 0.1
    assert (pitch_track(np.zeros(RATE, np.int16)) > 0).mean() == 0


def usual(band: str = "wide", **sd: float) -> Prosody:
    """A voice at the population's usual for the band, moved by ``sd`` spreads per cue."""
    prior = FusionModel.load().priors[band]

    def at(cue: str) -> float:
        mean, spread = prior[cue]
        return mean + sd.get(cue, 0.0) * spread

    return Prosody(at("f0"), at("range"), at("energy"), at("rate"), 0.15, 0.8, at("bright"))


HEATED = {"energy": 2.5, "rate": 2.0, "f0": 2.0, "bright": 1.5}


@pytest.mark.parametrize("band", ["wide", "phone"])
def test_an_angry_first_utterance_is_angry(band: str) -> None:
    """No baseline to wait for: heat in the voice and hostile words, first thing said."""
    est = EmotionTracker(band).update(usual(band, **HEATED), "This is absolutely ridiculous.")  # type: ignore[arg-type]
    assert est.label == "angry" and est.confidence >= 0.6, est
    assert any("louder" in e for e in est.evidence) and any("ridiculous" in e for e in est.evidence)


def test_the_same_complaint_said_calmly_is_frustration() -> None:
    said = "I have been waiting for two weeks and still nothing."
    calm = EmotionTracker().update(usual(), said)
    heated = EmotionTracker().update(usual(**HEATED), said)
    assert calm.label == "frustrated", calm.scores
    assert heated.label == "angry", heated.scores


@pytest.mark.parametrize(
    "said",
    [
        "Hi, good morning.",
        "Thank you so much.",
        "Hello, I would like to update my address, please.",
        "Thanks, have a nice day.",
        "Thank you very much. good-bye.",  # read as "good" + "bye": praise, once
    ],
)
def test_politeness_is_neutral(said: str) -> None:
    """VADER read these as positive; a polite caller is not a delighted one."""
    p = TextModel.load().probabilities(said)
    assert max(p, key=lambda k: p[k]) == "neutral", p
    assert EmotionTracker().update(usual(), said).label == "neutral"


@pytest.mark.parametrize(
    "said, label",
    [
        ("That is wonderful, you have been so helpful.", "positive"),
        ("I have been waiting for two weeks and still nothing.", "frustrated"),
        ("You people are completely useless.", "angry"),
        ("Oh great, another hour on hold.", "frustrated"),  # sarcasm is not praise
        ("i have been waiting for two weeks and still nothing", "frustrated"),
    ],
)
def test_the_words_alone(said: str, label: str) -> None:
    p = TextModel.load().probabilities(said)
    assert max(p, key=lambda k: p[k]) == label, p


def test_a_loud_caller_becomes_their_own_usual() -> None:
    """A voice loud and fast by nature reads hotter than the population at first; its
    calm utterances teach the baseline, so the heat it reads falls as the call goes on."""
    t = EmotionTracker()
    first = t.update(usual(energy=2.5, rate=2.0), "I have a question about my bill.")
    for _ in range(3):
        t.update(usual(energy=2.5, rate=2.0), "I have a question about my bill.")
    later = t.update(usual(energy=2.5, rate=2.0), "I have a question about my bill.")
    assert later.arousal < first.arousal - 0.2
    assert later.label == "neutral"


def test_anger_does_not_become_the_usual() -> None:
    """Only calm words teach the baseline: an angry caller stays angry."""
    t = EmotionTracker()
    labels = [t.update(usual(**HEATED), "This is a disgrace, fix it now.").label for _ in range(4)]
    assert labels == ["angry"] * 4
    assert t.baseline.counts == {}


def test_call_label_stays_upset_after_one_calm_sentence() -> None:
    t = EmotionTracker()
    t.update(usual(**HEATED), "This is absolutely ridiculous.")
    est = t.update(usual(), "My account number is four five six.")
    assert est.label == "neutral"
    assert est.call_label == "angry"


def scored(
    neutral: float = 0.0, positive: float = 0.0, frustrated: float = 0.0, angry: float = 0.0
) -> dict[str, float]:
    return {"neutral": neutral, "positive": positive, "frustrated": frustrated, "angry": angry}


def mood_of(*utterances: dict[str, float]) -> str:
    mood = CallMood(CallRule())
    for s in utterances:
        mood.add(s)
    return mood.label


def test_a_long_calm_call_never_adds_up_to_an_upset_one() -> None:
    """Forty calm utterances, each a little unsure: below the floor nothing adds up."""
    unsure = scored(neutral=0.6, positive=0.1, frustrated=0.2, angry=0.1)
    assert mood_of(*[unsure] * 40) == "neutral"


def test_the_call_reads_as_the_worst_the_caller_was_until_it_ends_well() -> None:
    calm = scored(neutral=0.9, frustrated=0.05, angry=0.05)
    angry = scored(neutral=0.1, frustrated=0.2, angry=0.7)
    fed_up = scored(neutral=0.2, frustrated=0.8)
    thanks = scored(neutral=0.3, positive=0.7)
    assert mood_of(calm, fed_up, calm, calm) == "frustrated"
    assert mood_of(angry, calm, calm) == "angry"
    assert mood_of(angry, calm, thanks) == "positive"
    assert mood_of(calm, calm, thanks, calm) == "neutral"  # one thanks does not make the call
    assert mood_of(calm, calm, calm, thanks) == "positive"


def test_evidence_names_the_cue_words() -> None:
    assert text_cues("You people are useless, I want my money back right now!") == {
        "hostile": ["useless"],
        "demand": ["i want", "right now"],
        "accuse": ["you people"],
    }


def test_confidence_is_the_labels_probability() -> None:
    est = EmotionTracker().update(usual(), "I would like to pay my bill.")
    assert est.confidence == est.scores[est.label] == max(est.scores.values())
    assert sum(est.scores.values()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    "sphinx, moonshine, label",
    [
        (
            "this is the worst service i have ever had",
            "This is the worst service I have ever had.",
            "angry",
        ),
        ("thank you so much", "Thank you so much.", "neutral"),
        ("that is fantastic news thank you", "That is fantastic news, thank you!", "positive"),
    ],
)
def test_both_recognizer_styles_read_alike(sphinx: str, moonshine: str, label: str) -> None:
    model = TextModel.load()
    for said in (sphinx, moonshine):
        p = model.probabilities(said)
        assert max(p, key=lambda k: p[k]) == label, (said, p)


def test_prosody_measures_brightness() -> None:
    """Higher harmonics carry more of a raised voice's energy: the centroid moves up."""
    low = prosody(voice(110, 0.2))
    high = prosody(voice(220, 0.2))
    assert low.brightness_st is not None and high.brightness_st is not None
    assert high.brightness_st > low.brightness_st + 3


def test_an_unvoiced_utterance_teaches_the_baseline_nothing() -> None:
    """Nothing voiced: its loudness is the whole stretch's (-120 dB for digital silence).
    Learned as the caller's usual, it made a complaint at normal volume read as shouted
    (review finding: frustrated 0.91 became angry 0.97)."""
    complaint = "I have been waiting for two weeks and still nothing."
    plain = EmotionTracker().update(usual(), complaint)
    t = EmotionTracker()
    silent = t.update(prosody(np.zeros(4000, np.int16), words=1), "yes")
    assert silent.prosody.f0_median_st is None and t.baseline.counts == {}
    after = t.update(usual(), complaint)
    assert after.label == plain.label == "frustrated"
    assert after.scores["angry"] == pytest.approx(plain.scores["angry"], abs=0.02)


@pytest.mark.parametrize("band", ["wide", "phone"])
def test_no_words_heard_is_judged_by_the_voice_alone(band: str) -> None:
    """An empty transcript is no evidence of calm or of delight: a usual voice reads as
    neutral (uniform text probabilities made the fusion call such utterances positive or
    frustrated at random), a heated one as angry, and neither teaches the baseline."""
    t = EmotionTracker(band)  # type: ignore[arg-type]
    calm = t.update(usual(band), "")
    assert calm.label == "neutral", calm.scores
    assert calm.scores["positive"] < 0.25, calm.scores
    assert any("none heard" in e for e in calm.evidence)
    heated = t.update(usual(band, **HEATED), "  ")
    assert heated.label == "angry", heated.scores
    assert t.baseline.counts == {}


# -- a typed line: words and no voice (a chat) --------------------------------------


def test_a_typed_line_is_judged_by_the_text_model_with_its_cues_as_evidence() -> None:
    """A chat's line has no voice: its scores are the text model's own (the fusion was
    trained on voice and words together, and is fed no made-up voice), its arousal is
    0, and its evidence names the words' cues and nothing of a voice."""
    said = "You people are useless, I want this fixed right now!"
    est = EmotionTracker().update_words(said)
    text_p = TextModel.load().probabilities(said)
    assert est.scores == {k: round(v, 4) for k, v in text_p.items()}
    assert est.label == "angry" and est.confidence == est.scores["angry"] >= 0.6, est
    assert est.arousal == 0.0 and est.prosody is None
    assert any("useless" in e and "you people" in e for e in est.evidence), est.evidence
    assert any(e.startswith("words read as angry") for e in est.evidence), est.evidence
    assert not any(e.startswith("voice") for e in est.evidence), est.evidence


@pytest.mark.parametrize("said", ["Hello, could you tell me how returns work, please?", "Thanks!"])
def test_a_polite_typed_line_is_neutral(said: str) -> None:
    est = EmotionTracker().update_words(said)
    assert est.label == est.call_label == "neutral", est.scores
    assert est.scores["frustrated"] + est.scores["angry"] < 0.3  # no upset streak's


def test_typed_lines_teach_the_voice_baseline_nothing() -> None:
    """Calm typed words with no voice must not move the caller's usual voice: a call
    taken on from a chat judges its first utterance against the population, as any."""
    t = EmotionTracker()
    for _ in range(5):
        t.update_words("I have a question about my bill.")
    assert t.baseline.counts == {} and t.baseline.sums == {}
    complaint = "I have been waiting for two weeks and still nothing."
    after = t.update(usual(**HEATED), complaint)
    fresh = EmotionTracker().update(usual(**HEATED), complaint)
    assert after.scores == fresh.scores


def test_typed_lines_carry_the_calls_label_and_trend() -> None:
    """The call's label (CallMood) and trend go on from typed lines as from spoken
    ones: an angry chat stays angry to the agent after one calm line, and its trend
    falls."""
    t = EmotionTracker()
    first = t.update_words("Where is my parcel?")
    assert first.call_label == "neutral"
    t.update_words("This is a disgrace, you people are useless!")
    calm = t.update_words("My order number is 83016.")
    assert calm.label == "neutral" and calm.call_label == "angry"
    assert calm.trend < first.trend - 0.15
    assert calm.call_scores["angry"] > first.call_scores["angry"]


def test_a_typed_line_with_no_words_reads_as_no_words() -> None:
    """What a chat tells of a masked line is no words: the evidence says so, and no
    cue is made up."""
    est = EmotionTracker().update_words("")
    assert est.evidence == ("words: none to read",)
    assert est.label == "neutral"


def test_a_typed_line_is_tempered_as_fitted() -> None:
    """``words_temperature`` above 1 makes a typed line's reading less sure, never
    another label; at 1 it is the text model's own."""
    text = "This is ridiculous, I want a manager right now."
    raw = TextModel.load().probabilities(text)
    model = FusionModel.load()
    assert dataclasses.replace(model, words_temperature=1.0).words(raw) == pytest.approx(raw)
    hot = dataclasses.replace(model, words_temperature=2.0)
    tempered = hot.words(raw)
    top = max(raw, key=lambda k: raw[k])
    assert max(tempered, key=lambda k: tempered[k]) == top
    assert tempered[top] < raw[top] and sum(tempered.values()) == pytest.approx(1.0)
    tracker = EmotionTracker()
    tracker.model = hot
    assert tracker.update_words(text).confidence == pytest.approx(round(tempered[top], 4))


def test_a_sentence_split_at_a_pause_is_read_as_one_turn() -> None:
    """The second part of a split sentence is read with the first and replaces its
    reading: the call stands as if the sentence had come whole."""
    first, second = "After all that back and forth,", "it finally works, thank you so much."
    split = EmotionTracker()
    split.update(usual(), "Hi, I am calling about my broadband.")
    alone = split.update(usual(), first)
    whole = split.update(usual(), second, continues=True)
    once = EmotionTracker()
    once.update(usual(), "Hi, I am calling about my broadband.")
    said = once.update(usual(), f"{first} {second}")
    assert whole.continues and not alone.continues
    assert whole.scores == said.scores and whole.call_scores == said.call_scores
    assert (whole.call_label, whole.trend) == (said.call_label, said.trend)
    assert split.count == once.count == 2
    assert whole.label == "positive" != alone.label
    # a first utterance has nothing to go on with
    assert not EmotionTracker().update(usual(), second, continues=True).continues
