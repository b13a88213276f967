"""The call manager: runs calls from the caller's offer to the agent's wrap-up.

Theory of operation
-------------------
Calls move through the state table in ``engine.callstate``. Each leg (the caller,
then an agent, then perhaps another agent after a transfer) runs a media
``LegPipeline``; its events enter one ordered per-call queue whose consumer
runs each through the analysis stages (engine/analysis.py), which persist finals
and emotion samples *before* publishing them, so anything a client has seen is
already on disk, and a crash loses at most the utterance in flight. While
storage fails (a full disk) those writes, and the call's state changes, wait in
a spool and are written once it is back. Times in a call's transcript are
seconds since the caller's first audio, for every speaker, so a two-sided
transcript sorts into the order it was said.

The bridge is a function of the call's state, read per audio frame: while
``bridged`` each leg's decoded audio feeds the other leg's outbound track; on
hold, or for a muted agent, it feeds nothing (the caller hears hold audio). Supervisors
on the call hear, and are heard, as their mode says (engine/monitoring.py): each voice
is one more source in a party's outgoing mix (media/mixer.py).

What a call needs decided is decided elsewhere, as generators of effects that this
manager applies in order: the analysis stages (``_apply``), routing through the ACD
(engine/routing.py, ``_route``), and the desk's controls and callbacks
(engine/controls.py, engine/callbacks.py, ``_desk``). What stays here is the live
side: peers, pipelines, tasks, the voice, the spool, and teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import itertools
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, assert_never

import numpy as np
from aiortc import RTCIceServer

from engine.acd import Acd, AcdError, QueueConfig, load_queues
from engine.analysis import (
    Act,
    Analysis,
    Effect,
    Emit,
    HangUp,
    Route,
    Say,
    Write,
    call_stages,
    clock,
    secret,
)
from engine.apptoken import AppIdentity
from engine.assist.redact import Redactor
from engine.bot.agent import BrainSettings, VirtualAgent
from engine.bot.dialog import Known
from engine.bot.dialog import State as DialogState
from engine.bot.events import BotInput
from engine.bot.flows import Flow
from engine.bot.flowset import FlowSet
from engine.callbacks import Callbacks, ThankAndEnd, thank_and_end
from engine.callbacks import Effect as DeskEffect
from engine.callstate import (
    PHASES,
    Forbidden,
    NotAllowed,
    Overloaded,
    SilenceCheck,
    Throttled,
    UnknownCall,
    common_prompts,
)
from engine.callstate import check_voice as _voice_only
from engine.conference import Party, hears, speaks
from engine.config import IceServer, Settings
from engine.consulting import Consults
from engine.content import QUEUE, Content
from engine.controls import (
    BridgeVideo,
    CloseLeg,
    Controls,
    HoldMusic,
    Hush,
    RunLeg,
    Save,
    SaveCall,
    SupervisorsLeave,
)
from engine.customers import Customer, Customers
from engine.desks import DeskStreams
from engine.dialpolicy import check_number, phone_number
from engine.escalation import CallEscalation
from engine.events import (
    CallEnded,
    CallStarted,
    CallStateChanged,
    CallVerified,
    CallWrappedUp,
    EventBase,
    EventBus,
    OfferWithdrawn,
    RecordingChanged,
    as_utc,
    utcnow,
)
from engine.livecall import Call, Leg
from engine.metrics import Metrics
from engine.monitoring import Monitors, to_supervisors
from engine.offers import PendingOffers
from engine.prompts import VoicePrompts
from engine.recording import CallRecording
from engine.routing import (
    TIMED_OUT,
    AgentStatus,
    Announce,
    Record,
    Replicate,
    Ring,
    Routing,
    StopRinging,
    Transition,
    UpdateCall,
    WrapUpTimedOut,
    escalated,
)
from engine.routing import Effect as RoutingEffect
from engine.routingcopy import (
    RoutingCopy,
    SharedRouting,
    queue_rows,
)
from engine.routinglog import RoutingUnavailable
from engine.sharedcalls import SharedCalls
from engine.spool import WriteSpool
from engine.store.db import Store
from engine.store.models import CallbackRow, CallRow, LegRow, NoteRow, UserRow
from engine.users import Actor
from media import events as me
from media import malloc
from media.asr import ModelChoice
from media.asr.registry import Recognizers
from media.audio import PcmFrame, downmix_int16
from media.dtmf import GAP_MS, TONE_MS
from media.holdmusic import hold_loop
from media.loss import FRAME_SECONDS, LossReason
from media.peer import CallPeer
from media.pipeline import LegPipeline
from media.vad import VadSettings
from media.wavtrack import to_send_rate
from media.webrtc import WebRtcLeg, pump_audio, queued_frames

if TYPE_CHECKING:
    from engine.capacity import Capacity
    from engine.drain import NodeDrain
    from engine.routinglog import RoutingLog
    from engine.sip import DeskPhones

log = logging.getLogger(__name__)

# the slot a ``Reservation`` holds for the call being rung in this task
_RESERVED: contextvars.ContextVar[str | None] = contextvars.ContextVar("reserved", default=None)


class Reservation:
    """A call's slot, held from admission while it rings (``CallManager.reserve``)."""

    def __init__(self, slots: set[str]) -> None:
        self._slots = slots
        self.slot = f"ringing-{uuid.uuid4()}"
        slots.add(self.slot)
        self._token: contextvars.Token[str | None] | None = None

    def __enter__(self) -> Reservation:
        self._token = _RESERVED.set(self.slot)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._token is not None:
            _RESERVED.reset(self._token)
        self._slots.discard(self.slot)  # the call took it over, or it never came


T = TypeVar("T")

TEARDOWN_TIMEOUT = 10.0  # a stuck recognizer or disk must not keep a call open
STREAM_TELL_WITHIN = 15.0  # s to tell routing of an agent's stream (the shared log's wait)
# Partials beyond this backlog are dropped (finals and emotions never are): a stalled
# disk must not grow memory without bound.
MAX_EVENT_BACKLOG = 1000
HISTORY_LIMIT = 10
# chats: lines a second (and at once), lines in all, seconds for a first line, and the
# Retry-After of a refused one
CHAT_RATE, CHAT_BURST = 1.0, 5.0
MAX_CHAT_LINES = 500
CHAT_FIRST_LINE = 300.0
CHAT_RETRY_AFTER = 60
# 8 kHz G.711, the line VadSettings.for_phone was tuned on (G.722 is 16 kHz wideband)
PHONE_LINE_CODECS = frozenset({"PCMU", "PCMA"})


def aiortc_ice_servers(servers: list[IceServer]) -> list[RTCIceServer]:
    """The configured STUN/TURN servers for our own peer connections (empty: none)."""
    return [
        RTCIceServer(
            urls=s.urls,
            username=s.username,
            credential=s.credential.get_secret_value() if s.credential else None,
        )
        for s in servers
    ]


