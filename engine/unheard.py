"""What the caller did not hear of an agent's leg: stretches of the leg's own clock.

Theory of operation
-------------------
During a consult the caller is on hold while the two agents (or the agent and an
outside number) talk between themselves (engine/conference.py). That talk is
transcribed, for the staff; it is not the caller's to read. The live side
(engine/calls.py ``_analyse``) asks, for each stretch of an agent leg's audio it
analyses, whether the caller hears that leg now, and notes the stretches they do not
(``Unheard.add``). The recognizer reports each utterance's start and end on the same
clock (the leg's analysed seconds, media/pipeline.py ``seconds_in``), so the analysis
(engine/analysis.py Redact) can ask afterwards whether the caller heard it
(``Unheard.heard``): not if most of it lies in stretches they did not hear.

A whole consult is one stretch: the leg's analysed audio runs on without a gap while
it lasts (a mute stops the leg's clock rather than leaving a hole), so stretches that
touch are merged, and a call keeps one per consult. There is still a bound: a call
with more consults than ``MAX_SPANS`` forgets the oldest, whose words were reported
long ago (a recognizer reports an utterance seconds after its end).

Pure: no clock of its own; times are given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_SPANS = 64
# stretches this close (seconds) are one: consecutive pushes of audio meet end to start,
# up to a float's rounding
ADJACENT = 0.001


@dataclass
class Unheard:
    """The stretches of one leg's clock the caller did not hear, oldest first, apart."""

    spans: list[tuple[float, float]] = field(default_factory=list)

    def add(self, start: float, end: float) -> None:
        """The caller did not hear ``[start, end)`` of the leg. Stretches come in the
        clock's order; one that meets or overlaps the last extends it."""
        if end <= start:
            return
        if self.spans and start <= self.spans[-1][1] + ADJACENT:
            first, last = self.spans[-1]
            self.spans[-1] = (min(first, start), max(last, end))
            return
        self.spans.append((start, end))
        if len(self.spans) > MAX_SPANS:
            del self.spans[0]

    def heard(self, start: float, end: float) -> bool:
        """Whether the caller heard what was said over ``[start, end]``: False when at
        least half of it lies in stretches they did not hear (a tie keeps the words
        from the caller: half of them were not theirs). An instant (``end <= start``)
        is unheard if it falls in such a stretch."""
        if end <= start:
            return not any(a <= start < b for a, b in self.spans)
        missed = sum(max(0.0, min(b, end) - max(a, start)) for a, b in self.spans)
        return 2 * missed < end - start
