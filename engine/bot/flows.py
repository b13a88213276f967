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
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_FILE_BYTES = 256 * 1024  # a flow is a few pages of YAML; more is a mistake
MAX_EXAMPLES = 2000  # phrasings in one flow: each costs a little on every utterance
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
SlotType = Literal["digits", "number", "yes_no", "amount", "text"]
Then = Literal["ask_more", "end", "handoff"]


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

    @model_validator(mode="after")
    def _lengths(self) -> Slot:
        if self.length is not None and self.type != "digits":
            raise ValueError("length: is for digits slots only")
        if self.min_length > self.max_length:
            raise ValueError("min_length: is more than max_length")
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


class Intent(_Strict):
    name: Name
    examples: list[Annotated[str, Field(min_length=2)]] = Field(min_length=1)
    slots: list[Slot] = []
    action: Action | None = None
    say: str | None = None  # a template: {slot} and, after an action, {result.field}
    answer: Literal["knowledge"] | None = None  # the best knowledge-base article
    then: Then = "ask_more"
    skill: str | None = None  # the queue (skill) a hand-off from this intent goes to

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


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice (PyYAML keeps the last, silently)."""

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


def parse_flow(text: str, path: Path | str, default_id: str | None = None) -> Flow:
    """A flow from a file's text; ``FlowError`` names the line of the first mistake."""
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
    if default_id is not None:
        data.setdefault("id", default_id)
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
    known = {f for m in (Flow, Intent, Slot, Action) for f in m.model_fields}
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_flows(folder: Path | str) -> list[Flow]:
    """Every ``*.yaml``/``*.yml`` flow of a folder, sorted by file name. One bad file
    refuses them all: an engine starting on part of a business's flows would answer
    some callers with the wrong one."""
    flows: list[Flow] = []
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix in (".yaml", ".yml"))
    for p in paths:
        try:
            if p.stat().st_size > MAX_FILE_BYTES:  # before reading it, not after
                raise FlowError(p, None, f"larger than {MAX_FILE_BYTES // 1024} KiB")
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise FlowError(p, None, f"cannot be read: {e}") from None
        flows.append(parse_flow(text, p, default_id=_id_of(p)))
    _check_together(flows, paths)
    return flows


def _id_of(path: Path) -> str | None:
    stem = path.stem.lower().replace("-", "_")
    return stem if re.fullmatch(r"[a-z][a-z0-9_]{0,39}", stem) else None


def _check_together(flows: list[Flow], paths: Sequence[Path]) -> None:
    seen: dict[str, Path] = {}
    numbers: dict[str, Path] = {}
    defaults = [p for f, p in zip(flows, paths, strict=True) if not f.numbers]
    for f, p in zip(flows, paths, strict=True):
        if f.id in seen:
            raise FlowError(p, None, f"flow id {f.id!r} is also the id of {seen[f.id]}")
        seen[f.id] = p
        for n in f.numbers:
            if n in numbers:
                raise FlowError(p, None, f"number {n!r} is also answered by {numbers[n]}")
            numbers[n] = p
    if len(defaults) > 1:
        raise FlowError(defaults[1], None, f"a second flow without numbers ({defaults[0]})")


def flow_for(flows: Sequence[Flow], dialled: str | None) -> Flow | None:
    """The flow that answers a call to ``dialled`` (None: an in-app call): the one
    listing that number, else the one listing none."""
    if dialled is not None:
        for f in flows:
            if dialled in f.numbers:
                return f
    return next((f for f in flows if not f.numbers), None)
