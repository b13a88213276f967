"""Transcript text as the recognizers write it, read the same way whichever wrote it.

pocketsphinx (and vosk) write lower case words, no punctuation, numbers as words:
"my order number is eight three zero one six". A neural recognizer (Moonshine) writes
like a person: "My order number is 83016.", "It's $49.99, I was charged twice.",
"I’ll call my lawyer." Whatever reads a transcript for meaning reads its words here:

    words(text)         what facts, numbers and redaction read: lower case,
                        typographic apostrophes as "'" ("I’ll" is "i'll"), punctuation
                        around a word gone ("twice." "(555)" "'agent'"), thousands
                        separators gone ("$1,049.99" is "$1049.99"), and what makes a
                        word an amount, an address or a number kept inside it
                        ("$49.99", "jane@example.org", "555-123-4567", "3/14/2024");
    phrase_words(text)  letters, digits and apostrophes only ("real-person" is two
                        words), for matching phrases;
    sentences(text)     split after . ? ! ; so a phrase never runs over a full stop
                        (pocketsphinx text is one sentence);
    fold(text)          only the apostrophes folded, case and punctuation kept, for
                        readers that use them (VADER: "!!!", "TERRIBLE").

The engine keeps the transcript as the recognizer wrote it; this is only how it is read.
"""

from __future__ import annotations

import re

_APOSTROPHES = str.maketrans(dict.fromkeys("’‘ʼ`´′", "'"))
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_AROUND = re.compile(r"^[^\w$€£]+|[\W_]+$")
_INSIDE = re.compile(r"[^\w'@.$€£/\-]")
_PHRASE_SPLIT = re.compile(r"[^\w']+|_")
_SENTENCE_END = re.compile(r"(?<=[.?!;…])\s+")


def fold(text: str) -> str:
    """Typographic apostrophes as "'"; nothing else changes."""
    return text.translate(_APOSTROPHES)


def word(token: str) -> str:
    """One whitespace-separated token as ``words`` reads it ("" when only punctuation)."""
    w = _THOUSANDS.sub("", fold(token).lower())
    return _INSIDE.sub("", _AROUND.sub("", w))


def words(text: str) -> list[str]:
    return [w for w in map(word, text.split()) if w]


def phrase_words(text: str) -> list[str]:
    return [w.strip("'") for w in _PHRASE_SPLIT.split(fold(text).lower()) if w.strip("'")]


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s.strip()]
