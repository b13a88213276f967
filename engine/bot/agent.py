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
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence

from engine.bot.actions import ActionFailed, Actions
from engine.bot.brain import Brain, Choice
from engine.bot.dialog import (
    BOT_STATES,
    AskBrain,
    CallAction,
    Checked,
    CheckIdentity,
    Dialog,
    Known,
    SendCode,
)
from engine.bot.dialog import State as DialogState
from engine.bot.events import ActionAnswered, BotStart, BrainAnswered, CodeSent, IdentityChecked
from engine.bot.flows import OTP_DIGITS, Flow, flow_for
from engine.bot.flows import Action as FlowAction
from engine.bot.flows import Verify as FlowVerify
from engine.bot.understand import IntentMatcher
from engine.customers import Customers, VerifyOutcome
from engine.livecall import Call
from engine.metrics import Metrics

log = logging.getLogger(__name__)
# the brain's endpoint, model, key and timeout (CCENGINE_BOT_LLM_*)
BrainSettings = tuple[str, str, str | None, float]
CUSTOMER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
CHECK_TIMEOUT = 12.0  # seconds a check may take: the business's own has 10 at most
OTP_MINUTES = 5  # a texted code counts this long
OTP_LIFETIME = 60.0 * OTP_MINUTES
_OUTCOMES: dict[VerifyOutcome, Checked] = {
    VerifyOutcome.OK: "ok",
    VerifyOutcome.WRONG: "wrong",
    VerifyOutcome.NO_FACTOR: "wrong",
    VerifyOutcome.LOCKED: "locked",
}
GOODBYE_WAIT = 30.0  # seconds a goodbye may take to be heard before the call ends anyway


