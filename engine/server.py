"""``ccengine serve``'s server: uvicorn's, with SIGTERM draining the node.

Kubernetes (and ``docker stop``, systemd) ask a process to go with SIGTERM. uvicorn
takes it as "stop now": the app's shutdown ends every call (``engine_shutdown``). Here
SIGTERM starts the drain instead (engine/drain.py): no new calls, and the server stops
once the calls have ended, or at the drain's deadline; the process then exits 0.
SIGINT (Ctrl-C) still stops at once, and a second SIGINT quits without waiting. A
second SIGTERM while draining stops at once too (the calls left end as on SIGINT); one
after the server began stopping changes nothing.

A SIGTERM before the app has started (models still loading) stops it as uvicorn would:
there are no calls to wait for.
"""

from __future__ import annotations

import contextlib
import signal
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from engine.drain import NodeDrain

# s the stopping server waits for open connections (an event stream, a dashboard's
# WebSocket) before it cancels them: a drained node must not wait on a listener
GRACEFUL_SHUTDOWN = 10


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: NodeDrain) -> None:
        super().__init__(config)
        self.drain = drain
        drain.on_drained = self._drained

    def _drained(self) -> None:
        self.should_exit = True  # uvicorn's main loop looks every 0.1 s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A SIGTERM taken here is never passed on: uvicorn keeps the signals it handled
        # and raises them again once stopped, and a SIGTERM raised then would end the
        # process with 143 (killed), not 0 (as after a drain through the API followed
        # by ``docker stop``).
        if sig == signal.SIGTERM:
            if self.should_exit:
                return  # stopping already: drained, or a second SIGTERM
            if self.drain.draining:
                # a second SIGTERM: stop now; the app's shutdown ends the calls left
                # (engine_shutdown), each with its BYE and call.ended
                self.should_exit = True
                return
            # runs in a signal handler: the drain starts on the loop, not here
            if self.drain.request("SIGTERM"):
                return
        super().handle_exit(sig, frame)


def serve(config: uvicorn.Config, drain: NodeDrain) -> int:
    """Run until stopped; the exit status (as ``uvicorn.run``: 3 if it never started)."""
    server = DrainingServer(config, drain)
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: a second Ctrl-C
        server.run()
    return 0 if server.started else STARTUP_FAILURE
