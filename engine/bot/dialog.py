"""The virtual agent's side of one conversation, sans-IO: what the caller said (or
keyed) goes in, what to say and do comes out.

Theory of operation
-------------------
A ``Dialog`` walks one caller through a flow (``engine.bot.flows``). It never waits,
speaks or calls anything itself: each input returns the outputs the engine carries
out, in order, and the engine tells it what came of the ones that take time (an
action's JSON, a knowledge-base answer):

    output        the engine
    Say           speaks the text to the caller (a new Say may cut the caller off
                  from nothing: barge-in is the engine's, on the caller's voice)
    CallAction    POSTs the intent and slots to the business's system, then calls
                  ``action_done(result)`` or ``action_failed(reason)``
    CheckIdentity checks the factor the caller gave against their record (or the
                  business's own check), then calls ``checked(outcome, customer_id)``
    SendCode      texts a one-time code to the number on the caller's record through
                  the business's SMS sender, then calls ``code_sent(ok)``
    AskBrain      asks the LLM (if one is set up) which intent words no example
                  matched mean, then calls ``brain_chose(question, intent, slots)``
    AskKnowledge  looks the question up, then calls ``answered(text or None)``
    HandOff       puts the caller in line for a person with what was learnt
    End           hangs up once the goodbye has been said

The states, and what moves them (``TRANSITIONS`` is the whole table; an input a state
does not list is ignored, e.g. words said while an action is under way):

    state       input                     next
    start       start                     listening (the greeting said), confirming
                                          (a returning caller asked about their open
                                          request)
    listening   heard                     listening (not understood, or asked again),
                                          filling (a slot to learn), confirming,
                                          waiting (an action or answer under way),
                                          handed_off, ended
    filling     heard, keys               filling (not read: asked again), confirming,
                                          waiting, listening, handed_off, ended
    confirming  heard, keys               filling (a "no": asked again), confirming
                                          (unclear), waiting, listening, handed_off,
                                          ended
    waiting     action_done, action_failed,
                answered                  listening, handed_off, ended
    waiting     checked                   filling (asked again), waiting (the action
                                          under way), listening, handed_off, ended
    waiting     code_sent                 filling (the code asked for), handed_off
    waiting     brain                     as heard: the brain's intent begun, or not
                                          understood
    any         stop                      stopped (a person or a hang-up took over)

A turn the agent cannot use (no intent, a slot it cannot read, neither yes nor no)
counts; ``max_failed_turns`` in a row hands the caller to a person, as does an intent
whose ``then`` is ``handoff``, a failed action, and a question the knowledge base
cannot answer. While a slot is asked for, the caller may ask for something else
instead: an intent heard then is followed ("actually, I want to talk to a person").
A contentless line ("Hi," cut off by the endpointer, "um") is no failed turn: the
agent waits for the rest, and asks once more only after a second one.

Verification. Before an intent that says ``verify`` acts, the caller proves who they
are (the flow's ``verify``): if their record is not known (no caller ID or app token
matched one) the agent asks for the phone number on the account, then for the factor
(a PIN, a date of birth, an account's last four), keyed or said. That answer is a
secret (``secret_pending``): the engine masks it while it is asked for, the dialog
never reads it back, stores it in a slot or hands it to a person. A wrong answer is
asked again up to ``max_attempts``; then, or when the record is locked, a person takes
over with "not verified" as the reason. A caller whose app's signed token vouched for
them is verified already.

A returning caller (``Known.open_task``: their last request within the window was left
open) is asked about it instead of the greeting; yes takes it up again with what they
gave then, no (or another request) starts afresh.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Literal

from engine.bot.flows import FACTOR_LENGTHS, Flow, Intent, Slot, template_fields
from engine.bot.flows import Verify as FlowVerify
from engine.bot.understand import IntentMatcher, has_content, read_keys, read_slot, spoken


class State(enum.StrEnum):
    START = "start"
    LISTENING = "listening"
    FILLING = "filling"
    CONFIRMING = "confirming"
    WAITING = "waiting"
    HANDED_OFF = "handed_off"
    ENDED = "ended"
    STOPPED = "stopped"


Input = Literal[
    "start",
    "heard",
    "keys",
    "action_done",
    "action_failed",
    "answered",
    "checked",
    "code_sent",
    "brain",
    "stop",
]
S = State
KEYED_STATES = (S.FILLING, S.CONFIRMING)  # a key answers the agent, not the key menu
BOT_STATES = ("active",)  # the call's states in which the agent has it: speaks, takes keys
_TALKING = frozenset({S.LISTENING, S.FILLING, S.CONFIRMING, S.WAITING, S.HANDED_OFF, S.ENDED})
TRANSITIONS: dict[tuple[State, Input], frozenset[State]] = {
    (S.START, "start"): frozenset({S.LISTENING, S.CONFIRMING}),
    (S.LISTENING, "heard"): _TALKING,
    (S.FILLING, "heard"): _TALKING,
    (S.FILLING, "keys"): _TALKING,
    (S.CONFIRMING, "heard"): _TALKING,
    (S.CONFIRMING, "keys"): _TALKING,
    (S.WAITING, "action_done"): frozenset({S.LISTENING, S.HANDED_OFF, S.ENDED}),
    (S.WAITING, "action_failed"): frozenset({S.HANDED_OFF}),
    (S.WAITING, "answered"): frozenset({S.LISTENING, S.HANDED_OFF, S.ENDED}),
    (S.WAITING, "checked"): frozenset({S.FILLING, S.WAITING, S.LISTENING, S.HANDED_OFF, S.ENDED}),
    (S.WAITING, "code_sent"): frozenset({S.FILLING, S.HANDED_OFF}),
    (S.WAITING, "brain"): _TALKING,
}
for _s in State:
    if _s not in (S.HANDED_OFF, S.ENDED, S.STOPPED):
        TRANSITIONS[(_s, "stop")] = frozenset({S.STOPPED})


MAX_KEYS = 32  # keys kept towards one answer: a stuck key never grows it


class InvalidTransition(Exception):
    """The dialog was moved where its table does not go: a bug here, not the caller's."""


