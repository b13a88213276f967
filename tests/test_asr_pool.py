"""The recognition pool: real pocketsphinx in worker processes, on real (piper) speech.

What must not break: a pooled leg hears exactly what an in-process recognizer hears; a
worker that dies or hangs fails its legs with the reason and is replaced; a model that
will not load fails start-up at once; stop() leaves no process behind; and the event loop
never waits for a decode.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import socket
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import pytest

from media.asr import (
    AsrResult,
    ModelChoice,
    Recognizer,
    RecognizerFactory,
    choose_model,
    create_factory,
)
from media.asr.pool import (
    BYTES_PER_SECOND,
    ModelLoadError,
    PooledRecognizer,
    PoolOverloaded,
    RecognitionPool,
    RecognizerLost,
)
from media.asr.worker import RecognitionServer, serve
from media.audio import AnalysisResampler
from media.wavtrack import read_wav_mono
from tests import speech

ORDER = "I would like to check the status of my order."
CALLBACK = "Please call me back tomorrow morning."
CHUNK = 3200  # 100 ms, as the pipeline sends it


@pytest.fixture(scope="module")
def utterances(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Each sentence as the 16 kHz int16 PCM the recognizers are fed."""
    folder = tmp_path_factory.mktemp("pool-speech")
    out = {}
    for name, text in (("order", ORDER), ("callback", CALLBACK)):
        pcm, rate = read_wav_mono(str(speech.piper_script([text], folder / f"{name}.wav")))
        out[name] = b"".join(f.to_bytes() for f in AnalysisResampler().push(pcm, rate))
    return out


@pytest.fixture(scope="module")
def english() -> ModelChoice:
    choice = choose_model("en", prefer="pocketsphinx")
    assert choice.backend == "pocketsphinx"
    return choice


@asynccontextmanager
async def running_pool(workers: int, **options: Any) -> AsyncIterator[RecognitionPool]:
    pool = RecognitionPool(workers, **options)
    await pool.start([choose_model("en", prefer="pocketsphinx")])
    try:
        yield pool
    finally:
        await pool.stop()


async def transcribe(rec: PooledRecognizer, pcm: bytes) -> tuple[list[str], AsrResult]:
    partials = []
    for i in range(0, len(pcm), CHUNK):
        if (partial := await rec.accept(pcm[i : i + CHUNK])) is not None:
            partials.append(partial)
    return partials, await rec.finish()


def in_process(pcm: bytes) -> tuple[list[str], AsrResult]:
    factory = create_factory(choose_model("en", prefer="pocketsphinx"))
    assert factory is not None
    rec = factory.create()
    partials = [p for i in range(0, len(pcm), CHUNK) if (p := rec.accept(pcm[i : i + CHUNK]))]
    result = rec.finish()
    rec.close()
    return partials, result


async def until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    """Poll: the pool's state changes inside its own tasks, with no event to await."""
    async with asyncio.timeout(seconds):
        while True:
            if condition():
                return
            await asyncio.sleep(0.05)


def child_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid)


# --- the child side, in-process -------------------------------------------------------


class FakeRecognizer(Recognizer):
    def __init__(self) -> None:
        self.defer_partials = False
        self.deferred: list[bool] = []
        self.closed = False

    def accept(self, pcm: bytes) -> str | None:
        self.deferred.append(self.defer_partials)
        return None if self.defer_partials else f"heard {len(pcm)} bytes"

    def peek(self) -> AsrResult:
        return AsrResult("so far")

    def finish(self) -> AsrResult:
        return AsrResult("done")

    def close(self) -> None:
        self.closed = True


class FakeFactory(RecognizerFactory):
    backend, language, model_path = "fake", "en", "/fake"

    def __init__(self) -> None:
        self.made: list[FakeRecognizer] = []

    def create(self, phrases: list[str] | None = None) -> Recognizer:
        self.made.append(FakeRecognizer())
        return self.made[-1]


FAKE = ModelChoice("en", "fake", "/fake")


