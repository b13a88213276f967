"""What a caller's words mean to a flow: which intent, and the values of its slots.

Theory of operation
-------------------
Intents are matched on the words that carry them, not on exact strings, since the
recognizer mishears ("where's my odor", "track my parcels") and callers wrap a request
in their own words ("hi, yeah, I was wondering where my order is"). Each example
phrasing is reduced to its content words (function words and fillers dropped); each
content word is looked for among the heard words of a sentence the way the escalation
phrases are (``engine.intents``): the same word, a plural, a near spelling
(``fuzzy_threshold``), or the same sound (metaphone). A word counts by how rare it is
across the flow's intents (inverse intent frequency: "order" in three intents tells
less than "refund" in one), so

    score(example) = sum(weight of each found word x how it was found)
                     / sum(weight of every content word of the example)

and an intent scores its best example. The best intent is taken when it scores at least
``THRESHOLD`` and beats the runner-up by ``MARGIN``: two intents that fit alike are a
question for the caller, not a guess. A negated request ("I don't want to cancel") is
not a request: ``engine.intents.negated`` reads it as the escalation rules do.

Slots are read from the same words with numbers as digits (``engine.assist.numbers``:
"eight three oh one six" -> 83016), and from keys on the phone's keypad.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import jellyfish
from rapidfuzz import fuzz

from engine.bot.flows import Flow, Slot
from engine.intents import FUNCTION_WORDS, fuzzy_threshold, negated, read

THRESHOLD = 0.6  # share of an example's weight that must be heard
MAX_HEARD_WORDS = 60  # of one utterance (a 15 s utterance is ~45 words)
MARGIN = 0.1  # how far the best intent must be ahead of the next
# how much a word counts by how it was found
FOUND = {"exact": 1.0, "plural": 1.0, "fuzzy": 0.8, "phonetic": 0.8}
# Content words: more than function words are dropped from examples. A caller says
# "can you tell me" and "I'd like to" around any request.
_LIGHT = FUNCTION_WORDS | frozenset(
    "can could would will please want wanna like need is are was be do does did i'd i'm "
    "im it's what's where's hi hello yes yeah so just about tell know".split()
)


@dataclass(frozen=True, slots=True)
class IntentMatch:
    intent: str
    score: float
    example: str  # the example phrasing it matched best
    words: tuple[str, ...]  # the heard words that matched it (evidence)


def _content(text: str) -> list[str]:
    return [h.text for s in read(text) for h in s.heard if h.text not in _LIGHT]


# what callers say around a request and nothing else: "hi", "um", "okay so"
_FILLERS = frozenset("um uh er erm hmm mm ah oh okay ok well right hey morning afternoon".split())


def has_content(text: str) -> bool:
    """Whether a line says anything beyond greetings and fillers ("Hi," "um, so")."""
    return any(w not in _FILLERS for w in _content(text))


def _found(word: str, heard: str) -> str | None:
    """How an example's ``word`` was found in one ``heard`` word, if it was."""
    heard = heard.removesuffix("'s")  # "where's my order"
    if heard == word:
        return "exact"
    if heard in (word + "s", word + "es") or word in (heard + "s", heard + "es"):
        return "plural"
    least = fuzzy_threshold(len(word))
    if least is not None and fuzz.ratio(word, heard) >= least:
        return "fuzzy"
    if len(word) >= 4 and len(heard) >= 3 and word[0] == heard[0]:
        if jellyfish.metaphone(word) == jellyfish.metaphone(heard):
            return "phonetic"
    return None


class IntentMatcher:
    """A flow's intents, ready to match what callers say."""

    def __init__(self, flow: Flow) -> None:
        self.examples: list[tuple[str, str, list[str]]] = []
        having: dict[str, set[str]] = {}
        for intent in flow.intents:
            for example in intent.examples:
                words = _content(example)
                if words:
                    self.examples.append((intent.name, example, words))
                    for w in words:
                        having.setdefault(w, set()).add(intent.name)
        n = len(flow.intents)
        self.weight = {w: math.log(1 + n / len(names)) for w, names in having.items()}

    def scores(self, text: str) -> list[IntentMatch]:
        """Every intent's best reading of ``text``, best first. Only its first
        ``MAX_HEARD_WORDS`` words are read: a request comes first, and the cost of a
        reading grows with the words (it runs on the event loop)."""
        sentences = read(" ".join(text.split()[:MAX_HEARD_WORDS]))
        best: dict[str, IntentMatch] = {}
        for name, example, words in self.examples:
            total = sum(self.weight[w] for w in words)
            for sentence in sentences:
                heard = sentence.heard
                got, at, used = 0.0, [], []
                for w in words:
                    hits = [
                        (FOUND[kind], i)
                        for i, h in enumerate(heard)
                        if (kind := _found(w, h.text)) is not None
                    ]
                    if hits:
                        quality, i = max(hits)
                        got += self.weight[w] * quality
                        at.append(i)
                        used.append(heard[i].text)
                if not at or negated(heard, min(at), heard[min(at)].text):
                    continue
                score = got / total
                if name not in best or score > best[name].score:
                    best[name] = IntentMatch(name, round(score, 3), example, tuple(used))
        return sorted(best.values(), key=lambda m: -m.score)

    def match(self, text: str) -> IntentMatch | None:
        """The intent ``text`` asks for, or None when none fits well, or two fit
        alike."""
        ranked = self.scores(text)
        if not ranked or ranked[0].score < THRESHOLD:
            return None
        if len(ranked) > 1 and ranked[0].score - ranked[1].score < MARGIN:
            return None
        return ranked[0]