# -- outputs -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Say:
    text: str


@dataclass(frozen=True, slots=True)
class CallAction:
    intent: str
    url: str
    timeout: float
    slots: dict[str, str]


@dataclass(frozen=True, slots=True)
class CheckIdentity:
    """Is ``value`` the caller's ``factor``? Of the record ``customer_id`` if it is
    known, else of the one with the phone number ``account`` the caller gave."""

    factor: str
    value: str = field(repr=False)  # never in a log line by accident
    customer_id: str | None
    account: str | None
    attempt: int


@dataclass(frozen=True, slots=True)
class AskBrain:
    """The caller's words matched no intent: ask the brain (an LLM, when one is set
    up) which of the flow's intents they mean."""

    question: str


@dataclass(frozen=True, slots=True)
class SendCode:
    """Text a one-time code to the phone of record ``customer_id`` (or of the record
    with the phone number ``account``)."""

    customer_id: str | None
    account: str | None


@dataclass(frozen=True, slots=True)
class AskKnowledge:
    intent: str
    question: str


@dataclass(frozen=True, slots=True)
class HandOff:
    """The caller goes to a person, with what the agent learnt: nobody asks again."""

    reason: str
    intent: str | None
    slots: dict[str, str]
    summary: str
    skill: str | None = None  # the queue the intent names, if it names one


@dataclass(frozen=True, slots=True)
class End:
    pass


Output = Say | CallAction | CheckIdentity | SendCode | AskBrain | AskKnowledge | HandOff | End
Checked = Literal["ok", "wrong", "locked", "failed"]


@dataclass(frozen=True, slots=True)
class Known:
    """What the engine knew of the caller before the greeting."""

    customer_id: str | None = None  # their record, from caller ID or the app's token
    verified_by: str | None = None  # "app_token": the business's app vouched for them
    # their last request, left open, within the returning window: (intent, its slots)
    open_task: tuple[str, dict[str, str]] | None = None


@dataclass
class Task:
    """The intent under way and what has been learnt for it."""

    intent: Intent
    question: str  # the caller's words that asked for it
    slots: dict[str, str] = field(default_factory=dict)
    confirmed: set[str] = field(default_factory=set)  # slots the caller said yes to
    pending: Slot | None = None  # being asked for, or read back


