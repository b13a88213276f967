"""The virtual agent's analysis stage: it takes its turn on each event of a call it
answers, and says what the dialog says (engine/bot/dialog.py).

It runs after Facts and before Assist and Escalate (``engine.analysis.call_stages``),
while the call is ``active``: the agent has the call until someone else does. On

    BotStart                the greeting
    a caller's final        ``Dialog.heard`` with the redacted words (the words as said
                            while a secret is asked for: Redact masked the event)
    a key                   ``Dialog.key``
    ActionAnswered          ``Dialog.action_done`` / ``action_failed``
    IdentityChecked         ``Dialog.checked``; the call is verified (``call.verified``
                            event, the record's ``customer_id`` and ``verified_by``) or
                            the failure told (``call.verification_failed``)
    CodeSent                ``Dialog.code_sent`` (a one-time code was texted, or not)

it turns the dialog's outputs into effects: ``Say`` (with the agent's turn, so that a
caller who barges in cuts off the rest of it), the line in the call's transcript
(speaker ``bot``) and a ``bot.said`` event; ``Act`` for an
action; a knowledge-base answer looked up here (in memory, no IO); ``HangUp`` after the
goodbye. A hand-off is an escalation decision like the rules' (rule ``virtual_agent``,
its evidence the intent, what the caller gave and the dialog's summary), stored, told
and routed by ``Escalate.decided``; the slots become facts of the call and the intent
the call's, so the ring preview, the desk and the summary show them and the agent never
asks again. Once the call is queued or with a person, the dialog is stopped.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable, Iterator

from engine.analysis import (
    Act,
    Emit,
    Escalate,
    Escalated,
    Flow,
    HangUp,
    Item,
    Output,
    Say,
    Write,
    clock,
)
from engine.assist.facts import Fact
from engine.assist.knowledge import KnowledgeBase
from engine.assist.redact import Redactor
from engine.bot import dialog
from engine.bot.dialog import BOT_STATES, KEYED_STATES
from engine.bot.events import (
    ActionAnswered,
    BotStart,
    BrainAnswered,
    CodeSent,
    IdentityChecked,
)
from engine.callstate import SilenceCheck
from engine.escalation import Decision
from engine.events import (
    BotSaid,
    CallVerified,
    CustomerLocked,
    DtmfReceived,
    TranscriptFinal,
    VerificationFailed,
    utcnow,
)
from engine.livecall import Call
from engine.store.models import UtteranceRow

RULE = "virtual_agent"  # the escalation rule id of the agent's hand-offs
WAITING = dialog.State.WAITING
SECRET_GRACE = 2.0  # seconds the caller stays masked after a secret was asked for
MAX_SPOKEN_ANSWER = 400  # characters of an article read out: its first paragraph


class BotTurn:
    def __init__(
        self, knowledge: Callable[[], KnowledgeBase], escalate: Escalate, redactor: Redactor
    ) -> None:
        self.knowledge = knowledge
        self.escalate = escalate
        # what the agent says back (a number read back, an answer) is kept and told as
        # redacted as the caller's own words
        self.redactor = redactor

    def handle(self, call: Call, item: Flow) -> Iterator[Output]:
        d = call.bot
        if d is None or not isinstance(item, Item):
            yield item
            return
        if call.state not in BOT_STATES:
            if d.secret_pending:  # a PIN asked for just before: said now, still masked
                call.secret_until = max(call.secret_until, clock(call) + SECRET_GRACE)
            d.stop()  # queued, with a person, or ended: the agent's part is over
            if isinstance(item.media, IdentityChecked):
                yield from self._checked_late(call, d, item.media)
            yield item
            return
        if isinstance(item.media, SilenceCheck) and d.state != dialog.State.STOPPED:
            if item.media.bot_speaking or d.state == dialog.State.WAITING:
                # the caller is not left in silence while the agent talks or looks
                # something up: their silence counts from when it is done
                call.escalation.observe_phase("bot", item.media.now)
        was_secret = d.secret_pending
        answering = isinstance(item.event, DtmfReceived) and d.state in KEYED_STATES
        asked_person = isinstance(item.event, TranscriptFinal)
        verified = d.verified_by
        outputs = self._input(d, item)
        if isinstance(item.media, IdentityChecked):
            yield from self._checked(call, d, item.media, verified)
        if outputs:
            yield from self._carry_out(call, d, outputs, item, call.bot_turn)
        if was_secret and not d.secret_pending:
            # what began while the secret was asked for, or is said a moment after
            # ("... 2 7", the end of a PIN cut by the endpointer), stays masked
            # (a chat's lines are whole as typed: no grace)
            call.secret_until = clock(call) + (SECRET_GRACE if call.channel != "chat" else 0.0)
        task = d.task_record()
        if task is not None and task != call.bot_task:
            # kept with the call, so a caller back soon is asked about it if still open
            call.bot_task = task
            values = {"bot_task": task, "intent": task["intent"]}
            yield Write(f"call {call.id} bot task", values=values)
        if asked_person and d.handing_off:
            # "a person, please": the agent verifies the caller first, then routes them
            item = dataclasses.replace(item, bot_hands_off=True)
        yield dataclasses.replace(item, answered_bot=True) if answering else item

    @staticmethod
    def _input(d: dialog.Dialog, item: Item) -> list[dialog.Output]:
        ev, media = item.event, item.media
        if isinstance(media, BotStart):
            return d.start() if d.state == dialog.State.START else []
        if isinstance(media, ActionAnswered):
            if d.state != dialog.State.WAITING:
                return []  # the caller went to a person meanwhile
            if media.failed is not None:
                return d.action_failed(media.failed)
            return d.action_done(media.result)
        if isinstance(media, IdentityChecked):
            return d.checked(media.outcome, media.customer_id) if d.state == WAITING else []
        if isinstance(media, CodeSent):
            return d.code_sent(media.ok) if d.state == WAITING else []
        if isinstance(media, BrainAnswered):
            if d.state != WAITING:
                return []
            return d.brain_chose(media.question, media.intent, media.slots)
        # while a secret is asked for, the event is masked: the words as said are the
        # item's alone
        if isinstance(ev, TranscriptFinal) and ev.speaker == "caller":
            return d.heard(item.clear if item.clear is not None else ev.text)
        if isinstance(ev, DtmfReceived):
            return d.key(item.clear if item.clear is not None else ev.digit)
        return []

    @staticmethod
    def _checked(
        call: Call, d: dialog.Dialog, checked: IdentityChecked, before: str | None
    ) -> Iterator[Output]:
        """The call's record and stream learn what verification came to."""
        if d.verified_by is not None and before is None and d.customer_id is not None:
            yield from _verified(call, d.customer_id, d.verified_by)
        elif checked.outcome in ("wrong", "locked"):
            yield Emit(VerificationFailed(call_id=call.id, attempt=checked.attempt))
            if checked.outcome == "locked" and checked.customer_id is not None:
                # for supervisors and webhooks, never on the caller's own stream
                yield Emit(CustomerLocked(customer_id=checked.customer_id))

    @staticmethod
    def _checked_late(call: Call, d: dialog.Dialog, checked: IdentityChecked) -> Iterator[Output]:
        """The answer was checked after the call left the agent (a rule put the caller
        in line meanwhile): a right one still verifies the call, for the person who
        takes it."""
        verify = d.flow.verify
        customer = checked.customer_id or d.customer_id
        if checked.outcome != "ok" or verify is None or customer is None:
            return
        if call.verified_by is None:
            yield from _verified(call, customer, verify.factor)

    def _carry_out(
        self, call: Call, d: dialog.Dialog, outputs: list[dialog.Output], item: Item, turn: int
    ) -> Iterator[Output]:
        """``turn``: the agent's turn when the input came, read once: a barge-in while
        the first words are stored ends it, and the rest must not be said after all."""
        for out in outputs:
            if isinstance(out, dialog.Say):
                yield Say(out.text, BOT_STATES, turn=turn)
                yield from self._said(call, out.text)
            elif isinstance(
                out, dialog.CallAction | dialog.CheckIdentity | dialog.SendCode | dialog.AskBrain
            ):
                yield Act(out)
            elif isinstance(out, dialog.AskKnowledge):
                answer = self._answer(out.question)
                yield from self._carry_out(call, d, d.answered(answer), item, turn)
            elif isinstance(out, dialog.HandOff):
                yield from self._hand_off(call, out, item)
            elif isinstance(out, dialog.End):
                yield HangUp("bot_completed")

    def _said(self, call: Call, said: str) -> Iterator[Output]:
        """The agent's words in the call's transcript (speaker ``bot``, on the caller's
        leg and clock), redacted, then told."""
        text = self.redactor.redact(said).text
        at = round(clock(call), 3)
        row = UtteranceRow(
            id=str(uuid.uuid4()),
            call_id=call.id,
            leg_id=call.caller_leg().id,
            speaker="bot",
            seq=0,
            start=at,
            end=at,
            text=text,
            words=[],
            created_at=utcnow(),
        )
        yield Write(f"call {call.id} bot line {row.id}", row)
        yield Emit(BotSaid(call_id=call.id, utterance_id=row.id, text=text, at=at))

    def _answer(self, question: str) -> str | None:
        found = self.knowledge().suggest(question, k=1)
        return spoken_answer(found[0].answer) if found else None

    def _hand_off(self, call: Call, h: dialog.HandOff, item: Item) -> Iterator[Output]:
        at = clock(call)
        # what the caller asked for; not the call's topic, which the ACD routes by skill
        call.intent = h.intent
        slots = {k: self.redactor.redact(v).text for k, v in h.slots.items()}
        # a value the fact finder already took from the caller's words is not given twice
        known = {f.value for f in call.facts.facts}
        given = [Fact(k, v, "", at) for k, v in slots.items() if v not in known]
        call.new_facts += call.facts.add(given)
        decision = Decision(
            rule_id=RULE,
            reason=f"virtual agent: {h.reason}",
            actions=["route_to_human"],
            priority=0,
            skill=h.skill,
            at=at,
            evidence={
                "intent": h.intent,
                "slots": slots,
                "summary": self.redactor.redact(h.summary).text,
            },
        )
        reason = call.escalation_reason
        yield from self.escalate.decided(call, decision)
        if call.escalation_reason != reason:
            yield Escalated(item)  # Assist then writes the summary with the reason


def _verified(call: Call, customer_id: str, method: str) -> Iterator[Output]:
    """The call is verified: its record and its stream learn who, and how."""
    call.customer_id, call.verified_by = customer_id, method
    values = {"customer_id": customer_id, "verified_by": method}
    yield Write(f"call {call.id} verified", values=values)
    yield Emit(CallVerified(call_id=call.id, customer_id=customer_id, method=method))


def spoken_answer(text: str) -> str:
    """An article as it is read out: its first paragraph, without Markdown marks."""
    first = text.strip().split("\n\n", 1)[0]
    plain = re.sub(r"[*_`#>\[\]]", "", re.sub(r"\]\([^)]*\)", "]", first))
    plain = " ".join(plain.split())
    if len(plain) > MAX_SPOKEN_ANSWER:
        cut = plain[:MAX_SPOKEN_ANSWER]
        plain = cut[: cut.rfind(". ") + 1] if ". " in cut else cut
    return plain
