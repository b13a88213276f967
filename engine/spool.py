"""Writes a call must not lose while storage fails for a while (a full disk, a database
that stopped answering): what a caller said, how the call moved and how it ended.

A write is tried at once. If storage fails it is kept, in order, with every write that
comes after it, and tried again with backoff until storage returns; the call goes on
meanwhile (its events wait in the event log, which retries too). An error that retrying
cannot cure (a constraint the row breaks) is raised at once, as before. The spool is
bounded: past ``limit`` writes, new ones are dropped, counted and logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

log = logging.getLogger(__name__)

Write = Callable[[], Awaitable[object]]
# what a full disk, a locked or unreachable database look like through SQLAlchemy
TRANSIENT = (OperationalError, InterfaceError, DisconnectionError, OSError, TimeoutError)
LIMIT = 10_000


class WriteSpool:
    def __init__(self, limit: int = LIMIT, retry_base: float = 0.25, retry_cap: float = 5.0):
        self.limit = limit
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self._queue: collections.deque[tuple[str, Write]] = collections.deque()
        self._drainer: asyncio.Task[None] | None = None
        self.lost = 0  # writes dropped: the spool was full
        self._empty = asyncio.Event()
        self._empty.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def write(self, what: str, write: Write) -> bool:
        """Write now (True), or keep it for later (False) if storage is failing."""
        if not self._queue:
            try:
                await write()
                return True
            except TRANSIENT as exc:
                log.error("storage failed; keeping %s to write when it is back: %s", what, exc)
        self._keep(what, write)
        return False

    def _keep(self, what: str, write: Write) -> None:
        if len(self._queue) >= self.limit:
            self.lost += 1
            log.error("storage spool full (%d writes): %s is lost", self.limit, what)
            return
        self._queue.append((what, write))
        self._empty.clear()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="storage-spool")

    async def _drain(self) -> None:
        delay = self.retry_base
        while self._queue:
            what, write = self._queue[0]
            try:
                await write()
            except TRANSIENT:
                await asyncio.sleep(delay)
                delay = min(self.retry_cap, delay * 2)
                continue
            except Exception:  # it will never go in: do not hold up the others
                log.exception("storage spool: %s could not be written; dropped", what)
                self.lost += 1
            self._queue.popleft()
            if not self._queue:
                log.warning("storage is back: the kept writes are stored")
                self._empty.set()
            delay = self.retry_base

    async def drained(self) -> None:
        """Once nothing is kept: every write so far is stored."""
        await self._empty.wait()

    async def close(self, grace: float) -> None:
        """Give storage ``grace`` seconds to take what is kept; say what is lost."""
        if self._drainer is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drainer), grace)
        if self._queue:
            log.error("storage spool: %d writes not stored at shutdown", len(self._queue))
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
