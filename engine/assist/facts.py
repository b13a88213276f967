"""Facts a caller has already given, pulled from what they said.

Runs on redacted text with spoken numbers already written as digits, so what is
hidden never becomes a fact. A fact has one value whichever way the recognizer wrote
it: "$49.99" and "forty nine dollars ninety nine" are both "$49.99", "555-123-4567"
and "five five five one two three ..." both "5551234567", "March 3rd" and "march
third" both "march 3". Each fact keeps the utterance it came from, so an agent can
click through to the moment it was said.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from engine.assist.numbers import normalize_phrase, normalize_text, words_of

MONTHS = (
    "january february march april may june july august september october november december"
).split()
ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18,
    "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}  # fmt: skip
WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday"
TLDS = "com|org|net|edu|gov|io|co|uk|de|fr|us|ca|au|info|biz"

_ORDINAL_DAY = re.compile(
    rf"\b({'|'.join(MONTHS)}) (?:the )?(?:(twenty|thirty)[ -])?({'|'.join(ORDINALS)})\b"
)
CURRENCIES = {"dollar": "$", "dollars": "$", "buck": "$", "bucks": "$", "euro": "€",
              "euros": "€", "pound": "£", "pounds": "£"}  # fmt: skip
_NUMBER = r"(?P<whole>\d+)(?:\.(?P<decimal>\d{1,2}))?"
# "49 dollars 99": cents, unless the number counts something else ("20 dollars 30 minutes")
_NOT_CENTS = (
    r"(?! (?:percent|seconds?|minutes?|hours?|days?|weeks?|months?|years?|times|"
    rf"{'|'.join(CURRENCIES)})\b)"
)


def _group(m: re.Match[str]) -> str:
    return m.group(1)


def _amount(m: re.Match[str]) -> str:
    """One value for an amount however it was written: "$49.99", "49.99 dollars",
    "49 dollars and 99 cents", "49 dollars 99" are all "$49.99"."""
    g = m.groupdict()
    symbol = g.get("symbol") or CURRENCIES[g["word"]]
    if g["decimal"]:
        cents = g["decimal"].ljust(2, "0")  # "12.5" is 12.50
    else:
        cents = g["cents"].rjust(2, "0") if g.get("cents") else ""  # "5 cents" is .05
    return f"{symbol}{int(g['whole'])}" + (f".{cents}" if cents else "")


def _phone(m: re.Match[str]) -> str:
    return re.sub(r"\D", "", m.group(1))


def _date(m: re.Match[str]) -> str:
    return re.sub(r"(?<=\d)(?:st|nd|rd|th)\b", "", m.group(1))  # "march 3rd" as "march 3"


# Over the words of the text as ``words_of`` reads them (lower case, no punctuation
# around a word), spoken numbers as digits.
PATTERNS: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    ("order_number",
     re.compile(r"\border(?: numbers?| no| id)?(?: is)?(?: #)? ?([a-z]{0,3}\d{3,})\b"), _group),
    ("account_number", re.compile(r"\baccount(?: numbers?| no| id)?(?: is)? ?(\d{4,})\b"), _group),
    ("amount", re.compile(rf"(?<![\w$€£])(?P<symbol>[$€£]) ?{_NUMBER}\b"), _amount),
    ("amount", re.compile(rf"(?<![\w$€£.]){_NUMBER} (?P<word>{'|'.join(CURRENCIES)})\b"
                          rf"(?: (?:and )?(?P<cents>\d{{1,2}})(?: cents?\b|\b{_NOT_CENTS}))?"),
     _amount),
    ("date", re.compile(rf"\b((?:{'|'.join(MONTHS)}) \d{{1,2}}(?:st|nd|rd|th)?(?: \d{{4}})?)\b"),
     _date),
    ("date", re.compile(r"\b(\d{1,2}/\d{1,2}(?:/\d{2,4})?|\d{4}-\d{2}-\d{2})\b"), _group),
    ("date", re.compile(rf"\b((?:last|next|this) (?:week|month|year|{WEEKDAYS.replace(' ', '|')})"
                        rf"|yesterday|today|tomorrow|on (?:{WEEKDAYS.replace(' ', '|')}))\b"),
     _group),
    ("email", re.compile(rf"\b([a-z0-9._%+\-]+@[a-z0-9.\-]+\.(?:{TLDS}))\b"), _group),
    ("email", re.compile(rf"\b([a-z0-9]+(?: dot [a-z0-9]+)*) at ([a-z0-9]+(?: dot [a-z0-9]+)*"
                         rf" dot (?:{TLDS}))\b"),
     lambda m: f"{m.group(1).replace(' dot ', '.')}@{m.group(2).replace(' dot ', '.')}"),
    # spoken ("5551234567") or written in groups ("555-123-4567", "(555) 123 4567")
    ("phone", re.compile(r"(?<![\w.\-])(\d{10,11}|(?:1[ .\-]?)?\d{3}[ .\-]?\d{3}[ .\-]?\d{4})"
                         r"(?![\w\-]|\.\d)"), _phone),
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Fact:
    kind: str
    value: str
    utterance_id: str
    at: float


def _ordinal_dates(text: str) -> str:
    def day(m: re.Match[str]) -> str:
        tens = {"twenty": 20, "thirty": 30}.get(m.group(2) or "", 0)
        return f"{m.group(1)} {tens + ORDINALS[m.group(3)]}"

    return _ORDINAL_DAY.sub(day, text)


def extract(
    text: str, utterance_id: str = "", at: float = 0.0, products: Iterable[str] = ()
) -> list[Fact]:
    # "january twenty first" must become a day before "twenty" becomes 20
    norm = normalize_text(_ordinal_dates(" ".join(words_of(text))))
    facts: list[Fact] = []
    for kind, rx, value in PATTERNS:
        for m in rx.finditer(norm):
            facts.append(Fact(kind, value(m).strip(), utterance_id, at))
    padded = f" {normalize_phrase(text)} "
    for product in products:
        if (name := normalize_phrase(product)) and f" {name} " in padded:
            facts.append(Fact("product", product, utterance_id, at))
    return facts


@dataclass
class FactSheet:
    """All facts of a call, first mention kept, in the order they were given. Plain
    data, part of the call's record (engine/callstate.py): what was seen is read off
    the list at each add (a call has tens of facts), not kept as a second copy."""

    facts: list[Fact] = field(default_factory=list)

    def add(self, facts: Iterable[Fact]) -> list[Fact]:
        seen = {(f.kind, f.value) for f in self.facts}
        new = []
        for f in facts:
            if (f.kind, f.value) not in seen:
                seen.add((f.kind, f.value))
                self.facts.append(f)
                new.append(f)
        return new
