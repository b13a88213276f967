"""Concurrent WebRTC callers against one engine, and against a bare aiortc answerer.

    python -m bench.calls [--n 1 4 8 16] [--seconds 30]

For each N, N callers each play the same ~30 s of piper speech at once. We
measure on the server process only (psutil): CPU seconds per call-second, peak
memory per call, and, for the engine, whether analysis kept up with real time
(no recognizer backlog dropped, every 20 ms frame analysed, finals within 2 s)
and the ASR latency from the end of speech to the final event (p50, p95).
The baseline answers the same offers and decodes the audio, nothing more; the
ratio column is engine CPU / baseline CPU at the same N, measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests import speech
from tests.engine_proc import ROOT, EngineProcess, free_port
from tests.rtc_client import Caller

OUT = ROOT / "bench" / "out"


@dataclass
class Run:
    n: int
    cpu_per_call_s: float
    mem_per_call_mb: float
    latencies: list[float] = field(default_factory=list)
    frames_ratio: float = 1.0
    dropped: float = 0.0

    @property
    def kept_up(self) -> bool:
        return (
            self.dropped == 0
            and self.frames_ratio >= 0.97
            and (not self.latencies or max(self.latencies) < 2.0)
        )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def run_callers(
    url: str,
    wav: Path,
    n: int,
    proc: psutil.Process,
    engine: bool,
    headers: dict[str, str] | None = None,
) -> Run:
    async with httpx.AsyncClient(base_url=url, headers=headers) as http:
        before_metrics = (await http.get("/metrics")).text if engine else ""
    rss0 = proc.memory_info().rss
    peak = rss0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    callers = [Caller(url, wav) for _ in range(n)]
    cpu0 = sum(proc.cpu_times()[:2])
    try:
        await asyncio.gather(*(c.dial() for c in callers))
        if engine:
            await asyncio.gather(*(c.talk_and_hang_up(tail=2.0, end_timeout=60) for c in callers))
        else:
            await asyncio.gather(*(c.track.finished.wait() for c in callers))
            await asyncio.sleep(2.0)
    finally:
        await asyncio.gather(*(c.close() for c in callers), return_exceptions=True)
        cpu1 = sum(proc.cpu_times()[:2])
        stop.set()
        await sampler
    duration = callers[0].track.duration
    run = Run(n, (cpu1 - cpu0) / (n * duration), (peak - rss0) / n / 2**20)
    if engine:
        async with httpx.AsyncClient(base_url=url, headers=headers) as http:
            after = (await http.get("/metrics")).text
        frames = metric(after, "ccengine_frames_processed_total") - metric(
            before_metrics, "ccengine_frames_processed_total"
        )
        run.frames_ratio = frames / (sum(c.connected_seconds for c in callers) * 50)
        run.dropped = metric(after, "ccengine_asr_dropped_chunks_total") - metric(
            before_metrics, "ccengine_asr_dropped_chunks_total"
        )
        run.latencies = [
            e["asr_latency"] for c in callers for e in c.events if e["type"] == "transcript.final"
        ]
    return run


def start_baseline(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with (workdir / "baseline.log").open("ab") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_answerer", "--port", str(port)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        time.sleep(0.2)
    raise RuntimeError("baseline answerer did not start")


def make_speech(workdir: Path, seconds: float) -> Path:
    sentences = speech.CALM_SCRIPT + speech.ANGRY_SCRIPT + speech.CALM_SCRIPT
    wav = speech.piper_script(sentences, workdir / "bench.wav")
    trimmed = workdir / "bench30.wav"
    speech.sox(wav, trimmed, ["trim", "0", str(seconds)])
    return trimmed


def table(engine_runs: list[Run], base_runs: list[Run]) -> str:
    rows = [
        "| N | CPU s / call-s | baseline CPU s / call-s | ratio | kept real time | "
        "frames analysed | ASR latency p50 | p95 | MB / call | baseline MB / call |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e, b in zip(engine_runs, base_runs, strict=True):
        ratio = e.cpu_per_call_s / b.cpu_per_call_s if b.cpu_per_call_s > 0 else float("nan")
        rows.append(
            f"| {e.n} | {e.cpu_per_call_s:.3f} | {b.cpu_per_call_s:.3f} | {ratio:.1f}x | "
            f"{'yes' if e.kept_up else 'NO'} | {e.frames_ratio:.1%} | "
            f"{percentile(e.latencies, 50):.2f} s | {percentile(e.latencies, 95):.2f} s | "
            f"{e.mem_per_call_mb:.1f} | {b.mem_per_call_mb:.1f} |"
        )
    return "\n".join(rows)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        wav = make_speech(workdir, args.seconds)
        engine = EngineProcess(workdir / "engine", CCENGINE_MAX_CONCURRENT_CALLS="64").start()
        base_proc, base_url = start_baseline(workdir)
        engine_runs, base_runs = [], []
        try:
            assert engine.proc is not None
            eng_ps, base_ps = psutil.Process(engine.proc.pid), psutil.Process(base_proc.pid)
            for n in args.n:
                print(f"N={n}: engine...", flush=True)
                engine_runs.append(
                    await run_callers(
                        engine.url, wav, n, eng_ps, engine=True, headers=engine.headers
                    )
                )
                print(f"N={n}: baseline...", flush=True)
                base_runs.append(await run_callers(base_url, wav, n, base_ps, engine=False))
                await asyncio.sleep(1)
        finally:
            engine.stop()
            base_proc.terminate()
            base_proc.wait(10)
    result = table(engine_runs, base_runs)
    header = (
        f"calls of {args.seconds:.0f} s speech, {os.cpu_count()} CPUs, "
        f"ASR {engine_runs[0].latencies and 'Moonshine (en)'}\n\n"
    )
    (OUT / "calls.md").write_text(header + result + "\n")
    print()
    print(header + result)


if __name__ == "__main__":
    asyncio.run(main())