class VirtualAgent:
    def __init__(
        self,
        flows: Sequence[Flow],
        metrics: Metrics,
        secret: str | None,
        customers: Customers | None = None,
        brain: BrainSettings | None = None,
    ) -> None:
        self.flows: list[Flow] = []
        self._matchers: dict[str, IntentMatcher] = {}
        self.use(flows)
        self.metrics = metrics
        self.customers = customers  # where verification looks (None: no records)
        self.actions = Actions(secret)
        self.brain = Brain(*brain, self.actions) if brain is not None else None

    def use(self, flows: Sequence[Flow]) -> None:
        """Answer calls that start from now on with ``flows`` (changed through the API:
        engine/bot/flowset.py). A call talking to the agent keeps the flow it began
        with: its dialog holds that flow and its matcher."""
        # matching tables are built once per flow, not per call, and kept for a flow
        # that did not change
        old = {f.id: (f, self._matchers[f.id]) for f in self.flows}
        matchers = {
            f.id: old[f.id][1] if f.id in old and old[f.id][0] == f else IntentMatcher(f)
            for f in flows
        }
        self.flows, self._matchers = list(flows), matchers

    def attach(self, call: Call, dialled: str | None = None, known: Known | None = None) -> bool:
        """Give ``call`` the flow that answers ``dialled`` (None: an in-app call), with
        what is ``known`` of the caller; False if no flow answers it."""
        flow = flow_for(self.flows, dialled)
        if flow is None:
            return False
        call.bot = Dialog(flow, self._matchers[flow.id], known)
        call.bot.brain = self.brain is not None
        return True

    def prompts(self) -> list[str]:
        """What every flow says whatever the caller asks: synthesised at start, so the
        greeting is not waiting for the voice."""
        out = []
        for f in self.flows:
            out += [f.greeting, f.fallback, f.anything_else, f.handoff, f.goodbye, f.apology]
            out += [s.prompt for i in f.intents for s in i.slots]
            if f.verify is not None:
                v = f.verify
                out += [v.prompt, v.identify, f"{v.retry} {v.prompt}", f.verified, f.not_verified]
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

    def act(self, call: Call, action: CallAction | CheckIdentity | SendCode | AskBrain) -> None:
        """Run ``action`` beside the call; its answer joins the call's events."""
        work: Coroutine[None, None, None]
        if isinstance(action, AskBrain):
            work = self._think(call, action)
        elif isinstance(action, CheckIdentity):
            work = self._check(call, action)
        elif isinstance(action, SendCode):
            work = self._send_code(call, action)
        else:
            work = self._act(call, action)
        call.tasks.append(asyncio.create_task(work, name=f"act-{call.id}"))

    async def _check(self, call: Call, check: CheckIdentity) -> None:
        """Is the caller's answer their record's? Through the flow's own check if it
        has one, else the customers table. Nothing here logs the answer."""
        verify = call.bot.flow.verify if call.bot is not None else None
        started = time.monotonic()
        outcome: Checked
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):  # a stuck database strands nobody
                outcome, customer_id = await self._checked_by(call, check, verify)
        except Exception as e:  # whatever it was, the caller must not be left waiting
            log.warning(
                "call %s: verification could not be checked (%s)", call.id, type(e).__name__
            )
            outcome, customer_id = "failed", check.customer_id
        self.metrics.bot_actions.labels(f"verify_{outcome}").observe(time.monotonic() - started)
        if not call.ended.is_set():
            call.events.put_nowait(IdentityChecked(outcome, customer_id, check.attempt))

    async def _checked_by(
        self, call: Call, check: CheckIdentity, verify: FlowVerify | None
    ) -> tuple[Checked, str | None]:
        if check.factor == "otp":
            return _code_matches(call, check.value)
        if verify is not None and verify.action is not None:
            return await self._ask_business(call, check, verify.action)
        if self.customers is None:
            return "failed", check.customer_id
        customer_id = check.customer_id
        if customer_id is None and check.account is not None:
            found = await self.customers.by_phone(check.account)
            customer_id = found.id if found is not None else None
        result = await self.customers.verify(customer_id, check.factor, check.value)
        if result.outcome == VerifyOutcome.NO_FACTOR:
            return "wrong", None  # the caller is told what a wrong answer gets
        return _OUTCOMES[result.outcome], customer_id

    async def _think(self, call: Call, ask: AskBrain) -> None:
        """Ask the brain what the caller means; "not understood" whatever goes wrong."""
        choice = Choice(None, {})
        try:
            if self.brain is not None and call.bot is not None:
                # the caller's lines as the call tells them: redacted, a PIN "[secret]"
                choice = await self.brain.choose(call.bot.flow, call.caller_said)
        except Exception as e:  # the caller must not be left waiting
            log.warning("call %s: the brain failed (%s)", call.id, type(e).__name__)
        if not call.ended.is_set():
            call.events.put_nowait(BrainAnswered(ask.question, choice.intent, choice.slots))

    async def _send_code(self, call: Call, send: SendCode) -> None:
        """Text a one-time code to the phone on the caller's record through the flow's
        SMS sender. The code is in that request only: never logged or stored."""
        verify = call.bot.flow.verify if call.bot is not None else None
        ok = False
        try:
            record = None
            if self.customers is not None:
                if send.customer_id is not None:
                    record = await self.customers.get(send.customer_id)
                elif send.account is not None:
                    record = await self.customers.by_phone(send.account)
            if verify is not None and verify.send_code is not None and record and record.phones:
                code = f"{secrets.randbelow(10**OTP_DIGITS):0{OTP_DIGITS}d}"
                call.otp = (code, time.monotonic() + OTP_LIFETIME, record.id)
                payload = {
                    "call_id": call.id,
                    "customer_id": record.id,
                    "phone": record.phones[0],
                    "code": code,
                    "text": f"Your code is {code}. It is valid for {OTP_MINUTES} minutes.",
                }
                a = verify.send_code
                await self.actions.post(a.url, a.timeout, payload, what="send_code")
                ok = True
        except ActionFailed as e:
            log.warning("call %s: the one-time code could not be sent: %s", call.id, e)
        except Exception as e:  # the caller must not be left waiting
            log.warning(
                "call %s: the one-time code could not be sent (%s)", call.id, type(e).__name__
            )
        if not call.ended.is_set():
            call.events.put_nowait(CodeSent(ok))

    async def _ask_business(
        self, call: Call, check: CheckIdentity, action: FlowAction
    ) -> tuple[Checked, str | None]:
        payload = {
            "call_id": call.id,
            "customer_id": check.customer_id,
            "account": check.account,
            "factor": check.factor,
            "value": check.value,
        }
        try:
            answer = await self.actions.post(action.url, action.timeout, payload, what="verify")
        except ActionFailed as e:
            log.warning("call %s: verification check failed: %s", call.id, e)
            return "failed", check.customer_id
        if not isinstance(answer, dict) or not isinstance(answer.get("verified"), bool):
            log.warning("call %s: verification check answered no verified true/false", call.id)
            return "failed", check.customer_id
        found = answer.get("customer_id")
        # the call's customer_id column holds 64 characters of an id, nothing stranger
        named = isinstance(found, str) and CUSTOMER_ID.fullmatch(found) is not None
        customer_id = found if named else check.customer_id
        if answer["verified"]:
            if customer_id is None:  # verified as whom? never as the number they typed
                log.warning("call %s: verification check answered no customer_id", call.id)
                return "failed", None
            return "ok", customer_id
        return ("locked" if answer.get("locked") is True else "wrong"), customer_id

    async def _act(self, call: Call, action: CallAction) -> None:
        started = time.monotonic()
        try:
            who = (call.customer_id, call.verified_by)
            result = await self.actions.run(call.id, call.caller, action, who)
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


def _code_matches(call: Call, value: str) -> tuple[Checked, str | None]:
    """The caller's answer against the code texted to them, and the record whose phone
    got it; a code used or run out proves nothing."""
    if call.otp is None:
        return "wrong", None
    code, until, customer_id = call.otp
    if time.monotonic() > until:
        return "wrong", customer_id
    if hmac.compare_digest(code, value):
        call.otp = None  # one use
        return "ok", customer_id
    return "wrong", customer_id
