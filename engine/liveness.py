"""Whether an agent is really at a desk: their clients' open event streams. Sans-IO.

Theory of operation
-------------------
The agent desk page and the desktop softphone (``ccengine phone``) keep the event
stream open all the time they run (``/api/v1/events``): a closed tab or a killed phone
closes it at once, and a host that vanished is found by the WebSocket ping. So an open
stream *is* the heartbeat; nothing else is sent. Each engine counts the streams of each
agent it holds and reports the count when it changes (``count``); the counts of all
engines live with the rest of the agents' state (the ACD: engine/routing.py, and with
several engines every engine's copy of it, engine/routingcopy.py), so a desk on one
engine and a phone on another keep the agent there together.

An agent is tracked from their first stream on: one who never opened one (a program
on the REST API alone) is never judged by it. Per tracked agent:

    state      event                        -> state
    present    count (some stream left)     -> present
    present    count (none left anywhere)   -> absent, since now
    absent     count (a stream again)       -> present
    absent     ``grace`` s pass (``due``)   -> vanished
    vanished   count (a stream again)       -> present
    any        ``forget``                   -> (untracked)

An *absent* agent is offered no call and not counted in the wait callers are told;
one *vanished* is made away (engine/routing.py, reason ``disconnected``) as soon as
their presence allows it (at once if available, ringing or in wrap-up; after the
call if on one), then forgotten. Coming back does not make them available: they choose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Tracked = Literal["present", "absent", "vanished"]
DISCONNECTED = "disconnected"  # the reason an agent was made away, in events


class Liveness:
    def __init__(self, grace: float) -> None:
        self.grace = grace
        # agent -> holder (the engine holding the streams) -> streams open there
        self._streams: dict[str, dict[str, int]] = {}
        self._absent_since: dict[str, float] = {}
        self._vanished: set[str] = set()

    def state(self, agent: str) -> Tracked | None:
        if agent in self._vanished:
            return "vanished"
        if agent in self._absent_since:
            return "absent"
        return "present" if agent in self._streams else None

    def away_from_desk(self, agent: str) -> bool:
        """Absent or vanished: not to be offered calls, nor counted as staffed."""
        return agent in self._absent_since or agent in self._vanished

    def count(self, agent: str, holder: str, streams: int, now: float) -> bool:
        """``holder`` now holds ``streams`` open streams of ``agent``. True when the
        agent came back (absent or vanished before, present now)."""
        held = self._streams.setdefault(agent, {})
        if streams > 0:
            held[holder] = streams
        else:
            held.pop(holder, None)
        return self._settle(agent, now)

    def holders(self) -> set[str]:
        return {h for held in self._streams.values() for h in held}

    def holder_lost(self, holder: str, now: float) -> None:
        """An engine died: the streams it held are gone."""
        for agent, held in self._streams.items():
            if held.pop(holder, None) is not None:
                self._settle(agent, now)

    def _settle(self, agent: str, now: float) -> bool:
        if any(self._streams.get(agent, {}).values()):
            came_back = self.away_from_desk(agent)
            self._absent_since.pop(agent, None)
            self._vanished.discard(agent)
            return came_back
        if agent not in self._absent_since and agent not in self._vanished:
            self._absent_since[agent] = now
        return False

    def next_timer(self) -> float | None:
        return min(self._absent_since.values()) + self.grace if self._absent_since else None

    def due(self, now: float) -> list[str]:
        """The agents absent for ``grace`` s as of ``now``, vanished from now on."""
        out = sorted(a for a, t in self._absent_since.items() if now >= t + self.grace)
        for agent in out:
            del self._absent_since[agent]
            self._vanished.add(agent)
        return out

    def forget(self, agent: str) -> None:
        """Dealt with (made away, or signed out): untracked until a stream opens."""
        if not any(self._streams.get(agent, {}).values()):
            self._streams.pop(agent, None)
        self._absent_since.pop(agent, None)
        self._vanished.discard(agent)

    def clear(self) -> None:
        self._streams.clear()
        self._absent_since.clear()
        self._vanished.clear()

    # -- a copy for an engine that joins (engine/routingcopy.py) --------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "grace": self.grace,
            "streams": {a: dict(h) for a, h in self._streams.items()},
            "absent_since": dict(self._absent_since),
            "vanished": sorted(self._vanished),
        }

    def restore(self, snap: Mapping[str, Any]) -> None:
        self.grace = float(snap["grace"])
        self._streams = {a: {h: int(n) for h, n in held.items()}
                         for a, held in snap["streams"].items()}  # fmt: skip
        self._absent_since = {a: float(t) for a, t in snap["absent_since"].items()}
        self._vanished = set(snap["vanished"])
