"""Supervisor legs: a supervisor listens to, whispers into or barges into a live call.

Theory of operation
-------------------
A supervisor joins a call bridged to an agent with their own WebRTC peer (their
microphone in, the call's voices out), in one of the modes of engine/monitor.py, and
may change mode while on it or leave. Their leg is kept beside the call's parties, in
``call.monitors``, not among ``call.legs``: it is no party of the conversation. It
has no pipeline, so the supervisor's voice is never transcribed, never judged by the
escalation rules and never sent to audio forks; it only reaches the parties that
``monitor.hears`` says hear it, as one more voice in their outgoing mix
(media/mixer.py). The parties' voices reach the supervisor the same way, from the
call manager's bridge (``to_supervisors``).

The recording keeps what the caller heard: while the caller hears a supervisor (a
barge), the supervisor's voice is added to the agent's channel, placed on the call's
clock as an agent leg's is (``record_voice``). A whisper and a listen are not
recorded: the caller never hears them.

The leg ends when the supervisor leaves (``stop``), when their peer goes (closed,
ICE failed, no audio for the media timeout), when the agent they joined leaves the
call (a transfer: the next agent, or the outside number, is not who they came to
coach), when they are signed out, removed or demoted (``user_gone`` on the engine
that did it; ``recheck`` against the database on the others, told through
engine/changes.py), and when the call ends (``call_ended``, at the start of the
call's teardown); it never ends the call. A leg that ends is silent at once: its
task is cancelled and its queued voice dropped before anything is awaited, so a slow
or failing write cannot keep a supervisor talking to a caller whose agent has gone.
Each start, change and stop is published as an event (``supervisor.monitor_*``) with
who and the mode, so it reaches the event log and webhooks. Those events carry the
call as ``monitored_call_id``, not ``call_id``: a call's own stream is what its
caller reads, and a caller is not told who listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from aiortc import RTCIceServer

from engine.callstate import WITH_AGENT, Forbidden, NotAllowed, check_voice
from engine.events import EventBus, MonitorModeChanged, MonitorStarted, MonitorStopped, utcnow
from engine.monitor import Mode, Party, hears
from engine.store.db import Store
from engine.store.models import LegRow, UserRow
from media.audio import AnalysisResampler, downmix_int16
from media.loss import FRAME_SECONDS, LossReason
from media.peer import CallPeer
from media.wavtrack import to_send_rate
from media.webrtc import WebRtcLeg, pump_audio

if TYPE_CHECKING:
    from engine.livecall import Call, Leg
    from engine.users import Actor

log = logging.getLogger(__name__)

MAX_SUPERVISORS = 4  # on one call at once: each is a peer and a decode on this node
MONITOR_ROLES = ("supervisor", "admin")  # who may listen to, whisper into, barge into calls
Keep = Callable[..., Awaitable[None]]


@dataclass(eq=False)
class SupervisorLeg:
    id: str
    user_id: str
    username: str
    mode: Mode
    peer: WebRtcLeg
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    stopped: bool = False
    reason: str | None = None  # why it stopped
    # the person's token version when they joined: signing out and a new password
    # raise the stored one (engine/api/auth.py revoke_tokens), and the leg ends
    token_version: int = 0
    # their voice in the recording (``record_voice``): where their resampled audio's
    # clock sits on the call's, set when writing (re)starts; None while not writing
    offset: float | None = None
    resampler: AnalysisResampler = field(default_factory=AnalysisResampler, repr=False)


def may_monitor(user: Actor) -> None:
    if user.role not in MONITOR_ROLES:
        raise Forbidden("only supervisors and admins listen to, whisper into or barge into calls")


def may_keep(token_version: int, row: UserRow | None) -> bool:
    """Whether the person, as the database has them now, may still hold a leg they
    joined with ``token_version``: not removed, still a supervisor or an admin, not
    signed out (nor given a new password) since."""
    return row is not None and row.role in MONITOR_ROLES and row.token_version == token_version


def record_voice(
    call: Call, leg: SupervisorLeg, pcm: np.ndarray, rate: int, channels: int, heard: bool
) -> None:
    """A supervisor's decoded frame into the call's recording, on the agent's channel,
    if the caller ``heard`` it (a barge). A whisper reaches only the agent and a listen
    nobody: neither is part of what the caller heard, so neither is written.

    Placed as an agent leg's audio is (engine/calls.py): an offset on the call's clock
    (from ``call.media_t0``, the caller's first audio) plus where the frame falls in
    their resampled audio. The offset is set anew, from the wall clock, each time
    writing starts (a barge begins, a recording starts or resumes), with a fresh
    resampler: counting the samples of a stretch not written would miss what never
    came (lost packets, frames ``pump_audio`` skipped), and a barge after minutes of
    listening would land that much early; and a resampler's leftover from before
    would be spliced into the new stretch. Within a stretch, audio lost is counted
    by ``voice_lost``."""
    recording, t0 = call.recording, call.media_t0
    # t0 None: the call's clock has not started, nothing to place the voice on
    if not heard or recording is None or not recording.active or t0 is None:
        leg.offset = None  # not written: the next written frame anchors anew
        return
    if leg.offset is None:
        leg.offset = time.monotonic() - t0
        leg.resampler = AnalysisResampler()
    for frame in leg.resampler.push(pcm, rate, channels):
        recording.write(1, leg.offset + frame.start, frame)


def voice_lost(leg: SupervisorLeg, frames: int) -> None:
    """``frames`` 20 ms frames of the supervisor's voice never came or were skipped
    (``pump_audio``'s ``on_lost``): while it is written, what follows is that much
    later on the call's clock than its samples say."""
    if leg.offset is not None:
        leg.offset += frames * FRAME_SECONDS


def _parties(call: Call) -> list[tuple[Party, CallPeer]]:
    """The call's caller and current agent, with their peers."""
    out: list[tuple[Party, CallPeer]] = []
    caller = call.caller_leg() if call.legs else None
    if caller is not None and caller.peer is not None and not caller.left:
        out.append(("caller", caller.peer))
    agent = call.agent_leg()
    # one of ours: an outside number a call was transferred to is an agent leg with no
    # user, and no supervisor coaches a stranger
    if agent is not None and agent.user_id is not None and agent.peer is not None:
        out.append(("agent", agent.peer))
    return out


def to_supervisors(call: Call, leg: Leg, pcm48: np.ndarray, state: str | None = None) -> None:
    """What a party said (48 kHz mono) to the supervisors who hear that party now
    (``state``: the call's, unless the caller says otherwise: agents consulting talk
    while the call is held, engine/conference.py)."""
    state, muted = state or call.state, call.agent_muted
    for sup in call.monitors:
        if not sup.stopped and hears(sup.mode, leg.role, "supervisor", state=state,
                                     agent_muted=muted):  # fmt: skip
            sup.peer.outbound.push_live(pcm48, leg.id)


class Monitors:
    """The supervisor legs of this node's calls."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        keep: Keep,
        calls: Mapping[str, Call],
        *,
        ice_servers: Sequence[RTCIceServer],
        media_timeout: float,
    ) -> None:
        self.store = store
        self.bus = bus
        self.keep = keep
        self.calls = calls  # this node's live calls (read only)
        self.ice_servers = ice_servers
        self.media_timeout = media_timeout
        # per user, how many times they were signed out: a join that was set up while
        # it happened (its awaits) sees the count change and is refused
        self._sign_outs: dict[str, int] = {}

    @staticmethod
    def find(call: Call, user: Actor) -> SupervisorLeg:
        leg = next((m for m in call.monitors if m.user_id == user.id), None)
        if leg is None:
            raise NotAllowed("you are not monitoring this call")
        return leg

    async def start(
        self, user: UserRow, call: Call, mode: Mode, sdp: str
    ) -> tuple[SupervisorLeg, str]:
        """Join ``call`` with the supervisor's SDP offer; their leg and our answer. The
        leg's row is written before it goes live, so every start event has its row."""
        may_monitor(user)
        _may_join(call, user)
        signed_out, agent = self._sign_outs.get(user.id, 0), call.agent_leg()
        leg_id = str(uuid.uuid4())
        holder: list[SupervisorLeg] = []
        gone: list[str] = []  # the peer ended before the leg went live: why

        async def ended(reason: str) -> None:
            if holder:
                await self.stop(call, holder[0], reason)
            else:
                gone.append(reason)

        peer = WebRtcLeg(ended, ice_servers=self.ice_servers)
        written = False
        try:
            answer, _ = await peer.answer(sdp, video=False)
            self._may_still_join(call, user, signed_out, agent, gone)
            row = LegRow(id=leg_id, call_id=call.id, role="supervisor", transport="webrtc",
                         user_id=user.id, created_at=utcnow())  # fmt: skip
            await self.keep(f"leg {leg_id}", self.store.add, row)
            written = True
            # signed out on another engine meanwhile? Its message may have come and
            # gone before this leg was live for ``recheck`` to find; read last, so a
            # sign-out after this read finds the leg live
            if not may_keep(user.token_version, await self.store.user(user.id)):
                raise Forbidden("you were signed out while joining")
            # again: the call may have ended, the agent left or the supervisor been
            # signed out while that was written
            self._may_still_join(call, user, signed_out, agent, gone)
        except BaseException:
            try:
                if written:
                    await self.keep(f"leg {leg_id} end", self.store.end_leg, leg_id, utcnow())
            finally:
                await peer.close()
            raise
        # live from here, with no await in between: the leg, its event and its voice
        leg = SupervisorLeg(
            leg_id, user.id, user.username, mode, peer, token_version=user.token_version
        )
        holder.append(leg)
        call.monitors.append(leg)
        self.bus.publish(
            MonitorStarted(
                monitored_call_id=call.id,
                leg_id=leg.id,
                supervisor_id=user.id,
                supervisor=user.username,
                mode=mode,
            )
        )
        leg.task = asyncio.create_task(self._run(call, leg), name=f"supervisor-{leg.id}")
        log.info("call %s: %s monitors (%s)", call.id, user.username, mode)
        return leg, answer

    def _may_still_join(
        self, call: Call, user: Actor, signed_out: int, agent: Leg | None, gone: list[str]
    ) -> None:
        """After an await of ``start``: the reason it must not go on, if any."""
        if gone:
            raise NotAllowed(f"your connection ended before you joined ({gone[0]})")
        if self._sign_outs.get(user.id, 0) != signed_out:
            raise Forbidden("you were signed out while joining")
        _may_join(call, user)
        if call.agent_leg() is not agent:  # transferred meanwhile (and taken at once)
            raise NotAllowed("the call was transferred while you joined")

    def change(self, user: Actor, call: Call, mode: Mode) -> SupervisorLeg:
        may_monitor(user)
        leg = self.find(call, user)
        if leg.mode != mode:
            previous, leg.mode = leg.mode, mode
            # what was queued for someone who no longer hears it is not sent
            if mode != "barge":
                _drop(call, leg, "caller")
            if mode == "listen":
                _drop(call, leg, "agent")
            self.bus.publish(
                MonitorModeChanged(
                    monitored_call_id=call.id,
                    leg_id=leg.id,
                    supervisor_id=user.id,
                    supervisor=user.username,
                    mode=mode,
                    previous=previous,
                )
            )
        return leg

    async def leave(self, user: Actor, call: Call) -> None:
        """The supervisor leaves their own leg. No role check: someone demoted since
        joining may still hang up (``user_gone`` ended their leg anyway)."""
        await self.stop(call, self.find(call, user), "left")

    def _halt(self, call: Call, leg: SupervisorLeg, reason: str) -> bool:
        """The leg falls silent now, before anything is awaited: its voice task
        cancelled, what it queued for the parties dropped. False if it had already."""
        if leg.stopped:
            return False
        leg.stopped, leg.reason = True, reason
        with contextlib.suppress(ValueError):
            call.monitors.remove(leg)
        task = leg.task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
        _drop(call, leg, "caller", "agent")
        return True

    async def _finish(self, call: Call, leg: SupervisorLeg) -> None:
        """A halted leg's record, event and peer: each happens whatever the one before
        did (a failing write must not leave the peer open nor the stop untold)."""
        try:
            await self.keep(f"leg {leg.id} end", self.store.end_leg, leg.id, utcnow())
        finally:
            try:
                self.bus.publish(
                    MonitorStopped(
                        monitored_call_id=call.id,
                        leg_id=leg.id,
                        supervisor_id=leg.user_id,
                        supervisor=leg.username,
                        mode=leg.mode,
                        reason=leg.reason or "error",
                    )
                )
                log.info("call %s: %s stopped monitoring (%s)", call.id, leg.username, leg.reason)
            finally:
                await leg.peer.close()

    async def stop(self, call: Call, leg: SupervisorLeg, reason: str) -> None:
        """End a supervisor leg (idempotent); the call goes on."""
        if self._halt(call, leg, reason):
            await self._finish(call, leg)

    async def stop_all(self, call: Call, reason: str) -> None:
        """End every supervisor leg of ``call``: all fall silent first, then all are
        finished; one that fails is logged and does not keep the others open."""
        halted = [leg for leg in list(call.monitors) if self._halt(call, leg, reason)]
        await self._finish_all([(call, leg) for leg in halted])

    async def call_ended(self, call: Call) -> None:
        await self.stop_all(call, "call_ended")

    async def agent_left(self, call: Call) -> None:
        """The agent the supervisors joined left the call (a transfer)."""
        await self.stop_all(call, "transferred")

    async def user_gone(self, user_id: str) -> None:
        """The person may monitor no more (signed out, a new password, removed, no longer
        a supervisor or an admin): their legs on every live call end, and a join they
        are setting up is refused."""
        self._sign_outs[user_id] = self._sign_outs.get(user_id, 0) + 1
        await self._sign_out([(c, m) for c, m in self._legs() if m.user_id == user_id])

    async def recheck(self) -> None:
        """Someone was signed out, changed or removed on another engine (or a message
        about it was missed: engine/changes.py's backstop): every supervisor leg on
        this node is checked against the database, and those whose person may no
        longer hold them end ("signed_out"). No query when there are no legs."""
        legs = self._legs()
        if not legs:
            return
        rows = {uid: await self.store.user(uid) for uid in {m.user_id for _c, m in legs}}
        await self._sign_out(
            [(c, m) for c, m in legs if not may_keep(m.token_version, rows[m.user_id])]
        )

    def _legs(self) -> list[tuple[Call, SupervisorLeg]]:
        return [(call, m) for call in list(self.calls.values()) for m in list(call.monitors)]

    async def _sign_out(self, legs: list[tuple[Call, SupervisorLeg]]) -> None:
        """End these legs: all fall silent first, then all are finished at once (each
        finish awaits a write and a peer's close, seconds when the database is slow:
        one after another, the last leg would be heard that long after the first, and
        the change listener serving ``recheck`` held up the sum); one that fails is
        logged and does not keep the others open."""
        halted = [(call, leg) for call, leg in legs if self._halt(call, leg, "signed_out")]
        await self._finish_all(halted)

    async def _finish_all(self, halted: list[tuple[Call, SupervisorLeg]]) -> None:
        results = await asyncio.gather(
            *(self._finish(call, leg) for call, leg in halted), return_exceptions=True
        )
        for (call, leg), result in zip(halted, results, strict=True):
            if isinstance(result, BaseException):
                log.error("call %s: ending %s's leg failed", call.id, leg.username, exc_info=result)

    async def _run(self, call: Call, leg: SupervisorLeg) -> None:
        """The supervisor's voice, to whoever hears them now; the leg ends with it,
        whatever ends it (a bug included: no dead leg stays on the call)."""
        reason: str | None = None

        def push(pcm: np.ndarray, rate: int, channels: int) -> int:
            if leg.stopped or call.ended.is_set():  # a frame decoded as the leg ended
                return 0
            audio: np.ndarray | None = None
            caller_heard = False
            for party, peer in _parties(call):
                if hears(leg.mode, "supervisor", party, state=call.state,
                         agent_muted=call.agent_muted):  # fmt: skip
                    if audio is None:
                        audio = to_send_rate(downmix_int16(pcm, channels), rate)
                    peer.outbound.push_live(audio, leg.id)
                    caller_heard = caller_heard or party == "caller"
            # a write the disk refuses never raises: the recording stops itself (told
            # once, engine/recording.py), and the caller still hears the supervisor
            record_voice(call, leg, pcm, rate, channels, caller_heard)
            return 0

        def lost(_reason: LossReason, frames: int) -> None:
            voice_lost(leg, frames)

        try:
            try:
                track = await asyncio.wait_for(leg.peer.audio_track, self.media_timeout)
            except TimeoutError:
                reason = "no_media"
                return
            reason = await pump_audio(track, push, self.media_timeout, on_lost=lost)
        except Exception:
            log.exception("call %s: %s's voice failed", call.id, leg.username)
            reason = "error"
        finally:
            await self.stop(call, leg, reason or "error")


def _bridged(call: Call) -> None:
    if call.ended.is_set() or call.state == "ended":
        raise NotAllowed("the call has ended")
    check_voice(call, "monitored (it has no audio)")
    agent = call.agent_leg()
    if call.state not in WITH_AGENT or agent is None:
        raise NotAllowed(f"the call is not with an agent (it is {call.state})")
    if agent.user_id is None:
        raise NotAllowed("the call was transferred to an outside number: not one of ours")


def _may_join(call: Call, user: Actor) -> None:
    _bridged(call)
    if any(m.user_id == user.id for m in call.monitors):
        raise NotAllowed("you are monitoring this call already: change the mode, or leave")
    if len(call.monitors) >= MAX_SUPERVISORS:
        raise NotAllowed(f"{MAX_SUPERVISORS} supervisors are on this call already")


def _drop(call: Call, leg: SupervisorLeg, *roles: Party) -> None:
    """What ``leg`` queued for the call's legs of ``roles`` is not sent (every such
    leg, a leaving one included: not only the parties it is heard by now)."""
    for party in call.legs:
        if party.role in roles and party.peer is not None:
            party.peer.outbound.drop_live(leg.id)
