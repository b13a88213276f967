"""A running summary an agent can read in five seconds.

Extractive on purpose: every sentence is the caller's own words or a fact
they gave, so nothing in it can be invented. It names why the caller called
(their first utterance that states a need), the facts so far, how they feel,
and why the call escalated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.assist.facts import Fact

INTENT = re.compile(
    r"\b(calling|call|want|wanted|need|would like|like to|problem|issue|help|trying to|"
    r"can you|could you|cancel|refund|broken|damaged|not working|down)\b"
)
FACT_NAMES = {
    "order_number": "order",
    "account_number": "account",
    "amount": "amount",
    "date": "when",
    "email": "e-mail",
    "phone": "phone",
    "product": "product",
}


def intent_of(utterances: Sequence[str]) -> str | None:
    return next((u for u in utterances if INTENT.search(u.lower())), None)


def summarize(
    caller_utterances: Sequence[str],
    facts: Sequence[Fact],
    emotion: str | None = None,
    trend: float | None = None,
    escalation_reason: str | None = None,
) -> str:
    parts = []
    if (intent := intent_of(caller_utterances)) is not None:
        parts.append(f'Caller: "{intent}"')
    if facts:
        given = "; ".join(f"{FACT_NAMES.get(f.kind, f.kind)} {f.value}" for f in facts)
        parts.append(f"Given: {given}")
    if emotion:
        mood = emotion
        if trend is not None and trend < -0.2:
            mood += ", getting worse"
        parts.append(f"Mood: {mood}")
    if escalation_reason:
        parts.append(f"Escalated: {escalation_reason}")
    return ". ".join(parts) + ("." if parts else "")
