"""Redaction of card numbers and configured patterns, in text and in word timings.

Card numbers are found after spoken digits are turned into digits ("four one one
one ..." -> 4111...), typed or spoken, with or without separators (space, dash,
dot). A run of 13 to 19 digits is redacted when the Luhn check passes; a run of 15 to
19 digits also when it fails, unless it follows the name of an order, account or other
reference number ("order 4111...2" stays): a recognizer that adds or drops one digit
(Moonshine heard "The cart number is for 111111111111111111" for a card read out)
breaks the check, and no card may leak for that.
Configured patterns are regular expressions over the same normalised text: the
words as ``media.asr.text.words`` reads them (lower case, no punctuation around
a word, "Card: 4111 1111." is "card 4111 1111"), numbers as digits. When a
pattern has a group that matched, only the group is hidden ("security code is
123" keeps its context). A redacted run of words becomes one placeholder word
with the times of the words it replaced; in the text, punctuation after the last
hidden word stays ("is 4111 1111 1111 1111." -> "is [card].").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine.assist.numbers import Token, normalize
from media.asr.text import word

CARD = re.compile(r"\d(?:[ .\-]?\d){12,18}")
# A recognizer that gets one digit wrong breaks the Luhn check; right after the word
# "card" a 13-19 digit run is a card number anyway.
CARD_IN_CONTEXT = re.compile(r"\bcard(?: number)?(?: is)?(?: ends? in)? (\d(?:[ .\-]?\d){12,18})\b")
# A long number said right after one of these is that reference, not a card.
REFERENCE = re.compile(
    r"\b(?:order|account|reference|tracking|confirmation|case|ticket|invoice|policy|"
    r"member|customer)(?: number| no| id)?(?: is)?:? $"
)
# Partials show a number while it is being said, before it is long enough to check:
# they hide every run of 4+ digits (a dot is no separator here: "$49.99" is an amount).
# They live for seconds; the final shows what is safe.
LONG_DIGITS = re.compile(r"\d(?:[ \-]?\d){3,}")
# Punctuation a recognizer writes after a word, kept after a placeholder.
_TRAILING = re.compile(r"[.,!?;:…]+$")
DEFAULT_PATTERNS: dict[str, str] = {
    # written in groups ("078-05-1120", "078 05 1120"), or nine digits after the word
    # (spoken digits become one run: "ssn zero seven eight ..." -> "ssn 078051120")
    "ssn": r"\b\d{3}[ .\-]\d{2}[ .\-]\d{4}\b"
    r"|\b(?:ssn|social security|social)(?: number)?(?: is)? (\d{9})\b",
    "card_security_code": r"\b(?:security code|cvv|cvc|cvv2)(?: number)?(?: is)? (\d{3,4})\b",
}


class TimedWord(Protocol):
    @property
    def word(self) -> str: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def conf(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RedactedWord:
    word: str
    start: float
    end: float
    conf: float = 1.0


@dataclass(frozen=True)
class Redacted:
    text: str
    words: list[RedactedWord]
    kinds: list[str] = field(default_factory=list)  # what was hidden, in order


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class Redactor:
    def __init__(self, patterns: Mapping[str, str] | None = None) -> None:
        chosen = DEFAULT_PATTERNS if patterns is None else patterns
        self.patterns = {k: re.compile(v, re.IGNORECASE) for k, v in chosen.items()}

    def _spans(self, joined: str, partial: bool) -> list[tuple[int, int, str]]:
        spans = []
        for m in CARD.finditer(joined):
            digits = re.sub(r"\D", "", m.group())
            if not 13 <= len(digits) <= 19:
                continue
            named = REFERENCE.search(joined, 0, m.start()) is not None
            if luhn_valid(digits) or (len(digits) >= 15 and not named):
                spans.append((m.start(), m.end(), "card"))
        spans += [(m.start(1), m.end(1), "card") for m in CARD_IN_CONTEXT.finditer(joined)]
        if partial:
            spans += [(m.start(), m.end(), "digits") for m in LONG_DIGITS.finditer(joined)]
        for kind, rx in self.patterns.items():
            for m in rx.finditer(joined):
                g = 1 if rx.groups and m.start(1) >= 0 else 0
                spans.append((m.start(g), m.end(g), kind))
        return sorted(spans)

    def redact(
        self, text: str, words: Sequence[TimedWord] | None = None, *, partial: bool = False
    ) -> Redacted:
        """Hide sensitive spans; ``partial`` also hides any 4+ digit run (see LONG_DIGITS)."""
        source = text.split()
        clean = [word(w) or w.lower() for w in source]
        tokens = normalize(clean)
        joined, offsets = _join(tokens)
        hidden: dict[int, tuple[int, str]] = {}  # first source word -> (last, kind)
        for start, end, kind in self._spans(joined, partial):
            covered = [
                t for t, (a, b) in zip(tokens, offsets, strict=True) if a < end and b > start
            ]
            # overlapping finds (Luhn and context) hide the same words once
            if covered and not any(a <= covered[0].first <= b for a, (b, _) in hidden.items()):
                hidden[covered[0].first] = (covered[-1].last, kind)
        if not hidden:
            timed = [RedactedWord(w.word, w.start, w.end, w.conf) for w in words or []]
            return Redacted(text, timed)
        out_text: list[str] = []
        kinds: list[str] = []
        i = 0
        spans: list[tuple[int, int, str]] = []
        while i < len(source):
            if i in hidden:
                last, kind = hidden[i]
                tail = _TRAILING.search(source[last])
                out_text.append(f"[{kind}]" + (tail.group() if tail else ""))
                kinds.append(kind)
                spans.append((i, last, kind))
                i = last + 1
            else:
                out_text.append(source[i])
                i += 1
        return Redacted(" ".join(out_text), _redact_words(words or [], spans, len(source)), kinds)


def _join(tokens: list[Token]) -> tuple[str, list[tuple[int, int]]]:
    parts, offsets, pos = [], [], 0
    for t in tokens:
        offsets.append((pos, pos + len(t.text)))
        parts.append(t.text)
        pos += len(t.text) + 1
    return " ".join(parts), offsets


def _redact_words(
    words: Sequence[TimedWord], spans: list[tuple[int, int, str]], n_source: int
) -> list[RedactedWord]:
    if len(words) != n_source:
        # timings do not line up with the text: keep none rather than leak any
        return []
    out: list[RedactedWord] = []
    i = 0
    starts = {a: (b, kind) for a, b, kind in spans}
    while i < len(words):
        if i in starts:
            last, kind = starts[i]
            out.append(RedactedWord(f"[{kind}]", words[i].start, words[last].end, 1.0))
            i = last + 1
        else:
            w = words[i]
            out.append(RedactedWord(w.word, w.start, w.end, w.conf))
            i += 1
    return out
