"""What the virtual agent hears besides the caller: the engine's word that the call is
now its to answer, the answers of the business's systems, and what came of checking
who the caller is. They go through the
call's analysis stages in order with its media events (``engine.analysis``)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.bot.dialog import CallAction, Checked


@dataclass(frozen=True, slots=True)
class BotStart:
    """The caller is on the line (the call is active): time for the greeting."""


@dataclass(frozen=True, slots=True)
class ActionAnswered:
    """An action's outcome: the JSON the system answered, or why there is none."""

    action: CallAction
    result: object = None
    failed: str | None = None


@dataclass(frozen=True, slots=True)
class IdentityChecked:
    """What came of checking the caller's answer to the verification: never the answer.
    ``customer_id``: the record it was checked against, if one was found."""

    outcome: Checked
    customer_id: str | None
    attempt: int


@dataclass(frozen=True, slots=True)
class CodeSent:
    """Whether the one-time code went to the business's SMS sender (never the code)."""

    ok: bool


@dataclass(frozen=True, slots=True)
class BrainAnswered:
    """What the brain made of words no example matched (engine/bot/brain.py)."""

    question: str
    intent: str | None
    slots: dict[str, str]


BotInput = BotStart | ActionAnswered | IdentityChecked | CodeSent | BrainAnswered
