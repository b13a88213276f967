import numpy as np
import pytest

from media.emotion import EmotionTracker, Prosody, label_scores, pitch_track, prosody
from tests import styles

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


def baseline_tracker() -> EmotionTracker:
    tracker = EmotionTracker()
    for _ in range(3):
        tracker.update(prosody(voice(120, 0.1), words=7, speech_seconds=2.0), "I have a question")
    return tracker


def test_louder_higher_faster_raise_arousal() -> None:
    t = baseline_tracker()
    same = t.arousal(prosody(voice(120, 0.1), words=7, speech_seconds=2.0))
    louder = t.arousal(prosody(voice(120, 0.25), words=7, speech_seconds=2.0))
    higher = t.arousal(prosody(voice(170, 0.1), words=7, speech_seconds=2.0))
    faster = t.arousal(prosody(voice(120, 0.1), words=11, speech_seconds=2.0))
    everything = t.arousal(prosody(voice(170, 0.25), words=11, speech_seconds=2.0))
    assert abs(same) < 0.15
    assert louder > same + 0.2
    assert higher > same + 0.2
    assert faster > same + 0.2
    assert everything > max(louder, higher, faster)


def test_a_loud_voice_alone_is_not_anger() -> None:
    """Calibration: a caller who is loud from the start reads as neutral."""
    t = EmotionTracker()
    labels = [
        t.update(prosody(voice(220, 0.5), words=7, speech_seconds=2.0), "I have a question").label
        for _ in range(4)
    ]
    assert labels == ["neutral"] * 4
    assert t.arousal(prosody(voice(220, 0.5), words=7, speech_seconds=2.0)) < 0.15


def test_negative_words_give_negative_valence() -> None:
    assert EmotionTracker.valence("This is terrible, I am furious and fed up") < -0.5
    assert EmotionTracker.valence("Thank you so much, that is great") > 0.5
    assert abs(EmotionTracker.valence("My order number is four five six")) < 0.1


@pytest.mark.parametrize(
    ("valence", "arousal", "label"),
    [
        (0.0, 0.0, "neutral"),
        (0.0, 0.9, "neutral"),  # agitated but saying nothing negative
        (0.6, 0.2, "positive"),
        (-0.6, -0.2, "frustrated"),  # negative words, calm voice
        (-0.6, 0.8, "angry"),
    ],
)
def test_label_scores(valence: float, arousal: float, label: str) -> None:
    scores = label_scores(valence, arousal)
    assert max(scores, key=lambda k: scores[k]) == label
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-3)


def test_call_label_stays_upset_after_one_calm_sentence() -> None:
    t = EmotionTracker()
    p = Prosody(0.0, 6.0, -25.0, 3.3, 0.25, 0.8)
    for text in ["This is terrible", "I am furious, this is awful", "Worst service ever"]:
        t.update(p, text)
    last = t.update(p, "My order number is four five six")
    assert last.label == "neutral"
    assert last.call_label in {"frustrated", "angry"}
    assert last.trend < 0


@pytest.mark.parametrize(
    ("said", "low", "high"),
    styles.cases(
        ("this is terrible i am furious and fed up", "This is terrible! I am furious and fed up.",
         -1.0, -0.5),
        ("thank you so much that's great", "Thank you so much, that's great!", 0.5, 1.0),
        ("my order number is eight three zero one six", "My order number is 83016.", -0.1, 0.1),
        ("i don't like it", "I don’t like it.", -1.0, -0.1),
        ("it isn't good", "It isn’t good.", -1.0, -0.1),
    ),
)  # fmt: skip
def test_valence_in_both_styles(said: str, low: float, high: float) -> None:
    """VADER knows "don't", not "don’t": with a typographic apostrophe the negation was
    lost and "I don’t like it." read as positive (+0.36)."""
    assert low <= EmotionTracker.valence(said) <= high


def test_punctuation_and_capitals_still_count() -> None:
    """VADER reads "!" and a shouted word as intensity: nothing may strip them."""
    calm = EmotionTracker.valence("this is terrible")
    assert EmotionTracker.valence("This is terrible!!!") < calm
    assert EmotionTracker.valence("This is TERRIBLE") < calm
