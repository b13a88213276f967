"""Flows: what the virtual agent knows how to do, written by the business as YAML files.

A flow file (one per line of business, or per number the business publishes) says how
the agent greets, what callers ask for (intents, each with example phrasings), what it
must learn before it can help (slots: an order number, a yes or no, an amount), what
to do then (an action: an HTTP call to the business's own system, whose JSON answer is
spoken through a template; or an answer from the knowledge base) and how the turn ends
(ask for more, say goodbye, or hand the caller to a person). For example::

    id: orders
    greeting: Thanks for calling Acme. How can I help you today?
    intents:
      - name: order_status
        examples: [where is my order, track my parcel, has my order shipped]
        slots:
          - name: order
            type: digits
            length: 5
            prompt: What is your order number?
            confirm: true
        action:
          url: http://orders.internal/status
        say: Order {order} is {result.status}.
      - name: person
        examples: [speak to a person, talk to an agent]
        then: handoff

A file with a mistake is refused whole, with the file, the line and the reason
(``FlowError``): a typo in a key (``exmples``), a template naming a slot the intent
does not have (``{ordr}``), a missing greeting. Nothing half-loaded ever answers a
caller.
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_FILE_BYTES = 256 * 1024  # a flow is a few pages of YAML; more is a mistake
MAX_EXAMPLES = 2000  # phrasings in one flow: each costs a little on every utterance
NAME = r"^[a-z][a-z0-9_]{0,39}$"  # a flow's id, an intent's or a slot's name
Name = Annotated[str, Field(pattern=NAME)]
SlotType = Literal["digits", "number", "yes_no", "amount", "text"]
Then = Literal["ask_more", "end", "handoff"]
Source = Literal["file", "api"]  # where a flow came from: the folder, or the API


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Slot(_Strict):
    """One thing the agent must learn from the caller before it can act."""

    name: Name
    type: SlotType
    prompt: str = Field(min_length=1)
    # said when the answer could not be read, before the prompt again
    retry: str = "Sorry, I didn't get that."
    confirm: bool = False  # read the value back and ask yes or no
    # digits: how many (``length`` for exactly that many)
    length: int | None = Field(default=None, ge=1, le=32)
    min_length: int = Field(default=1, ge=1, le=32)
    max_length: int = Field(default=20, ge=1, le=32)
    # a value the caller must not have shown anywhere (a card's last digits): masked in
    # the transcript and events and silenced in the recording while it is asked for,
    # never read back, never handed to a person; only the action gets it
    secret: bool = False

    @model_validator(mode="after")
    def _lengths(self) -> Slot:
        if self.length is not None and self.type != "digits":
            raise ValueError("length: is for digits slots only")
        if self.min_length > self.max_length:
            raise ValueError("min_length: is more than max_length")
        if self.secret and self.confirm:
            raise ValueError("confirm: a secret is never read back")
        if self.secret and self.type not in ("digits", "number"):
            raise ValueError("secret: only digits and number slots can be kept secret")
        return self

    def fits(self, digits: str) -> bool:
        if self.length is not None:
            return len(digits) == self.length
        return self.min_length <= len(digits) <= self.max_length


class Action(_Strict):
    """An HTTP call to the business's own system. The engine POSTs the intent and its
    slots as JSON, signed like a webhook; the JSON it gets back is ``result`` in the
    intent's ``say`` template."""

    url: str = Field(pattern=r"^https?://[^\s]+$")
    timeout: float = Field(default=3.0, gt=0, le=10)


Factor = Literal["pin", "dob", "last4", "otp"]
# what each factor is, as keys or spoken digits: a PIN of 4 to 12, a date of birth as
# DDMMYYYY, an account's last four, a one-time code of six
OTP_DIGITS = 6
OTP_PROMPT = "I've texted a six digit code to the phone on your account. Please key it in."
FACTOR_LENGTHS: dict[str, tuple[int, int]] = {
    "pin": (4, 12),
    "dob": (8, 8),
    "last4": (4, 4),
    "otp": (OTP_DIGITS, OTP_DIGITS),
}


