"""Facts a caller has already given, pulled from what they said.

Runs on redacted text with spoken numbers already written as digits, so what is
hidden never becomes a fact. Each fact keeps the utterance it came from, so an
agent can click through to the moment it was said.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from engine.assist.numbers import normalize_text

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
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("order_number",
     re.compile(r"\border(?: numbers?| no| id)?(?: is)?(?: #)? ?([a-z]{0,3}\d{3,})\b")),
    ("account_number", re.compile(r"\baccount(?: numbers?| no| id)?(?: is)? ?(\d{4,})\b")),
    ("amount", re.compile(r"(\$ ?\d+(?:\.\d{1,2})?)")),
    ("amount",
     re.compile(r"\b(\d+(?:\.\d+)? (?:dollars?|bucks|euros?|pounds?)(?: and \d{1,2} cents)?)\b")),
    ("date", re.compile(rf"\b((?:{'|'.join(MONTHS)}) \d{{1,2}}(?:st|nd|rd|th)?(?: \d{{4}})?)\b")),
    ("date", re.compile(r"\b(\d{1,2}/\d{1,2}(?:/\d{2,4})?|\d{4}-\d{2}-\d{2})\b")),
    ("date", re.compile(rf"\b((?:last|next|this) (?:week|month|year|{WEEKDAYS.replace(' ', '|')})"
                        rf"|yesterday|today|tomorrow|on (?:{WEEKDAYS.replace(' ', '|')}))\b")),
    ("email", re.compile(rf"\b([a-z0-9._%+\-]+@[a-z0-9.\-]+\.(?:{TLDS}))\b")),
    ("email", re.compile(rf"\b([a-z0-9]+(?: dot [a-z0-9]+)*) at ([a-z0-9]+(?: dot [a-z0-9]+)*"
                         rf" dot (?:{TLDS}))\b")),
    ("phone", re.compile(r"\b(\d{10,11})\b")),
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
    norm = normalize_text(_ordinal_dates(" ".join(text.lower().split())))
    facts: list[Fact] = []
    for kind, rx in PATTERNS:
        for m in rx.finditer(norm):
            if kind == "email" and rx.groups == 2:
                value = f"{m.group(1).replace(' dot ', '.')}@{m.group(2).replace(' dot ', '.')}"
            else:
                value = m.group(1)
            facts.append(Fact(kind, value.strip(), utterance_id, at))
    padded = f" {norm} "
    for product in products:
        if f" {' '.join(product.lower().split())} " in padded:
            facts.append(Fact("product", product, utterance_id, at))
    return facts


class FactSheet:
    """All facts of a call, first mention kept, in the order they were given."""

    def __init__(self) -> None:
        self.facts: list[Fact] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, facts: Iterable[Fact]) -> list[Fact]:
        new = []
        for f in facts:
            if (f.kind, f.value) not in self._seen:
                self._seen.add((f.kind, f.value))
                self.facts.append(f)
                new.append(f)
        return new
