"""The garbage collector as the event loop sees it: pauses timed, start-up frozen."""

from __future__ import annotations

import gc

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
        assert collections(registry, "0") >= 1  # (the allocations here may add more)
        assert collections(registry, "2") >= 1
        total = registry.get_sample_value("gc_pause_seconds_sum", {"generation": "2"})
        assert total is not None and 0 < total < 5
    finally:
        pauses.stop()
    before = collections(registry, "2")
    gc.collect(2)
    assert collections(registry, "2") == before  # stopped: no longer timed


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
