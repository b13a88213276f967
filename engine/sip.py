"""The phone door: SIP calls become engine calls.

The SIP endpoint (media/sip) decides everything that is protocol; this module
decides what is policy: which numbers we answer (404 otherwise), whether we have
room (503 with Retry-After; always while the node drains, engine/drain.py), whether
we share a codec (488), and then sets up the RTP session and hands the caller to
:class:`~engine.calls.CallManager` like any other caller. Phone-side events (BYE,
CANCEL, hold by re-INVITE, keys pressed) are forwarded to the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from engine.acd import AcdError
from engine.callstate import STORAGE_RETRY_AFTER, NotAllowed, Overloaded, UnknownCall
from engine.config import Settings
from engine.customers import normalize_phone
from engine.dialpolicy import check_number, phone_number
from engine.drain import RETRY_AFTER as DRAIN_RETRY_AFTER
from engine.routinglog import RoutingUnavailable
from engine.sipbindings import SharedBindings
from engine.stirshaken import fresh, parse_identity
from engine.users import Actor
from media.netlimits import in_networks
from media.rtp import Refusal, RtpSession
from media.sip import message as sm
from media.sip.endpoint import (
    Admission,
    AuthFailed,
    AuthLockedOut,
    Binding,
    CallCancelled,
    CallConfirmed,
    CallTerminated,
    DtmfInfo,
    Event,
    InviteReceived,
    OutboundAnswered,
    OutboundFailed,
    OutboundRinging,
    Peer,
    Registered,
    RegistrationChanged,
    ReinviteReceived,
    SipEndpoint,
)
from media.sip.peer import SipPeer
from media.sip.sdp import (
    NOT_YET,
    AudioOffer,
    NoCommonCodec,
    SdpAnswerer,
    SdpError,
    parse_offer,
)
from media.sip.throttle import AuthThrottle
from media.sip.transport import SipTransport, TcpLimits

if TYPE_CHECKING:
    from engine.calls import CallManager
    from engine.livecall import Call
    from engine.metrics import Metrics
    from engine.store.db import Store
    from engine.store.models import UserRow
    from media.peer import CallPeer

# what outbound calls and transfers may dial directly: user@host[:port], nothing else
SIP_URI = re.compile(
    r"sip:(?P<user>[A-Za-z0-9_.!~*'()&=+$,%-]{1,64})"
    r"@(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:]+\])(?::(?P<port>[0-9]{1,5}))?"
)
log = logging.getLogger(__name__)

PENDING = "pending:"  # a desk ring whose binding is being looked up (not a Call-ID)

END_REASONS = {"remote_bye": "remote_closed", "no_ack": "no_ack"}


class DeskPhones(Protocol):
    """Agents' SIP desk phones, rung along with their browser desk."""

    def ring(self, agent_id: str, username: str, call_id: str, caller: str | None) -> None: ...

    def stop_ringing(self, call_id: str) -> None: ...


class DialFailed(Exception):
    """A call we placed was not answered: the far end's status and reason."""

    def __init__(self, status: int, reason: str) -> None:
        # status 0: no SIP answer at all (the dial itself failed)
        super().__init__(f"{status} {reason}" if status else reason)
        self.status, self.reason = status, reason


@dataclass
class _PhoneCall:
    sip_call_id: str
    peer: SipPeer | None = None
    call_id: str | None = None  # the engine's call, once created
    answerer: SdpAnswerer | None = None
    gone: bool = False  # cancelled or hung up while we were still setting up
    agent: bool = False  # an agent's desk phone, not a caller


def attestation_of(header: str | None, caller: str | None) -> str | None:
    """The STIR/SHAKEN level (A, B, C) the carrier's ``Identity`` header gives the
    caller's number: only a fresh one, signed for that number (a PASSporT replayed from
    another call, or for another number, says nothing of this one). Its signature is
    not checked here: see engine/stirshaken.py."""
    if not header or not caller:
        return None
    found = parse_identity(header)
    if found is None or not fresh(found, datetime.now(UTC)):
        return None
    signed, calling = normalize_phone(found.orig), normalize_phone(caller)
    if signed is None or calling is None or signed.lstrip("+") != calling.lstrip("+"):
        return None
    return found.level