class Dialog:
    def __init__(
        self, flow: Flow, matcher: IntentMatcher | None = None, known: Known | None = None
    ) -> None:
        self.flow = flow
        self.matcher = matcher or IntentMatcher(flow)
        self.state = State.START
        self.task: Task | None = None
        self.failed_turns = 0
        self.idle_turns = 0  # contentless lines in a row ("Hi,", "um")
        known = known or Known()
        self.known = known
        self.customer_id = known.customer_id
        self.verified_by = known.verified_by
        self.account: str | None = None  # the phone number the caller gave, if asked
        self.attempts = 0  # wrong answers to the verification in this call
        # an answer is being checked: more digits said meanwhile ("I said 4 3 2 1", the
        # rest of a PIN the endpointer cut) are as secret as the answer
        self.checking = False
        self.declined: str | None = None  # a returning caller said no to this request
        self.brain = False  # an LLM is asked what words no example matched mean
        self.asked_more = False  # the last prompt was "anything else?"
        self.done: list[str] = []  # intents completed in this call, in order
        # what the caller gave for those (never a secret): a person taking the call
        # later sees "order 83016" though the caller then asked for something else
        self.learnt: dict[str, str] = {}
        self._last_input: Input = "start"  # the input being handled (for the table)
        self._keys = ""  # keys pressed towards an answer, not yet whole

    # -- inputs ----------------------------------------------------------------------

    def start(self) -> list[Output]:
        self._expect("start")
        offered = self._open_task()
        if offered is not None:
            task, topic = offered
            self.task = task
            task.pending = _RESUME
            self._move("start", S.CONFIRMING)
            return [Say(self.flow.returning.replace("{topic}", topic))]
        self._move("start", S.LISTENING)
        return [Say(self.flow.greeting)]

    def _open_task(self) -> tuple[Task, str] | None:
        """The returning caller's open request, if its intent is still in the flow and
        says how to ask about it, with every slot it names."""
        if self.known.open_task is None:
            return None
        name, given = self.known.open_task
        intent = next((i for i in self.flow.intents if i.name == name), None)
        if intent is None or intent.topic is None:
            return None
        # only what the topic reads out: the caller says yes to that, and anything else
        # the request needs is asked again
        named = {f.split(".", 1)[0] for f in template_fields(intent.topic)}
        kept = {s.name: given[s.name] for s in intent.slots if s.name in named and s.name in given}
        if set(kept) != named:  # a slot the topic names was not given then
            return None
        topic = render(intent.topic, intent, kept, None)
        return Task(intent, "", kept, confirmed=set(kept)), topic

    def heard(self, text: str) -> list[Output]:
        """A final transcript of the caller."""
        if not self._accepts("heard") or not text.strip():
            return []
        self._keys = ""  # keys pressed before the caller spoke answer nothing now
        if self.state == S.LISTENING:
            if not has_content(text) and not self.asked_more:
                # "Hi," cut off by the endpointer, "um": the rest is coming. A second
                # one in a row is asked what they need, without counting a failure
                self.idle_turns += 1
                if self.idle_turns < 2:
                    return []
                self.idle_turns = 0
                self._move(self._last_input, S.LISTENING)
                return [Say(WHAT_ELSE)]
            self.idle_turns = 0
            return self._listening(text)
        if self.state == S.FILLING:
            return self._filling(text, read_slot(self._pending(), text))
        return self._confirming(text, read_slot(_YES_NO, text))

    def keys(self, keys: str) -> list[Output]:
        """Keys pressed on the keypad, ``#`` ending them (one key for yes or no)."""
        if not self._accepts("keys"):
            return []
        if self.state == S.FILLING:
            return self._filling(None, read_keys(self._pending(), keys))
        return self._confirming(None, read_keys(_YES_NO, keys))

    def key(self, digit: str) -> list[Output]:
        """One key as the phone sends it. Keys add up until ``#``, or until they are
        a whole answer: one key for yes or no, a fixed number of digits. Keys pressed
        while nothing is asked for are not kept (they answer no question)."""
        if self.state not in (S.FILLING, S.CONFIRMING):
            self._keys = ""
            return []
        self._keys = (self._keys + digit)[-MAX_KEYS:]
        slot = _YES_NO if self.state == S.CONFIRMING else self._pending()
        whole = (
            digit == "#"
            or slot.type == "yes_no"
            or (
                slot.type == "digits" and slot.length is not None and len(self._keys) == slot.length
            )
        )
        if not whole:
            return []
        keys, self._keys = self._keys, ""
        return self.keys(keys)

    def action_done(self, result: object) -> list[Output]:
        """The business's system answered ``result`` (its JSON)."""
        self._expect("action_done")
        task = self._task()
        try:
            text = render(task.intent.say or "", task.intent, task.slots, result)
        except KeyError as e:
            # the system's answer lacks what the template says: never speak a hole
            return self.action_failed(f"its answer has no {e.args[0]}")
        return self._finish(task, [Say(text)] if text else [])

    def action_failed(self, reason: str) -> list[Output]:
        """The business's system did not answer in time, or answered an error."""
        self._expect("action_failed")
        task = self._task()
        return [Say(self.flow.apology), *self._hand_off(f"{task.intent.name}: {reason}")]

    def answered(self, text: str | None) -> list[Output]:
        """The knowledge base's answer to the task's question (None: it has none)."""
        self._expect("answered")
        task = self._task()
        if text is None:
            return self._hand_off(f"{task.intent.name}: no answer in the knowledge base")
        return self._finish(task, [Say(text)])

    def checked(self, outcome: Checked, customer_id: str | None = None) -> list[Output]:
        """What came of ``CheckIdentity``: ``ok`` (of record ``customer_id``), ``wrong``,
        ``locked`` (the record takes no more tries for now) or ``failed`` (the
        business's check could not be asked)."""
        self._expect("checked")
        self.checking = False
        task = self._task()
        verify = self._verify()
        if outcome == "ok":
            self.verified_by = verify.factor
            self.customer_id = customer_id or self.customer_id
            self.attempts = 0
            return [Say(self.flow.verified), *self._next_slot(task)]
        if outcome == "failed":
            return [Say(self.flow.apology), *self._hand_off("verification could not be checked")]
        # a locked record sounds like a wrong answer: the caller must not learn that the
        # number they gave has an account (the reason, which they may see, neither)
        self.attempts += 1
        if self.attempts >= verify.max_attempts:
            why = f"{self.attempts} wrong answers"
            return [Say(self.flow.not_verified), *self._hand_off(f"not verified ({why})")]
        task.pending = self._factor_slot()
        self._move(self._last_input, S.FILLING)
        return [Say(f"{verify.retry} {verify.prompt}")]

    def code_sent(self, ok: bool) -> list[Output]:
        """The one-time code was texted (``ok``), or could not be: no phone on the
        record, no record, the SMS sender failed. The caller is not told which."""
        self._expect("code_sent")
        task = self._task()
        if not ok:
            return [Say(self.flow.apology), *self._hand_off("no one-time code could be sent")]
        task.pending = self._factor_slot()
        self._move(self._last_input, S.FILLING)
        return [Say(task.pending.prompt)]

    @property
    def handing_off(self) -> bool:
        """The request under way ends with a person (``then: handoff``) and the agent
        is still learning what it needs first (the PIN): it routes the caller itself."""
        return (
            self.task is not None
            and self.task.intent.then == "handoff"
            and self.state in (S.FILLING, S.CONFIRMING, S.WAITING)
        )

    @property
    def secret_pending(self) -> bool:
        """The caller is being asked for a secret, or their answer is being checked:
        what they say or key now is masked."""
        if self.state == S.WAITING and self.checking:
            return True
        return (
            self.state == S.FILLING
            and self.task is not None
            and self.task.pending is not None
            and self.task.pending.secret
        )

    def task_record(self) -> dict[str, object] | None:
        """The request under way or last finished, as kept with the call: a caller back
        soon is asked about it if it was left open. Never a secret slot."""
        task = self.task
        if task is None:
            if self.done:
                return {"intent": self.done[-1], "slots": {}, "done": True}
            if self.declined is not None:  # not what they call about: never offered again
                return {"intent": self.declined, "slots": {}, "done": True}
            return None
        return {"intent": task.intent.name, "slots": _shown(task), "done": False}

    def stop(self) -> None:
        """A person (escalation, an agent, a hang-up) took the call over."""
        if self._accepts("stop"):
            self._move("stop", S.STOPPED)

    # -- the turns -------------------------------------------------------------------

    def _listening(self, text: str) -> list[Output]:
        found = self.matcher.match(text)
        if found is None:
            if self.asked_more:  # "Is there anything else I can help you with?"
                answer = read_slot(_YES_NO, text)
                if answer == "no":
                    return self._end()
                if answer == "yes":  # "yes, please": what is it, then?
                    self.asked_more = False
                    self._move(self._last_input, S.LISTENING)
                    return [Say(WHAT_ELSE)]
            if self.brain:  # the words matched no example: the brain may see the meaning
                self._move(self._last_input, S.WAITING)
                return [AskBrain(text)]
            return self._not_understood(self.flow.fallback)
        self.asked_more = False
        return self._begin(self.flow.intent(found.intent), text)

    def brain_chose(self, question: str, intent: str | None, slots: dict[str, str]) -> list[Output]:
        """What the brain made of ``question``: one of the flow's intents, with what it
        read for its slots, or None. It can choose nothing else (never an action of its
        own), a slot it fills must read as one (digits that fit), a secret is never its
        to fill, and it never speaks: the flow's lines do."""
        self._expect("brain")
        self.asked_more = False
        chosen = next((i for i in self.flow.intents if i.name == intent), None)
        if chosen is None:
            return self._not_understood(self.flow.fallback)
        return self._begin(chosen, question, given=slots)

    def _begin(
        self, intent: Intent, text: str, given: dict[str, str] | None = None
    ) -> list[Output]:
        self.failed_turns = 0
        task = self.task = Task(intent, text)
        for slot in intent.slots:  # what the brain read, if it reads as the slot's
            if given and slot.name in given and not slot.secret:
                value = read_slot(slot, str(given[slot.name]))
                if value is not None and slot.type != "text":
                    task.slots[slot.name] = value
        if intent.then == "handoff" and not (intent.slots or intent.action or intent.verify):
            return self._hand_off(f"asked for {intent.name}")
        for slot in intent.slots:
            # digits said with the request fill their slot ("where is order 83016"),
            # if they fit it; an amount, a yes, a no or free text never does: "a refund
            # for order 83016" says no amount, and they answer a question not yet asked
            if slot.type == "digits" and not slot.secret:
                value = read_slot(slot, text)
                if value is not None:
                    task.slots[slot.name] = value
        return self._next_slot(task)

    def _next_slot(self, task: Task) -> list[Output]:
        """Ask for the first slot not yet known, read back the first not yet confirmed
        (a number said with the request too), else act."""
        for slot in task.intent.slots:
            if slot.name not in task.slots:
                task.pending = slot
                self._move(self._last_input, S.FILLING)
                return [Say(slot.prompt)]
            if slot.confirm and slot.name not in task.confirmed:
                task.pending = slot
                self._move(self._last_input, S.CONFIRMING)
                return [Say(f"Did you say {spoken(slot, task.slots[slot.name])}?")]
        if task.intent.verify and self.verified_by is None:
            verify = self._verify()
            # the record first, when caller ID and the app found none
            ask_number = self.customer_id is None and self.account is None
            if not ask_number and verify.factor == "otp":
                # the code is texted first; it is asked for once the sender took it
                self._move(self._last_input, S.WAITING)
                return [SendCode(self.customer_id, self.account)]
            slot = _ACCOUNT if ask_number else self._factor_slot()
            task.pending = slot
            self._move(self._last_input, S.FILLING)
            return [Say(verify.identify if slot is _ACCOUNT else slot.prompt)]
        task.pending = None
        return self._act(task)

    def _verify(self) -> FlowVerify:
        if self.flow.verify is None:  # the flow's check refuses an intent without one
            raise InvalidTransition("verification asked for by a flow without verify")
        return self.flow.verify

    def _factor_slot(self) -> Slot:
        verify = self._verify()
        least, most = FACTOR_LENGTHS[verify.factor]
        length = verify.length if verify.factor == "pin" else None
        # built, not validated: its name is one no flow's slot can have
        return Slot.model_construct(
            name=_FACTOR,
            type="digits",
            prompt=verify.prompt,
            length=length or (least if least == most else None),
            min_length=least,
            max_length=most,
            secret=True,
        )

    def _filling(self, text: str | None, value: str | None) -> list[Output]:
        task, slot = self._task(), self._pending()
        if value is None:
            # not the answer: maybe the caller asks for something else instead
            found = self.matcher.match(text) if text is not None else None
            if found is not None and found.intent != task.intent.name:
                # words said for a secret fill nothing else, and are no one's question
                asked = "" if slot.secret else text or ""
                return self._begin(self.flow.intent(found.intent), asked)
            return self._not_understood(f"{slot.retry} {slot.prompt}")
        self.failed_turns = 0
        if slot is _ACCOUNT:  # the phone number on the account
            self.account = value
            return self._next_slot(task)
        if slot.name == _FACTOR:  # never kept: checked, and gone
            self._move(self._last_input, S.WAITING)
            self.checking = True
            factor = self._verify().factor
            return [CheckIdentity(factor, value, self.customer_id, self.account, self.attempts + 1)]
        task.slots[slot.name] = value
        return self._next_slot(task)

    def _confirming(self, text: str | None, answer: str | None) -> list[Output]:
        task, slot = self._task(), self._pending()
        if slot is _RESUME:
            return self._resuming(task, text, answer)
        # a number said instead of yes ("no, 8 3 0 1 7") corrects it; a yes/no or free
        # text slot has nothing to tell a correction from an answer by
        correctable = slot.type not in ("yes_no", "text")
        value = read_slot(slot, text) if text is not None and correctable else None
        if value is not None and value != task.slots[slot.name]:
            # "no, it's 8 3 0 1 7": the correction is the answer, read back in turn
            task.slots[slot.name] = value
            self._move(self._last_input, S.CONFIRMING)
            return [Say(f"Did you say {spoken(slot, value)}?")]
        if answer == "yes":
            self.failed_turns = 0
            task.confirmed.add(slot.name)
            return self._next_slot(task)
        if answer == "no":
            self.failed_turns = 0
            del task.slots[slot.name]
            self._move(self._last_input, S.FILLING)
            return [Say(f"Sorry. {slot.prompt}")]
        return self._not_understood(
            f"Please say yes or no. Did you say {spoken(slot, task.slots[slot.name])}?"
        )

    def _resuming(self, task: Task, text: str | None, answer: str | None) -> list[Output]:
        """A returning caller asked whether they call about their open request."""
        if answer == "yes":
            self.failed_turns = 0
            task.question = task.intent.examples[0]
            return self._next_slot(task)
        found = self.matcher.match(text) if text is not None else None
        if found is not None:  # "no, I want to pay a bill": that, then
            self.declined, self.task = task.intent.name, None
            return self._begin(self.flow.intent(found.intent), text or "")
        if answer == "no":
            self.failed_turns = 0
            self.declined, self.task = task.intent.name, None
            self._move(self._last_input, S.LISTENING)
            return [Say(WHAT_ELSE)]
        topic = render(task.intent.topic or "", task.intent, task.slots, None)
        return self._not_understood(
            f"Please say yes or no. {self.flow.returning.replace('{topic}', topic)}"
        )

    def _act(self, task: Task) -> list[Output]:
        intent = task.intent
        if intent.action is not None:
            self._move(self._last_input, S.WAITING)
            a = intent.action
            return [CallAction(intent.name, a.url, a.timeout, dict(task.slots))]
        if intent.answer == "knowledge":
            self._move(self._last_input, S.WAITING)
            return [AskKnowledge(intent.name, task.question)]
        text = render(intent.say or "", intent, task.slots, None)
        return self._finish(task, [Say(text)] if text else [])

    def _finish(self, task: Task, said: list[Output]) -> list[Output]:
        """The task is done: what its intent says comes next."""
        self.done.append(task.intent.name)
        self.learnt.update(_shown(task))
        then = task.intent.then
        if then == "handoff":
            return [*said, *self._hand_off(f"{task.intent.name} needs a person")]
        if then == "end":
            return [*said, *self._end()]
        self.task = None
        self.asked_more = True
        self._move(self._last_input, S.LISTENING)
        return [*said, Say(self.flow.anything_else)]

    def _not_understood(self, again: str) -> list[Output]:
        self.failed_turns += 1
        if self.failed_turns >= self.flow.max_failed_turns:
            return self._hand_off(f"not understood {self.failed_turns} times in a row")
        self._move(self._last_input, self.state)
        return [Say(again)]

    def _hand_off(self, reason: str) -> list[Output]:
        task = self.task
        self._move(self._last_input, S.HANDED_OFF)
        slots = {**self.learnt, **(_shown(task) if task else {})}
        skill = task.intent.skill if task else None
        return [
            Say(self.flow.handoff),
            HandOff(reason, task.intent.name if task else None, slots, self.summary(), skill),
        ]

    def _end(self) -> list[Output]:
        self._move(self._last_input, S.ENDED)
        return [Say(self.flow.goodbye), End()]

    def summary(self) -> str:
        """One line for the agent: what the caller came for and what they gave."""
        parts = []
        if self.done:
            given = ", ".join(f"{k} {v}" for k, v in self.learnt.items())
            parts.append(f"done: {', '.join(self.done)}" + (f" ({given})" if given else ""))
        if self.task is not None and (not self.done or self.task.intent.name != self.done[-1]):
            given = ", ".join(f"{k} {v}" for k, v in _shown(self.task).items())
            parts.append(f"asked: {self.task.intent.name}" + (f" ({given})" if given else ""))
        return "; ".join(parts) or "nothing understood"

    # -- the table -------------------------------------------------------------------

    def _accepts(self, what: Input) -> bool:
        if (self.state, what) in TRANSITIONS:
            self._last_input = what
            return True
        return False

    def _expect(self, what: Input) -> None:
        if not self._accepts(what):
            raise InvalidTransition(f"{what} in state {self.state}")

    def _move(self, what: Input, to: State) -> None:
        allowed = TRANSITIONS.get((self.state, what), frozenset())
        if to not in allowed:
            raise InvalidTransition(f"{self.state} -{what}-> {to}")
        self.state = to
        self._keys = ""  # keys add up towards the question now asked, not an earlier one

    def _task(self) -> Task:
        if self.task is None:
            raise InvalidTransition(f"no task in state {self.state}")
        return self.task

    def _pending(self) -> Slot:
        slot = self._task().pending
        if slot is None:
            raise InvalidTransition(f"no slot asked for in state {self.state}")
        return slot


