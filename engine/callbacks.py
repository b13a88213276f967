"""Callbacks: a waiting caller who would rather be called back, and the call back.

Theory of operation
-------------------
A caller waiting for a person may ask to be called back (on their screen; routing
offers it once they have waited the queue's maximum, engine/routing.py). The request
keeps their place as a ``CallbackRow`` (queue, priority, the summary so far, why the
call escalated), takes them out of the line, and publishes it for agents; the caller
hears a confirmation and the call ends. An agent then places the call back (the SIP
front dials, engine/sip.py); when the customer answers, the callback is done and the
new call rings that agent first, at the callback's priority, with the first call's
summary. An agent may also mark a callback done without calling.

The decisions are generators of effects, as in engine/controls.py, applied by the
engine in order (``CallManager._desk``); one more effect is this module's own:

    ThankAndEnd  the caller hears the confirmation, then the call ends

``thank_and_end`` is that effect's live half, given the engine's voice and teardown.
Tests run the decisions with lists (tests/test_callbacks.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass

from engine.analysis import Emit, summary_of
from engine.callstate import CALLBACK_PROMPT, NotAllowed
from engine.controls import Effect as ControlEffect
from engine.controls import Save
from engine.events import CallbackDone, CallbackRequested, utcnow
from engine.livecall import Call
from engine.routing import Routing, escalated
from engine.store.models import CallbackRow
from engine.users import Actor

# The caller hears the callback confirmation before we hang up, unless it takes longer.
CALLBACK_PROMPT_TIMEOUT = 15.0
# sent is not yet heard: the last words of the confirmation still have to arrive
LAST_WORDS = 0.6


@dataclass(frozen=True, slots=True)
class ThankAndEnd:
    """The caller hears the callback confirmation (``thank_and_end``), then the call
    ends: run beside the call, not awaited by the request."""

    call: Call


Effect = ControlEffect | ThankAndEnd


class Callbacks:
    """Callback requests and calls back, for calls waiting in ``routing``'s ACD."""

    def __init__(self, routing: Routing) -> None:
        self.routing = routing

    def request(self, call: Call, contact: str | None) -> Generator[Effect, None, CallbackRow]:
        """The waiting caller would rather be called back (at ``contact``, else the
        number they called from): keep their place as a callback item, thank them, and
        end the call. The row stored."""
        waiting = self.routing.acd.waiting.get(call.id)
        if call.state != "queued" or waiting is None:
            raise NotAllowed("a callback can be requested while waiting for an agent")
        row = CallbackRow(
            id=str(uuid.uuid4()),
            call_id=call.id,
            caller=call.caller,
            contact=contact,
            queue=waiting.queue,
            priority=waiting.priority,
            summary=summary_of(call),
            escalation_reason=call.escalation_reason,
            status="pending",
            requested_at=utcnow(),
        )
        yield Save(row)
        yield from self.routing.leave(call, "callback_requested")
        yield Emit(
            CallbackRequested(
                call_id=call.id,
                callback_id=row.id,
                queue=row.queue,
                caller=row.caller,
                contact=contact,
                summary=row.summary,
            )
        )
        yield ThankAndEnd(call)
        return row

    @staticmethod
    def finished(
        actor: Actor, callback_id: str, row: CallbackRow | None
    ) -> Generator[Effect, None, CallbackRow]:
        """``actor`` marked the callback done (``row``: as the store marked it, None if
        it was not pending): told; the row."""
        if row is None:
            raise NotAllowed(f"no pending callback {callback_id}")
        yield Emit(CallbackDone(call_id=row.call_id, callback_id=row.id, by=actor.username))
        return row

    def connected(
        self, call: Call, row: CallbackRow, agent_id: str
    ) -> Generator[Effect, None, None]:
        """The customer answered the call back (``call``, new): it rings the agent who
        placed it, at the callback's priority at least."""
        call.escalation.priority = max(call.escalation.priority, row.priority)
        yield escalated(call, "callback the caller asked for")
        yield from self.routing.enqueue(call, None, queue=row.queue, agent=agent_id)


async def thank_and_end(
    call: Call,
    say: Callable[[Call, str], Awaitable[asyncio.Future[None] | None]],
    end_call: Callable[[str, str], Awaitable[None]],
) -> None:
    """``ThankAndEnd``, live: stop what the caller hears, say the confirmation (with
    ``say``, the engine's voice), and end the call (``end_call``) once it is heard, or
    after ``CALLBACK_PROMPT_TIMEOUT``."""
    peer = call.caller_leg().peer
    if peer is not None:
        peer.outbound.clear()  # they chose: stop whatever we were still saying
    played = await say(call, CALLBACK_PROMPT)
    if played is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(played, CALLBACK_PROMPT_TIMEOUT)
            await asyncio.sleep(LAST_WORDS)
    await end_call(call.id, "callback_requested")