class Verify(_Strict):
    """How the agent proves who the caller is before an intent that says ``verify``:
    the caller's record (found by caller ID, the app's signed token, or the phone
    number they give when neither found it) and one knowledge factor, keyed or said.
    The digits are masked everywhere (see ``Slot.secret``)."""

    factor: Factor = "pin"
    # (a PIN of no fixed ``length`` keyed needs # after it: the default says so)
    prompt: str = Field(
        "For your security, please say your PIN, or key it in followed by the hash key.",
        min_length=1,
    )
    retry: str = "Sorry, that doesn't match our records."
    # asked first when the caller's record is not known yet
    identify: str = Field("What is the phone number on your account?", min_length=1)
    # attempts in this call before a person takes over (the record also locks after
    # CCENGINE_VERIFY_MAX_FAILURES failures in a row, across calls)
    max_attempts: int = Field(default=3, ge=1, le=5)
    # a PIN of exactly this many digits: keys need no # after it
    length: int | None = Field(default=None, ge=4, le=12)
    # the business's own check instead of the customers table: POSTed like an action
    # ({call_id, customer_id, account, factor, value}), it answers {"verified": bool}
    action: Action | None = None
    # factor otp: the business's SMS sender, POSTed like an action ({call_id,
    # customer_id, phone, code, text}) to text the code to the number on the record
    send_code: Action | None = None

    @model_validator(mode="before")
    @classmethod
    def _otp_prompt(cls, data: object) -> object:
        # a PIN's prompt would be wrong for a texted code: its own default
        if isinstance(data, dict) and data.get("factor") == "otp" and "prompt" not in data:
            return {**data, "prompt": OTP_PROMPT}
        return data

    @model_validator(mode="after")
    def _otp(self) -> Verify:
        if (self.factor == "otp") != (self.send_code is not None):
            raise ValueError("send_code: is for factor otp, and factor otp needs it")
        if self.factor == "otp" and self.action is not None:
            raise ValueError("action: a one-time code is checked here, not by the business")
        return self


class Intent(_Strict):
    name: Name
    examples: list[Annotated[str, Field(min_length=2)]] = Field(min_length=1)
    slots: list[Slot] = []
    action: Action | None = None
    say: str | None = None  # a template: {slot} and, after an action, {result.field}
    answer: Literal["knowledge"] | None = None  # the best knowledge-base article
    then: Then = "ask_more"
    skill: str | None = None  # the queue (skill) a hand-off from this intent goes to
    verify: bool = False  # the caller proves who they are first (the flow's ``verify``)
    # how a returning caller is asked about it ("your order {order}"): a template of
    # its slots; an intent without one is never offered again
    topic: str | None = None

    @model_validator(mode="after")
    def _coherent(self) -> Intent:
        names = [s.name for s in self.slots]
        if len(set(names)) != len(names):
            raise ValueError(f"slots: two slots have one name: {names}")
        if self.say is None and self.answer is None and self.then != "handoff":
            raise ValueError("an intent needs say, answer: knowledge, or then: handoff")
        if self.say is not None:
            for field in template_fields(self.say):
                head = field.split(".", 1)[0]
                if head == "result":
                    if self.action is None:
                        raise ValueError(
                            f"say: {{{field}}} needs an action, and the intent has no action"
                        )
                elif head not in names:
                    raise ValueError(f"say: {{{field}}} is not a slot of the intent")
        secret = {s.name for s in self.slots if s.secret}
        for key, template in (("say", self.say), ("topic", self.topic)):
            for field in template_fields(template or ""):
                head = field.split(".", 1)[0]
                if head in secret:
                    raise ValueError(f"{key}: {{{field}}} is secret and is never said")
                if key == "topic" and head not in names:
                    raise ValueError(f"topic: {{{field}}} is not a slot of the intent")
        return self


