"""STUN, as aioice parses it for a call's ICE sockets: one guard.

The engine parses no STUN of its own; aioice reads every datagram that reaches a WebRTC
call's ICE ports (anyone who learns a port can send there) and treats what its parser
rejects with ``ValueError`` as not STUN. aioice 0.13 unpacks a fixed-size attribute
(PRIORITY, ICE-CONTROLLING, LIFETIME...) without checking its length, so a message with
one shorter than its type raised ``struct.error`` instead, out of aioice's receive
callback into the event loop: an ERROR with a traceback in the engine's log for every
such packet, which anyone could send at line rate (found by tests/test_fuzz.py).
:func:`guard_aioice` makes that error the ``ValueError`` aioice expects, so such a
packet is dropped like any other garbage.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from aioice import stun

__all__ = ["guard_aioice"]


def guard_aioice() -> None:
    """Install the guard on aioice's STUN parser (once; aioice's ICE and TURN code call
    it through the module, so they get the guarded one)."""
    parse: Callable[[bytes], stun.Message] = stun.parse_message
    if getattr(parse, "_guarded", False):
        return

    def parse_message(data: bytes) -> stun.Message:
        try:
            return parse(data)
        except struct.error as exc:  # an attribute shorter than its type
            raise ValueError(f"STUN attribute too short: {exc}") from None

    parse_message._guarded = True  # type: ignore[attr-defined]
    stun.parse_message = parse_message
