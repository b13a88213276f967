"""The live side of consults and three-way conferences (engine/consult.py decides what
may happen, engine/conference.py who hears whom).

Theory of operation
-------------------
The host (the agent on the call) asks: the caller is put on hold as a hold does, and
the guest is rung through the ACD (``Routing.consult_offer``: the call is not queued,
it stays with the host). The guest answers with the desk's ordinary accept (their
softphone's SDP, or their desk phone): ``CallManager._bridge_agent`` hands such an
answer here, so the desk needs nothing new to take a consult. The guest's leg then
joins ``call.legs`` as a second agent leg; ``call.agent_id`` stays the host's until the
caller is handed over (``complete``, or the host leaving a conference), so every
control guard keeps meaning "the agent who has the caller".

A leg that leaves (the guest after a cancel, the host after a hand-over) is marked
``left`` and closed after its last words are transcribed, as a transfer does; its
agent goes to wrap-up owing the call its disposition. Everything is told as
``call.consult_*`` / ``call.conference_left`` events.

An outside number (``start_outside``) is dialled through the SIP trunk instead of
rung (an ``OutsideLine``: engine/sip.py ``SipFront``); the host's request waits for
the answer, as a transfer to a number does. The dial is a task of its own, so a
cancel (or the caller hanging up) calls it off, which sends the INVITE a CANCEL. Once
answered, the number's leg joins as the guest's (a leg with no user); it leaves with a
BYE, and after a hand-over the call is with that number as after
``Controls.transfer_out``. The host's line dropping while they consult a number (or while
it still rings) does not hand the caller to it (nobody outside agreed to take them): the
number gets a BYE (or a CANCEL) and the caller goes back into line (``_host_dropped``); in
a conference the number keeps them.

With several engines the ring, the answer and the withdrawal are operations of the
shared routing log (engine/routingcopy.py): the guest may be signed in on any engine,
whose desk's answer, decline and the host's requests are sent on to the engine running
the call (engine/api/forward.py). The answer is decided in the log before the guest's
leg joins the call; a ring that ended in the log (declined, rung out in the leader's
tick) is told to the host from its withdrawal (``offer_withdrawn``), since no ACD timer
runs on the engine to ``sweep``. The log may take a step and not answer in time: a ring
whose request failed, or whose consult is gone, is withdrawn, and asked again in the
background while the log cannot be reached (``withdraw``), as is a colleague's hang-up;
an answer to a ring with no consult behind it is refused (``CallManager._bridge_agent``
takes agents only for a call in line).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

from engine.acd import AcdError
from engine.callstate import Forbidden, NotAllowed
from engine.consult import Consult, ConsultEvent, dial_failure, may_start, may_start_outside
from engine.controls import BridgeVideo, HoldMusic, Hush, Steps
from engine.events import (
    ConferenceLeft,
    ConsultAnswered,
    ConsultCancelled,
    ConsultCompleted,
    ConsultConferenced,
    ConsultStarted,
    OfferWithdrawn,
    utcnow,
)
from engine.livecall import Leg
from engine.routing import Effect as RoutingEffect
from engine.routing import Transition
from engine.routinglog import RoutingUnavailable
from engine.sip import DialFailed
from engine.store.models import LegRow

if TYPE_CHECKING:
    from engine.calls import CallManager
    from engine.livecall import Call
    from engine.users import Actor
    from media.peer import CallPeer

log = logging.getLogger(__name__)

# the host's request for a number, when they cancelled before it answered (a 409: it did
# not fail, and it is not on the call either)
CANCELLED = "the consult was cancelled before they answered"


class OutsideLine(Protocol):
    """Where outside numbers are dialled (engine/sip.py ``SipFront``)."""

    def may_dial(self, number: str) -> None:
        """``NotAllowed`` if ``number`` cannot be dialled from here."""

    async def dial_party(self, number: str) -> tuple[CallPeer, str]:
        """The answered party's peer and codec, or ``DialFailed``; cancellable."""
        ...


