"""Admission by measured capacity: is this node too full to take another call?

Theory of operation. Five signals decide, each against a threshold in Settings:

    signal    measured as                                            threshold (Settings)
    loop_lag  p95 of how late a 50 ms sleep wakes, last 10 s          admission_max_loop_lag_ms
    backlog   seconds of audio the most delayed caller has waiting    admission_max_backlog_s
              to be analysed or recognized (the worst leg, plus the
              worst recognition lane's outstanding requests)
    cpu       CPU of this process and its recognition workers over    admission_max_cpu
              the last 5 s, as a fraction of the cores we may use
    loss      caller audio lost on this node over the last 5 s, as    admission_max_frame_loss
              a fraction of the audio (media/loss.py: skipped late,
              dropped from full queues; and UDP datagrams the kernel
              dropped because we read our sockets too late)
    limit     calls in progress (and admitted ones being set up)      max_concurrent_calls

A measured signal (the first four) makes the node *full* once it goes over its
threshold, and keeps it full until it falls below ``RELEASE`` (80 %) of it: hysteresis,
so a node hovering at the line does not flap between taking and refusing calls. A
signal with too few samples yet (the node just started) never refuses. The limit is a
hard cap, without hysteresis. While full, every new call (in-app offers, SIP INVITEs,
outbound calls and callbacks) is refused with the reason and a Retry-After; calls
already admitted go on untouched, which is the point: they keep their latency.

Retry-After grows with how far over the worst signal is: 5 s at its threshold, 30 s at
three times it or more; 30 s at the call limit, where a slot opens only when a call ends.

:class:`Capacity` is the decision: samples and ``now`` in, :meth:`Capacity.check` out.
:meth:`Capacity.start` runs the two small asyncio tasks that feed it: the
:class:`LoopLagMonitor`, and a sampler that reads CPU times (psutil) and sets the gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import psutil

from engine.callstate import Overloaded
from engine.config import Settings
from media.loss import LOCAL_LOSSES

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from engine.metrics import Metrics

log = logging.getLogger(__name__)

Signal = Literal["loop_lag", "backlog", "cpu", "loss", "limit"]
State = Literal["ok", "full"]

LAG_INTERVAL = 0.05  # s the lag monitor sleeps between ticks
LAG_WINDOW = 10.0  # s of ticks the percentiles are taken over
# p95, not p99: a stall delays one tick, and p99 of ~200 ticks is the second-slowest of
# them, so two stalls (a garbage collection, a browser starting beside the engine) made
# a node refuse calls for 10 s (seen in the suite on a busy box). An overloaded loop is
# late on tick after tick; p95 needs ten late ticks in the window.
LAG_QUANTILE = 0.95
# 5 s of ticks: with fewer than 100, even p95 is a handful of ticks, and start-up's last
# work (a slow import) would make the node full for the whole window
LAG_MIN_SAMPLES = 100
CPU_WINDOW = 5.0  # s of CPU time utilisation is averaged over
CPU_MIN_SPAN = 1.0  # s between the oldest and newest CPU sample before it counts
SAMPLE_INTERVAL = 0.5  # s between CPU samples (and gauge updates)
LOSS_WINDOW = 5.0  # s of audio the loss fraction is taken over
# a fraction of fewer frames than this (5 s of one call) is noise, not a measurement
LOSS_MIN_FRAMES = 250
UDP_EVERY = 2  # read the kernel's UDP drop counts every this many samples
RELEASE = 0.8  # once full, a signal must fall below this fraction of its threshold
RETRY_MIN, RETRY_MAX = 5, 30  # s of Retry-After: at a threshold, at 3x it or more
LIMIT_RETRY = 30  # s of Retry-After at the call limit


@dataclass(frozen=True)
class Refusal:
    """Why a new call is refused now, and when to ask again."""

    signal: Signal
    reason: str  # "cpu 97% > 90%"
    retry_after: int  # seconds


@dataclass(frozen=True)
class Load:
    """How full the node is (``/healthz``); None: not measured yet."""

    state: State
    reason: str | None
    loop_lag_p50_ms: float | None
    loop_lag_p99_ms: float | None
    backlog_s: float | None
    cpu: float | None  # fraction of the cores we may use
    audio_loss: float | None  # fraction of caller audio lost locally
    calls: int
    limit: int


class Window:
    """The samples of the last ``span`` seconds, at most ``bound`` of them."""

    def __init__(self, span: float, bound: int) -> None:
        self.span = span
        self._samples: deque[tuple[float, float]] = deque(maxlen=bound)

    def add(self, now: float, value: float) -> None:
        self._samples.append((now, value))
        self.prune(now)

    def prune(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.span:
            self._samples.popleft()

    def __len__(self) -> int:
        return len(self._samples)

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile (q in 0..1); None without samples."""
        if not self._samples:
            return None
        values = sorted(v for _, v in self._samples)
        return values[max(0, math.ceil(q * len(values)) - 1)]


