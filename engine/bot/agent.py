"""The virtual agent on this node: its flows, the dialogs of the calls it answers, the
actions under way, and barge-in. The call manager hands it the live parts of a call;
what it decides runs through the call's analysis stages (engine/bot/stage.py).

Barge-in. A caller who starts talking while the agent speaks stops it: the leg's
pipeline reports a speech onset as soon as four of five 20 ms frames are voiced
(``media.vad.SpeechOnset``), ahead of the utterance start the recognizer waits for,
and the call manager calls ``barge_in`` at once, not through the call's event queue,
which may be busy synthesising the agent's next words. The outbound audio is cleared
and the agent's turn advances, so what it still had to say of that turn is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from engine.bot.actions import ActionFailed, Actions
from engine.bot.dialog import CallAction, Dialog
from engine.bot.dialog import State as DialogState
from engine.bot.events import ActionAnswered, BotStart
from engine.bot.flows import Flow, flow_for
from engine.bot.stage import BOT_STATES
from engine.bot.understand import IntentMatcher
from engine.livecall import Call
from engine.metrics import Metrics

log = logging.getLogger(__name__)
GOODBYE_WAIT = 30.0  # seconds a goodbye may take to be heard before the call ends anyway


class VirtualAgent:
    def __init__(self, flows: Sequence[Flow], metrics: Metrics, secret: str | None) -> None:
        self.flows = list(flows)
        self.metrics = metrics
        # matching tables are built once per flow, not per call
        self._matchers = {f.id: IntentMatcher(f) for f in self.flows}
        self.actions = Actions(secret)

    def attach(self, call: Call, dialled: str | None = None) -> bool:
        """Give ``call`` the flow that answers ``dialled`` (None: an in-app call);
        False if no flow answers it."""
        flow = flow_for(self.flows, dialled)
        if flow is None:
            return False
        call.bot = Dialog(flow, self._matchers[flow.id])
        return True

    def prompts(self) -> list[str]:
        """What every flow says whatever the caller asks: synthesised at start, so the
        greeting is not waiting for the voice."""
        out = []
        for f in self.flows:
            out += [f.greeting, f.fallback, f.anything_else, f.handoff, f.goodbye, f.apology]
            out += [s.prompt for i in f.intents for s in i.slots]
        return list(dict.fromkeys(out))

    @staticmethod
    def answered(call: Call) -> None:
        """The call is active (the caller's audio arrived): the agent greets."""
        if call.bot is not None:
            call.events.put_nowait(BotStart())

    def barge_in(self, call: Call) -> bool:
        """The caller started talking: if the agent is speaking, it stops."""
        peer = call.caller_leg().peer if call.legs else None
        if call.bot is None or call.state not in BOT_STATES or peer is None:
            return False
        if peer.outbound.queued_seconds <= 0:
            return False
        call.bot_turn += 1
        peer.outbound.clear()
        self.metrics.bot_barge_ins.inc()
        return True

    def act(self, call: Call, action: CallAction) -> None:
        """Run ``action`` beside the call; its answer joins the call's events."""
        call.tasks.append(asyncio.create_task(self._act(call, action), name=f"act-{call.id}"))

    async def _act(self, call: Call, action: CallAction) -> None:
        started = time.monotonic()
        try:
            result = await self.actions.run(call.id, call.caller, action)
            answered = ActionAnswered(action, result=result)
            outcome = "ok"
        except ActionFailed as e:
            log.warning("call %s: action %s failed: %s", call.id, action.intent, e)
            answered = ActionAnswered(action, failed=str(e))
            outcome = "failed"
        except Exception as e:  # whatever it was, the caller must not be left waiting
            log.exception("call %s: action %s failed", call.id, action.intent)
            answered = ActionAnswered(action, failed=f"it could not be asked ({type(e).__name__})")
            outcome = "failed"
        self.metrics.bot_actions.labels(outcome).observe(time.monotonic() - started)
        if not call.ended.is_set():
            call.events.put_nowait(answered)

    def hang_up(
        self, call: Call, reason: str, end_call: Callable[[str, str], Awaitable[None]]
    ) -> None:
        """End the call once the goodbye has been heard."""

        async def after_goodbye() -> None:
            peer = call.caller_leg().peer
            deadline = time.monotonic() + GOODBYE_WAIT
            while peer is not None and peer.outbound.queued_seconds > 0:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)  # the last packets on their way
            # only a call still the agent's, whose dialog ended: a rule or a key may have
            # put it in line meanwhile, or a person taken it
            if call.state not in BOT_STATES or call.bot is None:
                return
            if call.bot.state != DialogState.ENDED:
                return
            with contextlib.suppress(Exception):
                await end_call(call.id, reason)

        call.tasks.append(asyncio.create_task(after_goodbye(), name=f"goodbye-{call.id}"))

    async def close(self) -> None:
        await self.actions.close()