class Consults:
    def __init__(self, manager: CallManager) -> None:
        self.m = manager
        # call id -> the dial of an outside number being consulted, while it rings
        self._dials: dict[str, asyncio.Task[None]] = {}

    # -- who may act ------------------------------------------------------------------

    def _hosted(self, user: Actor, call_id: str) -> Call:
        """The live call ``user`` has (403 otherwise) with a consult (409 otherwise)."""
        call = self.m.controls.live(call_id)
        if call.agent_id != user.id:
            raise Forbidden(f"call {call_id} is not on your line")
        if call.consult is None:
            raise NotAllowed("there is no consult on this call")
        return call

    # -- the host's requests ----------------------------------------------------------

    async def start(self, user: Actor, call_id: str, guest: str) -> None:
        call = self.m.controls.live(call_id)
        if call.agent_id != user.id:
            raise Forbidden(f"call {call_id} is not on your line")
        guest_id = self.m.routing.agent_named(guest)
        presence = self.m.routing.presence_of(guest_id) if guest_id else "offline"
        may_start(channel=call.channel, state=call.state, consult=call.consult,
                  guest_id=guest_id, host_id=user.id, guest_presence=presence)  # fmt: skip
        assert guest_id is not None
        consult = Consult(user.id, user.username, guest_id, guest)
        call.consult = consult  # before any await: a second request is refused
        try:
            if call.state == "bridged":
                await self.m._desk(self.m.controls.hold(user, call))
            # the hold awaited: the caller may have hung up, or the host cancelled
            if call.consult is not consult or call.ended.is_set():
                if call.consult is consult:
                    call.consult = None
                if call.ended.is_set():
                    raise NotAllowed(f"call {call_id} ended before {guest} was rung")
                return  # cancelled: told by the cancel, nobody rung
            try:
                await self.m._route(self.m.routing.consult_offer(call, guest_id))
            except RoutingUnavailable:
                # the shared log may have taken the ring and not answered in time: taken
                # back (again in the background), or the guest rings with no consult
                await self.withdraw(call, guest_id)
                raise
            consult.rung = True
            if call.consult is not consult:
                # cancelled, declined or the call ended while the ring was asked for (with
                # several engines the shared log's answer is awaited): told already; a
                # cancel's withdrawal may have gone into the log before the ring did
                await self.withdraw(call, guest_id)
                return
        except AcdError as exc:
            if call.consult is consult:
                call.consult = None
            raise NotAllowed(f"{guest} is not available ({exc}); resume the caller") from None
        except BaseException:
            if call.consult is consult:  # (not another consult asked for meanwhile)
                call.consult = None
            raise
        self.m._publish(ConsultStarted(call_id=call.id, host=user.username, guest=guest))
        log.info("call %s: %s consults %s", call.id, user.username, guest)

    async def start_outside(
        self, user: Actor, call_id: str, number: str, line: OutsideLine
    ) -> None:
        """Consult an outside number: the caller is held and ``number`` dialled through
        ``line``; answers once they pick up (then host and number talk). ``DialFailed``
        if they do not, or the dial failed otherwise (status 0): the host is told
        (``call.consult_cancelled``) and stays with the caller on hold. A cancel
        meanwhile calls the dial off: then ``NotAllowed``, as for a call that ended."""
        call = self.m.controls.live(call_id)
        if call.agent_id != user.id:
            raise Forbidden(f"call {call_id} is not on your line")
        # (no ACD ring: with several engines only the host's hand-over goes to the log)
        may_start_outside(channel=call.channel, state=call.state, consult=call.consult)
        line.may_dial(number)  # no trunk, a domain not allowed: before the caller is held
        consult = Consult(user.id, user.username, None, number)
        call.consult = consult  # before any await: a second request is refused
        try:
            if call.state == "bridged":
                await self.m._desk(self.m.controls.hold(user, call))
        except BaseException:
            if call.consult is consult:
                call.consult = None
            raise
        if call.consult is not consult or call.ended.is_set():
            if call.consult is consult:
                call.consult = None
            if call.ended.is_set():
                raise NotAllowed(f"call {call_id} ended before {number} was dialled")
            raise NotAllowed(CANCELLED)  # told by the cancel, nobody dialled
        self.m._publish(
            ConsultStarted(call_id=call.id, host=user.username, guest=number, outside=True)
        )
        log.info("call %s: %s consults an outside number", call.id, user.username)
        dial = asyncio.create_task(self._dial_out(call, consult, line), name=f"dial-{call.id}")
        self._dials[call.id] = dial
        dial.add_done_callback(lambda task: self._dialled(call.id, task))
        # a request dropped meanwhile does not stop the dial: only a cancel does
        await asyncio.wait({dial})
        exc = None if dial.cancelled() else dial.exception()
        if exc is not None:
            if isinstance(exc, DialFailed | NotAllowed):
                raise exc
            # a dial that broke (no RTP port's OSError, a bug) is the number not reached
            # (told as "failed"), not this engine's error: a 502, not a 500
            raise DialFailed(0, f"the dial failed: {exc}") from exc
        if consult.guest_leg is None:  # called off, or answered as it was: not joined
            if call.ended.is_set():
                raise NotAllowed(f"call {call_id} ended before {number} answered")
            raise NotAllowed(CANCELLED)  # the host cancelled: told by the cancel

    def _dialled(self, call_id: str, task: asyncio.Task[None]) -> None:
        if self._dials.get(call_id) is task:
            del self._dials[call_id]
        if not task.cancelled() and task.exception() is not None:
            # read here, so a dial whose request went away is not logged as lost
            log.info("call %s: outside consult not answered: %s", call_id, task.exception())

    def _stop_dial(self, call_id: str) -> None:
        """The dial of an outside number still ringing is called off (a CANCEL)."""
        dial = self._dials.pop(call_id, None)
        if dial is not None:
            dial.cancel()

    async def _dial_out(self, call: Call, consult: Consult, line: OutsideLine) -> None:
        try:
            peer, codec = await line.dial_party(consult.guest)
        except Exception as exc:  # not only DialFailed: no failure may leave it "ringing"
            if call.consult is consult:  # not cancelled meanwhile: the host is told
                event, reason = dial_failure(exc.status if isinstance(exc, DialFailed) else 0)
                consult.next(event)
                call.consult = None
                self.m._publish(ConsultCancelled(call_id=call.id, host=consult.host,
                                                 guest=consult.guest, reason=reason))  # fmt: skip
            raise
        self._dials.pop(call.id, None)  # answered: a cancel now is the guest leaving
        if call.consult is not consult or call.ended.is_set():
            await peer.close()  # answered as the consult ended: BYE
            return
        await self._outside_answered(call, consult, peer, codec)

    async def _outside_answered(
        self, call: Call, consult: Consult, peer: CallPeer, codec: str
    ) -> None:
        """The number answered: it joins as the guest (an agent leg with no user)."""
        leg = Leg(str(uuid.uuid4()), "agent", "sip", codec=codec)
        leg.peer = peer
        # from here on, with no await: the number is on the call
        consult.move("answer")
        consult.guest_leg = leg.id
        leg.joined = time.monotonic()
        call.legs.append(leg)
        self.m._publish(ConsultAnswered(call_id=call.id, host=consult.host, guest=consult.guest))
        row = LegRow(id=leg.id, call_id=call.id, role="agent", transport="sip", codec=codec,
                     user_id=None, created_at=utcnow())  # fmt: skip
        await self.m._keep(f"leg {leg.id}", self.m.store.add, row)
        await self._joined(call, leg)

    async def _joined(self, call: Call, leg: Leg) -> None:
        """The guest's leg row is written: the leg runs, unless it left (or the call
        ended) meanwhile. Decided on the leg, not the consult: a hand-over (complete, the
        host leaving a conference) during the write also clears the consult, and then
        the guest has the caller: a leg not run would be on the call with nobody reading
        its media, its hang-up never noticed."""
        if leg.left or call.ended.is_set():  # its close wrote its end before the row
            await self.m._keep(f"leg {leg.id} end", self.m.store.end_leg, leg.id, utcnow())
            return
        if leg.peer is not None:
            self.m._start_leg(call, leg)

    async def complete(self, user: Actor, call_id: str) -> None:
        """A warm transfer: the host leaves, the guest has the caller."""
        call = self._hosted(user, call_id)
        consult = call.consult
        assert consult is not None
        consult.next("complete")
        await self._host_leaves(user, call, consult)
        self.m._publish(ConsultCompleted(call_id=call.id, host=consult.host, guest=consult.guest))

    async def conference(self, user: Actor, call_id: str) -> None:
        call = self._hosted(user, call_id)
        consult = call.consult
        assert consult is not None
        consult.next("conference")
        consult.move("conference")
        await self.m._desk(self._back_to_caller(user, call, "conference"))
        self.m._publish(ConsultConferenced(call_id=call.id, host=consult.host, guest=consult.guest))

    async def cancel(self, user: Actor, call_id: str) -> None:
        """The guest leaves (or stops ringing); the caller is back with the host."""
        call = self._hosted(user, call_id)
        consult = call.consult
        assert consult is not None
        consult.next("cancel")
        await self._guest_leaves(call, consult, "cancelled")
        await self.m._desk(self._back_to_caller(user, call, "consult cancelled"))

    async def leave(self, user: Actor, call_id: str) -> None:
        """Either agent leaves a conference; the other keeps the caller. The guest may
        also leave a consult (the host is told, and the caller stays on hold)."""
        call = self.m.controls.live(call_id)
        consult = call.consult
        if consult is None or user.id not in (consult.host_id, consult.guest_id):
            raise Forbidden("you are not in a conference on this call")
        if user.id == consult.guest_id and consult.phase == "consulting":
            consult.next("guest_left")
            await self._guest_leaves(call, consult, "guest_left")
            return
        consult.next("leave")
        if user.id == consult.host_id:
            await self._host_leaves(user, call, consult)
            remaining = consult.guest
        else:
            await self._guest_leaves(call, consult, None)
            remaining = consult.host
        self.m._publish(ConferenceLeft(call_id=call.id, agent=user.username, remaining=remaining))

    # -- the guest's side ---------------------------------------------------------------

    def is_guest_answer(self, call: Call, user_id: str) -> bool:
        c = call.consult
        return c is not None and c.phase == "ringing" and c.guest_id == user_id

    async def answered(self, call: Call, leg: Leg, codec: str | None) -> None:
        """The guest answered (``CallManager._bridge_agent``): host and guest talk."""
        consult = call.consult
        assert consult is not None and leg.user_id is not None and leg.user_id == consult.guest_id
        try:
            answered = list(self.m.routing.answered(leg.user_id, call.id))
            if self.m.routing_log is not None:
                # several engines: the answer is decided in the shared log before the
                # guest's leg is put on the call (an offer that rang out is refused there)
                await self.m._route(answered)
                answered = []
        except (AcdError, RoutingUnavailable):
            if leg.peer is not None:
                await leg.peer.close()
            raise
        if call.consult is not consult:
            await self._too_late(call, leg)
        # from here on, with no await: the guest is on the call
        consult.move("answer")
        consult.guest_leg = leg.id
        leg.joined = time.monotonic()
        call.legs.append(leg)
        self.m._stop_desk_phone(call.id)
        # told at once: a cancel racing the answer finds the phase it acts on told
        self.m._publish(ConsultAnswered(call_id=call.id, host=consult.host, guest=consult.guest))
        await self.m._route(answered)
        if leg.left or call.ended.is_set():  # cancelled (or the call ended) meanwhile
            return  # (handed the caller meanwhile: the leg goes on, see _joined)
        row = LegRow(id=leg.id, call_id=call.id, role="agent", transport=leg.transport,
                     codec=codec, user_id=leg.user_id, created_at=utcnow())  # fmt: skip
        await self.m._keep(f"leg {leg.id}", self.m.store.add, row)
        await self._joined(call, leg)

    async def declined(self, call: Call, user_id: str, reason: str) -> None:
        """The guest turned the consult down, or it rang out: the host is told, and
        stays with the caller on hold until they resume."""
        consult = call.consult
        if consult is None or consult.phase != "ringing" or consult.guest_id != user_id:
            return
        call.consult = None
        self.m._publish(
            ConsultCancelled(call_id=call.id, host=consult.host, guest=consult.guest,
                             reason=reason)
        )  # fmt: skip

    async def _too_late(self, call: Call, leg: Leg) -> None:
        """The consult was cancelled (or the call ended) while the shared log decided the
        guest's answer: the log has them on the call, so they go to wrap-up, as a guest
        who left does; their leg never joins it."""
        assert leg.user_id is not None
        self.m._stop_desk_phone(call.id)  # the cancel's withdrawal found nothing to stop
        if leg.peer is not None:
            await leg.peer.close()
        # the log away must not leave them on the call for good: asked again meanwhile
        await self._surely(self.m.routing.hung_up(leg.user_id, None, call.id))
        raise NotAllowed("the consult was cancelled before you answered")

    async def withdraw(self, call: Call, guest_id: str) -> None:
        """``guest_id``'s ring for ``call`` taken back: the host cancelled, the call
        ended, or a ring with no consult behind it (its request failed after the shared
        log took it). With several engines, asked again in the background while the log
        cannot be reached, and the request goes on; no longer once the host consults the
        same colleague again, or the call is back in line (a transfer): that ring is a
        new one, not the one to take back."""
        again = self.m.routing.consult_withdraw(guest_id, call.id)
        await self._surely(
            again, unless=lambda: self._consulting(call, guest_id) or call.state == "queued"
        )

    @staticmethod
    def _consulting(call: Call, guest_id: str) -> bool:
        return call.consult is not None and call.consult.guest_id == guest_id

    async def _surely(
        self, effects: Iterable[RoutingEffect], unless: Callable[[], bool] = lambda: False
    ) -> None:
        """Routing steps that free a colleague: on one engine at once; with several,
        through the shared log and, while it cannot be reached, asked again in the
        background (``SharedCalls.leave``) rather than failing the request half done."""
        if self.m.shared is None:
            await self.m._route(effects)
        else:
            await self.m.shared.leave(list(effects), unless=unless)

    async def offer_withdrawn(self, event: OfferWithdrawn) -> None:
        """Several engines: a guest's ring ended in the shared log (declined there, rung
        out or their desk gone in the leader's tick). No ACD timer runs on this engine
        to ``sweep``: the host is told from the withdrawal itself. ("cancelled" and
        "caller_left": the host's cancel or the call's end, told by them.)"""
        reason = {"declined": "declined", "no_answer": "no_answer", "disconnected": "no_answer"}
        call = self.m.calls.get(event.call_id or "")
        if call is not None and event.reason in reason:
            await self.declined(call, event.agent_id, reason[event.reason])

    async def sweep(self) -> None:
        """Consults whose ring ended without an answer (timed out, the guest's desk
        went): the ACD withdrew the offer; the host is told."""
        for call in list(self.m.calls.values()):
            c = call.consult
            # one still holding the caller has not rung yet: it is not over (a number
            # is dialled, not rung: its dial tells its own end)
            if c is not None and c.phase == "ringing" and c.rung and c.guest_id is not None:
                if not self.m.routing.offered_to(c.guest_id, call.id):
                    await self.declined(call, c.guest_id, "no_answer")

    async def leg_ended(self, call: Call, leg: Leg) -> bool:
        """An agent leg's media ended: True if the consult deals with it (the call goes
        on with the other agent), False to end the call as usual."""
        consult = call.consult
        if consult is None or leg.left or call.ended.is_set():
            return False
        if consult.phase == "ringing":
            if not (consult.outside and leg.user_id == consult.host_id):
                return False  # a colleague still rung: the call ends, their ring stops
            host = self.m.routing.username(consult.host_id, consult.host)
            return await self._host_dropped(_Host(consult.host_id, host), call, consult, leg)
        if leg.id == consult.guest_leg:
            event: ConsultEvent = "guest_left" if consult.phase == "consulting" else "leave"
            consult.next(event)
            await self._guest_leaves(call, consult, "guest_left" if event == "guest_left" else None)
            if event == "leave":
                self.m._publish(ConferenceLeft(call_id=call.id, agent=consult.guest,
                                               remaining=consult.host))  # fmt: skip
            return True
        if leg.user_id != consult.host_id:
            return False
        host = self.m.routing.username(consult.host_id, consult.host)
        actor = _Host(consult.host_id, host)
        if consult.outside and consult.phase == "consulting":
            return await self._host_dropped(actor, call, consult, leg)
        # the host hung up: the guest (a colleague who answered, or anyone already
        # talking with the caller in a conference) keeps the caller
        await self._host_leaves(actor, call, consult)
        self.m._publish(ConferenceLeft(call_id=call.id, agent=consult.host,
                                       remaining=consult.guest))  # fmt: skip
        return True

    async def _host_dropped(self, host: _Host, call: Call, consult: Consult, leg: Leg) -> bool:
        """The host's line (``leg``) dropped while consulting a number, or while it still
        rang: someone outside never agreed to take the caller (they were asked a
        question, not handed a customer), so they are not handed them. The number gets
        a BYE (a ringing one, its dial called off: a CANCEL), told as ``host_left``, and
        the caller goes back into line, to the queue the call came from (the default
        queue if that one was removed), as the host's transfer to it would: a colleague
        picks them up with everything so far. Chosen over ending the call as a host's
        hang-up does: the caller did nothing wrong, was on hold and still wants help,
        and a dropped browser or desk phone is not an agent deciding to hang up. False
        if it cannot be done (the call then ends as a host's hang-up does)."""
        # before the first await: the leg's end may be signalled twice (WebRTC: the
        # peer's end and the media timeout), and the second, finding no consult and the
        # leg not left, would end the call meant to go back into line
        leg.left = True
        consult.next("host_left")
        try:
            await self._guest_leaves(call, consult, "host_left")
        except Exception:  # (storage down, say): the leg is left, no second signal comes
            log.exception("call %s: the number consulted could not be let go", call.id)
            return False  # so the call ends now, not the caller left on hold with nobody
        if call.ended.is_set():
            return True
        queue = call.queue_name
        if queue is None or not self.m.routing.has_queue(queue):
            # removed since the call came (there is always one: the last cannot be)
            queue = self.m.routing.default_queue()
        try:
            # (the leg left already: agent_leaves finds no agent leg to close, so it is
            # closed here, its last words transcribed)
            await self.m.transfer(
                host, call.id, queue=queue, note=f"{host.username}'s line dropped"
            )
        except (AcdError, Forbidden, NotAllowed, RoutingUnavailable) as exc:
            log.warning("call %s: the caller could not go back into line: %s", call.id, exc)
            return False
        await self.m._close_leg(call, leg)
        return True

    def ended(self, call: Call) -> Iterator[RoutingEffect]:
        """The call ends: a ringing guest stops ringing. (One on the call goes to
        wrap-up with every agent leg still on it: ``CallManager.end_call``.)"""
        consult, call.consult = call.consult, None
        if consult is not None and consult.phase == "ringing":
            if consult.guest_id is None:
                self._stop_dial(call.id)
            else:
                yield from self.m.routing.consult_withdraw(consult.guest_id, call.id)

    # -- moves --------------------------------------------------------------------------

    @staticmethod
    def _since(leg: Leg) -> float:
        return leg.joined if leg.joined else time.monotonic()

    @staticmethod
    def _back_to_caller(user: Actor, call: Call, why: str) -> Steps[None]:
        """Hold audio stops and the caller is bridged again (to whoever has the call)."""
        yield HoldMusic(call, False)
        yield Hush(call)
        if call.state == "held":
            yield Transition(call, "resume", f"{user.username}: {why}")
        yield BridgeVideo(call)

    async def _guest_leaves(self, call: Call, consult: Consult, reason: str | None) -> None:
        call.consult = None
        if consult.phase == "ringing":
            if consult.guest_id is None:
                self._stop_dial(call.id)
            else:
                await self.withdraw(call, consult.guest_id)
        leg = call.leg(consult.guest_leg) if consult.guest_leg else None
        if leg is not None:
            leg.left = True
            if consult.guest_id is not None:  # an agent goes to wrap-up; a number owes none
                since = self._since(leg)
                await self._surely(self.m.routing.hung_up(consult.guest_id, since, call.id))
        if reason is not None:
            self.m._publish(ConsultCancelled(call_id=call.id, host=consult.host,
                                             guest=consult.guest, reason=reason))  # fmt: skip
        if leg is not None:
            await self.m._close_leg(call, leg)

    async def _host_leaves(self, user: Actor, call: Call, consult: Consult) -> None:
        """The host hands the caller to the guest and goes to wrap-up."""
        call.consult = None
        guest = call.leg(consult.guest_leg) if consult.guest_leg else None
        assert guest is not None
        # agent_leaves marks the host's leg ``left`` before its first step is awaited:
        # its media ending meanwhile must not end the call or hand it over twice
        steps = self.m.controls.agent_leaves(user, call, None, f"handed over to {consult.guest}")
        old = await self.m._desk(steps)
        # the name the caller is told (a colleague's display name; a number's: none)
        name = await self.m.agent_name(consult.guest_id) if consult.guest_id else None
        if call.ended.is_set():  # the caller hung up meanwhile: the guest is done too
            if not guest.left:  # (end_call frees every agent leg still on the call)
                guest.left = True
                await self.m._route(
                    self.m.routing.hung_up(consult.guest_id, self._since(guest), call.id)
                )
            return
        call.agent_id, call.bridged_at = consult.guest_id, self._since(guest)
        call.agent_name = name
        if call.state == "held":
            await self.m._transition(call, "resume", f"handed over to {consult.guest}",
                                     agent_id=consult.guest_id)  # fmt: skip
        else:
            await self.m._keep(f"call {call.id} agent", self.m.store.update_call, call.id,
                               agent_id=consult.guest_id)  # fmt: skip
        self.m._bridge_video(call)
        if old is not None:
            await self.m._close_leg(call, old)


class _Host:
    """The host as an actor, when they hung up rather than asked (no request to read)."""

    role = "agent"

    def __init__(self, user_id: str, username: str) -> None:
        self.id, self.username = user_id, username