def test_worker_serves_legs_in_order_and_defers_partials_when_behind() -> None:
    """Three requests already on the pipe: the first two accepts have work queued behind
    them (defer_partials True, no partial), the last has none (False, a partial)."""
    factories: list[FakeFactory] = []

    def make(choice: ModelChoice) -> FakeFactory:
        factories.append(FakeFactory())
        return factories[-1]

    ours, theirs = socket.socketpair()
    parent, child = Connection(os.dup(ours.fileno())), Connection(theirs.detach())
    requests = [
        (1, "open", "leg", (FAKE, None)),
        (2, "accept", "leg", b"\0" * 640),
        (3, "accept", "leg", b"\0" * 320),
        (4, "peek", "leg", None),
        (5, "finish", "leg", None),
        (6, "finish", "someone else", None),
        (7, "open", "other", (FAKE, ["yes", "no"])),
    ]
    for request in requests:
        parent.send_bytes(pickle.dumps(request))
    ours.shutdown(socket.SHUT_WR)
    serve(child, RecognitionServer(make))  # returns at end-of-file
    child.close()
    replies = [pickle.loads(parent.recv_bytes()) for _ in requests]
    parent.close()
    ours.close()
    assert [r[:2] for r in replies] == [(i, i != 6) for i in range(1, 8)]
    assert replies[1][2] is None and replies[2][2] is None  # deferred while others waited
    assert replies[3][2] == AsrResult("so far") and replies[4][2] == AsrResult("done")
    assert replies[5][2][0] == "request" and "someone else" in replies[5][2][1]
    assert len(factories) == 1, "the factory is cached by (backend, language, path)"
    first, second = factories[0].made[1:]  # made[0] only loaded the model
    assert first.deferred == [True, True]
    assert first.closed and second.closed  # serve() closes the legs left open


def test_worker_flag_is_false_when_nothing_waits() -> None:
    factory = FakeFactory()
    server = RecognitionServer(lambda choice: factory)
    assert server.handle((1, "open", "leg", (FAKE, None)), waiting=False) == (1, True, None)
    assert server.handle((2, "accept", "leg", b"\0" * 4), waiting=False) == (
        2,
        True,
        "heard 4 bytes",
    )
    assert factory.made[-1].deferred == [False]
    assert server.handle((3, "close", "leg", None), waiting=False) == (3, True, None)
    assert server.handle((4, "close", "leg", None), waiting=False) == (4, True, None)
    assert server.legs == []


# --- the pool, with real workers ------------------------------------------------------


async def test_pooled_leg_hears_what_the_in_process_recognizer_hears(
    utterances: dict[str, bytes], english: ModelChoice
) -> None:
    expected = in_process(utterances["order"])
    assert speech.wer(ORDER, expected[1].text) <= 0.25, expected[1].text
    async with running_pool(1) as pool:
        rec = await pool.open("leg-1", english)
        assert pool.stats().legs == 1
        assert await transcribe(rec, utterances["order"]) == expected
        # a model that will not load fails that open() only; the pool serves on
        bogus = ModelChoice("en", "vosk", "/nonexistent/vosk-model")
        with pytest.raises(ModelLoadError, match="/nonexistent/vosk-model"):
            await pool.open("leg-2", bogus)
        stats = pool.stats()
        assert (stats.alive, stats.legs, stats.pending, stats.restarts) == (1, 1, 0, 0)
        await rec.close()
        await rec.close()
        assert pool.stats().legs == 0


async def test_two_legs_go_to_two_workers_and_decode_side_by_side(
    utterances: dict[str, bytes], english: ModelChoice
) -> None:
    async with running_pool(2) as pool:
        a = await pool.open("a", english)
        b = await pool.open("b", english)
        assert {a.worker, b.worker} == {0, 1}
        (_, order), (_, callback) = await asyncio.gather(
            transcribe(a, utterances["order"]), transcribe(b, utterances["callback"])
        )
        assert speech.wer(ORDER, order.text) <= 0.25, order.text
        assert speech.wer(CALLBACK, callback.text) <= 0.25, callback.text
        stats = pool.stats()
        assert (stats.workers, stats.alive, stats.legs) == (2, 2, 2)
        cpu = sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pool.pids())
        assert stats.cpu_seconds == pytest.approx(cpu, abs=0.1)
        assert stats.cpu_seconds > 0.5  # two model loads and two decodes
        await a.close()
        await b.close()


