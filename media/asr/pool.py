"""Recognizers in supervised worker processes, driven from the event loop.

Theory of operation
-------------------
Speech recognizers hold the GIL or a core while they decode, so they run in worker
processes, never in the event-loop process. Each worker process is a fresh interpreter
running ``python -m media.asr.worker`` (see that module for the wire protocol) and serves
one or more *lanes*: a pipe and a thread each, all lanes of a process sharing its loaded
models. There is one lane per core by default. A lane is what the pool schedules on (it
is called a worker below, and a leg is pinned to one for its life, so its recognizer
state stays in one place); a process is what fails and restarts, with all its lanes.

Lanes per process (``lanes_per_process``): a backend that releases the GIL while it
decodes (Moonshine: onnxruntime) runs as fast in N threads of one process as in N
processes, and one process holds one copy of the model instead of N (~150 MB each for
Moonshine base). A backend that holds the GIL (pocketsphinx) needs one process per lane.
The engine picks the number from the backends it loads.

Why a plain exec'd child and not ``multiprocessing``'s spawn context: spawn also execs a
fresh interpreter (fork is unsafe here: the engine has threads, an asyncio loop and
aiortc), but it then re-imports the parent's ``__main__`` in the child (``engine.cli`` when
run as ``ccengine`` or ``python -m engine.cli``), which would bring ``engine`` into every
worker; its ``Process.start()`` and exit sentinel are blocking APIs; and it leaves a
resource-tracker process behind. ``asyncio.create_subprocess_exec`` gives the same fresh
interpreter, an awaitable exit status, and an environment set before the child starts.
The wire format is still ``multiprocessing.connection``'s, so the child uses its
``Connection`` (with ``poll()``) unchanged.

Why asyncio streams and not reader/writer threads: the socket to each worker is one more
fd in the event loop's selector, so no blocking ``send``/``recv`` ever runs on the loop
thread, there are no threads to stop at shutdown, and back-pressure is ``drain()``.

Supervision, per process (``RecognitionPool._supervise``; every lane of it together):

============ ================================ ==========================================
state        event                            next
============ ================================ ==========================================
launching    spawned, preloads answered       serving (``start()`` returns)
launching    a preload fails / it dies        first launch: ``start()`` raises;
                                              later: paced restart
serving      pipe closes, process exits,      lost: pending requests and every leg on it
             a request outlives its timeout   raise ``RecognizerLost(reason)``; the
             (hung: killed), bad framing      process is reaped; paced restart
any          ``stop()``                       pipe closed, then SIGTERM, then SIGKILL
============ ================================ ==========================================

Restarts are paced by ``max_restarts_per_minute`` across the pool: past it, each restart
waits until the oldest one in the last minute is a minute old (and says so in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import media
from media.asr.base import AsrResult, RecognizerLost
from media.asr.models import ModelChoice
from media.asr.worker import MAX_REPLY_BYTES, MAX_REQUEST_BYTES, Op

__all__ = [
    "ModelLoadError",
    "PoolOverloaded",
    "PoolStats",
    "PooledRecognizer",
    "RecognitionError",
    "RecognitionPool",
    "RecognizerLost",  # defined with the interface (media.asr.base), raised here
]

log = logging.getLogger(__name__)

BYTES_PER_SECOND = 32000  # 16 kHz mono int16: what accept() is fed
RESTART_WINDOW = 60.0  # seconds over which max_restarts_per_minute counts
PIPE_GRACE = 2.0  # a worker that closed its pipe has this long to exit before it is killed
EXIT_GRACE = 1.0  # stop(): after closing the pipe, then SIGTERM
TERM_GRACE = 1.0  # stop(): after SIGTERM, then SIGKILL
# one worker per core is the parallelism: a backend's own thread pool would only make
# the workers fight for the same cores (an operator's explicit setting wins)
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

_INT32 = struct.Struct("!i")
_UINT64 = struct.Struct("!Q")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

PoolState = Literal["new", "running", "stopped"]


class RecognitionError(Exception):
    """The recognizer raised inside its worker; the worker keeps serving."""


class ModelLoadError(RecognitionError):
    """A model could not be loaded; the message names the model and the reason."""


class PoolOverloaded(RuntimeError):
    """A worker already has ``max_pending`` requests outstanding: the caller is not
    awaiting its requests one at a time per leg (a local bug)."""


@dataclass(frozen=True)
class PoolStats:
    workers: int  # configured lanes
    alive: int  # serving now
    legs: int
    pending: int  # requests sent and not yet answered
    backlog_seconds: float  # audio in those requests
    restarts: int
    cpu_seconds: float  # user + system time of the live worker processes
    processes: int = 0  # worker processes running now
    worst_lane_seconds: float = 0.0  # the most audio any one lane has outstanding


class _ProtocolError(Exception):
    """A worker broke the wire protocol: it is killed."""


# --- framing: multiprocessing.connection's, so the child can use its Connection ---------


def encode_frame(payload: bytes) -> bytes:
    if len(payload) > 0x7FFFFFFF:
        return _INT32.pack(-1) + _UINT64.pack(len(payload)) + payload
    return _INT32.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    (size,) = _INT32.unpack(await reader.readexactly(4))
    if size == -1:
        (size,) = _UINT64.unpack(await reader.readexactly(8))
    if not 0 <= size <= limit:
        raise _ProtocolError(f"sent a message of {size} bytes (limit {limit})")
    return await reader.readexactly(size)


# --- one worker process --------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    id: int
    op: Op
    future: asyncio.Future[Any]
    timeout: float
    audio_seconds: float


def exit_text(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"exited (signal {-code}, {name})"
    return f"exited (code {code})"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in THREAD_ENV.items():
        env.setdefault(key, value)
    # the child imports the same media package as this process, wherever it was found
    root = str(Path(media.__path__[0]).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from procfs (0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # fields after the parenthesised command name start at field 3 (state);
        # utime and stime are fields 14 and 15
        fields = data.rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def _remote_error(value: Any) -> Exception:
    kind, message = value if isinstance(value, tuple) and len(value) == 2 else ("", repr(value))
    if kind == "load":
        return ModelLoadError(message)
    if kind == "request":
        return RecognitionError(f"bad request (a bug in the pool): {message}")
    return RecognitionError(message)


class _Worker:
    """One lane of a worker process: its pipe, its requests in flight (answered in order),
    its legs. ``group`` is every lane of the same process, this one included: they live and
    die together."""

    def __init__(
        self,
        index: int,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_pending: int,
        lane: str = "",
    ) -> None:
        self.index = index
        self.proc = proc
        self.pid = proc.pid
        self.name = f"recognition worker {index} (pid {proc.pid}{lane})"
        self.group: list[_Worker] = [self]
        self.legs: set[str] = set()
        self.ready = False
        self.reason: str | None = None  # why it was lost; None while it serves
        self._gone = asyncio.Event()
        self._reader = reader
        self._writer = writer
        self._max_pending = max_pending
        self._pending: deque[_Pending] = deque()
        self._next_id = 0
        self._timer: asyncio.TimerHandle | None = None
        self._exit_task = asyncio.create_task(self._watch_exit(), name=f"{self.name} exit")
        self._read_task = asyncio.create_task(self._read_replies(), name=f"{self.name} reader")

    @classmethod
    async def spawn(cls, indices: Sequence[int], max_pending: int) -> list[_Worker]:
        """One process serving a lane for each slot index."""
        pairs = [socket.socketpair() for _ in indices]
        parents = [parent for parent, _ in pairs]
        try:
            fds = [child.fileno() for _, child in pairs]
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "media.asr.worker",
                ",".join(map(str, fds)),
                str(indices[0]),
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=fds,
                env=_child_env(),
            )
        except BaseException:
            for sock in parents:
                sock.close()
            raise
        finally:
            for _, child in pairs:
                child.close()  # the child holds its own copies
        lanes: list[_Worker] = []
        try:
            for n, (index, sock) in enumerate(zip(indices, parents, strict=True)):
                reader, writer = await asyncio.open_unix_connection(sock=sock)
                label = f", lane {n + 1} of {len(indices)}" if len(indices) > 1 else ""
                lanes.append(cls(index, proc, reader, writer, max_pending, label))
        except BaseException:
            for started in lanes:
                started._lose("it could not be started")
            for sock in parents[len(lanes) :]:
                sock.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        for started in lanes:
            started.group = lanes
        return lanes

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def backlog_seconds(self) -> float:
        return sum((p.audio_seconds for p in self._pending), 0.0)

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def request(
        self, op: Op, leg_id: str, arg: Any, *, time_limit: float, audio_seconds: float = 0.0
    ) -> Any:
        if self.reason is not None:
            raise RecognizerLost(self.reason)
        if len(self._pending) >= self._max_pending:
            raise PoolOverloaded(
                f"{self.name} already has {len(self._pending)} requests outstanding"
            )
        self._next_id += 1
        payload = pickle.dumps((self._next_id, op, leg_id, arg), pickle.HIGHEST_PROTOCOL)
        if len(payload) > MAX_REQUEST_BYTES:
            raise ValueError(f"a {op} request of {len(payload)} bytes exceeds {MAX_REQUEST_BYTES}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(self._next_id, op, future, time_limit, audio_seconds))
        if len(self._pending) == 1:
            self._arm_timer()
        self._writer.write(encode_frame(payload))
        try:
            await self._drain()
            return await future
        finally:
            if not future.done():
                future.cancel()  # the caller gave up: its answer will be dropped

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError:
            pass  # the worker is going away: the request's future will say why

    # -- answers, in the order the requests were sent --

    async def _read_replies(self) -> None:
        try:
            while True:
                data = await read_frame(self._reader, MAX_REPLY_BYTES)
                self._on_reply(data)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the pipe closed: the process exit says why
        except _ProtocolError as exc:
            self._lose(f"{self.name} {exc}; killed it", kill=True)
            return
        except Exception as exc:  # a bug here must still free the legs, not strand them
            log.exception("%s: reading its answers failed", self.name)
            self._lose(f"{self.name} could not be read ({exc!r}); killed it", kill=True)
            return
        if self.reason is None:
            done, _ = await asyncio.wait({self._exit_task}, timeout=PIPE_GRACE)
            if not done:
                self._lose(f"{self.name} closed its pipe but kept running; killed it", kill=True)

    def _on_reply(self, data: bytes) -> None:
        try:
            reply = pickle.loads(data)
        except Exception as exc:
            raise _ProtocolError(f"sent an unreadable answer ({exc})") from exc
        head = self._pending[0] if self._pending else None
        if head is None or not (
            isinstance(reply, tuple) and len(reply) == 3 and reply[0] == head.id
        ):
            raise _ProtocolError(f"answered out of turn: {reply!r:.80}")
        self._pending.popleft()
        self._arm_timer()
        if head.future.done():
            return  # its caller stopped waiting
        _, ok, value = reply
        if ok:
            head.future.set_result(value)
        else:
            head.future.set_exception(_remote_error(value))

    # -- hung workers: the oldest request's clock runs from when the worker could start it --

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending and self.reason is None:
            head = self._pending[0]
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(head.timeout, self._on_timeout, head)

    def _on_timeout(self, head: _Pending) -> None:
        self._lose(
            f"{self.name} hung: no answer to {head.op} within {head.timeout:g} s; killed it",
            kill=True,
        )

    # -- the end --

    async def _watch_exit(self) -> None:
        code = await self.proc.wait()
        self._lose(f"{self.name} {exit_text(code)}")

    def _lose(self, reason: str, *, kill: bool = False) -> None:
        """Mark the worker lost (the first reason wins) and fail everything waiting on it."""
        if self.reason is None:
            self.reason = reason
            self.ready = False
            self._gone.set()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            while self._pending:
                future = self._pending.popleft().future
                if not future.done():
                    future.set_exception(RecognizerLost(reason))
            # abort, not close: requests still buffered for a dead or stopped child are
            # worthless, and the child sees end-of-file once the socket is gone
            self._writer.transport.abort()
        if kill:
            # the other lanes of the process go with it: their legs learn the real reason,
            # not just "killed"
            for lane in self.group:
                lane._lose(reason)
            self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def wait_lost(self) -> str:
        await self._gone.wait()
        assert self.reason is not None
        return self.reason

    async def _exited_within(self, seconds: float) -> bool:
        done, _ = await asyncio.wait({self._exit_task}, timeout=seconds)
        return bool(done)

    async def shutdown(self, reason: str) -> None:
        """End the process (every lane's pipe closed, then SIGTERM, then SIGKILL), reap it."""
        for lane in self.group:
            lane._lose(reason)
        if not await self._exited_within(EXIT_GRACE):
            log.warning("%s did not exit when its pipe closed: terminating it", self.name)
            self._signal(signal.SIGTERM)
            if not await self._exited_within(TERM_GRACE):
                log.warning("%s ignored SIGTERM: killing it", self.name)
                self._signal(signal.SIGKILL)
        await asyncio.gather(
            *(t for lane in self.group for t in (lane._exit_task, lane._read_task))
        )


# --- the pool -----------------------------------------------------------------------


class RecognitionPool:
    """Worker processes serving recognizers; legs are pinned to the least loaded one.

    ``workers <= 0`` means one lane per core; ``lanes_per_process`` of them share a process
    (``<= 0``: all of them). ``request_timeout`` bounds one recognizer call (longer means
    the worker hung: its process is killed and replaced); ``load_timeout`` bounds a model
    load (``start()``'s preloads and ``open()``); ``max_pending`` bounds the requests
    outstanding on one lane.
    """

    def __init__(
        self,
        workers: int,
        *,
        request_timeout: float = 30.0,
        max_restarts_per_minute: int = 10,
        load_timeout: float = 120.0,
        max_pending: int = 64,
        lanes_per_process: int = 1,
    ) -> None:
        if max_restarts_per_minute < 1 or max_pending < 1:
            raise ValueError("max_restarts_per_minute and max_pending must be at least 1")
        self._size = workers if workers > 0 else (os.cpu_count() or 1)
        per = lanes_per_process if 0 < lanes_per_process < self._size else self._size
        self._groups = [list(range(i, min(i + per, self._size))) for i in range(0, self._size, per)]
        self._request_timeout = request_timeout
        self._load_timeout = max(load_timeout, request_timeout)
        self._max_restarts = max_restarts_per_minute
        self._max_pending = max_pending
        self._state: PoolState = "new"
        self._preload: tuple[ModelChoice, ...] = ()
        self._slots: list[_Worker | None] = [None] * self._size
        self._all: set[_Worker] = set()  # every process not yet reaped, serving or not
        self._supervisors: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._worker_ready = asyncio.Event()
        self._restart_times: deque[float] = deque()
        self._restarts = 0

    async def start(self, preload: Sequence[ModelChoice] = ()) -> None:
        """Start the workers; each has loaded ``preload`` when this returns.

        Raises ``ModelLoadError`` naming the model when one cannot be loaded, or
        ``RecognizerLost`` when a worker dies while starting; the pool is then stopped.
        """
        if self._state != "new":
            raise RuntimeError("a recognition pool is started once")
        self._state = "running"
        self._preload = tuple(preload)
        loop = asyncio.get_running_loop()
        first: list[asyncio.Future[None]] = [loop.create_future() for _ in range(self._size)]
        self._supervisors = [
            asyncio.create_task(
                self._supervise(group, [first[i] for i in group]), name=f"asr-worker-{group[0]}"
            )
            for group in self._groups
        ]
        try:
            results = await asyncio.gather(*first, return_exceptions=True)
        except BaseException:
            await self.stop()
            raise
        if errors := [r for r in results if isinstance(r, BaseException)]:
            await self.stop()
            raise errors[0]
        log.info(
            "recognition pool: %d lanes in %d processes (pids %s)",
            self._size,
            len(self._groups),
            self.pids(),
        )

    async def open(
        self, leg_id: str, choice: ModelChoice, phrases: list[str] | None = None
    ) -> PooledRecognizer:
        """A recognizer for ``leg_id`` on the live worker with the fewest legs."""
        if any(leg_id in w.legs for w in self._live()):
            raise ValueError(f"leg {leg_id!r} already has a recognizer")
        worker = await self._least_loaded()
        worker.legs.add(leg_id)
        try:
            arg = (choice, list(phrases) if phrases else None)
            await worker.request("open", leg_id, arg, time_limit=self._load_timeout)
        except asyncio.CancelledError:
            worker.legs.discard(leg_id)
            self._close_in_background(worker, leg_id)  # the worker may open it anyway
            raise
        except Exception:
            worker.legs.discard(leg_id)
            raise
        return PooledRecognizer(worker, leg_id, self._request_timeout)

    def stats(self) -> PoolStats:
        live = self._live()
        procs = {w.pid: w for w in self._all if w.running}.values()  # lanes share a process
        return PoolStats(
            workers=self._size,
            alive=len(live),
            legs=sum(len(w.legs) for w in live),
            pending=sum(w.pending for w in self._all),
            backlog_seconds=sum((w.backlog_seconds for w in self._all), 0.0),
            restarts=self._restarts,
            cpu_seconds=sum((_cpu_seconds(w.pid) for w in procs), 0.0),
            processes=len(procs),
            worst_lane_seconds=max((w.backlog_seconds for w in live), default=0.0),
        )

    def pids(self) -> list[int]:
        """Process ids of the workers serving now, in slot order, each once."""
        pids = [w.pid for w in self._slots if w is not None and w.reason is None]
        return list(dict.fromkeys(pids))

    async def stop(self) -> None:
        """Fail what is pending, end every worker (bounded: ~2 s) and reap it."""
        if self._state == "stopped":
            return
        self._state = "stopped"
        self._worker_ready.set()  # open() calls waiting for a worker give up
        for task in [*self._supervisors, *self._background]:
            task.cancel()
        await asyncio.gather(*self._supervisors, *self._background, return_exceptions=True)
        workers = list(self._all)
        await asyncio.gather(*(w.shutdown("the recognition pool stopped") for w in workers))
        self._all.clear()
        self._slots = [None] * self._size
        log.info("recognition pool stopped")

    # -- supervision --

    async def _supervise(self, group: list[int], first: list[asyncio.Future[None]]) -> None:
        """Keep the slots of ``group`` served by one process: launch, serve until a lane
        is lost, restart (paced)."""
        try:
            await self._keep_serving(group, first)
        finally:
            for index, future in zip(group, first, strict=True):
                if not future.done():  # a bug ended supervision: start() must not wait
                    future.set_exception(
                        RecognizerLost(f"recognition worker {index} never started")
                    )

    async def _keep_serving(self, group: list[int], first: list[asyncio.Future[None]]) -> None:
        starting = True
        while True:
            try:
                lanes = await self._launch(group)
            except Exception as exc:  # a model that will not load, a worker that died
                if starting:
                    for future in first:
                        future.set_exception(exc)
                    return
                log.error("recognition worker %d did not come back: %s", group[0], exc)
            else:
                if starting:
                    starting = False
                    for future in first:
                        future.set_result(None)
                reason = await self._serve(lanes)
                log.warning("%s; restarting it", reason)
            await self._pace_restart()

    async def _launch(self, group: list[int]) -> list[_Worker]:
        lanes = await _Worker.spawn(group, self._max_pending)
        self._all.update(lanes)  # from here stop() reaps them, whatever happens
        try:
            for lane in lanes:  # the first loads each model; the others find it loaded
                for choice in self._preload:
                    await lane.request("load", "", choice, time_limit=self._load_timeout)
        except Exception:
            await self._retire(lanes, "its models did not load")
            raise
        return lanes

    async def _serve(self, lanes: list[_Worker]) -> str:
        for lane in lanes:
            lane.ready = True
            self._slots[lane.index] = lane
        self._worker_ready.set()
        waits = [asyncio.create_task(lane.wait_lost()) for lane in lanes]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        reason = next(iter(done)).result()
        for lane in lanes:
            self._slots[lane.index] = None
        await self._retire(lanes, reason)
        return reason

    async def _retire(self, lanes: list[_Worker], reason: str) -> None:
        await lanes[0].shutdown(reason)  # every lane of the process
        self._all.difference_update(lanes)

    async def _pace_restart(self) -> None:
        """The crash-loop guard: at most ``max_restarts_per_minute`` across the pool."""
        loop = asyncio.get_running_loop()
        window = self._restart_times
        while True:
            now = loop.time()
            while window and now - window[0] >= RESTART_WINDOW:
                window.popleft()
            if len(window) < self._max_restarts:
                break
            delay = window[0] + RESTART_WINDOW - now
            log.error(
                "recognition workers restarted %d times in the last minute (limit %d): "
                "next restart in %.0f s",
                len(window),
                self._max_restarts,
                delay,
            )
            await asyncio.sleep(delay)
        window.append(loop.time())
        self._restarts += 1

    # -- choosing a worker --

    def _live(self) -> list[_Worker]:
        return [w for w in self._slots if w is not None and w.ready and w.reason is None]

    async def _least_loaded(self) -> _Worker:
        """The live worker with the fewest legs; waits (bounded) while all restart."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._request_timeout
        if self._state == "new":
            raise RuntimeError("the recognition pool is not started")
        while True:
            if self._state == "stopped":
                raise RecognizerLost("the recognition pool is stopped")
            if live := self._live():
                return min(live, key=lambda w: (len(w.legs), w.pending, w.index))
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RecognizerLost(
                    f"no recognition worker came up within {self._request_timeout:g} s"
                )
            self._worker_ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._worker_ready.wait(), remaining)

    def _close_in_background(self, worker: _Worker, leg_id: str) -> None:
        if worker.reason is not None or self._state != "running":
            return
        task = asyncio.create_task(_quiet_close(worker, leg_id, self._request_timeout))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def _quiet_close(worker: _Worker, leg_id: str, time_limit: float) -> None:
    """Free a leg in its worker; a lost worker has freed it already."""
    try:
        await worker.request("close", leg_id, None, time_limit=time_limit)
    except RecognizerLost:
        pass
    except Exception as exc:
        log.warning("closing leg %s in %s: %s", leg_id, worker.name, exc)


class PooledRecognizer:
    """One leg's recognizer in a worker process: ``Recognizer`` with awaitable calls.

    Every call raises ``RecognizerLost`` once the worker is gone (``open()`` again), and
    ``RecognitionError`` when the recognizer itself raised.
    """

    def __init__(self, worker: _Worker, leg_id: str, time_limit: float) -> None:
        self.leg_id = leg_id
        self.worker = worker.index
        self._worker = worker
        self._timeout = time_limit
        self._closed = False

    async def accept(self, pcm: bytes) -> str | None:
        """Feed 16 kHz mono int16 speech; the new partial text if it changed."""
        seconds = len(pcm) / BYTES_PER_SECOND
        value = await self._call("accept", bytes(pcm), seconds)
        if value is not None and not isinstance(value, str):
            raise RecognitionError(f"accept answered {type(value).__name__}, not text")
        return value

    async def peek(self) -> AsrResult:
        """Decode what was fed so far without ending the utterance."""
        return self._result(await self._call("peek"))

    async def finish(self) -> AsrResult:
        """End the utterance: its final result."""
        return self._result(await self._call("finish"))

    async def close(self) -> None:
        """Free the leg in its worker. Never raises (a lost worker freed it already)."""
        if self._closed:
            return
        self._closed = True
        self._worker.legs.discard(self.leg_id)
        if self._worker.reason is None:
            await _quiet_close(self._worker, self.leg_id, self._timeout)

    async def _call(self, op: Op, arg: Any = None, audio_seconds: float = 0.0) -> Any:
        if self._closed:
            raise RuntimeError(f"the recognizer for leg {self.leg_id} is closed")
        return await self._worker.request(
            op, self.leg_id, arg, time_limit=self._timeout, audio_seconds=audio_seconds
        )

    @staticmethod
    def _result(value: Any) -> AsrResult:
        if not isinstance(value, AsrResult):
            raise RecognitionError(f"expected an AsrResult, got {type(value).__name__}")
        return value
