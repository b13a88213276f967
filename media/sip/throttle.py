"""Failed digest answers, counted per address and per user: brute force gets slow.

Without it an attacker tried 2,363 passwords a second. Theory of operation: every
wrong answer (a bad response, an unknown user, a forged nonce) counts against the
address it came from and the user it claimed, in a sliding ``window``. Past
``per_address`` failures an address is locked out, past ``per_user`` a user is;
each lockout lasts ``lockout`` seconds, doubled for every lockout of the same key
that follows within a day (up to ``max_lockout``). While locked out, a request with
credentials is refused before its password is checked, so a right guess looks
exactly like a wrong one and nothing is learnt.

A lockout of a user would let anyone lock a real phone out by failing in its name;
so it does not apply from an address that user signed in from lately (a phone keeps
working while someone else hammers its name). An address lockout applies to all.

Sans-IO: ``now`` is passed in. Every table is bounded (least recently used goes):
a flood of new addresses or names costs a fixed amount of memory.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Literal

MAX_KEYS = 10_000
GOOD_FOR = 24 * 3600.0  # an address a user signed in from stays theirs this long
STRIKE_MEMORY = 24 * 3600.0  # lockouts within this long of the last one double


@dataclass(frozen=True, slots=True)
class Lockout:
    """A key was just locked out: the brute-force alarm."""

    kind: Literal["address", "user"]
    key: str
    failures: int  # in the window that tripped it
    seconds: float


@dataclass(slots=True)
class _Record:
    failures: collections.deque[float]
    locked_until: float = float("-inf")
    strikes: int = 0
    last_lockout: float = float("-inf")


@dataclass
class _Table:
    limit: int
    records: collections.OrderedDict[str, _Record] = field(default_factory=collections.OrderedDict)

    def get(self, key: str) -> _Record | None:
        record = self.records.get(key)
        if record is not None:
            self.records.move_to_end(key)
        return record

    def add(self, key: str) -> _Record:
        record = self.get(key)
        if record is None:
            record = self.records[key] = _Record(collections.deque(maxlen=self.limit))
            if len(self.records) > MAX_KEYS:
                self.records.popitem(last=False)
        return record


class AuthThrottle:
    def __init__(
        self,
        *,
        per_address: int = 10,
        per_user: int = 5,
        window: float = 60.0,
        lockout: float = 30.0,
        max_lockout: float = 900.0,
    ) -> None:
        self.window = window
        self.lockout = lockout
        self.max_lockout = max_lockout
        self._addresses = _Table(per_address)
        self._users = _Table(per_user)
        self._good: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()

    def refused(self, user: str | None, host: str, now: float) -> float | None:
        """Seconds until ``host`` (claiming ``user``) may try again; None: it may now."""
        waits = []
        record = self._addresses.get(host)
        if record is not None and record.locked_until > now:
            waits.append(record.locked_until - now)
        if user is not None and not self._trusted(user, host, now):
            record = self._users.get(user)
            if record is not None and record.locked_until > now:
                waits.append(record.locked_until - now)
        return max(waits) if waits else None

    def failed(self, user: str | None, host: str, now: float) -> list[Lockout]:
        """A wrong answer from ``host`` for ``user``: the lockouts it starts, if any."""
        out = [self._fail(self._addresses, "address", host, now)]
        if user is not None:
            out.append(self._fail(self._users, "user", user, now))
        return [lockout for lockout in out if lockout is not None]

    def succeeded(self, user: str, host: str, now: float) -> None:
        self._good[(user, host)] = now + GOOD_FOR
        self._good.move_to_end((user, host))
        if len(self._good) > MAX_KEYS:
            self._good.popitem(last=False)

    def _trusted(self, user: str, host: str, now: float) -> bool:
        return self._good.get((user, host), float("-inf")) > now

    def _fail(
        self, table: _Table, kind: Literal["address", "user"], key: str, now: float
    ) -> Lockout | None:
        record = table.add(key)
        if record.locked_until > now:
            return None  # already locked out (a request that raced the lockout)
        record.failures.append(now)
        recent = [t for t in record.failures if now - t < self.window]
        if len(recent) < table.limit:
            return None
        if now - record.last_lockout > STRIKE_MEMORY:
            record.strikes = 0
        seconds = min(self.lockout * 2 ** min(record.strikes, 20), self.max_lockout)
        record.strikes += 1
        record.last_lockout = now
        record.locked_until = now + seconds
        record.failures.clear()
        return Lockout(kind, key, len(recent), seconds)
