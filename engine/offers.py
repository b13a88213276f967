"""In-app offers that have not sent audio yet: how many, from where, and whether to take
one more.

Theory of operation. An answered WebRTC offer costs the engine a peer connection, its
sockets, a call record and a few tasks before the caller has sent a single packet
(the recognizer and the analysis wait for the first audio: ``CallManager._run_leg``).
Until its first audio the offer is *pending*; one that never sends any ends after
``media_timeout`` ("no_media"), and with it the cost. Pending offers are capped:

    cap                                       over it              Settings
    pending offers from one address           429, Retry-After     max_pending_offers_per_address
    pending offers in all                     503, Retry-After     max_pending_offers

so a burst of offers that never send media, from one address or many, holds a bounded
amount of memory and never more than ``max_pending_offers`` of the node's call slots.
Retry-After is the media timeout: by then the oldest of them has had its audio or ended.
"""

from __future__ import annotations

import math
from collections import Counter

from engine.callstate import Overloaded, Throttled

Refusal = tuple[str, Exception]  # (reason for ccengine_offers_rejected, what to raise)


class PendingOffers:
    def __init__(self, per_address: int, total: int, media_timeout: float) -> None:
        self.per_address = per_address
        self.total = total
        self.retry_after = max(1, math.ceil(media_timeout))
        self._address: dict[str, str] = {}  # call id -> the address it came from
        self._by_address: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._address)

    def from_address(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def refusal(self, address: str) -> Refusal | None:
        """Why one more offer from ``address`` must be refused now, or None."""
        held = self._by_address.get(address, 0)
        if held >= self.per_address:
            why = f"{held} offers from your address are still waiting for their audio"
            return "pending_address", Throttled(why, self.retry_after)
        if len(self._address) >= self.total:
            why = f"{len(self._address)} offers are still waiting for their audio"
            return "pending", Overloaded(why, self.retry_after)
        return None

    def add(self, call_id: str, address: str) -> None:
        if call_id not in self._address:
            self._address[call_id] = address
            self._by_address[address] += 1

    def done(self, call_id: str) -> None:
        """The offer's audio arrived, or it ended: no longer pending (idempotent)."""
        address = self._address.pop(call_id, None)
        if address is None:
            return
        left = self._by_address[address] - 1
        if left > 0:
            self._by_address[address] = left
        else:
            del self._by_address[address]
