"""The virtual agent's optional brain: an LLM behind an OpenAI-compatible endpoint
(``CCENGINE_BOT_LLM_URL``; off unless set), asked what a caller means when their words
matched none of the flow's examples.

It is given the flow's intents as tools (name, example phrasings, the slots it may
read, never a secret one) and the caller's last lines as the call tells them (redacted;
a PIN is "[secret]"), and it may answer one tool call. That is all it can do:

- it chooses among the flow's intents, never an action of its own (a tool it names
  that the flow does not have is no answer);
- what it reads for a slot is taken only if it reads as that slot (digits that fit),
  and the flow's read-back and verification still apply;
- it never speaks: the caller hears the flow's own lines, so it cannot read out a
  secret or promise what the business did not write.

A timeout, a refused connection, a non-2xx, or an answer that is not one such tool
call is "not understood", as without a brain.

    POST {url}/chat/completions
    {"model", "temperature": 0, "messages": [...], "tools": [...], "tool_choice": "auto"}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from engine.bot.actions import ActionFailed, Actions
from engine.bot.flows import Flow

log = logging.getLogger(__name__)
MAX_LINES = 6  # of the caller's, as context
MAX_EXAMPLES = 8  # phrasings of an intent in its tool's description
SYSTEM = (
    "You route a caller of a contact center to what they want. Call the one tool whose "
    "description matches what the caller asks for, with the values they said for its "
    "parameters. If none matches, call no tool. Never answer in words."
)


@dataclass(frozen=True, slots=True)
class Choice:
    intent: str | None
    slots: dict[str, str]


class Brain:
    def __init__(
        self, url: str, model: str, key: str | None, timeout: float, actions: Actions
    ) -> None:
        self.url = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.key = key
        self.timeout = timeout
        self.actions = actions  # its HTTP client, bounds and error handling

    async def choose(self, flow: Flow, said: Sequence[str]) -> Choice:
        """Which of ``flow``'s intents the caller's last lines (``said``, the newest
        last) ask for; ``Choice(None, {})`` when none, or the brain could not say."""
        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": SYSTEM},
                *({"role": "user", "content": line} for line in said[-MAX_LINES:]),
            ],
            "tools": tools(flow),
            "tool_choice": "auto",
        }
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        try:
            answer = await self.actions.post(
                self.url, self.timeout, body, what="brain", headers=headers, signed=False
            )
        except ActionFailed as e:
            log.warning("the brain could not be asked: %s", e)
            return Choice(None, {})
        return read_choice(flow, answer)


def tools(flow: Flow) -> list[dict[str, object]]:
    """The flow's intents as the brain's tools: no secret slot among their parameters."""
    out: list[dict[str, object]] = []
    for intent in flow.intents:
        params = {
            s.name: {"type": "string", "description": s.prompt}
            for s in intent.slots
            if not s.secret
        }
        out.append(
            {
                "type": "function",
                "function": {
                    "name": intent.name,
                    "description": "The caller asks: " + "; ".join(intent.examples[:MAX_EXAMPLES]),
                    "parameters": {"type": "object", "properties": params},
                },
            }
        )
    return out


def read_choice(flow: Flow, answer: object) -> Choice:
    """The one tool call of an OpenAI-style answer, if it names one of the flow's
    intents; its arguments as text, only for that intent's slots."""
    try:
        call = answer["choices"][0]["message"]["tool_calls"][0]["function"]  # type: ignore[index]
        name = call["name"]
        args = json.loads(call.get("arguments") or "{}")
    except (KeyError, IndexError, TypeError, ValueError, RecursionError):
        return Choice(None, {})
    intent = next((i for i in flow.intents if i.name == name), None)
    if intent is None or not isinstance(args, dict):
        return Choice(None, {})  # a tool the flow does not have: no answer
    names = {s.name for s in intent.slots if not s.secret}
    slots = {k: str(v)[:200] for k, v in args.items() if k in names and isinstance(v, str | int)}
    return Choice(intent.name, slots)
