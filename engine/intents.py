"""Finding a phrase in what the recognizer heard: on its words, their spelling and sound.

Theory of operation
-------------------
A recognizer mishears: "cancel my account" comes out as "council my account", "cancel
my count", "cancel the account"; "supervisor" as "super visor". An exact string match
loses every one of them, so a phrase is looked for word by word, and each word of the
phrase may be found in the heard words by one of these (``WordKind``):

    kind       when                                                      example
    exact      the same word (numbers as words or digits: both are       cancel/cancel
               read through ``normalize_phrase``)
    plural     one adds "s"/"es" (counts as exact for the budget below)  account/accounts
    fuzzy      ``fuzz.ratio`` at least ``fuzzy_threshold(len(word))``:   account/count
               words of 3 letters or fewer only ever match exactly;
               a past tense never ("closed my account" is done)
    phonetic   the same metaphone code and some shared spelling          cancel/council
    split      two heard words that join into the word (or, fuzzily,    supervisor/super visor
               near it: "a count")                                       account/a count
    joined     one heard word that is two phrase words joined            e mail/email

and the phrase as a whole may differ from what was heard by one *gap* (``GapKind``):

    dropped      a function word of the phrase is missing   "cancel account"
    substituted  a function word is another function word   "cancel the account"
    inserted     one word more inside the phrase            "cancel my whole account"

Dropping and substituting need a phrase of 3 words or more (so "sue you" never shrinks
to "sue"); the inserted word is never a negator nor a joining word ("end of my
contract" is not "end my contract"). A match may differ from its phrase in one thing
only, fuzzy, phonetic, split, joined or a gap (two in a phrase of four content words or
more): "council the account" is too far from "cancel my account". A phrase of one word
allows only exact, plural and split: one word carries no context, and its fuzzy or
phonetic neighbours are everyday words ("operate", "layer", "compliant").

Fillers ("uh", "um") are not words here. A phrase is looked for within one sentence
(``sentences``: not across a full stop), across commas.

Negation (``negated``): a negator ("not", "never", "don't", "no longer", "without";
"no" only with words between it and the phrase, or before a noun: "no complaints")
shortly before the phrase, in the same clause (commas, colons and dashes end one), and
joined to it only by the light words of a verb chain (``BRIDGE``: "don't *want to*
cancel my account", "never *asked for a* manager") negates it. Any other word ends the
negator's reach: "I don't want to *wait*, cancel my account" is a request, and so is
a question ("why can't I talk to a person").

Cost: ``PhraseIndex`` is built once per rule set (``phrase_index`` caches it); per
utterance each heard word is compared once with the index's vocabulary (one rapidfuzz
call, cached by word), and only phrases whose every content word was found are
aligned.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import jellyfish
from rapidfuzz import fuzz, process

from engine.assist.numbers import normalize, normalize_phrase
from media.asr.text import phrase_words, sentences

MatchKind = Literal["exact", "fuzzy", "phonetic", "gapped"]
WordKind = Literal["exact", "plural", "fuzzy", "phonetic", "split", "joined"]
GapKind = Literal["dropped", "substituted", "inserted"]

FILLERS = frozenset({"uh", "um", "umm", "uhm", "er", "erm", "ah", "hmm", "mm", "mhm"})
# Words a phrase may lose or swap for another of them; never inserted into one.
FUNCTION_WORDS = frozenset(
    "a an the my your our their his her its this that these those to for with of in on at "
    "by from me you us them him it i we some any all and or".split()
)
# Never inserted into a phrase: they join two things ("end of my contract").
_NOT_INSERTED = FUNCTION_WORDS - {"all"} | frozenset("but if then so because than".split())
NEGATORS = frozenset(
    "not never no without don't dont doesn't doesnt didn't didnt won't wouldn't shouldn't "
    "can't cant cannot couldn't isn't aren't wasn't weren't haven't hasn't hadn't ain't".split()
)
# "can't I", "don't you": a negated auxiliary before its subject asks, it does not deny.
_SUBJECTS = frozenset({"i", "you", "we", "they", "he", "she"})
# The light words of a verb chain a negator reaches over to the phrase.
BRIDGE = frozenset(
    "i i'm im you we me it he she they them him her us a an the my your our any this that "
    "want wanna wanted wants need needed needs like would will have has had do does did be "
    "been being am is are was were going gonna trying try tried plan planning mean meant "
    "intend think ask asked asking request requested get see speak talk call transfer put "
    "connect connected transferred through let to for with yet really actually even ever "
    "necessarily".split()
)
# A phrase that starts with one of these is a request: "no, cancel my account" is not
# "no cancel my account" negated, while "no complaints" is.
_REQUEST_STARTS = _SUBJECTS | frozenset(
    "cancel close terminate end stop speak talk sue report take file get give transfer "
    "connect put let".split()
)
NEGATION_REACH = 6  # words between a negator and the phrase, at most
_CLAUSE_END = ",:;"  # within a sentence; dashes are split on below
_VOCAB_CUTOFF = 74  # below every fuzzy threshold: what the vocabulary search keeps
_PHONETIC_MIN_RATIO = 50  # "council"/"cancel" share 62 %; "cancel"/"kissel" would not


def fuzzy_threshold(length: int) -> float | None:
    """The least ``fuzz.ratio`` (0..100) for a word of ``length`` letters to match a
    heard word that is not the same: a letter added to a 4-letter word (89), one wrong
    in 6 (83) or two in 8+. Short words match only exactly (None)."""
    if length <= 3:
        return None
    if length <= 5:
        return 88.0
    if length <= 7:
        return 80.0
    return 78.0


@dataclass(frozen=True, slots=True)
class Heard:
    """One heard word (or number) of a sentence: its text as matched, the source words
    it came from (``phrase_words`` indices) and the clause it is in."""

    text: str
    first: int
    last: int
    clause: int


@dataclass(frozen=True, slots=True)
class Sentence:
    words: tuple[str, ...]  # phrase_words of the sentence, as the recognizer wrote them
    heard: tuple[Heard, ...]  # fillers left out, numbers as digits


def read(text: str) -> list[Sentence]:
    """A transcript as sentences of heard words, each knowing its clause."""
    out = []
    for sentence in sentences(text):
        words: list[str] = []
        clause_of: list[int] = []
        for n, part in enumerate(_clauses(sentence)):
            ws = phrase_words(part)
            words += ws
            clause_of += [n] * len(ws)
        heard = tuple(
            Heard(t.text, t.first, t.last, clause_of[t.first])
            for t in normalize(words)
            if t.text not in FILLERS
        )
        if heard:
            out.append(Sentence(tuple(words), heard))
    return out


def _clauses(sentence: str) -> list[str]:
    """Split at a comma, colon or semicolon followed by a space, and at a dash between
    spaces (not "4,572", "e-mail" or "10:30")."""
    parts, start = [], 0
    for i, ch in enumerate(sentence):
        nxt = sentence[i + 1] if i + 1 < len(sentence) else " "
        prev = sentence[i - 1] if i > 0 else " "
        cut = (ch in _CLAUSE_END and nxt.isspace()) or (
            ch in "-–—" and prev.isspace() and nxt.isspace()
        )
        if cut:
            parts.append(sentence[start:i])
            start = i + 1
    parts.append(sentence[start:])
    return parts


@dataclass(frozen=True, slots=True)
class PhraseWord:
    text: str
    function: bool  # may be dropped or substituted


@dataclass(frozen=True, slots=True)
class Phrase:
    text: str  # as configured (lower case, spaces folded)
    words: tuple[PhraseWord, ...]
    content: frozenset[str]  # words that must be found (not function words)
    budget: int  # how many things may differ from the phrase

    @property
    def single(self) -> bool:
        return len(self.words) == 1


def compile_phrase(text: str) -> Phrase | None:
    """A configured phrase as the matcher reads it (None: no words in it)."""
    ws = normalize_phrase(text).split()
    if not ws:
        return None
    words = tuple(PhraseWord(w, w in FUNCTION_WORDS and len(ws) > 1) for w in ws)
    content = frozenset(w.text for w in words if not w.function)
    return Phrase(text, words, content, 2 if len(content) >= 4 else 1)


@dataclass(frozen=True, slots=True)
class Match:
    """Where a phrase was found: how (``match``), what the recognizer wrote for it
    (``heard``), a score (1 exact, lower the further it is) and whether a negator
    before it takes it back."""

    phrase: str
    match: MatchKind
    heard: str
    score: float
    negated: bool
    sentence: int
    start: int  # index into that sentence's heard words
    end: int  # exclusive

    @property
    def exact(self) -> bool:
        return self.match == "exact"


@dataclass(frozen=True, slots=True)
class _WordHit:
    span: int  # heard words used (2 for split)
    score: float
    kind: WordKind


@dataclass
class _Path:
    score: float
    end: int
    kinds: list[WordKind | GapKind] = field(default_factory=list)


class PhraseIndex:
    """The phrases of named groups (one group per escalation rule), compiled once."""

    def __init__(self, groups: Sequence[tuple[str, Sequence[str]]]) -> None:
        self.groups: list[tuple[str, list[Phrase]]] = [
            (name, [p for p in map(compile_phrase, phrases) if p is not None])
            for name, phrases in groups
        ]
        vocab = sorted(
            {w.text for _, ps in self.groups for p in ps for w in p.words if not w.function}
        )
        self.vocab = frozenset(vocab)
        self._fuzzy = [w for w in vocab if fuzzy_threshold(len(w)) is not None and w.isalpha()]
        self._threshold = {w: fuzzy_threshold(len(w)) for w in self._fuzzy}
        self._sounds: dict[str, list[str]] = {}
        for w in self._fuzzy:
            self._sounds.setdefault(jellyfish.metaphone(w), []).append(w)
        self._plural: dict[str, str] = {}
        for w in vocab:
            if w.isalpha():
                self._plural[w + "s"] = w
                self._plural[w + "es"] = w
        self._similar: dict[str, tuple[tuple[str, _WordHit], ...]] = {}

    def similar(self, heard: str) -> tuple[tuple[str, _WordHit], ...]:
        """The vocabulary words ``heard`` may stand for, other than itself (cached: a
        call's words repeat, and so do a day's)."""
        hit = self._similar.get(heard)
        if hit is not None:
            return hit
        found: dict[str, _WordHit] = {}
        if heard in self._plural:
            found[self._plural[heard]] = _WordHit(1, 0.95, "plural")
        if heard.isalpha() and len(heard) >= 3 and "'" not in heard:
            for w, ratio, _ in process.extract(
                heard, self._fuzzy, scorer=fuzz.ratio, score_cutoff=_VOCAB_CUTOFF, limit=None
            ):
                threshold = self._threshold[w]
                if w == heard or w in found or threshold is None or ratio < threshold:
                    continue
                if heard.endswith("ed") and not w.endswith("ed"):
                    continue  # "I closed my account" tells what was done, it asks nothing
                found[w] = _WordHit(1, round(ratio / 100, 3), "fuzzy")
            for w in self._sounds.get(jellyfish.metaphone(heard), ()):
                ratio = fuzz.ratio(heard, w)
                if w != heard and w not in found and ratio >= _PHONETIC_MIN_RATIO:
                    found[w] = _WordHit(1, round(0.5 + ratio / 200, 3), "phonetic")
        out = tuple(found.items())
        if len(self._similar) >= 20_000:  # a bound: a day of calls says fewer words
            self._similar.clear()
        self._similar[heard] = out
        return out

    def find(self, text: str | Sequence[Sentence]) -> dict[str, list[Match]]:
        """Every group's matches in ``text`` (or the sentences ``read`` made of it), best
        first (non-negated before negated)."""
        found: dict[str, list[tuple[int, Match]]] = {}
        for s_index, sentence in enumerate(read(text) if isinstance(text, str) else text):
            hits = self._hits(sentence)
            present = {w for w, at in hits.items() if at}
            for name, phrases in self.groups:
                for rank, phrase in enumerate(phrases):
                    if phrase.content <= present:
                        for m in _align(phrase, sentence, s_index, hits):
                            found.setdefault(name, []).append((rank, m))
        # best first: taken back last, then by score, then the phrase listed first
        return {
            name: [m for _, m in sorted(ms, key=lambda r: (r[1].negated, -r[1].score, r[0]))]
            for name, ms in found.items()
        }

    def _hits(self, sentence: Sentence) -> dict[str, dict[int, list[_WordHit]]]:
        """For each vocabulary word, the heard positions where it may be (and how)."""
        heard = sentence.heard
        hits: dict[str, dict[int, list[_WordHit]]] = {}
        vocab = self.vocab

        def add(word: str, at: int, hit: _WordHit) -> None:
            hits.setdefault(word, {}).setdefault(at, []).append(hit)

        for j, h in enumerate(heard):
            if h.text in vocab:
                add(h.text, j, _WordHit(1, 1.0, "exact"))
            for w, hit in self.similar(h.text):
                add(w, j, hit)
            nxt = heard[j + 1] if j + 1 < len(heard) else None
            if nxt and nxt.clause == h.clause and h.first == h.last and nxt.first == nxt.last:
                # as written: "some one" is "someone", though "one" reads as "1"
                joined = sentence.words[h.first] + sentence.words[nxt.first]
                if joined in vocab:
                    add(joined, j, _WordHit(2, 0.95, "split"))
                    continue
                for w, hit in self.similar(joined):
                    if hit.kind == "plural":
                        add(w, j, _WordHit(2, 0.9, "split"))
                    elif hit.kind == "fuzzy":  # "a count": not for one-word phrases
                        add(w, j, _WordHit(2, hit.score, "fuzzy"))
        return hits


def _align(
    phrase: Phrase, sentence: Sentence, s_index: int, hits: dict[str, dict[int, list[_WordHit]]]
) -> Iterable[Match]:
    """The best match of ``phrase`` starting at each heard word where it can."""
    heard = sentence.heard
    words = phrase.words
    n, m = len(words), len(heard)

    def at(i: int, j: int) -> list[_WordHit]:
        w = words[i]
        if j >= m:
            return []
        if heard[j].text == w.text:
            return [_WordHit(1, 1.0, "exact")]
        if w.function:
            return []
        found = hits.get(w.text, {}).get(j, [])
        if phrase.single:  # one word: no context for its fuzzy or phonetic neighbours
            return [h for h in found if h.kind in ("plural", "split")]
        return found

    def walk(i: int, j: int, gaps: int, spent: int) -> _Path | None:
        """The best way to match words[i:] from heard[j]: a path or None."""
        if i == n:
            return _Path(0.0, j)
        best: _Path | None = None

        def consider(score: float, rest: _Path | None, kind: WordKind | GapKind) -> None:
            nonlocal best
            if rest is not None and (best is None or score + rest.score > best.score):
                best = _Path(score + rest.score, rest.end, [kind, *rest.kinds])

        for hit in at(i, j):
            cost = 0 if hit.kind in ("exact", "plural") else 1
            if spent + cost <= phrase.budget:
                consider(hit.score, walk(i + 1, j + hit.span, gaps, spent + cost), hit.kind)
        if i + 1 < n and j < m and heard[j].text == words[i].text + words[i + 1].text:
            if spent + 1 <= phrase.budget:
                consider(1.9, walk(i + 2, j + 1, gaps, spent + 1), "joined")
        if gaps == 0 and spent + 1 <= phrase.budget:
            if n >= 3 and words[i].function:
                consider(0.5, walk(i + 1, j, 1, spent + 1), "dropped")
                if j < m and heard[j].text in FUNCTION_WORDS:
                    consider(0.75, walk(i + 1, j + 1, 1, spent + 1), "substituted")
            if n >= 2 and 0 < i and j < m and _insertable(heard[j].text):
                rest = walk(i, j + 1, 1, spent + 1)
                if rest is not None:
                    consider(0.0, rest, "inserted")
        return best

    for start in range(m):
        path = walk(0, start, 0, 0)
        if path is None or path.end == start:
            continue
        kinds = path.kinds
        first = words[1].text if kinds[0] == "dropped" else words[0].text
        span = heard[start : path.end]
        yield Match(
            phrase=phrase.text,
            match=_kind(kinds),
            heard=" ".join(sentence.words[span[0].first : span[-1].last + 1]),
            score=round(path.score / (n + kinds.count("inserted")), 3),
            negated=negated(heard, start, first),
            sentence=s_index,
            start=start,
            end=path.end,
        )


def _insertable(word: str) -> bool:
    return word not in _NOT_INSERTED and word not in NEGATORS


def _kind(kinds: list[WordKind | GapKind]) -> MatchKind:
    if any(k in ("dropped", "substituted", "inserted") for k in kinds):
        return "gapped"
    if "phonetic" in kinds:
        return "phonetic"
    if any(k in ("fuzzy", "split", "joined", "plural") for k in kinds):
        return "fuzzy"
    return "exact"


def negated(heard: Sequence[Heard], start: int, first_word: str) -> bool:
    """Whether a negator before ``heard[start]`` takes the phrase there back (see the
    module docstring)."""
    clause = heard[start].clause
    k = start - 1
    while k >= 0 and start - 1 - k <= NEGATION_REACH and heard[k].clause == clause:
        w = heard[k].text
        if w == "longer" and k > 0 and heard[k - 1].text == "no":
            return True  # "I no longer need a supervisor"
        if w in NEGATORS:
            after = heard[k + 1].text if k + 1 < len(heard) else ""
            if (w.endswith(("n't", "nt")) or w == "cannot") and after in _SUBJECTS:
                return False  # "why can't I talk to a person": a question
            if w == "no" and k == start - 1 and first_word in _REQUEST_STARTS:
                return False  # "no cancel my account": "no" answers what came before
            return True
        if w not in BRIDGE:
            return False
        k -= 1
    return False


@functools.lru_cache(maxsize=32)
def phrase_index(groups: tuple[tuple[str, tuple[str, ...]], ...]) -> PhraseIndex:
    """The index of a rule set's phrases, built once per distinct set (each call starts
    with the rules of its day, which rarely change)."""
    return PhraseIndex(groups)
