"""Draining a node: it stops taking new calls, and exits once the calls it has are over.

Theory of operation. A node is in one of three states; these are every move there is:

    state     new calls               readiness   left by
    serving   admitted (by capacity)  200         drain: SIGTERM or POST /api/v1/node/drain
    draining  503 + Retry-After       503         calls_ended: none left (the process exits)
                                                  timeout: drain_timeout ran out (the calls
                                                  left are ended, reason node_drained, and
                                                  the process exits)
    drained   503 + Retry-After       503         - (the process is exiting)

"New calls" are every way a call starts on this node: in-app offers (and call links),
SIP INVITEs, outbound calls and callbacks placed through the API; all of them ask
``CallManager.admit``, which asks :meth:`Drain.admit` first. SIP OPTIONS, the health
check of SIP proxies (Kamailio's dispatcher pings with it), answers 503 from the moment
the node drains, so the proxy takes it out of rotation before any INVITE is refused.
``/readyz`` answers 503, so Kubernetes takes the pod out of its Services.

What goes on while draining: every call already here, to its end. A caller waiting in
a queue on this node can be taken by an agent (an accept is not a new call), put on
hold, transferred, or sent out through the trunk: the callers already here must not be
dropped, and a queued caller can only be answered where their media is. Events and
webhooks flow as before; the event log and the webhook sender stop only once the
process shuts down, after the last call's ``call.ended``.

There is no way back from draining: the node is on its way out (Kubernetes sends
SIGTERM once it has decided to remove the pod), and an orchestrator starts a fresh one.

:class:`Drain` is the decision (the table above, with ``now`` passed in);
:class:`NodeDrain` runs it: it checks the calls left every ``POLL`` seconds, ends the
stragglers at the deadline and calls ``on_drained`` (``ccengine serve`` sets it to stop
the server, which then shuts down as on SIGINT, exit code 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from engine.callstate import Overloaded
from engine.events import utcnow

log = logging.getLogger(__name__)

State = Literal["serving", "draining", "drained"]
Trigger = Literal["drain", "calls_ended", "timeout"]
Step = Literal["wait", "end_calls", "exit"]

TRANSITIONS: dict[tuple[State, Trigger], State] = {
    ("serving", "drain"): "draining",
    ("draining", "calls_ended"): "drained",
    ("draining", "timeout"): "drained",
}

# s a refused client should wait: behind a load balancer or a SIP proxy its next try
# reaches another node (this one leaves the rotation within a probe period), so a short
# wait; not the drain's remaining time, which could tell a client to wait an hour
RETRY_AFTER = 5
POLL = 0.25  # s between looks at the calls left: an exit that late is no matter
END_REASON = "node_drained"  # calls still up at the deadline end with this reason


class Draining(Overloaded):
    """A new call refused because this node is draining (HTTP and SIP 503)."""

    def __init__(self) -> None:
        super().__init__(
            "this node is draining: it takes no new calls (calls in progress go on); "
            "try another node",
            retry_after=RETRY_AFTER,
        )


class Drain:
    """The drain's state and decisions, without I/O: ``now`` is a monotonic time."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.state: State = "serving"
        self.by: str | None = None  # who started the drain: "SIGTERM", "admin ann", ...
        self.started: float | None = None

    def _fire(self, trigger: Trigger) -> bool:
        new = TRANSITIONS.get((self.state, trigger))
        if new is None:
            return False
        self.state = new
        return True

    @property
    def draining(self) -> bool:
        """True from the drain on: new calls are refused."""
        return self.state != "serving"

    def begin(self, now: float, by: str) -> bool:
        """Start draining; False if it had started already (the first ``by`` stays)."""
        if not self._fire("drain"):
            return False
        self.by, self.started = by, now
        return True

    def deadline(self) -> float | None:
        return None if self.started is None else self.started + self.timeout

    def step(self, now: float, calls_left: int) -> Step:
        """What to do now: ``exit`` once no call is left, ``end_calls`` (then exit) at
        the deadline, else ``wait``. Serving or drained: ``wait``."""
        if self.state != "draining":
            return "wait"
        if calls_left <= 0:
            self._fire("calls_ended")
            return "exit"
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            self._fire("timeout")
            return "end_calls"
        return "wait"

    def admit(self) -> None:
        """Raise :class:`Draining` unless the node takes new calls."""
        if self.draining:
            raise Draining


@dataclass(frozen=True)
class DrainStatus:
    """What ``GET /api/v1/node`` shows."""

    state: State
    draining: bool
    by: str | None
    since: datetime | None
    deadline: datetime | None
    calls_left: int
    drain_timeout: float


class NodeDrain:
    """The drain of this node, run on the event loop. ``calls_left``: calls in progress
    (and admitted ones being set up); ``end_calls``: end every call with a reason."""

    def __init__(
        self,
        timeout: float,
        calls_left: Callable[[], int],
        end_calls: Callable[[str], Coroutine[Any, Any, None]],
        on_change: Callable[[bool], None] = lambda _draining: None,
    ) -> None:
        self.core = Drain(timeout)
        self._calls_left = calls_left
        self._end_calls = end_calls
        self._on_change = on_change  # the metric
        # what to do once drained; ``ccengine serve`` stops the server with it
        self.on_drained: Callable[[], None] = lambda: None
        self.drained = asyncio.Event()
        self._since: datetime | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """On the loop that runs the app: :meth:`request` (a signal handler) needs it."""
        self._loop = asyncio.get_running_loop()

    def admit(self) -> None:
        self.core.admit()

    @property
    def draining(self) -> bool:
        return self.core.draining

    def begin(self, by: str) -> bool:
        """Start draining (on the loop); False if it had started already."""
        if not self.core.begin(time.monotonic(), by):
            return False
        self._since = utcnow()
        self._on_change(True)
        log.warning(
            "draining (%s): no new calls; exiting once the %d calls left end, or in %.0f s",
            by, self._calls_left(), self.core.timeout,
        )  # fmt: skip
        self._task = asyncio.create_task(self._watch(), name="drain")
        return True

    def request(self, by: str) -> bool:
        """Start draining from outside the loop's callbacks (a signal handler): False if
        the app is not running yet, so the caller must stop some other way."""
        if self._loop is None or self._loop.is_closed():
            return False
        self._loop.call_soon_threadsafe(self.begin, by)
        return True

    async def _watch(self) -> None:
        while True:
            step = self.core.step(time.monotonic(), self._calls_left())
            if step == "end_calls":
                log.warning(
                    "drain timeout: ending the %d calls left (%s)", self._calls_left(), END_REASON
                )
                try:
                    await self._end_calls(END_REASON)
                except Exception:  # a call that will not end must not keep the node up
                    log.exception("ending the calls left failed; shutting down anyway")
            if step != "wait":
                break
            await asyncio.sleep(POLL)
        log.info("drained: no calls left; shutting down")
        self.drained.set()
        self.on_drained()

    async def stop(self) -> None:
        """The app shuts down (drained or not): stop watching."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    def status(self) -> DrainStatus:
        core = self.core
        deadline = None
        if self._since is not None:
            deadline = self._since + timedelta(seconds=core.timeout)
        return DrainStatus(
            state=core.state,
            draining=core.draining,
            by=core.by,
            since=self._since,
            deadline=deadline,
            calls_left=self._calls_left(),
            drain_timeout=core.timeout,
        )
