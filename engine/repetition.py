"""A caller saying the same thing again: the sign that they are not being heard.

Theory of operation
-------------------
Two signals, both read from the caller's final transcripts (sans-IO, no clock needed):

    signal      fires when                                              example
    marker      the caller says they are repeating themselves           "I already said",
                (``MARKERS`` anywhere; "i said", "again", "once          "like I said", "for
                again" at the start of a clause, after interjections     the third time",
                such as "no" or "look")                                  "Again, I want ..."
    similarity  an utterance of ``MIN_WORDS`` words or more is          "I want to cancel my
                ``token_set_ratio`` >= ``min_similarity`` to an earlier  account" ... "I want
                one, they share at least two content words, and they    to cancel my account
                carry the same numbers                                  please"

``token_set_ratio`` alone scores a sentence contained in another 100 ("yes I do" in "yes
I do think so"), hence the content words; and "my account number is 1234" then "... is
5678" is a correction, not a repeat, hence the numbers. Text is compared as
``normalize_phrase`` writes it (lower case, numbers as digits, fillers left out).

``Repetitions`` keeps the last ``HISTORY`` utterances long enough to compare; each new
one is compared with all of them in one rapidfuzz call.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from rapidfuzz import fuzz, process

from engine.intents import FUNCTION_WORDS, Sentence

MIN_WORDS = 3
HISTORY = 50  # earlier utterances compared with each new one
# Phrases that say "I have said this before", anywhere in a sentence.
MARKERS = (
    "i already said", "i've already said", "i have already said", "i already told you",
    "i've already told you", "i have already told you", "i told you", "like i said",
    "as i said", "i just said", "i keep saying", "i keep telling you",
    "how many times do i", "how many times have i", "for the second time",
    "for the third time", "for the fourth time", "for the fifth time", "for the last time",
    "i'm repeating myself", "i am repeating myself", "said it already", "said that already",
)  # fmt: skip
# Markers only where a clause starts: "I said to the driver ..." tells a story.
START_MARKERS = ("i said", "once again", "again")
# Words that may come before a start marker: "no, I said cancel it".
_INTERJECTIONS = frozenset("no well look listen but and so ok okay yes yeah hey like".split())
# After "i said" these tell a story, not a repeat: "I said to him", "I said hello".
_NOT_AFTER_SAID = frozenset("to he she they we hello hi goodbye bye thanks thank".split())
# Words that say little about what is asked: two utterances must share others.
_LIGHT = FUNCTION_WORDS | frozenset(
    "yes yeah no okay ok please thanks thank right sure well just so is are am was were be "
    "have has had do does did want need would like can could will i'm it's that's what how "
    "why when where who there here then now also too very really hello hi know get got "
    "said say".split()
)
_MARKER_WORDS: dict[str, list[tuple[str, ...]]] = {}
for _m in MARKERS:
    _MARKER_WORDS.setdefault(_m.split()[0], []).append(tuple(_m.split()))
_START_WORDS = tuple(tuple(m.split()) for m in START_MARKERS)


def marker(sentences: Sequence[Sentence]) -> str | None:
    """The repetition marker the caller used (in ``read(text)``), if any."""
    for sentence in sentences:
        ws = [h.text for h in sentence.heard]
        for i, w in enumerate(ws):
            for m in _MARKER_WORDS.get(w, ()):
                if tuple(ws[i : i + len(m)]) == m:
                    return " ".join(m)
        for i, h in enumerate(sentence.heard):
            starts = i == 0 or sentence.heard[i - 1].clause != h.clause
            if not starts:
                continue
            j = i
            while j < len(ws) and ws[j] in _INTERJECTIONS:  # "no, I said", "look again"
                j += 1
            for m in _START_WORDS:
                if tuple(ws[j : j + len(m)]) != m:
                    continue
                after = ws[j + len(m) :]
                if m == ("i", "said") and after and after[0] in _NOT_AFTER_SAID:
                    continue
                if m[-1] == "again" and len(after) < 2:  # "again?" asks to hear it again
                    continue
                return " ".join(m)
    return None


@dataclass(frozen=True, slots=True)
class Said:
    id: str
    text: str
    normal: str  # normalize_phrase words, fillers left out
    content: frozenset[str]
    numbers: frozenset[str]


_REDACTED = re.compile(r"\[[a-z_]+\]")  # what engine.assist.redact leaves in its place


def said(utterance_id: str, text: str, sentences: Sequence[Sentence]) -> Said | None:
    """An utterance (``text`` and ``read(text)``) as repetition compares it (None: fewer
    than ``MIN_WORDS`` words)."""
    words = [h.text for s in sentences for h in s.heard]  # fillers are left out already
    if len(words) < MIN_WORDS:
        return None
    # The engine compares redacted text: "my card number is [card]" twice may be two
    # different cards (a correction). A hidden value is a number nobody can match.
    hidden = {f"{utterance_id}#{n}" for n in range(len(_REDACTED.findall(text)))}
    return Said(
        utterance_id,
        text,
        " ".join(words),
        frozenset(w for w in words if w not in _LIGHT and not w[0].isdigit()),
        frozenset(w for w in words if w[0].isdigit()) | hidden,
    )


@dataclass(frozen=True, slots=True)
class Repeat:
    earlier: Said
    similarity: float  # 0..100
    position: int  # in the history: earlier ones are lower


@dataclass
class Repetitions:
    """The caller's earlier utterances (the last ``HISTORY`` long enough to compare)."""

    history: deque[Said] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def repeats(self, now: Said, min_similarity: float) -> list[Repeat]:
        """Earlier utterances ``now`` says again, most similar first."""
        found = process.extract(
            now.normal,
            [s.normal for s in self.history],
            scorer=fuzz.token_set_ratio,
            score_cutoff=min_similarity,
            limit=None,
        )
        out = []
        for _, score, n in found:
            earlier = self.history[n]
            if len(earlier.content & now.content) >= 2 and earlier.numbers == now.numbers:
                out.append(Repeat(earlier, round(score, 1), n))
        return out

    def add(self, s: Said) -> None:
        self.history.append(s)