class CpuMeter:
    """CPU seconds used by a set of processes over the last ``span`` seconds, as a
    fraction of ``cores``. Fed cumulative CPU times per pid; a pid first seen after the
    oldest sample counts from zero (a worker started since), one gone is left out."""

    def __init__(self, span: float, cores: int) -> None:
        self.span = span
        self.cores = max(1, cores)
        self._samples: deque[tuple[float, dict[int, float]]] = deque(maxlen=256)

    def add(self, now: float, cpu_seconds: dict[int, float]) -> None:
        self._samples.append((now, cpu_seconds))
        # keep one sample at or before the window's start as the baseline
        while len(self._samples) >= 2 and self._samples[1][0] <= now - self.span:
            self._samples.popleft()

    def utilisation(self, now: float) -> float | None:
        """None until samples span ``CPU_MIN_SPAN``, or when the newest is stale."""
        if len(self._samples) < 2 or now - self._samples[-1][0] > self.span:
            return None
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        if t1 - t0 < CPU_MIN_SPAN:
            return None
        used = sum(max(0.0, cpu - first.get(pid, 0.0)) for pid, cpu in last.items())
        return used / ((t1 - t0) * self.cores)


class LossMeter:
    """The fraction of caller audio lost locally over the last ``span`` seconds, from
    cumulative counts: frames analysed, frames lost, and UDP datagrams the kernel dropped
    (taken as a frame each). Only while audio flows: datagrams dropped with no calls up
    (a flood at the SIP port) are no fraction of anything."""

    def __init__(self, span: float) -> None:
        self.span = span
        self._samples: deque[tuple[float, float, float, float]] = deque(maxlen=256)

    def add(self, now: float, analysed: float, lost: float, dropped: float) -> None:
        self._samples.append((now, analysed, lost, dropped))
        while len(self._samples) >= 2 and self._samples[1][0] <= now - self.span:
            self._samples.popleft()

    def fraction(self, now: float) -> float | None:
        """None until the window holds ``LOSS_MIN_FRAMES`` of audio, or when stale."""
        if len(self._samples) < 2 or now - self._samples[-1][0] > self.span:
            return None
        (_, a0, l0, d0), (_, a1, l1, d1) = self._samples[0], self._samples[-1]
        analysed, lost, dropped = max(0.0, a1 - a0), max(0.0, l1 - l0), max(0.0, d1 - d0)
        if analysed + lost < LOSS_MIN_FRAMES:
            return None
        return (lost + dropped) / (analysed + lost + dropped)


class UdpDrops:
    """UDP datagrams the kernel dropped for a process's sockets because their receive
    buffers were full (the process did not read them in time): the ``drops`` column of
    /proc/net/udp and udp6 for the sockets among its file descriptors. Linux only;
    ``read`` gives None elsewhere. A closed socket's drops stay counted."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()
        self._seen: dict[int, int] = {}  # socket inode -> its drops at the last read
        self.total = 0

    def _inodes(self) -> set[int]:
        inodes = set()
        for entry in os.scandir(f"/proc/{self.pid}/fd"):
            try:
                link = os.readlink(entry.path)
            except OSError:  # closed while we looked
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
        return inodes

    def read(self) -> int | None:
        try:
            inodes = self._inodes()
        except OSError:
            return None
        current: dict[int, int] = {}
        for table in ("udp", "udp6"):
            try:
                with open(f"/proc/{self.pid}/net/{table}") as f:
                    next(f, None)  # the header
                    for line in f:
                        fields = line.split()
                        if len(fields) >= 13 and int(fields[9]) in inodes:
                            current[int(fields[9])] = int(fields[12])
            except (OSError, ValueError):
                continue
        for inode, drops in current.items():
            self.total += max(0, drops - self._seen.get(inode, 0))
        self._seen = current
        return self.total


class ProcessTimes:
    """Cumulative user+system CPU seconds of processes by pid (psutil); pids that are
    gone are skipped."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def __call__(self, pids: Iterable[int]) -> dict[int, float]:
        wanted = set(pids)
        for pid in set(self._procs) - wanted:
            del self._procs[pid]
        out: dict[int, float] = {}
        for pid in wanted:
            try:
                proc = self._procs.get(pid) or psutil.Process(pid)
                times = proc.cpu_times()
            except psutil.Error:
                self._procs.pop(pid, None)
                continue
            self._procs[pid] = proc
            out[pid] = times.user + times.system
        return out


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), else all of the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class LoopLagMonitor:
    """How late the event loop wakes a task that sleeps ``interval``: each tick's lag goes
    to ``histogram`` and to a window of the last ``window`` seconds for percentiles."""

    def __init__(
        self,
        histogram: Histogram | None = None,
        *,
        interval: float = LAG_INTERVAL,
        window: float = LAG_WINDOW,
    ) -> None:
        self.interval = interval
        self.histogram = histogram
        self.window = Window(window, bound=2 * math.ceil(window / interval))
        self._task: asyncio.Task[None] | None = None

    def record(self, now: float, lag: float) -> None:
        self.window.add(now, lag)
        if self.histogram is not None:
            self.histogram.observe(lag)

    def percentile(self, q: float, now: float) -> float | None:
        """The lag at quantile ``q`` (0..1) in seconds; None below ``LAG_MIN_SAMPLES``."""
        self.window.prune(now)
        return self.window.quantile(q) if len(self.window) >= LAG_MIN_SAMPLES else None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.record(now, max(0.0, now - before - self.interval))


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.3g}"


