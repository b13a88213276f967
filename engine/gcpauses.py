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
    """Times each collection into ``histogram`` (labelled by generation) while started."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            took = time.perf_counter() - self._started
            self._started = 0.0
            self._histogram.labels(str(info.get("generation", "?"))).observe(took)

    def start(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
