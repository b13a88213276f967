"""Signals a supervisor listens for on a live call: caller and agent talking over each
other, dead air, a caller getting louder turn by turn.

Theory of operation
-------------------
``Signals`` is sans-IO, one per call, owned by ``CallEscalation``, which turns what
it finds into decisions. It is fed on the call's clock (seconds since the caller's
first audio; the call manager moves every leg's times onto it):

    heard(side, id, start, end)   a final utterance of the caller or of the agent
    loudness(id, at, energy_db)   the caller's voiced loudness in one utterance
    phase(phase, at)              who has the caller from ``at`` on: the bot, a human
                                  agent (bridged), or nobody (queued, held, ended)

and answers three questions from that record alone:

    question                          true when
    talk_over(overlap, count, window) ``count`` interruptions start within ``window``
                                      seconds; an interruption is one side starting
                                      while the other has been speaking for at least
                                      LEAD_SECONDS, the two overlapping >= ``overlap``
    silence(side, seconds, now)       ``side`` has said nothing for ``seconds``:
      side caller                       since the caller spoke or the bot took the
                                        call, while the bot has it
      side agent                        since the agent spoke or was bridged in,
                                        while bridged (dead air)
      side both                         since either spoke or the agent was bridged
                                        in, while bridged
    loudness_rising(count, db)        the last ``count`` measured caller utterances
                                      rise by ``db`` or more in all, no step falling
                                      more than STEP_TOLERANCE_DB

Each leg has its own recognizer, so the two sides' finals arrive out of order: an
agent's final can come before the caller's utterance it cut into. An interruption is
therefore found when the later-arriving final of the pair is heard, against the other
side's recent finals (the last KEEP_TURNS of each side). Only finals count, so a
signal is known once the utterances behind it have ended.

Dead air is judged per phase: a hold, or a new agent after a transfer, starts the
clock again, and the bot's own prompts are never transcribed, so they are no one's
speech here (the bot phase is judged on the caller alone).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Side = Literal["caller", "agent"]
SilentSide = Literal["caller", "agent", "both"]
# who has the caller: the virtual agent (call active), a human agent (bridged), nobody
Phase = Literal["bot", "agent", "away"]

SIDES: tuple[Side, Side] = ("caller", "agent")
# the interrupted side had been speaking this long: two people starting together
# (both answering a pause) is not one cutting into the other
LEAD_SECONDS = 0.3
# a turn inside the other's that is shorter than this is a backchannel ("mm-hmm",
# "right"), not an interruption: it does not take the floor
BACKCHANNEL_SECONDS = 1.0
# a rising voice wobbles: a step may fall this much and the rise still counts
STEP_TOLERANCE_DB = 1.0
# Voice the VAD heard counts against silence only this far past the side's last final
# (or the phase's start): the longest utterance (15 s) and a recognizer's lag. Further
# than that with no final, it is not speech the recognizer owes us but sound it made
# nothing of (music or traffic on an open line), which must not hold off silence
# rules for ever; there they fire at this much instead of their own seconds.
VOICE_AHEAD_SECONDS = 20.0
# bounds: finals kept per side to find overlaps with the other side's late finals,
# interruptions kept for the window, loudness kept for the longest run a rule asks for
KEEP_TURNS = 50
KEEP_INTERRUPTIONS = 200
KEEP_LOUDNESS = 20


@dataclass(frozen=True, slots=True)
class Turn:
    side: Side
    id: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Interruption:
    by: Turn  # the one who started talking...
    of: Turn  # ...over this one

    @property
    def at(self) -> float:
        return self.by.start

    @property
    def overlap(self) -> float:
        return min(self.of.end, self.by.end) - self.by.start

    def evidence(self) -> dict[str, Any]:
        return {
            "by": self.by.side,
            "of": self.of.side,
            "utterance_ids": [self.of.id, self.by.id],
            "at": round(self.at, 3),
            "overlap_seconds": round(self.overlap, 3),
        }


@dataclass(frozen=True, slots=True)
class Loudness:
    utterance_id: str
    at: float
    energy_db: float


@dataclass(frozen=True, slots=True)
class Finding:
    """What a question found: when it became true, a few words for the decision's
    reason, and the evidence."""

    at: float
    detail: str
    evidence: dict[str, Any]


def interruption(x: Turn, y: Turn) -> Interruption | None:
    """Whether one of two turns of different sides cut into the other."""
    first, second = (x, y) if x.start <= y.start else (y, x)
    if first.side == second.side or second.start - first.start < LEAD_SECONDS:
        return None
    inside = second.end <= first.end
    if inside and second.end - second.start < BACKCHANNEL_SECONDS:
        return None
    found = Interruption(by=second, of=first)
    return found if found.overlap > 0 else None


@dataclass
class Signals:
    turns: dict[Side, deque[Turn]] = field(
        default_factory=lambda: {s: deque(maxlen=KEEP_TURNS) for s in SIDES}
    )
    last: dict[Side, Turn | None] = field(default_factory=lambda: dict.fromkeys(SIDES))
    interruptions: deque[Interruption] = field(
        default_factory=lambda: deque(maxlen=KEEP_INTERRUPTIONS)
    )
    loud: deque[Loudness] = field(default_factory=lambda: deque(maxlen=KEEP_LOUDNESS))
    # a new call is the bot's from its first audio (time 0 on the call's clock)
    current: Phase = "bot"
    since: float = 0.0

    def heard(self, side: Side, utterance_id: str, start: float, end: float) -> bool:
        """Record a final; whether it made a new interruption."""
        turn = Turn(side, utterance_id, start, end)
        other: Side = "agent" if side == "caller" else "caller"
        found = [i for o in self.turns[other] if (i := interruption(o, turn)) is not None]
        self.interruptions.extend(found)
        self.turns[side].append(turn)
        latest = self.last[side]
        if latest is None or end >= latest.end:
            self.last[side] = turn
        return bool(found)

    def loudness(self, utterance_id: str, at: float, energy_db: float) -> None:
        self.loud.append(Loudness(utterance_id, at, energy_db))

    def phase(self, phase: Phase, at: float) -> None:
        """From ``at``, ``phase`` has the caller; the same phase again (a new agent
        after a transfer out) starts its silence clock again."""
        self.current, self.since = phase, at

    def talk_over(self, overlap: float, count: int, window: float) -> Finding | None:
        hits = sorted((i for i in self.interruptions if i.overlap >= overlap), key=lambda i: i.at)
        for k in range(len(hits) - count + 1):
            run = hits[k : k + count]
            span = run[-1].at - run[0].at
            if span <= window:
                ids = dict.fromkeys(u for i in run for u in (i.of.id, i.by.id))
                evidence = {
                    "utterance_ids": list(ids),
                    "interruptions": [i.evidence() for i in run],
                }
                # known once the last of these utterances had ended and was transcribed
                at = max(max(i.by.end, i.of.end) for i in run)
                return Finding(at, f"{count} interruptions in {span:.0f} s", evidence)
        return None

    def silence(
        self,
        side: SilentSide,
        seconds: float,
        now: float,
        voiced: Mapping[str, float] | None = None,
    ) -> Finding | None:
        """Whether ``side`` has been silent ``seconds`` by ``now``: since its last final,
        or since the last voice its VAD heard (``voiced``, per side) if that is later, so
        a caller still talking while the recognizer catches up is not silent."""
        if self.current != ("bot" if side == "caller" else "agent"):
            return None
        sides: tuple[Side, ...] = SIDES if side == "both" else (side,)
        spoke = [t for s in sides if (t := self.last[s]) is not None and t.end > self.since]
        latest = max(spoke, key=lambda t: t.end) if spoke else None
        silent_since = latest.end if latest is not None else self.since
        speaker = latest.side if latest is not None else None
        ids = [latest.id] if latest is not None else []
        for s in sides:
            heard = (voiced or {}).get(s)
            said = self.last[s]
            start = max(said.end if said is not None else 0.0, self.since)
            if heard is not None and start < heard <= start + VOICE_AHEAD_SECONDS:
                if heard > silent_since:
                    silent_since, speaker, ids = heard, s, []  # not transcribed yet
        quiet = now - silent_since
        if quiet < seconds:
            return None
        evidence = {
            "side": side,
            "silent_since": round(silent_since, 3),
            # who spoke last, and what: nobody when the silence runs from the phase's start,
            # no utterance when what was heard last is not transcribed yet
            "last_speaker": speaker,
            "utterance_ids": ids,
        }
        return Finding(now, f"{quiet:.0f} s", evidence)

    def loudness_rising(self, count: int, db: float) -> Finding | None:
        if len(self.loud) < count:
            return None
        run = list(self.loud)[-count:]
        levels = [x.energy_db for x in run]
        rise = levels[-1] - levels[0]
        steady = all(b >= a - STEP_TOLERANCE_DB for a, b in itertools.pairwise(levels))
        if rise < db or not steady:
            return None
        evidence = {
            "utterance_ids": [x.utterance_id for x in run],
            "energy_db": [round(v, 1) for v in levels],
            "rise_db": round(rise, 1),
        }
        return Finding(run[-1].at, f"+{rise:.0f} dB over {count} utterances", evidence)
