"""Bounds on the connections a listener holds: from one address, in all, and the file
descriptors the process has left.

Every open connection holds a file descriptor until it closes. A host that opens
connections and then says nothing, or one byte a minute (slowloris), could take them
all, and then nothing else could open one: not a call's RTP or ICE socket, not the
database. So a listener asks :meth:`ConnectionCaps.take` before it serves a new
connection, and refuses it (closes it, with a "busy" answer where its protocol has one)
when the connection's address already holds ``per_address``, when ``total`` are open,
or when fewer than ``fd_reserve`` descriptors would be left for everything else.

The descriptor check costs nothing per connection: the kernel hands out the lowest free
descriptor, so a new socket's number is a lower bound on how many are open. At start
:func:`raise_fd_limit` lifts the soft limit on open files to the hard one, which is
what the soft limit exists for (1,024 by default on many systems, too few for a node).
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Literal

try:
    import resource
except ImportError:  # not on this platform: no limit to read or raise
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

Refusal = Literal["address", "total", "descriptors"]
NO_LIMIT = 1 << 30


def fd_limit() -> int:
    """The soft limit on open files, the one the kernel enforces."""
    if resource is None:
        return NO_LIMIT
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return NO_LIMIT if soft == resource.RLIM_INFINITY else int(soft)


def raise_fd_limit() -> tuple[int, int]:
    """Lift the soft limit on open files to the hard limit; (before, after)."""
    if resource is None:
        return NO_LIMIT, NO_LIMIT
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # a hard limit the kernel will not grant
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
            return soft, soft
    return soft, hard


def in_networks(networks: Iterable[str]) -> Callable[[str], bool]:
    """Whether an address is in one of ``networks`` (addresses or CIDR networks)."""
    nets = [ipaddress.ip_network(n, strict=False) for n in networks]

    def member(host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in n for n in nets)

    return member


def describe(refusal: Refusal) -> str:
    """Why, in words a client can be shown."""
    return {
        "address": "too many connections from your address",
        "total": "too many connections",
        "descriptors": "out of file descriptors",
    }[refusal]


class ConnectionCaps:
    """The connections one listener holds, by address; whether to take one more."""

    def __init__(
        self,
        per_address: int,
        total: int,
        *,
        fd_reserve: int = 256,
        exempt: Callable[[str], bool] = lambda _host: False,
        limit: Callable[[], int] = fd_limit,
        on_refused: Callable[[Refusal], None] | None = None,
    ) -> None:
        self.per_address = per_address
        self.total = total
        self.fd_reserve = fd_reserve
        self._exempt = exempt
        self._limit = limit
        self._on_refused = on_refused
        self._by_address: Counter[str] = Counter()
        self.open = 0
        self.refused: Counter[Refusal] = Counter()

    def take(self, host: str, fd: int = -1) -> Refusal | None:
        """None: the connection from ``host`` (whose socket is descriptor ``fd``; -1:
        unknown) is counted, and :meth:`release` must follow when it closes. Otherwise
        why it must be refused, and it is not counted."""
        refusal: Refusal | None = None
        if fd >= 0 and fd >= self._limit() - self.fd_reserve:
            refusal = "descriptors"
        elif self.open >= self.total:
            refusal = "total"
        elif self._by_address[host] >= self.per_address and not self._exempt(host):
            refusal = "address"
        if refusal is not None:
            self.refused[refusal] += 1
            if self._on_refused is not None:
                self._on_refused(refusal)
            return refusal
        self._by_address[host] += 1
        self.open += 1
        return None

    def release(self, host: str) -> None:
        if host not in self._by_address:
            return  # released twice: a bug, but it must not take a count from another
        left = self._by_address[host] - 1
        if left > 0:
            self._by_address[host] = left
        else:
            del self._by_address[host]  # an address that left holds no memory
        self.open -= 1

    def held_by(self, host: str) -> int:
        return self._by_address.get(host, 0)

    @property
    def addresses(self) -> int:
        return len(self._by_address)
