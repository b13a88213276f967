"""The agents' desk streams open on this engine, and routing told how many.

Theory of operation
-------------------
An agent's desk (the agent page, ``ccengine phone``) holds a WebSocket event stream open
while it runs; that open stream is how routing knows the agent is there
(engine/liveness.py). This engine counts each agent's streams and tells routing the
count whenever it changes. Opening or closing a stream only changes the count and marks
the agent *untold*: it never waits for routing, so no desk waits for another's report
and a stream cancelled at any point is still matched by its close (engine/api/streams.py).

One sender per untold agent tells routing, in the background, the count *as it is when
sent*: changes made meanwhile are told by the next send, so the latest count always
wins and an agent's reports never overtake each other. A report that fails (the shared
routing log away, a timeout) leaves the agent untold and is tried again after
``RETRY_FIRST`` s, doubling up to ``RETRY_MAX`` s, until routing has it. ``retell``
marks every agent with a stream here untold (the shared routing forgot them: a reset,
or this engine taken for dead). So at most one sender and one pending report per agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

RETRY_FIRST = 0.5  # s before a failed report is tried again, doubled each time ...
RETRY_MAX = 10.0  # ... up to this (CCENGINE_AGENT_DISCONNECT_AFTER's default)

# tells routing that this engine holds ``streams`` open streams of ``agent``; raises
# when routing could not be told
Tell = Callable[[str, int], Awaitable[None]]


class DeskStreams:
    def __init__(self, tell: Tell) -> None:
        self._tell = tell
        self._counts: Counter[str] = Counter()
        self._untold: set[str] = set()  # agents whose count routing may not have
        self._senders: dict[str, asyncio.Task[None]] = {}  # at most one per agent
        self._closed = False

    def counts(self) -> dict[str, int]:
        """The streams open here, per agent."""
        return {agent: n for agent, n in self._counts.items() if n > 0}

    def opened(self, agent: str) -> None:
        self._counts[agent] += 1
        self._changed(agent)

    def closed(self, agent: str) -> None:
        self._counts[agent] -= 1
        if self._counts[agent] <= 0:
            del self._counts[agent]
        self._changed(agent)

    def retell(self) -> None:
        """Routing forgot this engine's streams: tell every count here again."""
        for agent in list(self._counts):
            self._changed(agent)

    def untold(self) -> set[str]:
        """The agents whose count routing may not have yet (tests, metrics)."""
        return self._untold | set(self._senders)

    def _changed(self, agent: str) -> None:
        self._untold.add(agent)
        if agent not in self._senders and not self._closed:
            self._senders[agent] = asyncio.create_task(self._send(agent), name="desk-streams")

    async def _send(self, agent: str) -> None:
        delay = RETRY_FIRST
        try:
            while agent in self._untold:
                self._untold.discard(agent)
                streams = self._counts.get(agent, 0)  # as it is now, not when it changed
                try:
                    await self._tell(agent, streams)
                except Exception as exc:  # routing away: the count as it is then, later
                    self._untold.add(agent)
                    log.warning("agent %s: their streams here (%d) not told to routing "
                                "(again in %.1f s): %s", agent, streams, delay, exc)  # fmt: skip
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, RETRY_MAX)
                else:
                    delay = RETRY_FIRST
        finally:
            del self._senders[agent]

    async def close(self) -> None:
        """At shutdown: what is left untold stays so, and nothing more is told."""
        self._closed = True
        senders = list(self._senders.values())
        for task in senders:
            task.cancel()
        for task in senders:
            with contextlib.suppress(asyncio.CancelledError):
                await task
