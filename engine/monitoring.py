"""Supervisor legs: a supervisor listens to, whispers into or barges into a live call.

Theory of operation
-------------------
A supervisor joins a call bridged to an agent with their own WebRTC peer (their
microphone in, the call's voices out), in one of the modes of engine/monitor.py, and
may change mode while on it or leave. Their leg is kept beside the call's parties, in
``call.monitors``, not among ``call.legs``: it is no party of the conversation. It
has no pipeline, so the supervisor's voice is never transcribed, never judged by the
escalation rules, never sent to audio forks and never written to the recording; it
only reaches the parties that ``monitor.hears`` says hear it, as one more voice in
their outgoing mix (media/mixer.py). The parties' voices reach the supervisor the
same way, from the call manager's bridge (``to_supervisors``).

The leg ends when the supervisor leaves (``stop``), when their peer goes (closed,
ICE failed, no audio for the media timeout), and when the call ends (``call_ended``);
it never ends the call. Each start, change and stop is published as an event
(``supervisor.monitor_*``) with who and the mode, so it reaches the event log and
webhooks. Those events carry the call as ``monitored_call_id``, not ``call_id``: a
call's own stream is what its caller reads, and a caller is not told who listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from aiortc import RTCIceServer

from engine.callstate import WITH_AGENT, Forbidden, NotAllowed
from engine.events import EventBus, MonitorModeChanged, MonitorStarted, MonitorStopped, utcnow
from engine.monitor import Mode, Party, hears
from engine.store.db import Store
from engine.store.models import LegRow
from media.audio import downmix_int16
from media.peer import CallPeer
from media.wavtrack import to_send_rate
from media.webrtc import WebRtcLeg, pump_audio

if TYPE_CHECKING:
    from engine.livecall import Call, Leg
    from engine.users import Actor

log = logging.getLogger(__name__)

MAX_SUPERVISORS = 4  # on one call at once: each is a peer and a decode on this node
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


def may_monitor(user: Actor) -> None:
    if user.role not in ("supervisor", "admin"):
        raise Forbidden("only supervisors and admins listen to, whisper into or barge into calls")


def _parties(call: Call) -> list[tuple[Party, CallPeer]]:
    """The call's caller and current agent, with their peers."""
    out: list[tuple[Party, CallPeer]] = []
    caller = call.caller_leg() if call.legs else None
    if caller is not None and caller.peer is not None and not caller.left:
        out.append(("caller", caller.peer))
    agent = call.agent_leg()
    if agent is not None and agent.peer is not None:
        out.append(("agent", agent.peer))
    return out


def to_supervisors(call: Call, leg: Leg, pcm48: np.ndarray) -> None:
    """What a party said (48 kHz mono) to the supervisors who hear that party now."""
    state, muted = call.state, call.agent_muted
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
        *,
        ice_servers: Sequence[RTCIceServer],
        media_timeout: float,
    ) -> None:
        self.store = store
        self.bus = bus
        self.keep = keep
        self.ice_servers = ice_servers
        self.media_timeout = media_timeout

    @staticmethod
    def find(call: Call, user: Actor) -> SupervisorLeg:
        leg = next((m for m in call.monitors if m.user_id == user.id), None)
        if leg is None:
            raise NotAllowed("you are not monitoring this call")
        return leg

    async def start(
        self, user: Actor, call: Call, mode: Mode, sdp: str
    ) -> tuple[SupervisorLeg, str]:
        """Join ``call`` with the supervisor's SDP offer; their leg and our answer."""
        may_monitor(user)
        _may_join(call, user)
        leg_id = str(uuid.uuid4())
        holder: list[SupervisorLeg] = []

        async def ended(reason: str) -> None:
            if holder:
                await self.stop(call, holder[0], reason)

        peer = WebRtcLeg(ended, ice_servers=self.ice_servers)
        try:
            answer, _ = await peer.answer(sdp, video=False)
            _may_join(call, user)  # again: the call may have ended while we set up media
        except BaseException:
            await peer.close()
            raise
        leg = SupervisorLeg(leg_id, user.id, user.username, mode, peer)
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
        leg.task = asyncio.create_task(self._run(call, leg))
        row = LegRow(id=leg.id, call_id=call.id, role="supervisor", transport="webrtc",
                     user_id=user.id, created_at=utcnow())  # fmt: skip
        await self.keep(f"leg {leg.id}", self.store.add, row)
        if leg.stopped:  # the call ended while that was written: the leg went with it
            raise NotAllowed("the call has ended")
        log.info("call %s: %s monitors (%s)", call.id, user.username, mode)
        return leg, answer

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
        may_monitor(user)
        await self.stop(call, self.find(call, user), "left")

    async def stop(self, call: Call, leg: SupervisorLeg, reason: str) -> None:
        """End a supervisor leg (idempotent); the call goes on."""
        if leg.stopped:
            return
        leg.stopped = True
        with contextlib.suppress(ValueError):
            call.monitors.remove(leg)
        _drop(call, leg, "caller")
        _drop(call, leg, "agent")
        await self.keep(f"leg {leg.id} end", self.store.end_leg, leg.id, utcnow())
        self.bus.publish(
            MonitorStopped(
                monitored_call_id=call.id,
                leg_id=leg.id,
                supervisor_id=leg.user_id,
                supervisor=leg.username,
                mode=leg.mode,
                reason=reason,
            )
        )
        log.info("call %s: %s stopped monitoring (%s)", call.id, leg.username, reason)
        task = leg.task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
        await leg.peer.close()

    async def call_ended(self, call: Call) -> None:
        for leg in list(call.monitors):
            await self.stop(call, leg, "call_ended")

    async def _run(self, call: Call, leg: SupervisorLeg) -> None:
        """The supervisor's voice, to whoever hears them now."""
        try:
            track = await asyncio.wait_for(leg.peer.audio_track, self.media_timeout)
        except TimeoutError:
            await self.stop(call, leg, "no_media")
            return

        def push(pcm: np.ndarray, rate: int, channels: int) -> int:
            audio: np.ndarray | None = None
            for party, peer in _parties(call):
                if hears(leg.mode, "supervisor", party, state=call.state,
                         agent_muted=call.agent_muted):  # fmt: skip
                    if audio is None:
                        audio = to_send_rate(downmix_int16(pcm, channels), rate)
                    peer.outbound.push_live(audio, leg.id)
            return 0

        reason = await pump_audio(track, push, self.media_timeout)
        await self.stop(call, leg, reason)


def _bridged(call: Call) -> None:
    if call.ended.is_set() or call.state == "ended":
        raise NotAllowed("the call has ended")
    if call.state not in WITH_AGENT or call.agent_leg() is None:
        raise NotAllowed(f"the call is not with an agent (it is {call.state})")


def _may_join(call: Call, user: Actor) -> None:
    _bridged(call)
    if any(m.user_id == user.id for m in call.monitors):
        raise NotAllowed("you are monitoring this call already: change the mode, or leave")
    if len(call.monitors) >= MAX_SUPERVISORS:
        raise NotAllowed(f"{MAX_SUPERVISORS} supervisors are on this call already")


def _drop(call: Call, leg: SupervisorLeg, party: Party) -> None:
    for who, peer in _parties(call):
        if who == party:
            peer.outbound.drop_live(leg.id)