# -- slots ----------------------------------------------------------------------------

YES = frozenset("yes yeah yep yup correct right sure ok okay affirmative absolutely".split())
NO = frozenset("no nope nah wrong incorrect".split())
NOT = frozenset("not isn't isnt wasn't wasnt".split())
CURRENCY = frozenset("pounds pound dollars dollar euros euro quid bucks".split())
KEY_YES, KEY_NO = "1", "2"


def _tokens(text: str) -> list[str]:
    return [h.text for s in read(text) for h in s.heard]


# Words a recognizer writes for a digit ("it's for 5129" for "4 5 1 2 9"), read as that
# digit only next to other digits, and only when the digits alone do not fit the slot.
HOMOPHONES = {"for": "4", "to": "2", "too": "2", "won": "1", "ate": "8", "oh": "0"}


def digit_runs(text: str, homophones: bool = False) -> list[str]:
    """The digit strings said; digits read out in groups or one by one ("8 3 0 1 6",
    "830 16") are one string. ``homophones``: a word of ``HOMOPHONES`` next to digits
    is that digit."""
    tokens = [t.replace(",", "") for t in _tokens(text)]
    if homophones:
        tokens = [
            HOMOPHONES[t]
            if t in HOMOPHONES
            and any(0 <= j < len(tokens) and tokens[j].isdigit() for j in (i - 1, i + 1))
            else t
            for i, t in enumerate(tokens)
        ]
    runs: list[str] = []
    after_digits = False
    for t in tokens:
        if t.isdigit():
            if after_digits:
                runs[-1] += t
            else:
                runs.append(t)
        after_digits = t.isdigit()
    return runs


def read_slot(slot: Slot, text: str) -> str | None:
    """The slot's value in what the caller said, or None if it is not there (or not
    one value: "yes, no, I mean..." is not an answer)."""
    if slot.type == "digits":
        for homophones in (False, True):
            fitting = [r for r in digit_runs(text, homophones) if slot.fits(r)]
            if fitting:
                return fitting[0] if len(set(fitting)) == 1 else None
        return None
    if slot.type == "yes_no":
        tokens = _tokens(text)
        # "not right", "not correct": a no; "not yet" alone is neither
        pairs = zip(tokens, tokens[1:], strict=False)
        negated_yes = any(a in NOT and b in YES for a, b in pairs)
        words = set(tokens)
        no = bool(words & NO) or negated_yes
        yes = bool(words & YES) and not negated_yes
        return "yes" if yes and not no else "no" if no and not yes else None
    if slot.type in ("number", "amount"):
        return _amount(text) if slot.type == "amount" else _number(text)
    text = text.strip()
    return text or None


def read_keys(slot: Slot, keys: str) -> str | None:
    """The slot's value from keys pressed (``#`` ends them and is not part of it)."""
    keys = keys.rstrip("#")
    if slot.type == "yes_no":
        return {KEY_YES: "yes", KEY_NO: "no"}.get(keys)
    if not keys.isdigit():
        return None
    if slot.type == "digits":
        return keys if slot.fits(keys) else None
    return keys if slot.type in ("number", "amount") else None


_DECIMAL = re.compile(r"(?<![\d.])[$£€]?(\d{1,3}(?:,\d{3})+|\d+)\.(\d{1,2})(?![\d.])")


def _number(text: str) -> str | None:
    # the words drop a decimal point ("49.99" reads as 49 99): written decimals first
    if m := _DECIMAL.search(text):
        return f"{m.group(1).replace(',', '')}.{m.group(2)}"
    for t in _tokens(text):
        if re.fullmatch(r"\d+(\.\d+)?", t.replace(",", "")):
            return t.replace(",", "")
    return None


def _amount(text: str) -> str | None:
    """ "25 pounds 50" -> 25.50, "$49.99" -> 49.99, "twelve dollars" -> 12.00."""
    if m := _DECIMAL.search(text):
        return f"{Decimal(m.group(1).replace(',', '') + '.' + m.group(2)):.2f}"
    tokens = [t.replace(",", "").lstrip("$£€") for t in _tokens(text)]
    for i, t in enumerate(tokens):
        try:
            whole = Decimal(t)
        except InvalidOperation:
            continue
        if not whole.is_finite():  # "nan", "infinity" are words here, not amounts
            continue
        rest = tokens[i + 1 : i + 3]
        if len(rest) == 2 and rest[0] in CURRENCY and rest[1].isdigit() and len(rest[1]) <= 2:
            whole += Decimal(rest[1]) / 100
        return f"{whole:.2f}"
    return None


def spoken(slot: Slot, value: str) -> str:
    """How a value is read back: digits one by one ("8 3 0 1 6"), so a caller can check
    each."""
    if slot.type == "digits":
        return " ".join(value)
    return value