async def test_a_killed_worker_fails_its_legs_and_is_replaced(
    utterances: dict[str, bytes], english: ModelChoice
) -> None:
    """SIGKILL mid-utterance (an OOM kill, a segfault): the waiting call says so, the
    leg on the other worker never notices, and the reopened leg transcribes."""
    pcm = utterances["order"]
    async with running_pool(2) as pool:
        a = await pool.open("a", english)
        b = await pool.open("b", english)
        for i in range(0, len(pcm) // 2, CHUNK):
            await a.accept(pcm[i : i + CHUNK])
        victim = pool.pids()[a.worker]
        os.kill(victim, signal.SIGSTOP)  # so the next request is surely in flight
        pending = asyncio.create_task(a.accept(pcm[len(pcm) // 2 : len(pcm) // 2 + CHUNK]))
        await until(lambda: pool.stats().pending == 1)
        assert pool.stats().backlog_seconds == pytest.approx(CHUNK / BYTES_PER_SECOND)
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(RecognizerLost) as lost:
            await pending
        assert "signal 9" in lost.value.reason and "SIGKILL" in lost.value.reason
        assert str(victim) in lost.value.reason
        with pytest.raises(RecognizerLost):
            await a.finish()
        _, other = await transcribe(b, utterances["callback"])
        assert speech.wer(CALLBACK, other.text) <= 0.25, other.text
        await until(lambda: pool.stats().alive == 2)
        assert pool.stats().restarts == 1 and victim not in pool.pids() and gone(victim)
        await a.close()  # never raises, even on a lost worker
        again = await pool.open("a", english)
        assert again.worker == a.worker  # the replacement has the fewest legs
        _, final = await transcribe(again, pcm)
        assert speech.wer(ORDER, final.text) <= 0.25, final.text
        await again.close()
        await b.close()


async def test_a_hung_worker_is_killed_after_the_request_timeout(
    utterances: dict[str, bytes], english: ModelChoice
) -> None:
    async with running_pool(1, request_timeout=1.0) as pool:
        rec = await pool.open("a", english)
        (hung,) = pool.pids()
        os.kill(hung, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(RecognizerLost, match="hung: no answer to accept within 1 s"):
            await rec.accept(utterances["order"][:CHUNK])
        assert 0.9 < time.monotonic() - started < 3.0
        await until(lambda: pool.stats().alive == 1)
        assert gone(hung) and pool.pids() != [hung] and pool.stats().restarts == 1
        again = await pool.open("a", english)
        _, final = await transcribe(again, utterances["order"])
        assert speech.wer(ORDER, final.text) <= 0.25, final.text
        await again.close()


async def test_restarts_past_the_limit_wait_and_say_so(
    english: ModelChoice, caplog: pytest.LogCaptureFixture
) -> None:
    """The crash-loop guard: one restart a minute allowed, so the second crash leaves
    the slot empty (logged as an error) instead of respawning at once."""
    async with running_pool(1, max_restarts_per_minute=1) as pool:
        (first,) = pool.pids()
        os.kill(first, signal.SIGKILL)
        await until(lambda: pool.stats().alive == 1 and pool.pids() != [first])
        (second,) = pool.pids()
        os.kill(second, signal.SIGKILL)
        await until(lambda: any("next restart in" in r.message for r in caplog.records))
        await asyncio.sleep(0.5)
        stats = pool.stats()
        assert (stats.alive, stats.restarts, pool.pids()) == (0, 1, [])
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert "restarted 1 times in the last minute (limit 1)" in errors[0].getMessage()


async def test_start_fails_fast_and_clearly_on_a_model_that_will_not_load(
    tmp_path: Path,
) -> None:
    before = child_pids()
    missing = tmp_path / "vosk-model-en-us-0.15"
    pool = RecognitionPool(2)
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as failed:
        async with asyncio.timeout(20):
            await pool.start([ModelChoice("en", "vosk", str(missing))])
    assert time.monotonic() - started < 10
    message = str(failed.value)
    assert "vosk model for 'en'" in message and str(missing) in message
    assert "Failed to create a model" in message
    assert child_pids() - before == set()
    await pool.stop()  # stopping again is harmless


async def test_stop_is_bounded_fails_what_waits_and_leaves_no_process(
    utterances: dict[str, bytes], english: ModelChoice
) -> None:
    """A frozen worker ignores its closed pipe and SIGTERM; stop() kills it anyway. The
    per-worker request cap holds while it is frozen."""
    before = child_pids()
    pool = RecognitionPool(2, max_pending=2)
    await pool.start([english])
    pids = pool.pids()
    assert len(set(pids)) == 2 and set(pids) <= child_pids()
    rec = await pool.open("a", english)
    os.kill(pids[rec.worker], signal.SIGSTOP)
    chunk = utterances["order"][:CHUNK]
    waiting = [asyncio.create_task(rec.accept(chunk)) for _ in range(2)]
    await until(lambda: pool.stats().pending == 2)
    with pytest.raises(PoolOverloaded):
        await rec.accept(chunk)
    started = time.monotonic()
    await pool.stop()
    assert time.monotonic() - started < 3.5
    for task in waiting:
        with pytest.raises(RecognizerLost, match="pool stopped"):
            await task
    assert child_pids() - before == set()
    assert all(gone(pid) for pid in pids)
    await rec.close()
    with pytest.raises(RecognizerLost):
        await pool.open("b", english)


@pytest.mark.serial
async def test_the_event_loop_keeps_time_while_workers_decode(
    utterances: dict[str, bytes], english: ModelChoice
) -> None:
    """Several seconds of speech per leg decoded at once, on every core: a 5 ms timer
    on the loop stays on time (decoding in-process would stall it for the whole decode)."""
    speech_pcm = utterances["order"] * 2
    async with running_pool(2) as pool:
        legs = [await pool.open(f"leg-{i}", english) for i in range(2)]
        lags: list[float] = []
        decoding = True

        async def tick() -> None:
            while decoding:
                due = time.monotonic() + 0.005
                await asyncio.sleep(0.005)
                lags.append(time.monotonic() - due)

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        partials = await asyncio.gather(*(leg.accept(speech_pcm) for leg in legs))
        decode_s = time.monotonic() - started
        decoding = False
        await ticker
        assert len(speech_pcm) / BYTES_PER_SECOND > 6
        assert decode_s > 0.3, "too little work to show a stall"
        assert all(partials)  # the recognizers really decoded it
        assert len(lags) >= 50, f"the timer ran {len(lags)} times in {decode_s:.2f} s"
        p99 = statistics.quantiles(lags, n=100)[98]
        assert p99 < 0.050, f"p99 timer lag {p99 * 1000:.1f} ms over a {decode_s:.2f} s decode"
        for leg in legs:
            assert "order" in (await leg.finish()).text
            await leg.close()


# --- lanes: several recognizers decoding at once in one process, one model -------------


@pytest.fixture(scope="module")
def moonshine() -> ModelChoice:
    speech.english()  # converted (once per test session) and checked
    choice = choose_model("en", [])
    assert choice.backend == "moonshine" and choice.releases_gil
    return choice


async def test_lanes_of_one_process_share_the_model_and_decode_side_by_side(
    utterances: dict[str, bytes], moonshine: ModelChoice
) -> None:
    """Two lanes in one process: two legs, one lane each, both heard right, one process
    (one copy of the model in memory) counted once."""
    pool = RecognitionPool(2, lanes_per_process=2)
    await pool.start([moonshine])
    try:
        (pid,) = pool.pids()
        assert len(psutil.Process(pid).children()) == 0
        a = await pool.open("a", moonshine)
        b = await pool.open("b", moonshine)
        assert {a.worker, b.worker} == {0, 1}  # one lane each
        (_, order), (_, callback) = await asyncio.gather(
            transcribe(a, utterances["order"] * 3), transcribe(b, utterances["callback"] * 3)
        )
        assert speech.wer(" ".join([ORDER] * 3), order.text) <= 0.1, order.text
        assert speech.wer(" ".join([CALLBACK] * 3), callback.text) <= 0.1, callback.text
        stats = pool.stats()
        assert (stats.workers, stats.alive, stats.legs, stats.processes) == (2, 2, 2, 1)
        assert stats.cpu_seconds == pytest.approx(
            sum(psutil.Process(pid).cpu_times()[:2]), abs=0.1
        )  # counted once, not once a lane
        await a.close()
        await b.close()
    finally:
        await pool.stop()
    assert gone(pid)


@pytest.mark.serial
async def test_lanes_decode_in_parallel(
    utterances: dict[str, bytes], moonshine: ModelChoice
) -> None:
    """The point of lanes: two decodes in one process take about as long as one, not
    twice as long (a backend holding the GIL would serialise them)."""
    pcm = utterances["order"] * 3
    pool = RecognitionPool(2, lanes_per_process=2)
    await pool.start([moonshine])
    try:
        a = await pool.open("a", moonshine)
        b = await pool.open("b", moonshine)
        for leg in (a, b):  # warm both threads' first run
            await leg.accept(pcm[:CHUNK])
            await leg.finish()
        (pid,) = pool.pids()
        proc = psutil.Process(pid)
        cpu0, started = sum(proc.cpu_times()[:2]), time.monotonic()
        await asyncio.gather(a.accept(pcm), b.accept(pcm))
        await asyncio.gather(a.finish(), b.finish())
        wall, cpu = time.monotonic() - started, sum(proc.cpu_times()[:2]) - cpu0
        assert cpu > 1.3 * wall, f"{cpu:.2f} CPU-s in {wall:.2f} s: the lanes took turns"
        await a.close()
        await b.close()
    finally:
        await pool.stop()


async def test_a_killed_process_fails_the_legs_of_all_its_lanes_and_comes_back(
    utterances: dict[str, bytes], moonshine: ModelChoice
) -> None:
    """The process is the unit of failure: its lanes fail with the real reason, it is
    restarted once (not once a lane), and every lane serves again."""
    pcm = utterances["order"]
    pool = RecognitionPool(2, lanes_per_process=2, request_timeout=1.0)
    await pool.start([moonshine])
    try:
        a = await pool.open("a", moonshine)
        b = await pool.open("b", moonshine)
        (victim,) = pool.pids()
        os.kill(victim, signal.SIGSTOP)  # lane a's next request hangs
        with pytest.raises(RecognizerLost, match="hung: no answer to accept within 1 s"):
            await a.accept(pcm[:CHUNK])
        with pytest.raises(RecognizerLost, match="hung: no answer to accept"):
            await b.accept(pcm[:CHUNK])  # the other lane went with the process
        await until(lambda: pool.stats().alive == 2)
        assert gone(victim) and pool.stats().restarts == 1 and len(pool.pids()) == 1
        (again,) = [await pool.open("a", moonshine)]
        _, final = await transcribe(again, pcm)
        assert speech.wer(ORDER, final.text) <= 0.1, final.text
        await again.close()
        (pid,) = pool.pids()
        os.kill(pid, signal.SIGKILL)
        await until(lambda: pool.stats().restarts == 2 and pool.stats().alive == 2)
    finally:
        await pool.stop()


def test_a_lane_that_fails_takes_its_process_down_at_once() -> None:
    """A lane thread that breaks (here: a request that is not a pickle) ends the worker
    process with a status of its own, so the pool restarts it now instead of timing the
    silent lane out 30 s later; the process's other lanes go with it, as they must."""
    import subprocess
    import sys

    from media.asr.pool import encode_frame
    from media.asr.worker import LANE_FAILED

    pairs = [socket.socketpair() for _ in range(2)]
    fds = [child.fileno() for _, child in pairs]
    proc = subprocess.Popen(
        [sys.executable, "-m", "media.asr.worker", f"{fds[0]},{fds[1]}", "0"],
        pass_fds=fds,
        stderr=subprocess.PIPE,
    )
    for _, child in pairs:
        child.close()
    try:
        pairs[1][0].sendall(encode_frame(b"not a pickle"))
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == LANE_FAILED
        assert b"a recognition lane failed" in err
    finally:
        proc.kill()
        proc.communicate()
        for parent, _ in pairs:
            parent.close()
