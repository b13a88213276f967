"""A call as the node that answered it runs it: the record plus its live handles.

``Call`` and ``Leg`` subclass ``CallRecord`` and ``LegRecord`` (engine/callstate.py)
and add only what cannot leave this process: the call's event queue and the tasks
that drain it, its ended flag, audio forks and recording, the escalation rules
engine that judges its media, and each leg's media pipeline and peer. Values that
are plain data but mean something only here (``time.monotonic()`` readings, the
analysis's bookkeeping) live here too, each saying why.

Why subclasses, not a registry of handles keyed by call id: the code that runs a
call (engine/calls.py, engine/analysis.py, the API) reads ``call.state`` next to
``call.legs[0].peer`` in the same breath; with subclasses it keeps doing so, while
the line between the two halves is still drawn by type. What may be shared is
exactly ``CallRecord``'s fields: ``call.record()`` and ``call.to_json()`` write those
and nothing of this module, and tests/test_callstate.py fails if a record type
gains a live handle. ``CallManager.calls`` is already this node's registry of live
calls; a second id-keyed map of handles would be one more thing to keep in step and
to forget at teardown. The price: a ``Call`` *is a* ``CallRecord``, so it may be
handed to code that reads records (the desk guards do), and anything that stores
or sends one must go through ``record()`` or ``to_json()``, never the live object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from engine.assist.facts import Fact
from engine.bot.dialog import Dialog
from engine.bot.events import BotInput
from engine.callstate import CallRecord, LegRecord, SilenceCheck
from engine.consult import Consult
from engine.escalation import CallEscalation
from engine.monitoring import SupervisorLeg
from engine.recording import CallRecording
from engine.unheard import Unheard
from media import events as me
from media.audio import PcmFrame
from media.emotion import EmotionTracker
from media.peer import CallPeer
from media.pipeline import LegPipeline


@dataclass
class Leg(LegRecord):
    _: KW_ONLY
    pipeline: LegPipeline | None = None  # from the leg's first audio on
    peer: CallPeer | None = None
    # a chat leg's emotion, read from its typed lines (engine/analysis.py Feel);
    # a voice leg's is its pipeline's
    emotion: EmotionTracker | None = None
    # when a consulted agent's leg joined (time.monotonic(): this process's clock), for
    # their handle time once they keep the caller (engine/consulting.py)
    joined: float = 0.0
    # an agent leg's stretches the caller did not hear (their hold during a consult), on
    # the leg's analysis clock: its words then are the staff's (engine/unheard.py)
    unheard: Unheard = field(default_factory=Unheard)


@dataclass
class Call(CallRecord):
    _: KW_ONLY
    legs: list[Leg] = field(default_factory=list)
    escalation: CallEscalation = field(default_factory=lambda: CallEscalation([]))
    events: asyncio.Queue[me.MediaEvent | SilenceCheck | BotInput | None] = field(
        default_factory=asyncio.Queue
    )
    consumer: asyncio.Task[None] | None = None  # persists + publishes media events
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    # time.monotonic() readings: this process's clock, meaningless on another node
    media_t0: float | None = None  # the caller's first audio
    bridged_at: float = 0.0  # the current agent came on (their handle time starts)
    queued_at: float = 0.0  # the call joined its queue (the ACD's clock)
    # the analysis's bookkeeping, beside the media it reads
    new_facts: list[Fact] = field(default_factory=list)  # not yet in an assist.updated
    utterance_ids: dict[tuple[str, int], str] = field(default_factory=dict)
    # audio forks listening to this call: each gets (speaker role, 20 ms 16 kHz frame)
    forks: list[Callable[[str, PcmFrame], None]] = field(default_factory=list)
    recording: CallRecording | None = None
    # the virtual agent's side of the conversation (engine/bot/dialog.py), and its turn:
    # a caller who barges in ends the turn, and what it had still to say is dropped
    bot: Dialog | None = None
    bot_turn: int = 0
    bot_task: dict[str, object] | None = None  # the dialog's request as last written
    # the one-time code texted to the caller and when it stops counting (monotonic); in
    # this process only, like the dialog that asked for it
    otp: tuple[str, float, str] | None = field(default=None, repr=False)  # code, until, record
    # a chat: lines typed so far (each one's index, as a recognizer numbers utterances)
    # and when the last came (monotonic: the idle timeout's clock); its clock, which no
    # media carries: seconds from its start to its last line
    chat_lines: int = 0
    chat_seen: float = 0.0
    chat_budget: float = 0.0  # lines it may take at once now (a line a second)
    # on the call's clock: until when the caller's words, keys and audio are masked
    # after the virtual agent stopped asking for a secret (what began while it asked,
    # the end of a PIN said late, stays secret too)
    secret_until: float = 0.0
    # (leg, utterance index) of the caller's finals told masked: their emotion estimate,
    # which the leg made from the words as heard, must not tell those words either
    masked: set[tuple[str, int]] = field(default_factory=set)
    # supervisors listening, whispering or barging in (engine/monitoring.py): no parties
    # of the conversation, so not among ``legs``
    monitors: list[SupervisorLeg] = field(default_factory=list)
    # a consult or three-way conference under way (engine/consult.py); live only
    consult: Consult | None = None

    def other_peer(self, leg: Leg) -> CallPeer | None:
        """The peer that hears ``leg`` (caller <-> agent) while they talk; on hold,
        nobody."""
        if self.state != "bridged" or leg.left or (leg.role == "agent" and self.agent_muted):
            return None
        return next(
            (x.peer for x in self.legs if x is not leg and not x.left and x.peer is not None),
            None,
        )

    def caller_leg(self) -> Leg:
        return self.legs[0]

    def agent_leg(self) -> Leg | None:
        return next((x for x in self.legs if x.role == "agent" and not x.left), None)

    def leg(self, leg_id: str) -> Leg | None:
        return next((x for x in self.legs if x.id == leg_id), None)

    def speaker(self, leg_id: str) -> str:
        leg = self.leg(leg_id)
        return leg.role if leg else "caller"

    def agent_of(self, leg_id: str) -> str | None:
        """The agent (user id) who speaks on ``leg_id``; None for the caller, or an
        outside number."""
        leg = self.leg(leg_id)
        return leg.user_id if leg is not None and leg.role == "agent" else None

    def voiced(self) -> tuple[tuple[str, float], ...]:
        """Per side (caller, agent), the latest voice its legs' VAD heard, on the call's
        clock; sides not heard yet are left out (see SilenceCheck)."""
        heard: dict[str, float] = {}
        for leg in self.legs:
            if leg.pipeline is not None and not leg.left and leg.pipeline.voiced_until:
                at = leg.pipeline.voiced_until + leg.offset
                heard[leg.role] = max(at, heard.get(leg.role, at))
        return tuple(heard.items())