def _busy(exc: Overloaded) -> tuple[int, tuple[str, str], tuple[str, str]]:
    """503 Service Unavailable with Retry-After (RFC 3261 §20.33) and the reason."""
    return 503, ("Retry-After", str(exc.retry_after)), ("Warning", f'399 ccengine "{exc}"')


class SipFront:
    def __init__(
        self,
        settings: Settings,
        calls: CallManager,
        store: Store,
        metrics: Metrics,
        node: str = "",
    ) -> None:
        """``node``: this engine's id, for desk-phone bindings shared with the other
        engines through Redis (engine/sipbindings.py) when ``CCENGINE_REDIS_URL`` is set."""
        self.settings = settings
        self.calls = calls
        self.store = store
        self.metrics = metrics
        self.public_host = settings.sip_public_host or settings.sip_host
        users = {u: p.get_secret_value() for u, p in settings.sip_users.items()}
        admission = Admission(
            realm=settings.sip_realm,
            trunks=settings.sip_trunks,
            passwords=users.get,
            unavailable=self._unavailable,
        )
        throttle = AuthThrottle(
            per_address=settings.sip_auth_max_failures_per_address,
            per_user=settings.sip_auth_max_failures_per_user,
            lockout=settings.sip_auth_lockout,
        )
        self.endpoint = SipEndpoint(
            self.public_host, settings.sip_port, admission, throttle=throttle
        )
        refused_tcp = metrics.connections_refused
        limits = TcpLimits(
            message_timeout=settings.sip_tcp_message_timeout,
            idle_timeout=settings.sip_tcp_idle_timeout,
            per_address=settings.sip_tcp_max_connections_per_address,
            total=settings.sip_tcp_max_connections,
            fd_reserve=settings.fd_reserve,
            exempt=in_networks(settings.sip_trunks),  # a carrier may open several
            on_refused=lambda why: refused_tcp.labels("sip", why).inc(),
        )
        self.transport = SipTransport(self.endpoint, self._on_event, limits)
        self._phone: dict[str, _PhoneCall] = {}
        self._dialing: dict[str, asyncio.Future[bytes]] = {}
        # engine call id -> desk phone's Call-ID, or a PENDING token while its binding is
        # looked up in Redis
        self._desk_ringing: dict[str, str] = {}
        self._tokens = itertools.count()
        self.shared_bindings = (
            SharedBindings(settings.redis_url, settings.redis_prefix, node, self._binding)
            if settings.redis_url
            else None
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self.port: int | None = None
        self.registration: RegistrationChanged | None = None  # to the trunk, if we do
        self._trunk_peer: Peer | None = None
        self._trunk_domain = ""
        refused = metrics.rtp_refused
        self._refused = {why: refused.labels(why) for why in ("foreign", "stray")}

    async def start(self) -> int:
        port = await self.transport.start(self.settings.sip_host, self.settings.sip_port)
        self.endpoint.local_port = self.port = port
        log.info("SIP on %s:%d (UDP and TCP)", self.settings.sip_host, port)
        s = self.settings
        if s.sip_trunk:
            # resolved once here: a DNS lookup on every datagram would block the loop
            host, _, port_text = (
                s.sip_trunk.rpartition(":") if ":" in s.sip_trunk else (s.sip_trunk, "", "5060")
            )
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, int(port_text or 5060), type=socket.SOCK_DGRAM
            )
            address = infos[0][4]
            self._trunk_peer = Peer("UDP", str(address[0]), int(address[1]))
            self._trunk_domain = f"{host}:{port_text}" if port_text else host
            log.info("SIP trunk %s at %s:%d", s.sip_trunk, address[0], address[1])
        if s.sip_trunk and s.sip_trunk_register:
            if not (s.sip_trunk_username and s.sip_trunk_password):
                raise NotAllowed("registering to the trunk needs its username and password")
            trunk = self._trunk()
            self.endpoint.register_to(
                f"sip:{self._trunk_domain.split(':')[0]}",
                s.sip_trunk_username,
                trunk,
                self._now(),
                auth=(s.sip_trunk_username, s.sip_trunk_password.get_secret_value()),
                expires=s.sip_trunk_register_expires,
            )
            self.transport.flush()
        return port

    async def stop(self) -> None:
        await self.transport.stop()
        for task in list(self._tasks):
            task.cancel()
        if self.shared_bindings is not None:
            await self.shared_bindings.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _now(self) -> float:
        return time.monotonic()

    def _unavailable(self) -> int | None:
        """OPTIONS' answer: a Retry-After while draining (engine/drain.py), else None.
        Not while merely full: that comes and goes in seconds, and each INVITE says it."""
        drain = self.calls.drain
        return DRAIN_RETRY_AFTER if drain is not None and drain.draining else None

    def _rtp(self, offer: AudioOffer, peer: Peer, on_dtmf: Callable[[str], None]) -> RtpSession:
        """A call's RTP session, taking packets only from the SDP's address, the host
        the SIP came from (a phone behind NAT sends from there) and trusted networks."""
        return RtpSession(
            offer,
            on_dtmf,
            sources=[peer.host, *self.settings.sip_rtp_sources],
            on_refused=self._count_refused,
            on_lost=self.calls.frames_lost,
        )

    def _count_refused(self, why: Refusal) -> None:
        self._refused[why].inc()

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
            if pc.agent and pc.peer is not None:
                # the agent hung up the desk phone: the leg ends, the call decides the rest
                self._spawn(pc.peer.close())
            elif pc.call_id is not None:
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
            # an agent's desk phone's keys are not the caller's (their menu, their stream)
            if pc is not None and pc.call_id is not None and not pc.agent:
                self.calls.press_key(pc.call_id, ev.digit)
        elif isinstance(ev, AuthFailed):
            self.metrics.sip_auth_failures.labels(ev.reason).inc()
            if ev.reason == "replay":
                log.info("SIP digest answer replayed from %s for %r", ev.host, ev.user)
        elif isinstance(ev, AuthLockedOut):
            lock = ev.lockout
            self.metrics.sip_auth_lockouts.labels(lock.kind).inc()
            # %r: a user name is whatever the attacker sent, and must not forge log lines
            log.warning(
                "SIP brute force? %d wrong digest answers for %s %r within a minute "
                "(the last from %s): refused for %d s",
                lock.failures, lock.kind, lock.key, ev.host, lock.seconds,
            )  # fmt: skip
        elif isinstance(ev, Registered):
            log.info("SIP %s %s -> %s", "registered" if ev.expires else "unregistered",
                     ev.aor, ev.contact)  # fmt: skip
            if self.shared_bindings is not None:
                self.shared_bindings.changed(ev.aor, ev.contact)
        elif isinstance(ev, CallConfirmed):
            log.debug("SIP call %s confirmed", ev.call_id)
        elif isinstance(ev, RegistrationChanged):
            self.registration = ev
            if ev.state == "registered":
                log.info("registered to %s for %d s", ev.registrar, ev.expires)
            else:
                log.warning("registration to %s failed: %d; retrying in a minute",
                            ev.registrar, ev.status)  # fmt: skip
        elif isinstance(ev, OutboundRinging):
            log.info("SIP call %s ringing", ev.call_id)
        elif isinstance(ev, OutboundAnswered | OutboundFailed):
            fut = self._dialing.pop(ev.call_id, None)
            if fut is None or fut.done():
                if isinstance(ev, OutboundAnswered):
                    self._hangup(ev.call_id)  # answered after we gave up on it
                return
            if isinstance(ev, OutboundAnswered):
                fut.set_result(ev.sdp)
            else:
                fut.set_exception(DialFailed(ev.status, ev.reason))

    def _reject(self, sip_call_id: str, status: int, *headers: tuple[str, str]) -> None:
        self._phone.pop(sip_call_id, None)
        self.endpoint.reject(sip_call_id, status, self._now(), headers)
        self.transport.flush()

    async def _invite(self, ev: InviteReceived) -> None:
        req = ev.request
        number = sm.uri_user(req.uri) or ""
        direct = None  # an agent dialled by name: their desk phone's address of record
        if number not in self.settings.sip_numbers:
            direct = self.calls.agent_named(number)
            if direct is None or not await self._desk_phones(number):
                self._reject(ev.call_id, 404)
                return
            presence = self.calls.presence_of(direct)
            if presence != "available":
                # on a call (or about to be): busy; signed out or away: not reachable now
                busy = presence in ("ringing", "on_call", "wrap_up")
                self._reject(ev.call_id, 486 if busy else 480)
                return
        try:
            offer = parse_offer(req.body)
        except NoCommonCodec as exc:
            self._reject(ev.call_id, 488, ("Warning", f'304 ccengine "{exc}"'))
            return
        except SdpError as exc:
            self._reject(ev.call_id, 400, ("Warning", f'399 ccengine "{exc}"'))
            return
        # before ringing or taking an RTP port: a full node says so at once; the slot is
        # the call's until it is set up or refused
        try:
            reservation = self.calls.reserve()
        except Overloaded as exc:
            self._reject(ev.call_id, *_busy(exc))
            return
        with reservation:
            await self._answer_invite(ev, offer, direct)

    async def _answer_invite(
        self, ev: InviteReceived, offer: AudioOffer, direct: str | None
    ) -> None:
        req = ev.request
        self.endpoint.ring(ev.call_id, self._now())
        self.transport.flush()
        pc = self._phone.get(ev.call_id)
        if pc is None:
            return  # cancelled already
        rtp = self._rtp(offer, ev.peer, on_dtmf=lambda digit: self._dtmf(pc, digit))
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
        attestation = attestation_of(req.headers.get_first("identity"), caller)
        try:
            dialled = sm.uri_user(req.uri) or None  # the flow of this number answers
            call = await self.calls.create_phone_call(
                pc.peer, caller, codec=offer.codec, menu=direct is None, dialled=dialled,
                attestation=attestation,
            )  # fmt: skip
        except Overloaded as exc:
            pc.peer.remote_ended = True
            await pc.peer.close()
            self._reject(ev.call_id, *_busy(exc))
            return
        except SQLAlchemyError as exc:
            # the call could not be stored (a full disk): "not now", as the API says it,
            # so a carrier tries again or elsewhere instead of taking 500 as final
            log.error("could not store the phone call %s: %s", ev.call_id, exc)
            pc.peer.remote_ended = True
            await pc.peer.close()
            self._reject(ev.call_id, *_busy(Overloaded("storage unavailable", STORAGE_RETRY_AFTER)))
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
        if direct is not None:
            await self.calls.ring_agent(call, direct)

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

    # -- calls we place ----------------------------------------------------------------

    def _uri_host(self, uri: str) -> tuple[str, int]:
        """A ``sip:`` URI's host and port, if we may call it (``NotAllowed`` if not)."""
        m = SIP_URI.fullmatch(uri)
        if m is None:
            raise NotAllowed(f"not a SIP URI we can call: {uri}")
        host, port = m.group("host").strip("[]"), int(m.group("port") or 5060)
        if host.lower() not in {d.lower() for d in self.settings.sip_dial_domains}:
            raise NotAllowed(f"{host} is not in CCENGINE_SIP_DIAL_DOMAINS")
        return host, port

    async def _uri_peer(self, uri: str) -> Peer:
        host, port = self._uri_host(uri)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise DialFailed(404, f"cannot resolve {host}: {exc}") from None
        address = infos[0][4]
        return Peer("UDP", str(address[0]), int(address[1]))

    def _trunk(self) -> Peer:
        if self._trunk_peer is None:
            raise NotAllowed("no SIP trunk is configured (CCENGINE_SIP_TRUNK)")
        return self._trunk_peer

    async def _call_out(
        self,
        uri: str,
        peer: Peer,
        *,
        caller: str,
        auth: tuple[str, str] | None = None,
        ring_for: float | None = None,
        agent: bool = False,
        invited: Callable[[str], None] = lambda _sip_call_id: None,
        wanted: Callable[[], bool] = lambda: True,
    ) -> _PhoneCall:
        """INVITE ``uri`` at ``peer`` and wait for the answer: the answered call, or
        DialFailed (503 no RTP port, 408 nobody answered in ``ring_for`` s, 488 an
        answer we cannot use, or the far end's own refusal). ``invited`` learns the
        Call-ID before any answer can arrive, so the caller of this can cancel it;
        ``wanted`` is asked just before the INVITE goes (487 if no longer)."""
        rtp = self._rtp(NOT_YET, peer, on_dtmf=lambda digit: None)
        try:
            port = await rtp.open(self.settings.sip_host)
        except OSError as exc:
            raise DialFailed(503, f"no RTP port: {exc}") from None
        except asyncio.CancelledError:
            rtp.close()
            raise
        if not wanted():
            rtp.close()
            raise DialFailed(487, "no longer wanted")
        answerer = SdpAnswerer(self.public_host, port)
        sip_call_id = self.endpoint.invite(
            uri, peer, answerer.offer(), self._now(), caller=caller, auth=auth
        )
        invited(sip_call_id)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._dialing[sip_call_id] = fut
        self.transport.flush()
        try:
            sdp = await asyncio.wait_for(asyncio.shield(fut), ring_for)
        except TimeoutError:
            self._dialing.pop(sip_call_id, None)  # a late answer gets a BYE (_on_event)
            self.endpoint.cancel(sip_call_id, self._now())
            self.transport.flush()
            rtp.close()
            raise DialFailed(408, "no answer") from None
        except asyncio.CancelledError:
            # called off while it rang (a consult of a number cancelled, its call ended):
            # CANCEL, or BYE to an answer that came in the same moment; a later answer
            # gets its BYE in _on_event. No RTP port is left open.
            self._dialing.pop(sip_call_id, None)
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._hangup(sip_call_id)
            else:
                self.endpoint.cancel(sip_call_id, self._now())
                self.transport.flush()
            rtp.close()
            raise
        except DialFailed:
            rtp.close()
            raise
        try:
            answer = parse_offer(sdp)
        except SdpError as exc:
            self._hangup(sip_call_id)
            rtp.close()
            raise DialFailed(488, str(exc)) from None
        rtp.update(answer)
        pc = _PhoneCall(sip_call_id, answerer=answerer, agent=agent)
        pc.peer = SipPeer(rtp, hangup=lambda: self._hangup(sip_call_id))
        if not agent:  # an agent's keys are not the caller's menu choices
            rtp.on_dtmf = lambda digit: self._dtmf(pc, digit)
        self._phone[sip_call_id] = pc
        return pc

    async def dial(self, number: str, *, agent: bool = False, keys: bool = False) -> _PhoneCall:
        """Call ``number`` through the trunk, or a ``sip:`` URI directly (its host must be
        in CCENGINE_SIP_DIAL_DOMAINS); the answered call's peer, or DialFailed.
        ``agent``: the callee takes an agent's place (their keys are not menu choices);
        ``keys``: ``*`` and ``#`` may be dialled (engine/dialpolicy.py)."""
        s = self.settings
        self.may_dial(number, keys=keys)  # the callers ask first too: this is the backstop
        if number.startswith("sip:"):
            return await self._call_out(
                number, await self._uri_peer(number), caller=s.sip_caller_id,
                ring_for=s.callback_ring_timeout, agent=agent,
            )  # fmt: skip
        auth = (
            (s.sip_trunk_username, s.sip_trunk_password.get_secret_value())
            if s.sip_trunk_username and s.sip_trunk_password
            else None
        )
        return await self._call_out(
            f"sip:{number}@{self._trunk_domain}",  # the carrier's name, not its address
            self._trunk(),
            caller=s.sip_caller_id,
            auth=auth,
            ring_for=s.callback_ring_timeout,
            agent=agent,
        )

    async def place_callback(self, user: UserRow, callback_id: str) -> Call:
        """An agent calls back a customer who asked for it; the call rings that agent."""
        row = await self.store.get_callback(callback_id)
        if row is None or row.status != "pending":
            raise NotAllowed(f"no pending callback {callback_id}")
        # as the caller wrote it, "+1 (555) 010-2030": dialled without the separators;
        # never with keys: with no number given it is the SIP From's user part, which
        # the caller chose ("*72+1900…" would be a feature code sent to the trunk)
        number = phone_number(row.contact or row.caller or "")
        if number is None:
            raise NotAllowed(f"callback {callback_id} has no phone number to call")
        return await self._dial_into(
            number, lambda peer, codec: self.calls.connect_callback(user, row, peer, codec)
        )

    async def _dial_into(
        self,
        number: str,
        connect: Callable[[SipPeer, str], Awaitable[Call]],
        *,
        agent: bool = False,
        keys: bool = False,
    ) -> Call:
        """Dial, then hand the answered party to the call manager (``connect``, given the
        peer and its codec); if that fails the party is hung up, not left on the line.
        A new call (not an agent's leg) is refused before dialling when the node is full."""
        with contextlib.nullcontext() if agent else self.calls.reserve():
            pc = await self.dial(number, agent=agent, keys=keys)
            assert pc.peer is not None
            try:
                call = await connect(pc.peer, pc.peer.rtp.offer.codec)
            except Exception:
                await pc.peer.close()
                raise
        if not agent:
            pc.call_id = call.id  # the party is the call's caller: its BYE ends the call
        return call

    async def place_call(
        self, number: str, *, by: str, prompt: str | None = None, queue: str | None = None,
        agent: str | None = None,
    ) -> Call:  # fmt: skip
        """Call ``number`` through the trunk for a program or a person; DialFailed if it
        is not answered. The dial pad's numbers may carry ``*`` and ``#`` (a PBX menu, a
        carrier's code); CCENGINE_SIP_DIAL_PREFIXES still applies (``dial`` checks it,
        after a node that is full or draining has said so: that answer is the one to
        retry elsewhere)."""
        if queue is not None and queue not in self.calls.acd.queues:
            raise NotAllowed(f"no queue {queue}")
        agent_id = None
        if agent is not None:
            agent_id = self.calls.agent_named(agent)
            if agent_id is None:
                raise NotAllowed(f"agent {agent} is not signed in")
        return await self._dial_into(
            number,
            lambda peer, codec: self.calls.connect_outbound(
                peer, codec, number, prompt=prompt, queue=queue, agent_id=agent_id, by=by
            ),
            keys=True,
        )

    async def transfer_out(
        self, actor: Actor, call_id: str, number: str, note: str | None = None
    ) -> None:
        """Blind transfer to a number through the trunk: it rings while the agent stays
        on the line; once answered it takes the agent's place. DialFailed otherwise (the
        call stays as it was)."""
        self.may_dial(number)  # before anything: the dial policy
        call = self.calls.controlled_call(actor, call_id)  # before ringing anyone
        if call.channel == "chat":
            raise NotAllowed("a chat cannot be transferred to a phone number")
        await self._dial_into(
            number,
            lambda peer, codec: self.calls.transfer_out(actor, call_id, peer, codec, number, note),
            agent=True,
        )

    def may_dial(self, number: str, *, keys: bool = False) -> None:
        """``NotAllowed`` (409) if ``number`` cannot be dialled from this engine (no
        trunk; a ``sip:`` URI outside CCENGINE_SIP_DIAL_DOMAINS; a number the dial policy
        refuses, engine/dialpolicy.py: not under CCENGINE_SIP_DIAL_PREFIXES, or with
        ``*``/``#`` unless ``keys``): asked before anyone is put on hold for it."""
        if number.startswith("sip:"):
            self._uri_host(number)
        else:
            check_number(number, self.settings.sip_dial_prefixes, keys=keys)
            self._trunk()

    async def dial_party(self, number: str) -> tuple[CallPeer, str]:
        """Dial someone outside to join a call as an agent would (engine/consulting.py):
        their answered peer and its codec, or DialFailed. Cancelling this while it rings
        sends a CANCEL."""
        pc = await self.dial(number, agent=True)
        assert pc.peer is not None
        return pc.peer, pc.peer.rtp.offer.codec

    # -- agents' desk phones --------------------------------------------------------------

    def _binding(self, aor: str, contact: str) -> tuple[Peer, float] | None:
        """The registrar's binding of ``contact`` now: where it registered from, and
        the seconds it has left (what engine/sipbindings.py shares)."""
        now = self._now()
        for b in self.endpoint.lookup(aor, now):
            if b.contact == contact:
                return b.peer, b.expires_at - now
        return None

    async def _desk_phones(self, username: str) -> list[Binding]:
        """Where ``username``'s desk phones are: registered here, else (with Redis)
        with another engine, which this one rings directly or through the edge."""
        now = self._now()
        here = self.endpoint.lookup(username, now)
        if here or self.shared_bindings is None:
            return here
        elsewhere = await self.shared_bindings.lookup(username)
        now, wall = self._now(), time.time()
        return [Binding(b.contact, b.peer, now + (b.expires - wall)) for b in elsewhere]

    def ring(self, agent_id: str, username: str, call_id: str, caller: str | None) -> None:
        """An offer rings the agent: their registered desk phone rings too, wherever
        it registered."""
        if call_id in self._desk_ringing:
            return
        # held until the INVITE is sent: a stop_ringing meanwhile (the offer withdrawn
        # while the binding was looked up or an RTP port opened) takes the token away,
        # and then nothing rings
        token = self._desk_ringing[call_id] = f"{PENDING}{next(self._tokens)}"
        self._spawn(self._ring(agent_id, username, call_id, caller, token))

    async def _ring(
        self, agent_id: str, username: str, call_id: str, caller: str | None, token: str
    ) -> None:
        bindings = await self._desk_phones(username)
        if self._desk_ringing.get(call_id) != token:
            return  # withdrawn while we looked
        if not bindings:
            del self._desk_ringing[call_id]
            return
        await self._ring_desk(agent_id, bindings[-1], call_id, caller, token)

    def stop_ringing(self, call_id: str) -> None:
        sip_call_id = self._desk_ringing.pop(call_id, None)
        if sip_call_id is not None and not sip_call_id.startswith(PENDING):
            self.endpoint.hangup(sip_call_id, self._now())  # CANCEL while it rings
            self.transport.flush()

    async def _ring_desk(
        self, agent_id: str, binding: Binding, call_id: str, caller: str | None, token: str
    ) -> None:
        shown = caller if caller and all(c.isalnum() or c in "+-_." for c in caller) else None
        placed: list[str] = []

        def invited(sip_call_id: str) -> None:
            placed.append(sip_call_id)
            self._desk_ringing[call_id] = sip_call_id

        try:
            # no timeout of our own: the offer's timeout cancels it (stop_ringing)
            pc = await self._call_out(
                binding.contact, binding.peer, caller=shown or self.settings.sip_caller_id,
                agent=True, invited=invited,
                wanted=lambda: self._desk_ringing.get(call_id) == token,
            )  # fmt: skip
        except DialFailed as exc:
            still_ours = bool(placed) and self._desk_ringing.get(call_id) == placed[0]
            if still_ours or self._desk_ringing.get(call_id) == token:
                del self._desk_ringing[call_id]  # not sent (no RTP port): free to ring again
            log.info("desk phone %s for call %s: %s", binding.contact, call_id, exc)
            if still_ours and exc.status in (480, 486, 600, 603):
                with contextlib.suppress(AcdError, UnknownCall):
                    await self.calls.decline(agent_id, call_id)  # the agent pressed reject
            return
        if self._desk_ringing.get(call_id) == placed[0]:  # not a later ring's entry
            del self._desk_ringing[call_id]
        assert pc.peer is not None
        try:
            await self.calls.accept_peer(agent_id, call_id, pc.peer, "sip", pc.peer.rtp.offer.codec)
        except (AcdError, NotAllowed, UnknownCall, RoutingUnavailable) as exc:
            # answered too late (the offer moved on, or the consult it rang for was
            # cancelled meanwhile), the call not waiting for an agent, or the shared
            # routing cannot take the answer now: the phone is hung up, the offer goes on
            # as it would (a task of its own: raised here, it would be lost, unread)
            log.info("desk phone answer for call %s not taken: %s", call_id, exc)
            await pc.peer.close()
            return
        pc.call_id = call_id