def _describe(signal: Signal, value: float, threshold: float, over: bool) -> str:
    """``"event loop lag p95 83 ms > 50 ms"``; when held full by hysteresis only,
    ``"cpu 80%, full until below 72%"``."""
    if signal == "loop_lag":
        name, unit, scale = "event loop lag p95", " ms", 1000.0
    elif signal == "backlog":
        name, unit, scale = "recognition backlog", " s", 1.0
    elif signal == "loss":
        name, unit, scale = "audio lost", "%", 100.0
    else:
        name, unit, scale = "cpu", "%", 100.0
    shown = f"{name} {_num(value * scale)}{unit}"
    if over:
        return f"{shown} > {_num(threshold * scale)}{unit}"
    return f"{shown}, full until below {_num(threshold * RELEASE * scale)}{unit}"


def retry_after(ratio: float) -> int:
    """Seconds to wait, from how far over its threshold a signal is (value/threshold):
    ``RETRY_MIN`` at 1 (or below, held by hysteresis), ``RETRY_MAX`` at 3 or more."""
    ratio = min(max(ratio, 1.0), 3.0)
    return round(RETRY_MIN + (RETRY_MAX - RETRY_MIN) * (ratio - 1.0) / 2.0)


class Capacity:
    """Admission for new calls; see the module's theory of operation."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        calls_count: Callable[[], int],
        backlog: Callable[[], float],
        worker_pids: Callable[[], list[int]],
        *,
        cores: int | None = None,
        cpu_times: Callable[[Iterable[int]], dict[int, float]] | None = None,
        udp_drops: Callable[[], int | None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._calls_count = calls_count
        self._backlog = backlog
        self._worker_pids = worker_pids
        self._cpu_times = cpu_times or ProcessTimes()
        self.lag = LoopLagMonitor(metrics.loop_lag)
        self.cpu = CpuMeter(CPU_WINDOW, cores or usable_cores())
        self.loss = LossMeter(LOSS_WINDOW)
        self._udp_drops = udp_drops or UdpDrops().read
        self._udp_seen: int | None = None
        self._samples = 0
        self._full: set[Signal] = set()  # measured signals held full (hysteresis)
        self._refusal: Refusal | None = None  # the last check's answer
        self._backlog_failed = False
        self._sampler: asyncio.Task[None] | None = None

    # -- samples ------------------------------------------------------------------------

    def sample_cpu(self, now: float) -> None:
        """Read the CPU times of this process and the recognition workers."""
        try:
            workers = list(self._worker_pids())
        except Exception:
            log.exception("could not list the recognition workers")
            workers = []
        self.cpu.add(now, self._cpu_times([os.getpid(), *workers]))

    def sample_loss(self, now: float) -> None:
        """Read the frames analysed and lost so far (the metrics), and the kernel's UDP
        drops every ``UDP_EVERY`` samples (counted in ``ccengine_udp_receive_drops``)."""
        self._samples += 1
        if (self._samples - 1) % UDP_EVERY == 0:
            drops = self._udp_drops()
            if drops is not None:
                if self._udp_seen is not None and drops > self._udp_seen:
                    self.metrics.udp_drops.inc(drops - self._udp_seen)
                self._udp_seen = drops
        value = self.metrics.registry.get_sample_value
        analysed = value("ccengine_frames_processed_total") or 0.0
        lost = sum(value("ccengine_frames_lost_total", {"reason": r}) or 0.0 for r in LOCAL_LOSSES)
        dropped = value("ccengine_udp_receive_drops_total") or 0.0
        self.loss.add(now, analysed, lost, dropped)

    def backlog(self) -> float | None:
        try:
            value = float(self._backlog())
        except Exception:
            if not self._backlog_failed:  # once, not every check
                log.exception("could not read the recognition backlog")
            self._backlog_failed = True
            return None
        self._backlog_failed = False
        return value

    def _thresholds(self) -> dict[Signal, float]:
        s = self.settings
        return {
            "loop_lag": s.admission_max_loop_lag_ms / 1000.0,
            "backlog": s.admission_max_backlog_s,
            "cpu": s.admission_max_cpu,
            "loss": s.admission_max_frame_loss,
        }

    def _measure(self, now: float) -> dict[Signal, float | None]:
        return {
            "loop_lag": self.lag.percentile(LAG_QUANTILE, now),
            "backlog": self.backlog(),
            "cpu": self.cpu.utilisation(now),
            "loss": self.loss.fraction(now),
        }

    # -- the decision -------------------------------------------------------------------

    def check(self, now: float) -> Refusal | None:
        """None: room for a new call; else why not and when to ask again. Holds the
        hysteresis state, so call it with a ``now`` that never goes back."""
        values = self._measure(now)
        worst: tuple[float, Refusal] | None = None
        for signal, threshold in self._thresholds().items():
            value = values[signal]
            held = signal in self._full
            if value is None or not (value > threshold or (held and value >= threshold * RELEASE)):
                self._full.discard(signal)
                continue
            self._full.add(signal)
            ratio = value / threshold if threshold > 0 else math.inf
            refusal = Refusal(
                signal, _describe(signal, value, threshold, value > threshold), retry_after(ratio)
            )
            if worst is None or ratio > worst[0]:
                worst = (ratio, refusal)
        calls, limit = self._calls_count(), self.settings.max_concurrent_calls
        if calls >= limit:  # the hard cap first: its reason is the one to give
            answer: Refusal | None = Refusal(
                "limit", f"{calls} calls: the configured limit", LIMIT_RETRY
            )
        else:
            answer = worst[1] if worst else None
        self._transition(answer)
        return answer

    def _transition(self, answer: Refusal | None) -> None:
        before = self._refusal
        self._refusal = answer
        self.metrics.node_full.set(0 if answer is None else 1)
        if answer is not None and (before is None or before.signal != answer.signal):
            log.warning("node full, refusing new calls: %s", answer.reason)
        elif answer is None and before is not None:
            log.info("node has room again; taking new calls")

    def admit(self, now: float | None = None) -> None:
        """Raise :class:`Overloaded` (with the reason and Retry-After) when a new call
        must be refused now, counting it in ``ccengine_offers_rejected{reason}``."""
        refusal = self.check(time.monotonic() if now is None else now)
        if refusal is not None:
            self.metrics.rejected.labels(refusal.signal).inc()
            raise Overloaded(refusal.reason, retry_after=refusal.retry_after)

    def snapshot(self, now: float | None = None) -> Load:
        now = time.monotonic() if now is None else now
        refusal = self.check(now)
        p50, p99 = self.lag.percentile(0.5, now), self.lag.percentile(0.99, now)
        cpu = self.cpu.utilisation(now)
        backlog = self.backlog()
        loss = self.loss.fraction(now)
        return Load(
            state="ok" if refusal is None else "full",
            reason=refusal.reason if refusal else None,
            loop_lag_p50_ms=None if p50 is None else round(p50 * 1000, 1),
            loop_lag_p99_ms=None if p99 is None else round(p99 * 1000, 1),
            backlog_s=None if backlog is None else round(backlog, 2),
            cpu=None if cpu is None else round(cpu, 3),
            audio_loss=None if loss is None else round(loss, 3),
            calls=self._calls_count(),
            limit=self.settings.max_concurrent_calls,
        )

    # -- the asyncio side ---------------------------------------------------------------

    def start(self) -> None:
        self.lag.start()
        if self._sampler is None:
            self._sampler = asyncio.create_task(self._sample(), name="capacity-sampler")

    async def stop(self) -> None:
        await self.lag.stop()
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    async def _sample(self) -> None:
        while True:
            try:
                now = time.monotonic()
                self.sample_cpu(now)
                self.sample_loss(now)
                self.check(now)  # the state (and its log line) move without offers too
                if (cpu := self.cpu.utilisation(now)) is not None:
                    self.metrics.cpu_utilisation.set(cpu)
                if (backlog := self.backlog()) is not None:
                    self.metrics.recognition_backlog.set(backlog)
            except Exception:  # a broken sample must not stop the sampling
                log.exception("capacity sample failed")
            await asyncio.sleep(SAMPLE_INTERVAL)