class Flow(_Strict):
    id: Name
    # dialled numbers (SIP) this flow answers; a flow with none is the default one
    numbers: list[str] = []
    greeting: str = Field(min_length=1)
    fallback: str = "Sorry, I didn't catch that. Could you say it another way?"
    anything_else: str = "Is there anything else I can help you with?"
    handoff: str = "Let me put you through to a colleague who can help."
    goodbye: str = "Thanks for calling. Goodbye."
    apology: str = "Sorry, I can't reach that system right now."
    # a caller back within CCENGINE_RETURNING_HOURS whose last request was left open;
    # {topic} is that intent's ``topic``
    returning: str = "Welcome back. Are you calling about {topic}?"
    # said before a person takes a caller who could not prove who they are
    not_verified: str = "I couldn't verify your identity."
    verified: str = "Thank you, you're verified."
    verify: Verify | None = None
    # turns in a row the agent could not use before the caller goes to a person
    max_failed_turns: int = Field(default=2, ge=1, le=5)
    intents: list[Intent] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Flow:
        names = [i.name for i in self.intents]
        if len(set(names)) != len(names):
            raise ValueError(f"intents: two intents have one name: {sorted(names)}")
        examples = sum(len(i.examples) for i in self.intents)
        if examples > MAX_EXAMPLES:  # each is matched against every caller utterance
            raise ValueError(f"intents: {examples} examples; at most {MAX_EXAMPLES}")
        if self.verify is None and any(i.verify for i in self.intents):
            name = next(i.name for i in self.intents if i.verify)
            raise ValueError(f"verify: intent {name!r} says verify, and the flow has no verify")
        if template_fields(self.returning) != ["topic"]:
            raise ValueError("returning: names {topic} once, and nothing else")
        return self

    def intent(self, name: str) -> Intent:
        return next(i for i in self.intents if i.name == name)


def template_fields(template: str) -> list[str]:
    """The ``{fields}`` a template names ("{result.status}" -> "result.status")."""
    out = []
    for _, field, spec, conv in string.Formatter().parse(template):
        if field is None:
            continue
        if not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-zA-Z0-9_]+)*", field) or spec or conv:
            raise ValueError(f"template field {{{field}}}: only {{name}} or {{result.a.b}}")
        out.append(field)
    return out


# -- loading, with the line of each mistake -------------------------------------------


