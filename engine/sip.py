"""The phone door: SIP calls become engine calls.

The SIP endpoint (media/sip) decides everything that is protocol; this module
decides what is policy: which numbers we answer (404 otherwise), whether we have
room (503 with Retry-After), whether we share a codec (488), and then sets up the
RTP session and hands the caller to :class:`~engine.calls.CallManager` like any
other caller. Phone-side events (BYE, CANCEL, hold by re-INVITE, keys pressed)
are forwarded to the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.callstate import Overloaded
from engine.config import Settings
from media.rtp import RtpSession
from media.sip import message as sm
from media.sip.endpoint import (
    Admission,
    CallCancelled,
    CallConfirmed,
    CallTerminated,
    DtmfInfo,
    Event,
    InviteReceived,
    Registered,
    ReinviteReceived,
    SipEndpoint,
)
from media.sip.peer import SipPeer
from media.sip.sdp import NoCommonCodec, SdpAnswerer, SdpError, parse_offer
from media.sip.transport import SipTransport

if TYPE_CHECKING:
    from engine.calls import CallManager

log = logging.getLogger(__name__)

END_REASONS = {"remote_bye": "remote_closed", "no_ack": "no_ack"}


@dataclass
class _PhoneCall:
    sip_call_id: str
    peer: SipPeer | None = None
    call_id: str | None = None  # the engine's call, once created
    answerer: SdpAnswerer | None = None
    gone: bool = False  # cancelled or hung up while we were still setting up


class SipFront:
    def __init__(self, settings: Settings, calls: CallManager) -> None:
        self.settings = settings
        self.calls = calls
        self.public_host = settings.sip_public_host or settings.sip_host
        users = {u: p.get_secret_value() for u, p in settings.sip_users.items()}
        admission = Admission(
            realm=settings.sip_realm, trunks=settings.sip_trunks, passwords=users.get
        )
        self.endpoint = SipEndpoint(self.public_host, settings.sip_port, admission)
        self.transport = SipTransport(self.endpoint, self._on_event)
        self._phone: dict[str, _PhoneCall] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.port: int | None = None

    async def start(self) -> int:
        port = await self.transport.start(self.settings.sip_host, self.settings.sip_port)
        self.endpoint.local_port = self.port = port
        log.info("SIP on %s:%d (UDP and TCP)", self.settings.sip_host, port)
        return port

    async def stop(self) -> None:
        await self.transport.stop()
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _now(self) -> float:
        return time.monotonic()

    # -- what the endpoint tells us ----------------------------------------------------

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, InviteReceived):
            self._phone[ev.call_id] = _PhoneCall(ev.call_id)
            self._spawn(self._invite(ev))
        elif isinstance(ev, CallCancelled | CallTerminated):
            pc = self._phone.pop(ev.call_id, None)
            if pc is None:
                return
            pc.gone = True
            if pc.peer is not None:
                pc.peer.remote_ended = True
            if pc.call_id is not None:
                reason = (
                    "caller_cancelled"
                    if isinstance(ev, CallCancelled)
                    else END_REASONS.get(ev.reason, ev.reason)
                )
                self._spawn(self.calls.end_call(pc.call_id, reason))
        elif isinstance(ev, ReinviteReceived):
            self._reinvite(ev)
        elif isinstance(ev, DtmfInfo):
            pc = self._phone.get(ev.call_id)
            if pc is not None and pc.call_id is not None:
                self.calls.press_key(pc.call_id, ev.digit)
        elif isinstance(ev, Registered):
            log.info("SIP %s %s -> %s", "registered" if ev.expires else "unregistered",
                     ev.aor, ev.contact)  # fmt: skip
        elif isinstance(ev, CallConfirmed):
            log.debug("SIP call %s confirmed", ev.call_id)

    def _reject(self, sip_call_id: str, status: int, *headers: tuple[str, str]) -> None:
        self._phone.pop(sip_call_id, None)
        self.endpoint.reject(sip_call_id, status, self._now(), headers)
        self.transport.flush()

    async def _invite(self, ev: InviteReceived) -> None:
        req = ev.request
        number = sm.uri_user(req.uri)
        if number not in self.settings.sip_numbers:
            self._reject(ev.call_id, 404)
            return
        try:
            offer = parse_offer(req.body)
        except NoCommonCodec as exc:
            self._reject(ev.call_id, 488, ("Warning", f'304 ccengine "{exc}"'))
            return
        except SdpError as exc:
            self._reject(ev.call_id, 400, ("Warning", f'399 ccengine "{exc}"'))
            return
        if len(self.calls.calls) >= self.settings.max_concurrent_calls:
            self._reject(ev.call_id, 503, ("Retry-After", "30"))
            return
        self.endpoint.ring(ev.call_id)
        self.transport.flush()
        pc = self._phone.get(ev.call_id)
        if pc is None:
            return  # cancelled already
        rtp = RtpSession(offer, on_dtmf=lambda digit: self._dtmf(pc, digit))
        rtp.track.held = offer.on_hold
        try:
            port = await rtp.open(self.settings.sip_host)
        except OSError as exc:
            log.error("no RTP port for SIP call %s: %s", ev.call_id, exc)
            self._reject(ev.call_id, 503, ("Retry-After", "30"))
            return
        pc.peer = SipPeer(rtp, hangup=lambda: self._hangup(ev.call_id))
        pc.answerer = SdpAnswerer(self.public_host, port)
        caller = sm.uri_user(sm.address_uri(req.headers.get_first("from") or "")) or None
        try:
            call = await self.calls.create_phone_call(pc.peer, caller, codec=offer.codec)
        except Overloaded:
            pc.peer.remote_ended = True
            await pc.peer.close()
            self._reject(ev.call_id, 503, ("Retry-After", "30"))
            return
        except Exception:
            log.exception("could not start the phone call %s", ev.call_id)
            pc.peer.remote_ended = True
            await pc.peer.close()
            self._reject(ev.call_id, 500)
            return
        pc.call_id = call.id
        if pc.gone:  # CANCEL arrived while the call was being set up
            await self.calls.end_call(call.id, "caller_cancelled")
            return
        self.endpoint.answer(ev.call_id, pc.answerer.answer(offer), self._now())
        self.transport.flush()

    def _reinvite(self, ev: ReinviteReceived) -> None:
        pc = self._phone.get(ev.call_id)
        if pc is None or pc.peer is None or pc.answerer is None:
            self.endpoint.answer_reinvite(ev.call_id, None, self._now(), status=491)
            return
        try:
            offer = parse_offer(ev.request.body)
        except NoCommonCodec:
            self.endpoint.answer_reinvite(ev.call_id, None, self._now(), status=488)
            return
        except SdpError:
            self.endpoint.answer_reinvite(ev.call_id, None, self._now(), status=400)
            return
        if offer.codec != pc.peer.rtp.offer.codec:
            # the codec is fixed for the call: a switch mid-call would need a new decoder
            self.endpoint.answer_reinvite(ev.call_id, None, self._now(), status=488)
            return
        pc.peer.rtp.update(offer)
        self.endpoint.answer_reinvite(ev.call_id, pc.answerer.answer(offer), self._now())
        log.info("SIP call %s %s", ev.call_id, "held by caller" if offer.on_hold else "resumed")

    def _dtmf(self, pc: _PhoneCall, digit: str) -> None:
        if pc.call_id is not None:
            self.calls.press_key(pc.call_id, digit)

    def _hangup(self, sip_call_id: str) -> None:
        """The engine ended the call (agent hung up, callback chosen, shutdown): BYE."""
        self._phone.pop(sip_call_id, None)
        self.endpoint.hangup(sip_call_id, self._now())
        self.transport.flush()