class CallManager:
    # rings agents' SIP desk phones along with their browser desk (engine/sip.py)
    desk_phones: DeskPhones | None = None
    # admission by measured load (engine/app.py sets it); None: the call limit alone
    capacity: Capacity | None = None
    # the engine process that owns this manager's calls (engine/recovery.py)
    engine_id: str | None = None
    # draining (engine/drain.py, set by engine/app.py): no new calls once it starts
    drain: NodeDrain | None = None
    # several engines (CCENGINE_REDIS_URL): routing decided in the shared log, which
    # engine/app.py starts (engine/routinglog.py); None: by this engine alone
    routing_log: RoutingLog | None = None

    def __init__(self, settings: Settings, store: Store, bus: EventBus, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.metrics = metrics
        # recognition runs in worker processes (preload() shapes the pool for the models
        # it loads); this thread pool does the prosody maths (numpy releases the GIL)
        self.recognizers = Recognizers(
            settings.model_dirs,
            settings.asr_backends,
            {settings.default_language, *settings.preload_languages},
            workers=settings.asr_workers,
            processes=settings.asr_processes,
        )
        threads = settings.asr_threads or 2 * (os.cpu_count() or 2)
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="prosody")
        self.prompts = VoicePrompts(
            (settings.model_dirs or ["models"])[0], int8=settings.prompt_voice_int8
        )
        self.calls: dict[str, Call] = {}
        # calls admitted and still being set up, an await or two from ``calls``: they
        # hold their slot from admission on, so offers arriving meanwhile see it
        self._setting_up: set[str] = set()
        self._queue_changes = asyncio.Lock()  # see load_queue_changes
        # in-app offers waiting for their first audio, capped (engine/offers.py)
        self._chats: dict[str, str] = {}  # live chats -> the address each came from
        self.offers = PendingOffers(
            settings.max_pending_offers_per_address,
            settings.max_pending_offers,
            settings.media_timeout,
        )
        # what a call must not lose while storage fails: kept and written when it is back
        self.spool = WriteSpool()
        self.content = Content(store, settings.escalation_rules, settings.knowledge_base)
        self.redactor = Redactor(settings.redact_patterns)
        self.analysis = Analysis(
            call_stages(
                redactor=self.redactor,
                menu=settings.ivr_keys,
                products=settings.products,
                knowledge=lambda: self.content.knowledge,
                metrics=metrics,
            )
        )
        queues, timeout = load_queues(settings.queues), settings.offer_timeout
        gone = settings.agent_disconnect_after
        # several engines: every engine keeps a copy of one routing (engine/routingcopy.py)
        wrap = settings.wrapup_seconds
        self.routing_copy = RoutingCopy(queues, timeout, gone, wrap) if settings.redis_url else None
        self.routing: Routing = (
            SharedRouting(self.routing_copy)
            if self.routing_copy is not None
            else Routing(queues, timeout, self.calls, disconnect_after=gone, wrap_up_limit=wrap)
        )
        # the agents' desk streams open on this engine (engine/liveness.py), told to
        # routing in the background whenever their count changes (engine/desks.py)
        self.desks = DeskStreams(self._tell_streams)
        # several engines: this engine's part in the shared routing (set by the app)
        self.shared: SharedCalls | None = None
        self.controls = Controls(self.routing, self.calls, self.redactor)
        self.callbacks = Callbacks(self.routing)
        self.consults = Consults(self)  # consults and conferences (engine/consulting.py)
        # per call, until when the keys sent so far take to play (send_dtmf's bound)
        self._keys_until: dict[str, float] = {}
        self.ice_servers = aiortc_ice_servers(settings.ice_servers)
        # supervisors listening, whispering, barging in (engine/monitoring.py)
        self.monitors = Monitors(
            store,
            bus,
            self._keep,
            self.calls,
            ice_servers=self.ice_servers,
            media_timeout=settings.media_timeout,
        )
        # who callers are, and the checks that prove it (engine/customers.py)
        self.customers = Customers.from_settings(store, settings)
        # the virtual agent: a flow file with a mistake stops the engine here, saying
        # where (engine/bot/flows.py), rather than answer callers with part of its flows;
        # flows changed through the API reach it for the calls that start afterwards
        self.bot: VirtualAgent | None = None
        self.flows = FlowSet(store, settings.bot_flows or None, self._flows_changed)
        if self.flows.on:
            secret = settings.bot_action_secret
            self.bot = VirtualAgent(
                self.flows.flows,
                metrics,
                secret.get_secret_value() if secret is not None else None,
                self.customers,
                brain(settings),
            )
            log.info("virtual agent: %d flows", len(self.bot.flows))
        if settings.knowledge_base:
            log.info("knowledge base: %d articles", len(self.content.knowledge.articles))

    def _flows_changed(self, flows: list[Flow]) -> None:
        """A new set of flows (engine/bot/flowset.py): new calls get it, and the prompts
        it says that the voice has not made yet are made in the background."""
        if self.bot is None:
            return
        before = set(self.bot.prompts())
        self.bot.use(flows)
        self.prompts.warm(p for p in self.bot.prompts() if p not in before)
        log.info("virtual agent: %d flows", len(flows))

    # -- models -----------------------------------------------------------------

    def model_choice(self, language: str, *, quiet: bool = False) -> ModelChoice:
        """The recognizer for ``language`` (``media.asr.registry``)."""
        return self.recognizers.choice(language, quiet=quiet)

    async def preload(self, languages: list[str]) -> None:
        await self.prompts.start(common_prompts() + (self.bot.prompts() if self.bot else []))
        await self.recognizers.start(languages)

    def recognition_backlog(self) -> float:
        """How far behind the most delayed caller's analysis is, in seconds of audio: the
        most any one leg has waiting (decoded and not yet read for analysis, and speech
        in its own queue for its recognizer: a leg sends one request at a time), plus the
        most any one recognition lane has been sent and not yet answered.

        Not the sum over legs: that grew with the number of calls however healthy the
        node (16 calls with 0.1 s each in flight read 1.6 s), so a big node would have
        been refused calls for being big."""
        worst_leg = 0.0
        for call in self.calls.values():
            for leg in call.legs:
                waiting = leg.pipeline.backlog_seconds if leg.pipeline is not None else 0.0
                track = leg.peer.audio_track if leg.peer is not None else None
                if track is not None and track.done() and not track.cancelled():
                    if track.exception() is None:
                        waiting += queued_frames(track.result()) * FRAME_SECONDS
                worst_leg = max(worst_leg, waiting)
        return worst_leg + self.recognizers.pool.stats().worst_lane_seconds

    @property
    def acd(self) -> Acd:
        """The ACD, to read its queues, line and agents (engine/routing.py drives it)."""
        return self.routing.acd

    async def load_queue_changes(self) -> None:
        """Queues changed through the API win over the queues file; also when another
        engine changed them (engine/changes.py): one at a time with a change made here,
        whose save an older read would otherwise undo."""
        async with self._queue_changes:
            rows = await self.store.overrides(QUEUE)
            if self.routing_log is not None:  # every copy takes them, in the log's order
                await self.routing_log.submit({"op": "queues", "rows": queue_rows(rows)})
            else:
                self.routing.load_overrides(rows)

    async def set_queue(self, user: Actor, config: QueueConfig) -> None:
        self._supervisor(user)
        async with self._queue_changes:
            if self.routing_log is not None:
                await self.routing_log.submit({"op": "set_queue", "config": config.model_dump()})
            else:
                self.routing.set_queue(config)
            await self.store.save_override(
                QUEUE, config.name, config.model_dump(), user.username, utcnow()
            )

    async def remove_queue(self, user: Actor, name: str) -> None:
        self._supervisor(user)
        async with self._queue_changes:
            if self.routing_log is not None:
                await self.routing_log.submit({"op": "remove_queue", "name": name})
            else:
                self.routing.remove_queue(name)
            await self.store.save_override(QUEUE, name, None, user.username, utcnow())

    @staticmethod
    def _supervisor(user: Actor) -> None:
        if user.role not in ("supervisor", "admin"):
            raise Forbidden("only supervisors and admins change queues")

    # -- lifecycle --------------------------------------------------------------

    def calls_in_progress(self) -> int:
        """What the call limit counts: calls running, and admitted ones being set up.
        Chats have caps of their own (``_chat_refusal``): they carry no media."""
        return len(self.calls) - len(self._chats) + len(self._setting_up)

    def admit(self) -> None:
        """Refuse a new call now, or not: measured load (engine/capacity.py, set by
        engine/app.py) and the call limit. ``Overloaded``, counted, carries the reason
        and a Retry-After. The SIP front asks before it rings or dials. A draining node
        refuses first, whatever its load (engine/drain.py)."""
        if self.drain is not None and self.drain.draining:
            self.metrics.rejected.labels("draining").inc()
            self.drain.admit()
        if self.capacity is not None:
            self.capacity.admit(time.monotonic())
        elif (calls := self.calls_in_progress()) >= self.settings.max_concurrent_calls:
            self.metrics.rejected.labels("limit").inc()
            raise Overloaded(f"{calls} calls: the configured limit", retry_after=30)

    def reserve(self) -> Reservation:
        """Admit a new call now and hold its slot while it rings (a phone ringing us, a
        number we dial): ``Overloaded`` at once if not. The call made inside ``with``
        the reservation takes the slot over without asking again: a callee who answered
        after a drain began (or the node filled up) was hung up at once, and the drain
        had not counted the ringing call, so the node could exit under it."""
        self.admit()
        return Reservation(self._setting_up)

    def _chat_refusal(self, address: str) -> Exception | None:
        """Why one more chat from ``address`` must be refused now, or None. A chat costs
        no media, but it lives as long as someone writes in it: found in review, 64
        anonymous chats took every call slot and no phone call got in. So chats take
        none; they are capped apart, per address and in all."""
        s = self.settings
        if self.drain is not None and self.drain.draining:
            return Overloaded("this engine is draining", retry_after=30)
        mine = sum(1 for a in self._chats.values() if a == address)
        if mine >= s.max_chats_per_address:
            return Throttled(f"{mine} chats from your address are open", CHAT_RETRY_AFTER)
        if len(self._chats) >= s.max_chats:
            return Overloaded(f"{len(self._chats)} chats are open", CHAT_RETRY_AFTER)
        return None

    def _new_call(
        self, channel: str, language: str | None, caller: str | None, *, admit: bool = True
    ) -> Call:
        """Admit a call and take its slot, with no await between the two (20 offers at
        once against a limit of 4 all got in when the slot was taken only once the call
        was stored). The caller of this must release it: ``_setting_up.discard``. Inside
        a ``reserve``'s ``with`` its slot is taken over instead."""
        slot = _RESERVED.get()
        if slot is not None and slot in self._setting_up:
            self._setting_up.discard(slot)
        elif admit:
            self.admit()
        language = (language or self.settings.default_language).lower()
        call = Call(
            str(uuid.uuid4()),
            channel,
            language,
            self.model_choice(language),
            caller,
            created_at=utcnow(),
        )
        call.escalation = CallEscalation(self.content.rules)
        self._setting_up.add(call.id)
        return call

    async def create_webrtc_call(
        self,
        sdp: str,
        language: str | None,
        caller: str | None,
        address: str = "",
        *,
        bot: bool = True,
        app_user: AppIdentity | None = None,
    ) -> tuple[Call, str]:
        """``address``: where the offer came from, for the caps on offers that have not
        sent audio yet (engine/offers.py). ``bot``: the virtual agent answers (not for a
        call link: a person is waiting for the caller). ``app_user``: who the business's
        app vouched for (its signed customer token, checked by the API)."""
        if (refused := self.offers.refusal(address)) is not None:
            self.metrics.rejected.labels(refused[0]).inc()
            raise refused[1]
        call = self._new_call("webrtc", language, caller)
        self.offers.add(call.id, address)
        try:
            known = await self._identify(call, app_user)
            if bot and self.bot is not None:
                self.bot.attach(call, known=known)
            leg = Leg(str(uuid.uuid4()), "caller", "webrtc")
            peer = leg.peer = WebRtcLeg(
                on_ended=lambda reason: self.end_call(call.id, reason),
                ice_servers=self.ice_servers,
            )
            try:
                answer, _summary = await peer.answer(sdp)
                await self._start_call(call, leg, codec=None)
            except BaseException:
                await peer.close()
                raise
        except BaseException:
            self.offers.done(call.id)
            raise
        finally:
            self._setting_up.discard(call.id)
        return call, answer

    async def create_chat(
        self,
        language: str | None,
        caller: str | None,
        address: str = "",
        *,
        app_user: AppIdentity | None = None,
    ) -> Call:
        """A text chat from the caller page: a call of channel ``chat`` whose caller
        and agent lines are typed, not spoken. It runs through the same stages (the
        virtual agent, redaction, facts, escalation rules), queues and agents; no media,
        no recognizer. It ends when either side hangs up, after ``chat_idle_minutes``
        without a line, or ``CHAT_FIRST_LINE`` seconds if its caller never writes."""
        if (refused := self._chat_refusal(address)) is not None:
            self.metrics.rejected.labels("chats").inc()
            raise refused
        call = self._new_call("chat", language, caller, admit=False)
        self._chats[call.id] = address
        try:
            known = await self._identify(call, app_user)
            if self.bot is not None:
                self.bot.attach(call, known=known)
            await self._start_call(call, Leg(str(uuid.uuid4()), "caller", "chat"), codec=None)
        except BaseException:
            self._chats.pop(call.id, None)
            raise
        finally:
            self._setting_up.discard(call.id)
        call.media_t0 = time.monotonic()  # the chat's clock starts with it
        call.chat_budget = CHAT_BURST
        await self._transition(call, "media")  # a chat is live at once: the agent greets
        call.tasks.append(asyncio.create_task(self._chat_idle(call), name=f"idle-{call.id}"))
        return call

    def chat_message(self, call_id: str, user_id: str | None, text: str) -> None:
        """A line typed into a chat, by its caller (``user_id`` None) or by the agent
        on it; handled in order with the chat's other events, like a spoken final."""
        call = self.get(call_id)
        if call.channel != "chat" or call.ended.is_set():
            raise NotAllowed(f"call {call_id} is not a live chat")
        if user_id is None:
            leg: Leg | None = call.caller_leg()
        else:
            leg = next(
                (x for x in call.legs if x.role == "agent" and x.user_id == user_id and not x.left),
                None,
            )
            if leg is None or call.state != "bridged":
                raise NotAllowed(f"chat {call_id} is not with you")
        assert leg is not None
        text = " ".join(text.split())
        if not text:
            raise NotAllowed("an empty message")
        if call.chat_lines >= MAX_CHAT_LINES:
            raise NotAllowed(f"a chat holds at most {MAX_CHAT_LINES} lines")
        # a line a second, a few at once: each runs every stage, and a flood must not
        # (found in review: 60 lines of 300 order numbers took 7 s, and growing)
        now = time.monotonic()
        budget = min(CHAT_BURST, call.chat_budget + (now - call.chat_seen) * CHAT_RATE)
        if budget < 1:
            raise Throttled("more than a line a second in this chat", 1)
        call.chat_budget, call.chat_seen = budget - 1, now
        at = round(clock(call), 3)
        index = call.chat_lines = call.chat_lines + 1
        # (a typed line is "sure" of its end; no recognizer timed it)
        call.events.put_nowait(
            me.TranscriptFinal(leg.id, index, text, at, at, [], 0.0, False, "sure")
        )

    async def _chat_idle(self, call: Call) -> None:
        """A chat nobody writes in ends: its caller closed the page without a word."""
        idle = 60.0 * self.settings.chat_idle_minutes
        call.chat_seen = time.monotonic()
        while not call.ended.is_set():
            # a caller who never writes holds it a short while only
            wait = idle if call.chat_lines else min(idle, CHAT_FIRST_LINE)
            left = call.chat_seen + wait - time.monotonic()
            if left <= 0:
                await self.end_call(call.id, "chat_idle")
                return
            await asyncio.sleep(min(left, 30.0))

    async def upgrade_chat(self, chat_id: str, call: Call) -> None:
        """The chat's caller rang in by voice or video (``call``): the conversation goes
        on there. What they said and gave, and who they are, go with the call; the
        agent who had the chat gets the call (or its place in line, or the virtual
        agent's dialog where it was); the chat ends, "upgraded"."""
        chat = self.get(chat_id)
        if chat.channel != "chat" or chat.ended.is_set():
            raise NotAllowed(f"call {chat_id} is not a live chat")
        call.upgraded_from = chat.id
        call.caller_said = list(chat.caller_said)
        call.facts = chat.facts
        call.summary = chat.summary  # the desk's "so far" before the caller says a word
        call.intent = call.intent or chat.intent
        if call.customer_id is None:
            call.customer_id, call.verified_by = chat.customer_id, chat.verified_by
        values = {"upgraded_from": chat.id, "customer_id": call.customer_id,
                  "verified_by": call.verified_by, "intent": call.intent,
                  "summary": call.summary,
                  "facts": [dataclasses.asdict(f) for f in call.facts.facts]}  # fmt: skip
        await self._keep(f"call {call.id} upgraded", self.store.update_call, call.id, **values)
        if chat.state in ("bridged", "held") and chat.agent_id is not None:
            agent, queue = chat.agent_id, None
        elif chat.state == "queued":
            agent, queue = None, chat.queue_name
        else:  # with the virtual agent: it carries on where it was, by voice
            agent = queue = None
            # not while it waits for an action or a check: the chat's task that would
            # answer it ends with the chat (found in review: the call's agent hung)
            waiting = chat.bot is not None and chat.bot.state == DialogState.WAITING
            if chat.bot is not None and call.bot is not None and not waiting:
                call.bot, chat.bot = chat.bot, None
        await self.end_call(chat.id, "upgraded")
        if agent is not None or queue is not None:
            await self.route_invited(
                call, queue=queue, agent_id=agent, reason="chat upgraded to a call"
            )

    async def accept_chat(self, user: UserRow, call_id: str) -> None:
        """The ringing agent takes a chat: no media, their lines are typed."""
        call = self.get(call_id)
        if call.channel != "chat":
            raise NotAllowed(f"call {call_id} is not a chat: answer it with your softphone")
        self.routing.check_ringing(user.id, call_id)
        await self._bridge_agent(call, Leg(str(uuid.uuid4()), "agent", "chat", user_id=user.id))

    async def route_invited(
        self, call: Call, *, queue: str | None, agent_id: str | None, reason: str
    ) -> None:
        """A caller who came through a call link goes straight to its agent or queue."""
        call.bot = None  # a person is waiting for them: no virtual agent
        await self._escalated(call, reason)
        await self._route(self.routing.requested(call, queue=queue, agent=agent_id))

    async def create_phone_call(
        self,
        peer: CallPeer,
        caller: str | None,
        codec: str,
        language: str | None = None,
        *,
        menu: bool = True,
        dialled: str | None = None,
        attestation: str | None = None,
    ) -> Call:
        """A phone caller whose SIP dialog and RTP session are set up (engine/sip.py):
        the same pipeline, queues and agents as an in-app caller, plus the virtual agent
        that answers ``dialled`` or, without one, the key menu (``menu``: the caller
        dialled no person or queue). ``attestation``: the carrier's STIR/SHAKEN level
        for the caller's number, if it signed one."""
        call = self._new_call("sip", language, caller)
        call.attestation = attestation
        try:
            known = await self._identify(call, None)
            if menu and self.bot is not None and self.bot.attach(call, dialled, known):
                menu = False  # the virtual agent answers instead of the key menu
            leg = Leg(str(uuid.uuid4()), "caller", "sip", codec=codec)
            leg.peer = peer
            await self._start_call(call, leg, codec=codec)
        finally:
            self._setting_up.discard(call.id)
        if menu and self.settings.ivr_prompt:
            call.tasks.append(asyncio.create_task(self._menu(call)))
        return call

    async def _menu(self, call: Call) -> None:
        with contextlib.suppress(Exception):
            # before the caller's first packet the call is still "connecting"
            await self.say(call, self.settings.ivr_prompt, while_state=("connecting", "active"))

    def press_key(self, call_id: str, digit: str) -> None:
        """A key the caller pressed; handled in order with the call's transcript."""
        call = self.calls.get(call_id)
        if call is None or call.ended.is_set():
            return
        at = time.monotonic() - call.media_t0 if call.media_t0 is not None else 0.0
        call.events.put_nowait(me.KeyPressed(call.caller_leg().id, digit, round(at, 3)))

    async def _identify(self, call: Call, app_user: AppIdentity | None) -> Known:
        """The caller's customer record, if the app's token or their number finds one,
        and what the virtual agent should know before its greeting: whether they are
        verified, and their open request if they call back within the window."""
        customer: Customer | None = None
        if app_user is not None:
            customer = await self.customers.ensure_app_user(app_user.user_id, app_user.name)
            call.verified_by = "app_token"  # the business's app signed who this is
        elif call.channel == "sip" and call.caller:
            # caller ID says who, it proves nothing: a phone caller still verifies
            customer = await self.customers.by_phone(call.caller)
        if customer is None:
            return Known()
        call.customer_id = customer.id
        # an open request is read out only to a caller proved to be its customer: caller
        # ID is easily spoofed, and "your order 8 3 0 1 6" is theirs to hear
        verified = call.verified_by is not None
        task = await self._open_task(customer.id) if verified else None
        return Known(customer.id, call.verified_by, task)

    async def _open_task(self, customer_id: str) -> tuple[str, dict[str, str]] | None:
        """The customer's last request of the virtual agent, if their last call was
        within ``returning_hours``, was verified (a request an unverified caller left on
        the record is not the customer's own), and left it open."""
        window = self.settings.returning_hours
        if window <= 0:
            return None
        rows = await self.customers.calls(customer_id, limit=1)
        # (SQLite gives its times back without their zone)
        if not rows or as_utc(rows[0].created_at) < utcnow() - timedelta(hours=window):
            return None
        task = rows[0].bot_task
        if rows[0].verified_by is None:
            return None
        if not isinstance(task, dict) or task.get("done") is not False:
            return None
        intent, slots = task.get("intent"), task.get("slots")
        if not isinstance(intent, str) or not isinstance(slots, dict):
            return None
        return intent, {str(k): str(v) for k, v in slots.items()}

    async def _start_call(self, call: Call, leg: Leg, codec: str | None) -> None:
        if call.customer_id is not None:
            earlier = await self.customers.calls(call.customer_id, limit=HISTORY_LIMIT)
            call.previous_calls = len(earlier)
        elif call.caller:
            earlier = await self.store.history(call.caller, before=None, limit=HISTORY_LIMIT)
            call.previous_calls = len(earlier)
        call.legs.append(leg)
        self.calls[call.id] = call
        self.metrics.active_calls.inc()
        self.metrics.calls.labels(call.channel).inc()
        choice = call.model
        try:
            await self.store.add(
                CallRow(
                    id=call.id,
                    channel=call.channel,
                    state=call.state,
                    language=call.language,
                    recognizer=choice.backend,
                    recognizer_note=choice.note,
                    caller=call.caller,
                    created_at=call.created_at,
                    engine_id=self.engine_id,
                    customer_id=call.customer_id,
                    verified_by=call.verified_by,
                    attestation=call.attestation,
                ),
                LegRow(
                    id=leg.id,
                    call_id=call.id,
                    role=leg.role,
                    transport=leg.transport,
                    codec=codec,
                    created_at=call.created_at,
                ),
            )
        except BaseException:
            # nothing was published: the call never was, and no slot stays taken by it
            # (the caller is refused with the reason; the SIP front closes its dialog)
            call.ended.set()
            self.calls.pop(call.id, None)
            self.metrics.active_calls.dec()
            raise
        self._publish(
            CallStarted(
                call_id=call.id,
                channel=call.channel,
                language=call.language,
                recognizer=choice.backend,
                recognizer_note=choice.note,
            )
        )
        if call.customer_id is not None and call.verified_by is not None:
            self._publish(
                CallVerified(call_id=call.id, customer_id=call.customer_id, method=call.verified_by)
            )
        if call.ended.is_set():
            return  # hung up while we were storing it (a phone's BYE/CANCEL): end_call ran
        await self._transition(call, "answered")
        call.consumer = asyncio.create_task(self._consume(call), name=f"events-{call.id}")
        if leg.peer is not None:  # a chat has no media to wait for
            call.tasks.append(asyncio.create_task(self._run_leg(call, leg), name=f"leg-{leg.id}"))

    async def _transition(
        self, call: Call, event: str, reason: str | None = None, **values: object
    ) -> None:
        # not a column: who answered, as the caller is told (bridged only)
        name = values.pop("agent_name", None)
        agent_name = name if isinstance(name, str) else None
        previous, call.state = call.state, call.next_state(event)
        if agent_name is None and call.state == "bridged":
            agent_name = call.agent_name  # with the agent again (a resume, a hand-over): who
        # silence rules judge whoever should be talking: the caller while the bot has the
        # call, the agent once bridged (a hold or a new agent starts that clock again)
        call.escalation.observe_phase(PHASES.get(call.state, "away"), clock(call))
        values["state"] = call.state
        if call.state == "active":
            call.answered_at = utcnow()
            values["answered_at"] = call.answered_at
        await self._keep(f"call {call.id} {call.state}", self.store.update_call, call.id, **values)
        self._publish(
            CallStateChanged(
                call_id=call.id, state=call.state, previous=previous, reason=reason,
                agent_name=agent_name,
            )
        )  # fmt: skip
        if self.bot is not None and call.state == "active" and previous == "connecting":
            self.bot.answered(call)  # the greeting comes after "active" on every stream

    async def _run_leg(self, call: Call, leg: Leg) -> None:
        assert leg.peer is not None
        try:
            track = await asyncio.wait_for(leg.peer.audio_track, self.settings.media_timeout)
        except TimeoutError:
            if not leg.left:
                await self.end_call(call.id, "no_media")
            return
        pipeline: LegPipeline | None = None

        async def first_audio() -> None:
            # the heavy part of a leg, its recognizer in a worker, is set up only once
            # audio arrives: an offer that never sends any never costs one
            nonlocal pipeline
            if leg.role == "caller":
                self.offers.done(call.id)
            pipeline = await self._start_analysis(call, leg)

        frames = self.metrics.frames
        first = True

        def push(pcm: np.ndarray, rate: int, channels: int) -> int:
            nonlocal first
            assert pipeline is not None
            if first:
                first = False
                now = time.monotonic()
                if leg.role == "caller":
                    call.media_t0 = now
                    # state change is async; schedule it without blocking the media path.
                    # A call routed before its first audio (a callback) is queued already.
                    if call.state == "connecting":
                        call.tasks.append(asyncio.create_task(self._transition(call, "media")))
                else:
                    leg.offset = now - (call.media_t0 or now)
            n = self._analyse(call, leg, pipeline, pcm, rate, channels)
            frames.inc(n)
            return n

        reason = await pump_audio(
            track,
            push,
            self.settings.media_timeout,
            on_first=first_audio,
            on_lost=self.frames_lost,
        )
        if leg.left:
            return  # transferred away: the call goes on without this leg
        if leg.role == "agent" and await self.consults.leg_ended(call, leg):
            return  # one agent of a consult or conference left: the other goes on
        if leg.role == "agent" and reason == "remote_closed":
            reason = "agent_hangup"
        await self.end_call(call.id, reason)

    @staticmethod
    def _analyse(
        call: Call, leg: Leg, pipeline: LegPipeline, pcm: np.ndarray, rate: int, channels: int
    ) -> int:
        """A leg's decoded audio into its analysis and across the bridge; the analysis
        frames it made."""
        if leg.left:
            return 0
        # who hears whom: engine/conference.py's table (a plain bridge without a consult)
        consult = call.consult
        phase = consult.heard if consult is not None else "none"
        party = _party(call, leg)
        muted: tuple[Party, ...] = ("host",) if call.agent_muted else ()
        if leg.role == "agent" and not speaks(phase, party, state=call.state, muted=muted):
            # an agent on hold or muted is neither heard nor transcribed: that talk is not
            # part of the conversation with the caller. The leg's clock (its analysed
            # audio) stands still meanwhile while the call's goes on: the offset carries
            # the difference, or the agent's words after it would be placed that much
            # early on the call's clock (and dead air read from a long mute at once)
            leg.offset += pcm.size / channels / rate
            return 0
        # a consult's talk the caller does not hear: transcribed for the staff, never
        # shown to the caller (engine/unheard.py)
        heard = leg.role != "agent" or hears(phase, party, "caller", state=call.state, muted=muted)
        if leg.unheard.turns(heard):
            # the caller starts or stops hearing the leg now: the utterance in progress
            # ends here, or words said before the turn and after would be one, judged
            # as a whole ("I'll check with a colleague" + "he is rude")
            pipeline.cut()
        if heard:
            n = pipeline.push_pcm(pcm, rate, channels)
        else:
            analysed = pipeline.seconds_in
            n = pipeline.push_pcm(pcm, rate, channels)
            leg.unheard.add(analysed, pipeline.seconds_in)
        # the bridge: what this leg says, the other parties hear, and the supervisors
        # on the call as their mode says (engine/monitor.py)
        others = [
            x.peer for x in call.legs
            if x is not leg and not x.left and x.peer is not None
            and hears(phase, party, _party(call, x), state=call.state, muted=muted)
        ]  # fmt: skip
        if others or call.monitors:
            pcm48 = to_send_rate(downmix_int16(pcm, channels), rate)
            for other in others:
                other.outbound.push_live(pcm48, leg.id)
            # agents consulting talk while the caller is held: supervisors hear them
            heard_as = "bridged" if phase == "consulting" and leg.role == "agent" else None
            to_supervisors(call, leg, pcm48, state=heard_as)
        return n

    async def _start_analysis(self, call: Call, leg: Leg) -> LegPipeline:
        """The leg's analysis chain and recognizer, at its first audio."""
        choice = await self.recognizers.ready(call.language)
        vad = VadSettings(aggressiveness=self.settings.vad_aggressiveness)
        pipeline = leg.pipeline = LegPipeline(
            leg.id,
            (lambda: self.recognizers.open(leg.id, call.language)) if choice.backend else None,
            self.executor,
            lambda ev: self._enqueue(call, ev),
            vad=vad.for_phone() if leg.codec in PHONE_LINE_CODECS else vad,
            band="phone" if leg.codec in PHONE_LINE_CODECS else "wide",
            punctuated=choice.punctuated,
            on_lost=self._speech_dropped,
        )
        await pipeline.start()

        def tap(frame: PcmFrame, role: str = leg.role) -> None:
            if role == "caller" and secret(call, leg.offset + frame.start):
                # the caller says their PIN: forks and the recording hear silence
                frame = PcmFrame(np.zeros_like(frame.samples), frame.start)
            for fork in call.forks:
                fork(role, frame)
            if call.recording is not None:
                call.recording.write(0 if role == "caller" else 1, leg.offset + frame.start, frame)

        pipeline.tap = tap
        if leg.role == "caller":
            call.tasks.append(asyncio.create_task(self._silence_clock(call, pipeline)))
        return pipeline

    def frames_lost(self, reason: LossReason, frames: int) -> None:
        """Caller audio that never reached analysis, counted as it is lost (media/loss.py);
        admission reads the count (engine/capacity.py)."""
        self.metrics.frames_lost.labels(reason).inc(frames)

    def _speech_dropped(self, reason: LossReason, frames: int) -> None:
        self.metrics.dropped_chunks.inc()
        self.frames_lost(reason, frames)

    async def accept(self, user: UserRow, call_id: str, sdp: str) -> str:
        """The ringing agent answers with their softphone's SDP offer: bridge them in."""
        call = self.get(call_id)
        _voice_only(call, "answered with a softphone")
        self.routing.check_ringing(user.id, call_id)  # before any media work
        leg = Leg(str(uuid.uuid4()), "agent", "webrtc", user_id=user.id)
        peer = leg.peer = WebRtcLeg(
            on_ended=lambda reason: self._agent_leg_ended(call, leg), ice_servers=self.ice_servers
        )
        caller_peer = call.caller_leg().peer
        caller_camera = caller_peer is not None and caller_peer.video_in.track.done()
        try:
            answer, _ = await peer.answer(sdp, video=caller_camera)
        except BaseException:
            await peer.close()  # the offer keeps ringing: the agent may try again
            raise
        await self._bridge_agent(call, leg, codec=None)
        return answer

    async def accept_peer(
        self, agent_id: str, call_id: str, peer: CallPeer, transport: str, codec: str
    ) -> None:
        """The agent answered on another device (their SIP desk phone): bridge it in."""
        call = self.get(call_id)
        _voice_only(call, "answered on a phone")
        self.routing.check_ringing(agent_id, call_id)
        leg = Leg(str(uuid.uuid4()), "agent", transport, user_id=agent_id, codec=codec)
        leg.peer = peer
        await self._bridge_agent(call, leg, codec=codec)

    async def _bridge_agent(self, call: Call, leg: Leg, codec: str | None = None) -> None:
        assert leg.user_id is not None and (leg.peer is not None or leg.transport == "chat")
        if self.consults.is_guest_answer(call, leg.user_id):
            await self.consults.answered(call, leg, codec)  # a colleague consulted
            return
        if call.state != "queued":  # the only state an agent answers a call from
            # rung with no consult behind it (its request failed after the shared log
            # took the ring, or a cancel's withdrawal did): taken as the call's agent it
            # would be bridged to a held call and lock its agent out. Refused, and the
            # stray ring taken back so that it stops
            if leg.peer is not None:
                await leg.peer.close()
            await self.consults.withdraw(call, leg.user_id)
            raise NotAllowed(f"call {call.id} is not waiting for an agent")
        now = time.monotonic()
        try:
            # it may have stopped ringing while we set up media (timeout, caller left)
            answered = self.routing.answered(leg.user_id, call.id)
            if self.routing_log is not None:  # several engines: decided in the log, now
                await self._route(answered)
                answered = iter(())
        except (AcdError, RoutingUnavailable):
            if leg.peer is not None:
                await leg.peer.close()
            raise
        self._stop_desk_phone(call.id)  # answered in the browser: the desk phone stops
        call.legs.append(leg)
        call.agent_id, call.bridged_at = leg.user_id, now
        leg_row = LegRow(id=leg.id, call_id=call.id, role="agent", transport=leg.transport,
                         codec=codec, user_id=leg.user_id, created_at=utcnow())  # fmt: skip
        await self._keep(f"leg {leg.id}", self.store.add, leg_row)  # the agent is on already
        caller = call.caller_leg().peer
        if caller is not None:
            caller.outbound.clear()  # stop the queue announcement: a person is here
        await self._route(answered)
        username = self.routing.username(leg.user_id)
        # the caller is told who answered by name, never by login: a display name left
        # as the username is none (best effort: storage that is down costs the name)
        call.agent_name = await self.agent_name(leg.user_id)
        await self._transition(call, "accept", username, agent_id=leg.user_id)
        self._bridge_video(call)
        await self._route(self.routing.queue_changed())
        if leg.peer is not None:  # a chat's agent types
            self._start_leg(call, leg)

    async def agent_name(self, user_id: str) -> str | None:
        """The name a caller is told for an agent: their display name, never their
        login (a display name left as the username is none); best effort: storage that
        is down costs the name, not the call."""
        user = await _quietly(self.store.user(user_id))
        return user.display_name if user and user.display_name != user.username else None

    def _start_leg(self, call: Call, leg: Leg) -> None:
        call.tasks.append(asyncio.create_task(self._run_leg(call, leg), name=f"leg-{leg.id}"))

    def _stop_desk_phone(self, call_id: str) -> None:
        if self.desk_phones is not None:
            self.desk_phones.stop_ringing(call_id)

    @staticmethod
    def _bridge_video(call: Call) -> None:
        """Cameras follow the audio bridge: both ways while bridged, black otherwise."""
        caller, agent = call.caller_leg().peer, call.agent_leg()
        agent_peer = agent.peer if agent is not None else None
        talking = call.state == "bridged" and agent_peer is not None
        if caller is not None:
            caller.show_video_of(agent_peer if talking else None)
        if agent_peer is not None:
            agent_peer.show_video_of(caller if talking else None)

    async def _agent_leg_ended(self, call: Call, leg: Leg) -> None:
        if not leg.left and not await self.consults.leg_ended(call, leg):
            await self.end_call(call.id, "agent_hangup")

    async def _silence_clock(self, call: Call, pipeline: LegPipeline) -> None:
        while True:
            await asyncio.sleep(1.0)
            if call.state in ("active", "bridged"):
                peer = call.caller_leg().peer
                speaking = (
                    call.bot is not None and peer is not None and (peer.outbound.queued_seconds > 0)
                )
                call.events.put_nowait(SilenceCheck(pipeline.seconds_in, call.voiced(), speaking))

    def _enqueue(self, call: Call, ev: me.MediaEvent) -> None:
        if isinstance(ev, me.SpeechOnset):
            # at once, not behind the call's events: the consumer may be busy saying
            # the agent's next words (engine/bot/agent.py)
            if self.bot is not None and call.caller_leg().id == ev.leg_id:
                self.bot.barge_in(call)
            return
        if isinstance(ev, me.TranscriptPartial) and call.events.qsize() >= MAX_EVENT_BACKLOG:
            self.metrics.dropped_partials.inc()
            return
        call.events.put_nowait(ev)

    async def _consume(self, call: Call) -> None:
        """Persist, then publish, every media event of the call, in order."""
        while (ev := await call.events.get()) is not None:
            try:
                await self._handle_media_event(call, ev)
            except Exception:  # one bad event must not stop the call's stream
                log.exception("call %s: failed to handle %s", call.id, type(ev).__name__)

    async def _handle_media_event(
        self, call: Call, ev: me.MediaEvent | SilenceCheck | BotInput
    ) -> None:
        """The event through the call's analysis stages (engine/analysis.py), each
        effect applied before the stages go on."""
        for effect in self.analysis.run(call, ev):
            await self._apply(call, effect)

    async def _apply(self, call: Call, effect: Effect) -> None:
        if isinstance(effect, Write):
            await self._write(call, effect)
        elif isinstance(effect, Emit):
            self._publish(effect.event)
        elif isinstance(effect, Route):
            escalation = self.routing.escalation(call, effect.decision, to_person=effect.to_person)
            await self._route(escalation)
        elif isinstance(effect, Say):
            turn = effect.turn
            still = None if turn is None else (lambda: call.bot_turn == turn)
            with contextlib.suppress(Exception):  # a prompt that fails is not the call's end
                await self.say(call, effect.text, effect.while_state, still=still)
        elif isinstance(effect, Act):
            if self.bot is not None:
                self.bot.act(call, effect.action)
        elif isinstance(effect, HangUp):
            if self.bot is not None:
                self.bot.hang_up(call, effect.reason, self.end_call)
        else:  # a new kind of effect must be applied here, not dropped
            assert_never(effect)

    async def _route(self, effects: Iterable[RoutingEffect]) -> None:
        """Routing's decisions (engine/routing.py), each applied before the next is
        made: a decision goes on from the state the last one left."""
        for effect in effects:
            await self.apply_routing(effect)

    async def apply_routing(self, effect: RoutingEffect) -> None:
        """Carry out one of routing's effects on this engine (also the shared log's,
        engine/sharedcalls.py)."""
        if isinstance(effect, Emit):
            self._publish(effect.event)
            if self.routing_copy is not None and isinstance(effect.event, OfferWithdrawn):
                # several engines: the log's leader ticks, no ACD timer here sweeps consults
                await self.consults.offer_withdrawn(effect.event)
        elif isinstance(effect, Record):
            await self._keep(effect.what, self.store.add, effect.row)
        elif isinstance(effect, UpdateCall):
            await self._keep(effect.what, self.store.update_call, effect.call_id, **effect.values)
        elif isinstance(effect, Announce):
            await self.say(effect.call, effect.text, while_state=effect.while_state)
        elif isinstance(effect, Transition):
            await self._transition(effect.call, effect.event, effect.reason, **effect.values)
        elif isinstance(effect, Ring):
            chat = (
                ringing := self.calls.get(effect.call_id)
            ) is not None and ringing.channel == "chat"
            if self.desk_phones is not None and not chat:  # a desk phone cannot take a chat
                self.desk_phones.ring(
                    effect.agent_id, effect.username, effect.call_id, effect.caller
                )
        elif isinstance(effect, StopRinging):
            self._stop_desk_phone(effect.call_id)
        elif isinstance(effect, Replicate):
            if self.routing_log is None:
                raise RuntimeError("a shared routing decision without the shared log")
            await self.routing_log.submit(effect.op)
        elif isinstance(effect, WrapUpTimedOut):
            await self._wrap_up_timed_out(effect)
        else:  # a new kind of effect must be applied here, not dropped
            assert_never(effect)

    async def _wrap_up_timed_out(self, effect: WrapUpTimedOut) -> None:
        """The wrap-up the agent did not save, as theirs would have been: a note and the
        call's disposition, then told. Only if no wrap-up was saved since they began to
        owe it: the agent's own, saved at the deadline, is written before routing hears
        of it, and the timer may fire in between; it must not be overwritten, nor a
        second call.wrapped_up told. Storage away: kept for later, and not told (whether
        it will be written is not known yet)."""
        now = utcnow()
        since = effect.since or now - timedelta(seconds=self.routing.acd.wrap_up_limit)
        note = NoteRow(
            call_id=effect.call_id, author_id=effect.agent_id, author=effect.username,
            kind="wrap_up", text="", disposition=TIMED_OUT, created_at=now,
        )  # fmt: skip
        values = {"disposition": TIMED_OUT, "wrapped_up_at": now}
        written: list[bool] = []

        async def write() -> None:
            written.append(await self.store.time_out_wrap_up(effect.call_id, values, since, note))

        await self.spool.write(f"call {effect.call_id} wrap-up timed out", write)
        if written and written[0]:
            self._publish(
                CallWrappedUp(call_id=effect.call_id, agent_id=effect.agent_id,
                              disposition=TIMED_OUT, notes="")
            )  # fmt: skip
        elif written:
            log.info("call %s: wrapped up before its deadline; not timed out", effect.call_id)

    async def _write(self, call: Call, w: Write) -> None:
        if w.row is not None and w.values is not None:
            await self._keep(w.what, self.store.add_and_update_call, call.id, dict(w.values), w.row)
        elif w.row is not None:
            await self._keep(w.what, self.store.add, w.row)
        elif w.values is not None:
            await self._keep(w.what, self.store.update_call, call.id, **w.values)

    async def connect_outbound(
        self, peer: CallPeer, codec: str, number: str, *, prompt: str | None,
        queue: str | None, agent_id: str | None, by: str,
    ) -> Call:  # fmt: skip
        """A call we placed was answered: it runs through the same pipeline as any
        caller; ``prompt`` is said first; with a queue or an agent it goes to a person,
        otherwise it stays with the AI and the escalation rules."""
        call = await self.create_phone_call(peer, number, codec, menu=False)
        if prompt:
            await self.say(call, prompt)
        if queue is not None or agent_id is not None:
            await self._escalated(call, f"outbound call placed by {by}")
            await self._route(self.routing.enqueue(call, None, queue=queue, agent=agent_id))
        return call

    # -- agents -------------------------------------------------------------------

    async def agent_presence(self, user: UserRow, event: str, reason: str | None = None) -> str:
        """An agent asks to log in, go available or away (``reason``: why), or log out;
        "available" is refused while they owe a call its disposition (409)."""
        await self._route(self.routing.presence(user, event, reason))
        return self.routing.presence_of(user.id)

    def agent_status(self, user_id: str) -> AgentStatus:
        """Presence, away reason, since when, and the wrap-up they owe (engine/routing.py)."""
        return self.routing.status(user_id)

    def agent_stream(self, user_id: str, opened: bool) -> None:
        """An agent's desk stream opened or closed here (their desk page or phone):
        routing is told how many this engine holds, in the background, again and again
        until it has the latest count (engine/desks.py). Never waits, never raises: a
        stream is served whether or not routing could be told."""
        if opened:
            self.desks.opened(user_id)
        else:
            self.desks.closed(user_id)

    async def _tell_streams(self, user_id: str, streams: int) -> None:
        """Routing told that this engine holds ``streams`` of the agent's streams;
        raises when it could not be (the shared log away, or too slow)."""
        try:
            async with asyncio.timeout(STREAM_TELL_WITHIN):
                await self._route(self.routing.clients(user_id, self.engine_id or "", streams))
        except (AcdError, NotAllowed) as exc:  # routing answered: nothing to tell again
            log.warning("agent %s: routing refused their streams here: %s", user_id, exc)

    async def user_changed(self, user: UserRow) -> None:
        """Skills changed take effect for the next offer; a removed role stops offers."""
        await self._route(self.routing.user_changed(user))

    async def agent_gone(self, user_id: str) -> None:
        """The person can no longer take calls (removed, or no longer an agent)."""
        await self._route(self.routing.agent_gone(user_id))

    def offered_to(self, user_id: str, call_id: str) -> bool:
        return self.routing.offered_to(user_id, call_id)

    def presence_of(self, user_id: str) -> str:
        return self.routing.presence_of(user_id)

    def agent_named(self, username: str) -> str | None:
        """The id of the signed-in agent with this username, if any."""
        return self.routing.agent_named(username)

    async def ring_agent(self, call: Call, agent_id: str) -> None:
        """A caller who dialled an agent directly: offer the call to that agent only (it
        falls back to the queue if they do not answer)."""
        who = self.routing.username(agent_id, "an agent")
        await self._escalated(call, f"dialled {who} directly", at=False)
        await self._route(self.routing.requested(call, agent=agent_id))

    async def decline(self, user_id: str, call_id: str) -> None:
        await self._route(self.routing.decline(user_id, call_id))
        if (call := self.calls.get(call_id)) is not None:
            await self.consults.declined(call, user_id, "declined")

    async def run_acd_timers(self) -> None:
        """Offer timeouts and maximum waits: wake when the ACD's next timer is due. With
        several engines the shared log's leader asks for the ticks instead."""
        if self.routing_copy is not None:
            return
        while True:
            due = self.routing.next_timer()
            now = time.monotonic()
            await asyncio.sleep(1.0 if due is None else min(1.0, max(0.0, due - now)))
            try:
                await self._route(self.routing.tick())
                await self.consults.sweep()  # a consult that rang out: its host is told
            except Exception:  # a failing store must not stop the timers of every call
                log.exception("ACD timer step failed")

    # -- the agent's desk: controls on a live call, and after it (engine/controls.py) --

    def controlled_call(self, user: Actor, call_id: str) -> Call:
        """The live call, if ``user`` may control it (403/404/409 otherwise)."""
        return self.controls.controlled(user, call_id)

    async def mute(self, user: Actor, call_id: str, muted: bool) -> None:
        await self._desk(self.controls.mute(self.controls.controlled(user, call_id), muted))

    async def hold(self, user: Actor, call_id: str) -> None:
        call = self.controls.controlled(user, call_id)
        _voice_only(call, "held")
        if call.consult is not None and call.consult.phase == "conference":
            # a held conference could not be resumed (resume is refused during one)
            raise NotAllowed("a conference cannot be held: leave it, or mute")
        await self._desk(self.controls.hold(user, call))

    async def resume(self, user: Actor, call_id: str) -> None:
        call = self.controls.controlled(user, call_id)
        if call.consult is not None and call.consult.phase == "ringing":
            # the guest answering would find the caller bridged, hearing nobody
            if call.consult.outside:
                raise NotAllowed("a number is being dialled: cancel the consult first")
            raise NotAllowed("a colleague is being rung: cancel the consult first")
        _not_consulting(call, "resumed")
        await self._desk(self.controls.resume(user, call))

    async def transfer(
        self,
        user: Actor,
        call_id: str,
        *,
        queue: str | None = None,
        agent: str | None = None,
        note: str | None = None,
    ) -> None:
        """Hand the caller to a queue or one agent (``Controls.transfer``)."""
        call = self.controls.controlled(user, call_id)
        _no_consult(call, "transferred")
        target = await self.store.user_by_name(agent) if agent is not None else None
        steps = self.controls.transfer(
            user, call, queue=queue, agent=agent, target=target, note=note
        )
        await self._desk(steps)

    def may_transfer(self, user: Actor, call_id: str) -> None:
        """Refusals of a transfer (403/404/409) asked before anyone is dialled."""
        _no_consult(self.controls.controlled(user, call_id), "transferred")

    async def transfer_out(
        self, user: Actor, call_id: str, peer: CallPeer, codec: str, number: str,
        note: str | None,
    ) -> Call:  # fmt: skip
        """A number we called answered a transfer: it takes the agent's place."""
        call = self.controls.controlled(user, call_id)  # it may have changed while it rang
        _voice_only(call, "transferred to a phone number")
        _no_consult(call, "transferred")
        await self._desk(self.controls.transfer_out(user, call, peer, codec, number, note))
        return call

    async def wrap_up(
        self, user: UserRow, call_id: str, disposition: str, notes: str, then: str
    ) -> None:
        stored = await self.store.get_call(call_id)
        steps = self.controls.wrap_up(user, call_id, stored, disposition, notes, then)
        await self._desk(steps)

    async def annotate(self, actor: Actor, call_id: str, text: str) -> NoteRow:
        """A note on a call, live or ended: stored with it and published."""
        known = call_id in self.calls or await self.store.get_call(call_id) is not None
        return await self._desk(self.controls.annotate(actor, call_id, text, known=known))

    async def send_dtmf(self, actor: Actor, call_id: str, digits: str) -> str:
        """Keys to the caller (an IVR we called, a bank's system): RFC 4733 events to a
        phone that offered them, tones in the audio otherwise; how they went."""
        call = self.controls.on_line(actor, call_id)
        peer = self.controls.keys_path(call)
        # a bounded backlog per call: a burst of requests (a keypad hammered, a looping
        # script) queues at most KEYS_AHEAD seconds of keys on the line; more is refused
        now = time.monotonic()
        until = max(now, self._keys_until.get(call_id, 0.0))
        if until + len(digits) * KEY_SECONDS - now > KEYS_AHEAD:
            raise NotAllowed("too many keys are waiting to be sent on this call: wait a moment")
        self._keys_until[call_id] = until + len(digits) * KEY_SECONDS
        log.info("call %s: %s sent %d keys", call_id, actor.username, len(digits))
        try:
            return await peer.send_dtmf(digits)
        except BaseException:
            # not sent: they are not waiting on the line (a later send's share stays)
            if call_id in self._keys_until:
                self._keys_until[call_id] -= len(digits) * KEY_SECONDS
            raise

    async def play(self, actor: Actor, call_id: str, text: str) -> float:
        """Speak ``text`` to a live caller (after what is already playing); the seconds
        queued ahead of it."""
        call = self.controls.on_line(actor, call_id)
        peer = self.controls.prompt_path(call, voice=self.prompts.available)
        ahead = peer.outbound.queued_seconds
        done = await self.say(call, text)
        if done is not None and done.done() and done.exception() is not None:
            raise NotAllowed(f"cannot play now: {done.exception()}")
        return ahead

    def recording(self, actor: Actor, call_id: str, on: bool) -> None:
        """Start, pause or resume the call's recording (one WAV per call, silent where
        paused); it is written when the call ends."""
        call = self.controls.on_line(actor, call_id)
        _voice_only(call, "recorded (its transcript is its record)")
        change = self.controls.recording(actor, call, on)
        if change is None:
            return
        if call.recording is None:
            try:
                call.recording = CallRecording(
                    Path(self.settings.recordings_dir), call.id, change.at
                )
            except OSError as exc:  # no folder, no space for the files: said, not a 500
                raise NotAllowed(f"the recording cannot be started: {exc}") from None
            call.recording.on_failed = lambda at, why: self._recording_failed(call, at, why)
        call.recording.active = on
        self._publish(change)

    def _recording_failed(self, call: Call, at: float, why: str) -> None:
        """The disk refused a write of the call's recording (from a leg's tap or a
        supervisor's voice): it stopped, and the desk and the console stop showing
        "recording" (told once, by the recording itself)."""
        self._publish(
            RecordingChanged(call_id=call.id, recording=False, at=at, by="engine", reason=why)
        )

    # -- callbacks (engine/callbacks.py) --------------------------------------------

    async def request_callback(self, call_id: str, contact: str | None) -> CallbackRow:
        """The waiting caller would rather be called back: keep their place as a
        callback item, thank them, and end the call. A number the dial policy would
        refuse (CCENGINE_SIP_DIAL_PREFIXES) is refused now, while the caller can give
        another, not when an agent tries to call it back."""
        call = self.get(call_id)
        if call.state == "queued":  # (one not waiting: callbacks.request says why not)
            number = phone_number(contact or call.caller or "")
            if number is not None:
                self._may_call_back(number, contact or call.caller)
            elif contact is not None or call.channel == "sip":
                # booked, it could never be placed. (An in-app caller with no number may
                # be: an agent returns it in the browser, through a call link.)
                raise NotAllowed(
                    f"we cannot call {contact} back: give a phone number"
                    if contact is not None
                    else "we cannot call you back on this line: give a phone number"
                )
        return await self._desk(self.callbacks.request(call, contact))

    def _may_call_back(self, number: str, given: str | None) -> None:
        try:
            check_number(number, self.settings.sip_dial_prefixes, keys=False)
        except NotAllowed:
            raise NotAllowed(
                f"we cannot call {given} back: give a number starting "
                f"with {' or '.join(self.settings.sip_dial_prefixes)}"
            ) from None

    async def finish_callback(self, user: Actor, callback_id: str) -> CallbackRow:
        row = await self.store.finish_callback(callback_id, user.username, utcnow())
        return await self._desk(self.callbacks.finished(user, callback_id, row))

    async def connect_callback(
        self, user: UserRow, row: CallbackRow, peer: CallPeer, codec: str
    ) -> Call:
        """The customer who asked to be called back answered our call: the callback is
        done, and the call rings the agent who placed it, with the first call's summary."""
        number = row.contact or row.caller
        call = await self.create_phone_call(peer, row.caller or number, codec, menu=False)
        await self.finish_callback(user, row.id)
        await self._desk(self.callbacks.connected(call, row, user.id))
        return call

    async def _desk(self, steps: Generator[DeskEffect, None, T]) -> T:
        """A desk decision's effects (engine/controls.py, engine/callbacks.py), each
        applied before the next is made; what the decision answers."""
        while True:
            try:
                effect = next(steps)
            except StopIteration as done:
                return done.value
            if isinstance(effect, Save):
                await self.store.add(effect.row)
            elif isinstance(effect, SaveCall):
                await self.store.update_call(effect.call_id, **effect.values)
            elif isinstance(effect, Hush):
                legs = effect.call.legs if effect.everyone else [effect.call.caller_leg()]
                for leg in legs:
                    if leg.peer is not None:
                        leg.peer.outbound.clear()
            elif isinstance(effect, HoldMusic):
                if (caller := effect.call.caller_leg().peer) is not None:
                    caller.outbound.set_background(hold_loop() if effect.on else None)
            elif isinstance(effect, BridgeVideo):
                self._bridge_video(effect.call)
            elif isinstance(effect, RunLeg):
                running = self._run_leg(effect.call, effect.leg)
                effect.call.tasks.append(asyncio.create_task(running, name=f"leg-{effect.leg.id}"))
            elif isinstance(effect, CloseLeg):
                await self._close_leg(effect.call, effect.leg)
            elif isinstance(effect, SupervisorsLeave):
                await self.monitors.agent_left(effect.call)
            elif isinstance(effect, ThankAndEnd):
                thanks = thank_and_end(effect.call, self.say, self.end_call)
                effect.call.tasks.append(asyncio.create_task(thanks))
            else:
                await self.apply_routing(effect)

    async def _close_leg(self, call: Call, leg: Leg) -> None:
        """A leg leaves a call that goes on: its last words are still transcribed."""
        if leg.pipeline is not None:
            try:
                await asyncio.wait_for(leg.pipeline.close(), TEARDOWN_TIMEOUT)
            except TimeoutError:
                leg.pipeline.cancel()
        if leg.peer is not None:
            await leg.peer.close()
        await self.store.end_leg(leg.id, utcnow())

    def recording_path(self, call_id: str) -> Path:
        return Path(self.settings.recordings_dir) / f"{call_id}.wav"

    async def say(
        self,
        call: Call,
        text: str,
        while_state: str | tuple[str, ...] | None = None,
        *,
        still: Callable[[], bool] | None = None,
    ) -> asyncio.Future[None] | None:
        """Speak to the caller (queued behind anything already playing); the future is
        done when it has been sent. With ``while_state``, only if the call is still in
        that state once the speech is ready (an agent may answer in the meantime); with
        ``still``, only if it still says so then (the caller may have barged in)."""
        peer = call.caller_leg().peer
        spoken = await self.prompts.speak(text) if peer is not None else None
        if spoken is None or peer is None:
            return None
        pcm, rate = spoken
        states = (while_state,) if isinstance(while_state, str) else while_state
        if states is not None and call.state not in states:
            return None
        if still is not None and not still():
            return None
        return peer.outbound.play(pcm, rate)

    def _publish(self, event: EventBase) -> None:
        self.bus.publish(event)

    async def _escalated(self, call: Call, reason: str, *, at: bool = True) -> None:
        """Why ``call`` goes to a person, on the call and in its record (with the time,
        unless ``at`` is False), kept like every write of a live call."""
        await self.apply_routing(escalated(call, reason, at=at))

    async def _keep(
        self, what: str, write: Callable[..., Awaitable[object]], *args: object, **kw: object
    ) -> None:
        """A write the call must not lose: now, or once storage is back (engine/spool.py)."""
        await self.spool.write(what, functools.partial(write, *args, **kw))

    def get(self, call_id: str) -> Call:
        try:
            return self.calls[call_id]
        except KeyError:
            raise UnknownCall(call_id) from None

    def live(self, call_id: str) -> Call | None:
        """The call, if it is live on this node."""
        return self.calls.get(call_id)

    async def end_call(self, call_id: str, reason: str) -> None:
        """Idempotent teardown that finishes even when a part of the call is stuck."""
        call = self.calls.get(call_id)
        if call is None or call.ended.is_set() or call.state == "ended":
            return
        call.ended.set()
        self.offers.done(call_id)
        self._chats.pop(call_id, None)
        # the supervisors first: one barging in must not go on talking to a caller whose
        # agent hung up while the rest of the call is torn down (they fall silent at
        # once; their records and peers get the teardown's bound, like the recognizers)
        try:
            await asyncio.wait_for(self.monitors.call_ended(call), TEARDOWN_TIMEOUT)
        except TimeoutError:
            log.warning("call %s: supervisors' legs did not close in time", call_id)
        leaving = itertools.chain(
            self.routing.hung_up(call.agent_id, call.bridged_at, call.id),
            # before the leave (which would withdraw a colleague's ring too): the consult
            # is cleared as its ring is withdrawn, so no sweep meanwhile tells it rung out
            self.consults.ended(call),
            self.routing.leave(call, "caller_left"),
            self._other_agents_leave(call),
        )
        if self.shared is None:
            await self._route(leaving)
        else:  # the shared log away must not keep the call from ending: asked again later
            await self.shared.leave(list(leaving))
        current = asyncio.current_task()
        for leg in call.legs:
            if leg.pipeline is not None:
                try:
                    await asyncio.wait_for(leg.pipeline.close(), TEARDOWN_TIMEOUT)
                except TimeoutError:
                    log.warning("call %s: recognizer did not finish in time", call_id)
                    leg.pipeline.cancel()
        call.events.put_nowait(None)
        consumer = call.consumer
        if consumer is not None and consumer is not current:
            try:
                await asyncio.wait_for(asyncio.shield(consumer), TEARDOWN_TIMEOUT)
            except TimeoutError:
                log.warning("call %s: event consumer stuck, cancelling", call_id)
                consumer.cancel()
        for task in call.tasks:
            if task is not current and not task.done():
                task.cancel()
        if call.recording is not None:
            try:
                await asyncio.to_thread(call.recording.finish)
            except OSError as exc:  # a full disk must not keep the call from ending
                log.error("call %s: recording not written: %s", call_id, exc)
        now = utcnow()
        duration = (now - call.created_at).total_seconds()
        await self._transition(call, "end", reason, ended_at=now, end_reason=reason)
        for leg in call.legs:
            await self._keep(f"leg {leg.id} end", self.store.end_leg, leg.id, now)
        self._publish(CallEnded(call_id=call.id, reason=reason, duration=round(duration, 3)))
        self.metrics.active_calls.dec()
        self.metrics.ended.labels(reason).inc()
        self.calls.pop(call.id, None)
        self._keys_until.pop(call.id, None)
        for leg in call.legs:
            if leg.peer is not None:
                with contextlib.suppress(Exception):
                    await leg.peer.close()
        # the call's buffers (jitter, utterances, peers) are free now: give the pages back
        # rather than let them scatter (see media.malloc)
        await asyncio.to_thread(malloc.trim)
        log.info("call %s ended: %s after %.1f s", call.id, reason, duration)

    def _other_agents_leave(self, call: Call) -> Iterator[RoutingEffect]:
        """Every agent leg still on an ending call besides ``call.agent_id``'s (a
        consulted colleague, whatever became of the consult) goes to wrap-up, once."""
        for leg in call.legs:
            if leg.role == "agent" and leg.user_id and not leg.left:
                if leg.user_id != call.agent_id:
                    leg.left = True
                    since = leg.joined if leg.joined else None
                    yield from self.routing.hung_up(leg.user_id, since, call.id)

    async def end_all(self, reason: str) -> None:
        """End every live call, at once, with ``reason``."""
        await asyncio.gather(
            *(self.end_call(cid, reason) for cid in list(self.calls)), return_exceptions=True
        )

    async def shutdown(self) -> None:
        await self.end_all("engine_shutdown")
        # reports of desk streams not told yet stay so: once this engine is gone, the
        # shared routing drops its streams (engine/routinglog.py)
        await self.desks.close()
        if self.shared is not None:  # the shared routing's last words for these calls
            await self.shared.settle(TEARDOWN_TIMEOUT)
        await self.spool.close(TEARDOWN_TIMEOUT)
        await self.recognizers.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.prompts.stop()
        if self.bot is not None:
            await self.bot.close()


