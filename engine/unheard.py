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
(``Unheard.heard``).

Fail closed: an utterance is unheard when more than ``TOLERANCE`` of it lies in
stretches the caller did not hear, however much of it they did hear. An utterance in
progress when the caller starts or stops hearing the leg is cut there by the live
side (``turns`` says when; media/pipeline.py ``LegPipeline.cut``), so words said
before the turn are an utterance of their own and judged alone: "one moment, I'll
check with a colleague" is the caller's, "he is rude", said a second later to the
colleague, is not. The tolerance covers only what the clock cannot place exactly: a
push of audio that straddles the turn by less than one 20 ms analysis frame.

A whole consult is one stretch: the leg's analysed audio runs on without a gap while
it lasts (a mute stops the leg's clock rather than leaving a hole), so stretches that
touch are merged, and a call keeps one per consult. There is still a bound: a call
with more consults than ``MAX_SPANS`` merges its two oldest into one, which hides the
heard words between them too (more hidden, never less: those were reported long ago,
a recognizer reports an utterance seconds after its end).

Pure: no clock of its own; times are given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_SPANS = 64
# stretches this close (seconds) are one: consecutive pushes of audio meet end to start,
# up to a float's rounding
ADJACENT = 0.001
# an utterance reaching this far (seconds) into an unheard stretch is unheard: two
# analysis frames, more than a push can straddle a turn by, less than any word
TOLERANCE = 0.04


@dataclass
class Unheard:
    """The stretches of one leg's clock the caller did not hear, oldest first, apart."""

    spans: list[tuple[float, float]] = field(default_factory=list)
    # whether the caller heard the leg's last analysed audio (None: none analysed yet)
    hearing: bool | None = None

    def turns(self, heard: bool) -> bool:
        """The caller hears (or not) the leg's next audio: whether that is a turn from
        its last, when the utterance in progress must end (nothing is in progress
        before the leg's first audio)."""
        turned = self.hearing is not None and self.hearing != heard
        self.hearing = heard
        return turned

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
            # merged, not dropped: forgetting a stretch would show its words
            (a, _), (_, b) = self.spans[0], self.spans[1]
            self.spans[0:2] = [(a, b)]

    def heard(self, start: float, end: float) -> bool:
        """Whether the caller heard what was said over ``[start, end]``: False when
        more than ``TOLERANCE`` of it (all of it, if shorter) lies in stretches they did
        not hear. An instant (``end <= start``) is unheard if it falls in one."""
        if end <= start:
            return not any(a <= start < b for a, b in self.spans)
        missed = sum(max(0.0, min(b, end) - max(a, start)) for a, b in self.spans)
        return missed < min(TOLERANCE, end - start)