def _shown(task: Task) -> dict[str, str]:
    """What the caller gave for ``task`` that may be shown: every slot but a secret."""
    secret = {s.name for s in task.intent.slots if s.secret}
    return {k: v for k, v in task.slots.items() if k not in secret}


MAX_FIELD = 200  # characters of one answer field spoken: a status, a date, not a page
_FIELD = re.compile(r"\{([^{}]+)\}")
_YES_NO = Slot(name="yes_no", type="yes_no", prompt="Yes or no?")
# what verification asks for: the number on the account, then the factor (a secret)
# (built, not validated: names no flow's slot can have, so none is taken for them)
_ACCOUNT = Slot.model_construct(
    name="_account", type="digits", prompt="-", min_length=6, max_length=15
)
_FACTOR = "_verification"
# "are you calling about ...?" (said as the flow's ``returning``)
_RESUME = Slot.model_construct(name="_resume", type="yes_no", prompt="-")
WHAT_ELSE = "Sure, what can I help you with?"


def render(template: str, intent: Intent, slots: dict[str, str], result: object) -> str:
    """A ``say`` template filled in; slots as they are read back (digits one by one).
    ``KeyError`` names a field the result does not have."""
    by_name = {s.name: s for s in intent.slots}
    values: dict[str, str] = {}
    for name in template_fields(template):
        head, *path = name.split(".")
        if head == "result":
            value: object = result
            for key in path:
                if not isinstance(value, dict) or key not in value:
                    raise KeyError(name)
                value = value[key]
            if isinstance(value, dict | list) or value is None:
                raise KeyError(name)
            values[name] = " ".join(str(value).split())[:MAX_FIELD]
        else:
            values[name] = spoken(by_name[head], slots[head])
    # one pass: a value that holds "{order}" is said as it is, never filled in again
    return _FIELD.sub(lambda m: values[m.group(1)], template)
