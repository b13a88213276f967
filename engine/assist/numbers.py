"""Spoken numbers to digits, keeping track of which words each token came from.

Recognizers write what people say: "four five seventy two", "forty nine
dollars", "one hundred and five". Facts and redaction need digits, and
redaction must also know which *words* (with their times) to hide, so every
output token carries the index range of the words it replaced.

Within a run of number words:
  * with "hundred"/"thousand"/"million" it is a cardinal: "one hundred and five" -> 105;
  * otherwise each piece is written out in turn, the way people read IDs and
    years: "four five seventy two" -> 4572, "twenty twenty four" -> 2024,
    "oh seven" -> 07;
  * "point" joins a decimal part: "twelve point five" -> 12.5;
  * homophones a recognizer writes for digits ("for", "to", "won", "ate") count as
    digits when a number is clearly being read out (see ``_as_digits``).

A neural recognizer writes most numbers as digits already ("83016", "$49.99",
"4,572"): they pass through (``words_of`` drops the punctuation around them and
thousands separators), and so does a number it wrote partly in digits:
  * digits read out one by one next to written digits join them: "eight three
    016" -> 83016, "4111 one one one one" -> 41111111 (not "100 one time": a single
    number word is not a read-out digit);
  * "8-3-0-1-6" (digits read out, written with dashes) -> 83016;
  * "forty-nine" is "forty nine";
  * a homophone before written digits is a digit where a number is being read out:
    "the card number is for 1111" -> "... 4 1111".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from media.asr.text import phrase_words, words

ONES = {
    "zero": 0, "oh": 0, "o": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9,
}  # fmt: skip
TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}  # fmt: skip
SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
NUMBER_WORDS = ONES.keys() | TEENS.keys() | TENS.keys() | SCALES.keys()
# "oh"/"o" are digits only next to other number words ("oh seven"), never alone.
_AMBIGUOUS = {"oh", "o"}
# What recognizers write for digits they heard ("for one one one", "five six to nine").
HOMOPHONES = {"for": "four", "to": "two", "too": "two", "won": "one", "ate": "eight"}
_CUES = {"number", "numbers", "is", "card", "account", "code", "pin", "zip"}
_DASHED_DIGITS = re.compile(r"\d(?:-\d)+")


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    first: int  # index of the first source word
    last: int  # index of the last source word (inclusive)


def words_of(text: str) -> list[str]:
    """The words of a transcript in either style (see ``media.asr.text.words``)."""
    return words(text)


def _cardinal(words: list[str]) -> str:
    total, current = 0, 0
    for w in words:
        if w in ONES:
            current += ONES[w]
        elif w in TEENS:
            current += TEENS[w]
        elif w in TENS:
            current += TENS[w]
        elif w == "hundred":
            current = max(current, 1) * 100
        else:  # thousand, million
            total += max(current, 1) * SCALES[w]
            current = 0
    return str(total + current)


def _read_out(words: list[str]) -> str:
    out, i = [], 0
    while i < len(words):
        w = words[i]
        if w in TENS:
            if i + 1 < len(words) and words[i + 1] in ONES and ONES[words[i + 1]] > 0:
                out.append(str(TENS[w] + ONES[words[i + 1]]))
                i += 2
                continue
            out.append(str(TENS[w]))
        elif w in TEENS:
            out.append(str(TEENS[w]))
        else:
            out.append(str(ONES[w]))
        i += 1
    return "".join(out)


def _value(words: list[str]) -> str:
    return _cardinal(words) if any(w in SCALES for w in words) else _read_out(words)


def _as_digits(words: list[str]) -> list[str]:
    """Read homophones as digits where the context says a number is being read out:
    followed by number words, and either after a cue ("number", "is", "card") or a
    number word, or followed by at least two. "I called for one hour" keeps its "for"."""
    out = list(words)
    for i, w in enumerate(words):
        if w not in HOMOPHONES:
            continue
        after = 0
        while i + 1 + after < len(words) and (
            words[i + 1 + after] in NUMBER_WORDS
            or words[i + 1 + after] in HOMOPHONES
            or _written(words[i + 1 + after])  # "card number is for 1111..."
        ):
            after += 1
        before = words[i - 1] if i > 0 else ""
        inside = before in NUMBER_WORDS or before in _CUES  # "six to nine", "is for one"
        if after >= 2 or (after >= 1 and inside):
            out[i] = HOMOPHONES[w]
    return out


def _written(word: str) -> bool:
    return (word.isascii() and word.isdigit()) or _DASHED_DIGITS.fullmatch(word) is not None


def _pieces(word: str) -> list[str]:
    """ "forty-nine" -> forty, nine: number words a recognizer joined with hyphens."""
    parts = word.split("-")
    numeric = len(parts) > 1 and all(p in NUMBER_WORDS for p in parts)
    return parts if numeric and not all(p in _AMBIGUOUS for p in parts) else [word]


def normalize(source: list[str]) -> list[Token]:
    """Tokens with number-word runs replaced by digits (source word indices kept)."""
    pieces = [(p, n) for n, w in enumerate(source) for p in _pieces(w)]
    words = _as_digits([p for p, _ in pieces])
    at = [n for _, n in pieces]  # the source word of each piece
    tokens: list[Token] = []
    # per token: "said" (two or more digits read out one by one), "written" (digits)
    kinds: list[str] = []
    i = 0
    while i < len(words):
        j = i
        while j < len(words) and (
            words[j] in NUMBER_WORDS or (words[j] == "and" and _cardinal_context(words, i, j))
        ):
            j += 1
        run = [w for w in words[i:j] if w != "and"]
        while run and words[j - 1] == "and":  # a trailing "and" is a conjunction
            j -= 1
            run = [w for w in words[i:j] if w != "and"]
        if not run or (len(run) == 1 and run[0] in _AMBIGUOUS):
            w = words[i]
            written = _written(w)
            tokens.append(Token(w.replace("-", "") if written else w, at[i], at[i]))
            kinds.append("written" if written else "")
            i += 1
            continue
        text = _value(run)
        last = j - 1
        # decimals: "twelve point five"
        if j + 1 < len(words) and words[j] == "point" and words[j + 1] in ONES:
            k = j + 1
            while k < len(words) and words[k] in ONES:
                k += 1
            text += "." + "".join(str(ONES[w]) for w in words[j + 1 : k])
            last = k - 1
            j = k
        tokens.append(Token(text, at[i], at[last]))
        said = len(run) > 1 and all(w in ONES for w in run)
        kinds.append("said" if said and text.isdigit() else "")
        i = j
    return _join_read_out(tokens, kinds)


def _join_read_out(tokens: list[Token], kinds: list[str]) -> list[Token]:
    """Written digits and digits read out next to them are one number (see above)."""
    out: list[Token] = []
    before = ""
    for t, kind in zip(tokens, kinds, strict=True):
        if out and {before, kind} == {"said", "written"}:
            out[-1] = Token(out[-1].text + t.text, out[-1].first, t.last)
        else:
            out.append(t)
        before = kind
    return out


def _cardinal_context(words: list[str], start: int, j: int) -> bool:
    """'and' belongs to a number only inside a cardinal: 'one hundred and five'."""
    return (
        j > start and words[j - 1] in SCALES and j + 1 < len(words) and words[j + 1] in NUMBER_WORDS
    )


def normalize_text(text: str) -> str:
    return " ".join(t.text for t in normalize(words_of(text)))


def normalize_phrase(text: str) -> str:
    """Letters, digits and apostrophes only, numbers as digits: how phrases (escalation
    rules, product names) and the text they are looked for in are compared."""
    return " ".join(t.text for t in normalize(phrase_words(text)))