class FlowError(Exception):
    """A flow file that cannot be used: where, and why."""

    def __init__(self, path: Path | str, line: int | None, reason: str) -> None:
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class FlowConflict(FlowError):
    """Flows each fine alone that cannot answer together: one id twice, a number two
    flows answer, two default flows."""


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice (PyYAML keeps the last, silently), and
    aliases: ``*a`` repeats what ``&a`` names, so a 100 KB file of aliases of aliases
    is millions of examples to check (a gigabyte and seconds of CPU, found in review),
    and a flow never needs one."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a flow: write it out", mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _line_of(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """The 1-based line of the deepest node of ``loc`` that the file has."""
    node, line = root, None
    if node is not None:
        line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == part), None)
            if found is None:
                break
            node, line = found[1], found[0].start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def parse_flow(
    text: str, path: Path | str, default_id: str | None = None, *, flow_id: str | None = None
) -> Flow:
    """A flow from a file's text; ``FlowError`` names the line of the first mistake.
    ``flow_id``: the id the flow must have (the API's path names it), and has if the
    text gives none."""
    if len(text.encode()) > MAX_FILE_BYTES:
        raise FlowError(path, None, f"larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        reason = str(e.problem)
        near = [m.line for m in (e.context_mark, e.problem_mark) if m is not None]
        lines = text.splitlines()
        if any(re.search(r":\s+\{", lines[n]) for n in near if n < len(lines)):
            reason += " (a text with ': ' in it or starting with { must be quoted)"
        raise FlowError(path, mark.line + 1 if mark else None, reason) from None
    except yaml.YAMLError as e:
        raise FlowError(path, None, str(e)) from None
    except (TypeError, ValueError, RecursionError) as e:  # e.g. a list as a key: "? [a, b]"
        raise FlowError(path, None, f"not a flow: {e}") from None
    if not isinstance(data, dict):
        raise FlowError(path, 1, "a flow file is a mapping (id:, greeting:, intents:)")
    if default_id is not None or flow_id is not None:
        data.setdefault("id", flow_id or default_id)
    if flow_id is not None and data["id"] != flow_id:
        reason = f"id: the flow says {data['id']!r}, its name is {flow_id!r}"
        raise FlowError(path, _line_of(root, ["id"]), reason)
    try:
        return Flow.model_validate(data)
    except ValidationError as e:
        # a misspelt key first: it is the mistake, the "field required" it causes is not
        first = min(e.errors(), key=lambda err: err["type"] != "extra_forbidden")
        loc = [p for p in first["loc"] if isinstance(p, int | str)]
        # a model-level check names no field: point at the object it judged
        reason = str(first["msg"]).removeprefix("Value error, ")
        # a check of a whole object names the key it is about first ("say: ...")
        named = re.match(r"([a-z_]+): (.*)", reason)
        if first["type"] == "value_error" and named:
            loc.append(named.group(1))
            reason = named.group(2)
        if first["type"] == "string_type" and isinstance(first.get("input"), dict):
            # YAML reads "{order} is late" and "a: b" as mappings
            reason = "a text with ': ' in it or starting with { must be quoted"
        if first["type"] == "extra_forbidden" and loc:
            reason = f"unknown key {loc[-1]!r}" + _did_you_mean(str(loc[-1]))
        field = ".".join(str(p) for p in loc)
        where = _line_of(root, loc)
        raise FlowError(path, where, f"{field}: {reason}" if field else reason) from None


def _did_you_mean(key: str) -> str:
    known = {f for m in (Flow, Intent, Slot, Action, Verify) for f in m.model_fields}
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class FlowText:
    """A flow with the text it was read from, and where that was (a file's path, or
    the API), so its mistakes and conflicts can name the place."""

    flow: Flow
    text: str
    origin: str
    source: Source = "file"


def load_flows(folder: Path | str) -> list[Flow]:
    """Every ``*.yaml``/``*.yml`` flow of a folder, sorted by file name (``read_flows``)."""
    return [f.flow for f in read_flows(folder)]


def read_flows(folder: Path | str) -> list[FlowText]:
    """Every ``*.yaml``/``*.yml`` flow of a folder with its text, sorted by file name. One
    bad file refuses them all: an engine starting on part of a business's flows would
    answer some callers with the wrong one."""
    flows: list[FlowText] = []
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix in (".yaml", ".yml"))
    for p in paths:
        try:
            if p.stat().st_size > MAX_FILE_BYTES:  # before reading it, not after
                raise FlowError(p, None, f"larger than {MAX_FILE_BYTES // 1024} KiB")
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise FlowError(p, None, f"cannot be read: {e}") from None
        flows.append(FlowText(parse_flow(text, p, default_id=_id_of(p)), text, str(p)))
    check_together(flows)
    return flows


def _id_of(path: Path) -> str | None:
    stem = path.stem.lower().replace("-", "_")
    return stem if re.fullmatch(NAME, stem) else None


def check_together(flows: Iterable[FlowText]) -> None:
    """``FlowConflict`` if ``flows`` cannot answer together, naming the later one."""
    seen: dict[str, str] = {}
    numbers: dict[str, str] = {}
    default: str | None = None
    for f in flows:
        where, id_ = f.origin, f.flow.id
        if id_ in seen:
            raise FlowConflict(where, None, f"flow id {id_!r} is also the id of {seen[id_]}")
        seen[id_] = where
        for n in f.flow.numbers:
            if n in numbers:
                raise FlowConflict(where, None, f"number {n!r} is also answered by {numbers[n]}")
            numbers[n] = where
        if not f.flow.numbers:
            if default is not None:
                raise FlowConflict(where, None, f"a second flow without numbers ({default})")
            default = where


def flow_for(flows: Sequence[Flow], dialled: str | None) -> Flow | None:
    """The flow that answers a call to ``dialled`` (None: an in-app call): the one
    listing that number, else the one listing none."""
    if dialled is not None:
        for f in flows:
            if dialled in f.numbers:
                return f
    return next((f for f in flows if not f.numbers), None)
