"""What the words say about how a caller feels: a small text model for contact-center
speech, four classes (neutral, positive, frustrated, angry).

Theory of operation
-------------------
A general sentiment lexicon reads courtesy as joy: VADER scores "Hi, good morning" and
"Thank you so much" as positive, and "Nobody at your company has a clue" as neutral.
Callers are polite whatever they feel, and complain in their own words. So:

* formulaic courtesy ("please", "thank you", "good morning", "have a nice day") is
  removed before VADER reads the rest: VADER keeps its 7,500-word lexicon, negation
  and intensity for what is left;
* cue lists written for contact centers count hostility ("useless", "a joke"),
  demands and threats ("right now", "my lawyer"), accusation ("you people", "your
  company"), persistence ("again", "still", "three times", "on hold"), resignation
  ("honestly", "fed up"), sarcasm ("oh great, another ...") and real praise;
* word and word-pair weights are learned from a corpus written for this
  (bench/emotion_scripts.py, tuning side only) by ``bench/emotion_train.py``, which
  writes the weights next to this file (emotion_text.json).

A multinomial logistic regression over these features gives the four probabilities;
``media/emotion.py`` fuses them with the voice.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from media.asr.text import fold

LABELS = ("neutral", "positive", "frustrated", "angry")
WEIGHTS = Path(__file__).with_name("emotion_text.json")

_CONTRACTIONS = {
    "don't": "do not", "doesn't": "does not", "didn't": "did not", "can't": "can not",
    "cannot": "can not", "won't": "will not", "isn't": "is not", "aren't": "are not",
    "wasn't": "was not", "haven't": "have not", "hasn't": "has not", "i'm": "i am",
    "you're": "you are", "it's": "it is", "that's": "that is", "i've": "i have",
    "i'll": "i will", "you've": "you have", "we're": "we are", "they're": "they are",
    "what's": "what is", "i'd": "i would", "couldn't": "could not", "wouldn't": "would not",
}  # fmt: skip
# said out of habit, not feeling: removed before the lexicon reads the sentence
_COURTESY = re.compile(
    r"\b(thank you( so much| very much| kindly)?|thanks( a lot)?|please|hello|hi there|hi|"
    # "good-bye" reaches here as two words: without "good bye" the "good" stayed, as praise
    r"good (morning|afternoon|evening|night|bye)|have a (nice|good|great) day|bye|goodbye|"
    r"sure|okay|"
    r"ok|alright|yes|right)\b"
)
# cue lists: each phrase is matched as whole words in the expanded lower-case text
# Each group's later lines were added with the other lines of business in the corpus
# (bench/emotion_scripts.py TEXT_ONLY): a cue the whole group shares carries to words
# the corpus lacks, where a word's own weight does not
CUES: dict[str, tuple[str, ...]] = {
    "hostile": (
        "useless", "ridiculous", "outrageous", "disgrace", "disgraceful", "unacceptable",
        "furious", "livid", "joke", "insane", "incompetent", "idiot", "idiots", "stupid",
        "pathetic", "lying", "liar", "liars", "nonsense", "rubbish", "worst", "hate",
        "damn", "hell", "ruined", "ruin", "clue", "dare", "disgusting", "disaster",
        "shut up", "scream", "stolen", "scam", "angry", "sick of", "sick and tired",
        "last straw", "absolutely", "completely", "total", "never use", "had it",
        "shambles", "cowboys", "theft", "criminal", "robbing", "ashamed", "raging",
        "fuming", "appalling", "shocking", "farce", "sick to death", "wind me up",
    ),
    "demand": (
        "right now", "now", "immediately", "today", "demand", "get me", "put me through",
        "stop", "do not", "i want", "fix it", "sort it", "not tomorrow", "manager",
        "supervisor", "compensation",
    ),
    "threat": (
        "lawyer", "legal", "sue", "court", "regulator", "ombudsman", "report you",
        "post about", "cancel everything", "leaving", "never dealing", "never use",
        "going to report", "take this to", "everywhere", "solicitor", "the press",
        "social media", "trading standards", "watchdog", "bad review", "telling everyone",
        "close my account", "cancel my account", "taking my business",
    ),
    "accuse": (
        "you people", "your company", "you are", "you have", "are you", "do you even",
        "your service", "you cut", "you told", "your excuses", "you lot",
    ),
    "persist": (
        "again", "still", "already", "times", "every time", "keeps", "keep", "waiting",
        "weeks", "month", "months", "hours", "hour", "on hold", "never", "nobody",
        "no one", "yet", "promised", "supposed", "third", "fourth", "second time",
        "so many", "since", "forever", "transferred", "missed", "failed", "fails",
        "wrong", "broken", "not work", "does not work", "no signal", "no refund",
        "every single", "not once", "how many times", "round in circles", "lost count",
        "chase", "chasing", "twice", "all morning", "all day", "all week", "over an hour",
        "again and again", "keeps happening", "different answer", "nobody came",
        "no one came", "from the beginning", "square one", "still waiting",
    ),
    "resigned": (
        "honestly", "just want", "tired", "enough", "patience", "why", "fed up",
        "annoying", "sigh", "to be honest", "cannot believe", "can not believe",
        "straight answer", "seems to care", "explain", "explained", "repeating",
        "do not know what else", "what is the point", "give up", "should not have to",
        "frustrating", "frustrated", "disappointed", "ridiculous amount",
    ),
    "praise": (
        "wonderful", "great", "perfect", "brilliant", "amazing", "fantastic",
        "excellent", "love", "happy", "glad", "pleased", "delighted", "thrilled",
        "relieved", "relief", "appreciate", "helpful", "grateful", "lovely", "awesome",
        "best", "kind", "kindness", "saved", "star", "impressed", "well done", "easy",
        "recommend", "super", "surprise", "great job",
        "thank goodness", "thank god", "mind at rest", "weight off", "made my day",
        "made my week", "lifesaver", "life saver", "spot on", "good to hear",
        "so good", "really good", "can not thank you enough", "really helped",
        "first person", "means a lot",
    ),
    "sarcasm": (
        "oh great", "just great", "just perfect", "oh perfect", "oh wonderful another",
        "great another", "perfect another", "well that is just", "brilliant another",
        "fantastic another", "lovely another", "great so", "thanks for nothing",
        "surprise surprise", "what a surprise", "typical", "as usual", "yet again",
        "of course not", "of course it", "just brilliant", "just fantastic",
    ),
}  # fmt: skip
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    out: list[str] = []
    for w in _WORD.findall(fold(text).lower()):
        out.extend(_CONTRACTIONS.get(w, w).split())
    return out


@lru_cache(maxsize=1)
def _vader() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=1)
def _cue_patterns() -> dict[str, re.Pattern[str]]:
    return {
        group: re.compile(r"\b(" + "|".join(re.escape(p) for p in phrases) + r")\b")
        for group, phrases in CUES.items()
    }


def features(text: str) -> dict[str, float]:
    """The sentence's features, each with its value (absent ones are 0)."""
    ws = words(text)
    joined = " ".join(ws)
    out: dict[str, float] = {"bias": 1.0}
    for w in sorted(set(ws)):  # one order: sums, and so the trainer, repeat exactly
        out[f"w:{w}"] = 1.0
    for a, b in sorted(set(zip(ws, ws[1:], strict=False))):
        out[f"b:{a} {b}"] = 1.0
    for group, pattern in _cue_patterns().items():
        n = len(pattern.findall(joined))
        if n:
            out[f"c:{group}"] = min(n, 3) / 3
    rest = _COURTESY.sub(" ", joined)
    if rest.strip():
        v = _vader().polarity_scores(rest)
        out["v:neg"], out["v:pos"] = v["neg"], v["pos"]
        out["v:compound+"] = max(v["compound"], 0.0)
        out["v:compound-"] = max(-v["compound"], 0.0)
    if "!" in text:
        out["p:exclaim"] = 1.0
    if not rest.strip():
        out["p:courtesy_only"] = 1.0  # "Thank you so much." says nothing but manners
    return out


def text_cues(text: str) -> dict[str, list[str]]:
    """The cue groups the sentence hits, with the words that hit them (for evidence)."""
    joined = " ".join(words(text))
    out: dict[str, list[str]] = {}
    for group, pattern in _cue_patterns().items():
        hits = list(dict.fromkeys(m.group(0) for m in pattern.finditer(joined)))
        if hits:
            out[group] = hits
    return out


class TextModel:
    """Weights per feature and class; ``probabilities(text)`` sums the active ones."""

    def __init__(self, weights: dict[str, list[float]]) -> None:
        self.weights = weights

    @classmethod
    @lru_cache(maxsize=1)
    def load(cls) -> TextModel:
        with open(WEIGHTS) as f:
            return cls(json.load(f)["weights"])

    def logits(self, text: str) -> list[float]:
        z = [0.0] * len(LABELS)
        for name, value in features(text).items():
            w = self.weights.get(name)
            if w is not None:
                for k in range(len(LABELS)):
                    z[k] += value * w[k]
        return z

    def probabilities(self, text: str) -> dict[str, float]:
        z = self.logits(text)
        top = max(z)
        e = [math.exp(v - top) for v in z]
        s = sum(e)
        return {label: e[k] / s for k, label in enumerate(LABELS)}
