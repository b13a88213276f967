"""The garbage collector as the event loop sees it: pauses timed, start-up frozen."""

from __future__ import annotations

import asyncio
import gc
import threading

from prometheus_client import CollectorRegistry, Histogram

from engine.gcpauses import GcPauses, freeze_startup


def collections(registry: CollectorRegistry, generation: str) -> float:
    value = registry.get_sample_value("gc_pause_seconds_count", {"generation": generation})
    return value or 0.0


def test_each_collection_is_timed_by_generation_while_started() -> None:
    registry = CollectorRegistry()
    pauses = GcPauses(Histogram("gc_pause_seconds", "", ["generation"], registry=registry))
    pauses.start()
    pauses.start()  # once only
    try:
        gc.collect(0)
        gc.collect(2)
        assert collections(registry, "2") == 0  # gathered, not yet in the histogram
        pauses.flush()
        assert collections(registry, "0") >= 1  # (the allocations here may add more)
        assert collections(registry, "2") >= 1
        total = registry.get_sample_value("gc_pause_seconds_sum", {"generation": "2"})
        assert total is not None and 0 < total < 5
    finally:
        pauses.stop()
    before = collections(registry, "2")
    gc.collect(2)
    pauses.flush()
    assert collections(registry, "2") == before  # stopped: no longer timed


def test_a_collection_during_a_scrape_does_not_hang() -> None:
    """A collection can start on any allocation, also one prometheus_client makes while
    it holds the histogram's lock for a scrape on that thread; a callback that took the
    lock again waited for itself for good. Here another thread holds the lock."""
    registry = CollectorRegistry()
    histogram = Histogram("gc_pause_seconds", "", ["generation"], registry=registry)
    pauses = GcPauses(histogram)
    pauses.start()
    collected = threading.Event()

    def collect() -> None:
        gc.collect(2)
        collected.set()

    try:
        with histogram._lock:  # as a scrape (or anything labelling it) would
            worker = threading.Thread(target=collect, daemon=True)
            worker.start()
            assert collected.wait(5), "the collection waited for the histogram's lock"
    finally:
        pauses.stop()  # (the lock is free again: a hung callback would go on now)
        worker.join(5)
    assert collections(registry, "2") >= 1


async def test_the_timings_reach_the_histogram_on_their_own() -> None:
    registry = CollectorRegistry()
    pauses = GcPauses(Histogram("gc_pause_seconds", "", ["generation"], registry=registry))
    pauses.FLUSH_S = 0.05
    pauses.start()
    try:
        gc.collect(2)
        for _ in range(100):
            if collections(registry, "2"):
                break
            await asyncio.sleep(0.02)
        assert collections(registry, "2") >= 1
    finally:
        pauses.stop()


def test_start_up_objects_are_frozen_out_of_later_collections() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the cyclic collector could free it

    kept = [Node() for _ in range(1000)]
    try:
        frozen = freeze_startup()
        assert frozen >= len(kept)
        # what a full collection walks no longer includes them
        assert all(not any(node is o for o in gc.get_objects(2)) for node in kept[:3])
    finally:
        gc.unfreeze()  # this test process makes many apps: give them back
