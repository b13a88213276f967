"""Escalation latency: from the end of the caller's words asking for a person to the
offer reaching the agent's desk.

    python -m bench.escalation [--calls 20] [--parallel 1 4]

Each caller says "Hello, I need some help with my account. I want to talk to a real
person, please." The end of the triggering utterance is the last voiced 20 ms frame
of that WAV, placed on the wall clock by the moment the caller's track sent its
first frame. The agent side is the event stream the agent desk page reads
(``/api/v1/events``); we stamp ``call.offered`` when it arrives there, and also the
caller's ``transcript.final`` for the same words, to split the latency into
"recognition" (end of speech -> final transcript, including the VAD's end-of-speech
wait) and "decision" (final -> offer at the desk: escalation rules, persistence,
queueing, routing). With ``--parallel P``, P callers talk at once and P agents are
available, so no caller waits for a busy agent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets

from bench.calls import OUT, percentile
from media.audio import rms_dbfs
from media.wavtrack import read_wav_mono
from tests import speech
from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller

SCRIPT = ["Hello, I need some help with my account.", "I want to talk to a real person, please."]
VOICED_DBFS = -45.0


def speech_end(wav: Path) -> float:
    """Seconds from the start of the file to the end of its last voiced 20 ms frame."""
    pcm, rate = read_wav_mono(str(wav))
    step = rate // 50
    frames = range(0, len(pcm) - step, step)
    voiced = [i for i in frames if rms_dbfs(pcm[i : i + step]) > VOICED_DBFS]
    return (voiced[-1] + step) / rate


class Desk:
    """The agent desk's event stream, with arrival times."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url.replace("http", "ws", 1) + "/api/v1/events"
        self.headers = headers
        self.arrivals: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        async with websockets.connect(
            self.url, max_size=None, additional_headers=self.headers
        ) as ws:
            async for message in ws:
                now = time.monotonic()
                ev = json.loads(message)
                key: tuple[str, str] | None = None
                if ev["type"] == "call.offered":
                    key = (ev["call_id"], "offer")
                elif ev["type"] == "transcript.final" and "person" in ev["text"]:
                    key = (ev["call_id"], "final")
                if key is not None and key not in self.arrivals:
                    self.arrivals[key] = (now, ev)

    async def wait(self, call_id: str, what: str, within: float) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + within
        while (call_id, what) not in self.arrivals:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} for call {call_id}")
            await asyncio.sleep(0.005)
        return self.arrivals[(call_id, what)]


async def one_call(url: str, wav: Path, end_s: float, desk: Desk) -> tuple[float, float]:
    caller = Caller(url, wav)
    try:
        await caller.dial()
        offered_at, offer = await desk.wait(caller.call_id, "offer", 30)
        final_at, final = await desk.wait(caller.call_id, "final", 1)
        if os.environ.get("BENCH_DEBUG"):
            print(f"asr_latency {final['asr_latency']:.2f} end {final['end']:.2f}", flush=True)
        assert "person" in (offer["escalation_reason"] or ""), offer
        start = caller.track.started_at
        assert start is not None
        spoken_end = start + caller.track.lead_silence + end_s
        return offered_at - spoken_end, final_at - spoken_end
    finally:
        await caller.close()


async def measure(
    engine: EngineProcess, wav: Path, end_s: float, calls: int, parallel: int
) -> dict[str, list[float]]:
    agents = [await engine.agent(f"agent{i}", "bench-pw-1", "login", "available")
              for i in range(parallel)]  # fmt: skip
    desk = Desk(engine.url, engine.headers)
    desk.task = asyncio.create_task(desk.run())
    await asyncio.sleep(0.5)
    totals: list[float] = []
    recognition: list[float] = []
    try:
        for wave_start in range(0, calls, parallel):
            n = min(parallel, calls - wave_start)
            results = await asyncio.gather(
                *(one_call(engine.url, wav, end_s, desk) for _ in range(n))
            )
            for total, final in results:
                totals.append(total)
                recognition.append(final)
            await asyncio.sleep(1.0)  # offers withdrawn, agents available again
    finally:
        desk.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await desk.task
        for a in agents:
            await a.post("/api/v1/agents/me/presence", json={"event": "logout"})
            await a.aclose()
    decision = [t - r for t, r in zip(totals, recognition, strict=True)]
    return {"total": totals, "recognition": recognition, "decision": decision}


def row(parallel: int, r: dict[str, list[float]]) -> str:
    cells = [f"{parallel}", f"{len(r['total'])}"]
    for key in ("total", "recognition", "decision"):
        cells.append(f"{percentile(r[key], 50):.2f} s")
        cells.append(f"{percentile(r[key], 95):.2f} s")
    cells.append(f"{max(r['total']):.2f} s")
    return "| " + " | ".join(cells) + " |"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        wav = speech.piper_script(SCRIPT, workdir / "ask.wav")
        end_s = speech_end(wav)
        engine = EngineProcess(workdir / "engine").start()
        try:
            for i in range(max(args.parallel)):
                engine.add_user(f"agent{i}", "bench-pw-1")
            for parallel in args.parallel:
                print(f"{args.calls} calls, {parallel} at a time...", flush=True)
                result = await measure(engine, wav, end_s, args.calls, parallel)
                rows.append(row(parallel, result))
        finally:
            engine.stop()
    header = (
        f"escalation latency, end of 'real person' utterance -> call.offered at the desk; "
        f"{os.cpu_count()} CPUs, Moonshine (en)\n\n"
        "| callers at once | calls | total p50 | total p95 | recognition p50 | p95 | "
        "decision p50 | p95 | worst |\n|---|---|---|---|---|---|---|---|---|"
    )
    text = header + "\n" + "\n".join(rows)
    (OUT / "escalation.md").write_text(text + "\n")
    print()
    print(text)


if __name__ == "__main__":
    asyncio.run(main())
