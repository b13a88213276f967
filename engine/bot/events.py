"""What the virtual agent hears besides the caller: the engine's word that the call is
now its to answer, and the answers of the business's systems. They go through the
call's analysis stages in order with its media events (``engine.analysis``)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.bot.dialog import CallAction


@dataclass(frozen=True, slots=True)
class BotStart:
    """The caller is on the line (the call is active): time for the greeting."""


@dataclass(frozen=True, slots=True)
class ActionAnswered:
    """An action's outcome: the JSON the system answered, or why there is none."""

    action: CallAction
    result: object = None
    failed: str | None = None


BotInput = BotStart | ActionAnswered