KEY_SECONDS = (TONE_MS + GAP_MS) / 1000  # one key on the line (media/dtmf.py)
KEYS_AHEAD = 8.0  # seconds of keys a call may have waiting: 50, more than any IVR asks


def _party(call: Call, leg: Leg) -> Party:
    """Which party of engine/conference.py's table ``leg`` is."""
    if leg.role == "caller":
        return "caller"
    return call.consult.party(leg.user_id) if call.consult is not None else "host"


def _no_consult(call: Call, what: str) -> None:
    """A transfer during a consult (ringing too) would leave the consult's ring or leg
    with a call that moved on: refused."""
    if call.consult is not None:
        raise NotAllowed(f"the call cannot be {what} during a consult: cancel it first")


def _not_consulting(call: Call, what: str) -> None:
    if call.consult is not None and call.consult.phase != "ringing":
        raise NotAllowed(
            f"the call cannot be {what} during a consult: complete, conference or cancel it"
        )


def brain(settings: Settings) -> BrainSettings | None:
    """The virtual agent's brain, if an LLM endpoint is set (CCENGINE_BOT_LLM_URL)."""
    if settings.bot_llm_url is None:
        return None
    key = settings.bot_llm_key.get_secret_value() if settings.bot_llm_key else None
    return settings.bot_llm_url, settings.bot_llm_model, key, settings.bot_llm_timeout


async def _quietly(read: Awaitable[T], within: float = 2.0) -> T | None:
    """A read the call can do without: None when storage fails or is slow."""
    try:
        return await asyncio.wait_for(read, within)
    except Exception:
        log.warning("a read the call can do without failed", exc_info=True)
        return None
