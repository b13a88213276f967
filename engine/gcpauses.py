"""Python's cyclic garbage collector, seen from the event loop.

A collection runs on whatever thread allocated last, the event loop's most of the time,
and stops it for as long as it walks the objects of the generations it collects. A full
(generation 2) collection walks every container object the process holds: after start-up
that is the whole of FastAPI, pydantic, SQLAlchemy, aiortc and numpy's module state,
objects that live as long as the process and will never be garbage. ``freeze_startup``
moves them to the collector's permanent generation (``gc.freeze``), so later full
collections walk only what calls created. ``GcPauses`` times every collection
(``gc.callbacks``) into ``ccengine_gc_pause_seconds{generation}``, so a loop-lag spike
can be told from a collection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import time
from typing import Any

from prometheus_client import Histogram


def freeze_startup() -> int:
    """Collect what start-up left behind, then exempt every object alive now from later
    collections. Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauses:
    """Times each collection into ``histogram`` (labelled by generation) while started.

    The callback only appends to a bounded deque: a collection can start on any
    allocation, including one made while prometheus_client holds a metric's lock for a
    scrape on the same thread, and a callback that took that lock again would hang the
    process (why prometheus_client dropped its own gc histograms). A task on the event
    loop moves the timings into the histogram every ``FLUSH_S``."""

    FLUSH_S = 1.0
    PENDING = 10_000  # timings waiting for a flush, at most (a deque drops the oldest)

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._started = 0.0
        self._pending: collections.deque[tuple[int, float]] = collections.deque(maxlen=self.PENDING)
        self._flusher: asyncio.Task[None] | None = None

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            took = time.perf_counter() - self._started
            self._started = 0.0
            self._pending.append((int(info.get("generation", -1)), took))

    def flush(self) -> None:
        """Move the timings gathered since the last flush into the histogram."""
        while self._pending:
            generation, took = self._pending.popleft()
            self._histogram.labels(str(generation)).observe(took)

    async def _flush_often(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH_S)
            self.flush()

    def start(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        with contextlib.suppress(RuntimeError):  # no running loop: flush() by hand
            if self._flusher is None:
                self._flusher = asyncio.get_running_loop().create_task(self._flush_often())

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self.flush()
