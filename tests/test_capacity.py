"""Admission by measured capacity (engine/capacity.py), in-process: the decision is fed
samples and ``now``; only the lag monitor runs a real event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import pytest
from prometheus_client import CollectorRegistry, Histogram

from engine.callstate import Overloaded
from engine.capacity import (
    LAG_MIN_SAMPLES,
    RETRY_MAX,
    RETRY_MIN,
    Capacity,
    CpuMeter,
    LoopLagMonitor,
    retry_after,
)
from engine.config import Settings
from engine.metrics import Metrics


class Node:
    """What a Capacity is given: calls in progress, recognition backlog and CPU times,
    all set by the test."""

    def __init__(self, **settings: float) -> None:
        self.settings = Settings(_env_file=None, **settings)
        self.metrics = Metrics()
        self.calls = 0
        self.backlog = 0.0
        self.cpu_seconds = 0.0  # cumulative, of "this process"
        self.capacity = Capacity(
            self.settings,
            self.metrics,
            calls_count=lambda: self.calls,
            backlog=lambda: self.backlog,
            worker_pids=lambda: [],
            cores=2,
            cpu_times=self._cpu_times,
        )

    def _cpu_times(self, pids: Iterable[int]) -> dict[int, float]:
        return {pid: self.cpu_seconds for pid in pids}

    def lag(self, seconds: float, n: int = 200, start: float = 0.0) -> float:
        """``n`` ticks 50 ms apart from ``start``, each late by ``seconds``; the last time."""
        now = start
        for i in range(n):
            now = start + i * 0.05
            self.capacity.lag.record(now, seconds)
        return now

    def busy(self, fraction: float, seconds: float, start: float = 0.0) -> float:
        """CPU samples every 0.5 s using ``fraction`` of the 2 cores; the last time."""
        now = start
        for i in range(int(seconds / 0.5) + 1):
            now = start + i * 0.5
            if i:
                self.cpu_seconds += fraction * 2 * 0.5
            self.capacity.sample_cpu(now)
        return now

    def rejected(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "ccengine_offers_rejected_total", {"reason": reason}
        )
        return value or 0.0


def test_a_few_stalls_do_not_make_a_node_full() -> None:
    """Two 90 ms stalls in 10 s (a browser starting beside the engine, a garbage
    collection) made test engines refuse calls for 10 s when p99 decided: an overloaded
    loop is late tick after tick, and only that is refused."""
    node = Node()
    now = node.lag(0.001, n=100)  # 5 s after start: the first moment lag may refuse
    for at in (now + 0.05, now + 0.10):
        node.capacity.lag.record(at, 0.090)
    assert node.capacity.check(now + 0.10) is None
    now = node.lag(0.060, n=20, start=now + 0.15)  # late 20 times in a row: full
    refusal = node.capacity.check(now)
    assert refusal is not None and refusal.signal == "loop_lag"


def test_each_signal_refuses_over_its_threshold_with_its_reason() -> None:
    """Each of the four signals alone makes the node full, and says so in words an
    operator can act on."""
    node = Node()
    now = node.lag(0.083)
    refusal = node.capacity.check(now)
    assert refusal is not None and refusal.signal == "loop_lag"
    assert refusal.reason == "event loop lag p95 83 ms > 50 ms"

    node = Node()
    node.backlog = 3.1
    refusal = node.capacity.check(0.0)
    assert refusal is not None and refusal.reason == "recognition backlog 3.1 s > 2 s"

    node = Node()
    now = node.busy(0.97, 5.0)
    refusal = node.capacity.check(now)
    assert refusal is not None and refusal.reason == "cpu 97% > 90%"

    node = Node(max_concurrent_calls=64)
    node.calls = 64
    refusal = node.capacity.check(0.0)
    assert refusal is not None and refusal.reason == "64 calls: the configured limit"
    assert refusal.retry_after == 30


def test_under_every_threshold_the_node_takes_calls() -> None:
    node = Node()
    now = node.lag(0.049)
    node.backlog = 1.9
    node.calls = 63
    node.busy(0.89, 5.0, start=now - 5.0)
    assert node.capacity.check(now) is None
    load = node.capacity.snapshot(now)
    assert load.state == "ok" and load.reason is None
    assert load.loop_lag_p99_ms == 49.0 and load.backlog_s == 1.9 and load.cpu == 0.89
    assert (load.calls, load.limit) == (63, 64)


def test_a_signal_with_too_few_samples_does_not_refuse() -> None:
    """Just after start the lag window holds a few ticks and the CPU meter one sample: a
    single slow tick (start-up's own work: seen as a 138 ms stall right after start that
    made a fresh node refuse calls for 5 s) must not refuse the first callers."""
    node = Node()
    now = node.lag(1.0, n=LAG_MIN_SAMPLES - 1)
    node.capacity.sample_cpu(now)
    node.cpu_seconds += 100.0  # a burst, but only 0.4 s after the first sample
    node.capacity.sample_cpu(now + 0.4)
    assert node.capacity.check(now + 0.4) is None
    load = node.capacity.snapshot(now + 0.4)
    assert load.loop_lag_p99_ms is None and load.cpu is None and load.state == "ok"
    node.capacity.lag.record(now + 0.45, 1.0)  # enough ticks now
    refusal = node.capacity.check(now + 0.45)
    assert refusal is not None and refusal.signal == "loop_lag"


def test_hysteresis_holds_full_until_well_below_the_threshold() -> None:
    """A node hovering at the line must not flap: once over, it stays full until the
    signal falls below 80 % of its threshold; then it takes calls until it is over again."""
    node = Node()  # backlog threshold 2 s
    seen = []
    for backlog in (1.9, 2.5, 1.9, 1.7, 1.61, 1.5, 1.9, 2.0, 2.1):
        node.backlog = backlog
        refusal = node.capacity.check(0.0)
        seen.append(refusal.reason if refusal else None)
    assert seen == [
        None,
        "recognition backlog 2.5 s > 2 s",
        "recognition backlog 1.9 s, full until below 1.6 s",
        "recognition backlog 1.7 s, full until below 1.6 s",
        "recognition backlog 1.61 s, full until below 1.6 s",
        None,
        None,
        None,
        "recognition backlog 2.1 s > 2 s",
    ]
    assert node.metrics.registry.get_sample_value("ccengine_node_full") == 1.0


def test_lag_hysteresis_over_time() -> None:
    """Lag falls off the 10 s window: the node is full while the slow ticks are in it,
    and takes calls again once the window holds only quick ones."""
    node = Node()
    now = node.lag(0.1)
    assert node.capacity.check(now) is not None
    now = node.lag(0.045, start=now + 0.05)  # 10 s of ticks at 90 % of the threshold
    refusal = node.capacity.check(now)
    assert refusal is not None and "full until below 40 ms" in refusal.reason
    now = node.lag(0.030, start=now + 0.05)
    assert node.capacity.check(now) is None


def test_retry_after_grows_with_how_far_over() -> None:
    """Callers of a slightly full node come back soon; of a swamped one, later; never
    sooner than 5 s nor later than 30 s."""
    assert retry_after(1.0) == RETRY_MIN == 5
    assert retry_after(0.9) == RETRY_MIN  # held full by hysteresis
    assert retry_after(2.0) == 18
    assert retry_after(3.0) == retry_after(50.0) == retry_after(float("inf")) == RETRY_MAX
    waits = []
    for backlog in (2.1, 3.0, 4.0, 5.0, 6.0, 20.0):
        node = Node()
        node.backlog = backlog
        refusal = node.capacity.check(0.0)
        assert refusal is not None
        waits.append(refusal.retry_after)
    assert waits == sorted(waits) and waits[0] == 6 and waits[-1] == 30, waits


def test_the_worst_signal_is_named_and_the_limit_first() -> None:
    node = Node()
    node.backlog = 2.2  # 1.1x
    now = node.busy(0.99, 5.0)  # 1.1x
    now = node.lag(0.2, start=now - 9.0)  # 4x
    refusal = node.capacity.check(now)
    assert refusal is not None and refusal.signal == "loop_lag" and refusal.retry_after == 30
    node.calls = 64
    refusal = node.capacity.check(now)
    assert refusal is not None and refusal.signal == "limit"


def test_admit_raises_overloaded_and_counts_by_signal() -> None:
    """What _new_call and the SIP door call: a refusal is an Overloaded carrying the
    reason and Retry-After (for the 503s), counted in ccengine_offers_rejected{reason}."""
    node = Node()
    node.capacity.admit(0.0)  # room: nothing raised
    node.backlog = 4.0
    with pytest.raises(Overloaded) as exc:
        node.capacity.admit(0.0)
    assert str(exc.value) == "recognition backlog 4 s > 2 s" and exc.value.retry_after == 18
    node.backlog, node.calls = 0.0, 64
    with pytest.raises(Overloaded):
        node.capacity.admit(0.0)
    assert (node.rejected("backlog"), node.rejected("limit"), node.rejected("cpu")) == (1, 1, 0)


def test_a_broken_backlog_reading_does_not_refuse_or_crash() -> None:
    """The recognition pool may be restarting: its stats failing must not stop calls."""
    node = Node()

    def broken() -> float:
        raise RuntimeError("pool restarting")

    node.capacity._backlog = broken
    assert node.capacity.check(0.0) is None
    assert node.capacity.snapshot(0.0).backlog_s is None


def test_cpu_meter_counts_workers_that_started_and_drops_stale_samples() -> None:
    meter = CpuMeter(span=5.0, cores=4)
    meter.add(0.0, {1: 10.0})
    meter.add(2.0, {1: 12.0, 2: 2.0})  # worker 2 started meanwhile: all of it counts
    assert meter.utilisation(2.0) == pytest.approx((2.0 + 2.0) / (2.0 * 4))
    for t in range(3, 11):
        meter.add(float(t), {1: 12.0, 2: 2.0})  # idle since
    assert meter.utilisation(10.0) == 0.0  # the busy seconds left the window
    assert meter.utilisation(20.0) is None  # no sample for longer than the window


async def test_the_lag_monitor_measures_a_blocked_loop() -> None:
    """Regression for a monitor that timed its sleeps wrongly (or not at all): a loop
    blocked for 200 ms, twice (with ~100 ticks in the window p99 is the second slowest),
    must show as ~200 ms of lag in the window and in the histogram."""
    histogram = Histogram("lag", "test", buckets=(0.01, 0.1, 1.0), registry=CollectorRegistry())
    monitor = LoopLagMonitor(histogram, interval=0.01)
    monitor.start()
    try:
        await asyncio.sleep(LAG_MIN_SAMPLES * 0.0105 + 0.1)  # enough quick ticks first
        quick = monitor.percentile(0.99, time.monotonic())
        assert quick is not None and quick < 0.1
        for _ in range(2):
            # the point of the test: block the loop as a slow callback would
            time.sleep(0.2)  # noqa: ASYNC251
            await asyncio.sleep(0.05)
        p99 = monitor.percentile(0.99, time.monotonic())
    finally:
        await monitor.stop()
    assert p99 is not None and p99 >= 0.15
    total = [s.value for s in histogram.collect()[0].samples if s.name == "lag_sum"][0]
    assert total >= 0.3
