"""SIPp against one engine: call setup rate, and phone calls next to WebRTC calls.

    python -m bench.sip [--rates 2 5 10 20] [--n 1 4 8] [--seconds 30]

1. Setup rate: SIPp places short calls (INVITE, 200, ACK, 1 s, BYE) at each rate for
   ten seconds; a rate is sustained when every call succeeds and the p95 time from
   INVITE to 200 OK stays under one second.
2. Full analysis: N SIPp callers each play the same 30 s of phone speech (G.711 over
   RTP) at once, then N WebRTC callers the same speech, against the same engine in the
   same run: CPU seconds per call-second of the engine process, whether analysis kept
   real time (every 20 ms frame analysed, nothing dropped), peak memory per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import tempfile
from pathlib import Path

import psutil

from bench.calls import OUT, Run, make_speech, metric, percentile, run_callers
from tests import sipp
from tests.engine_proc import EngineProcess

SHORT_CALL = 1.0


def setup_rate(
    target: str, workdir: Path, rate: int, scenario: str | None = None
) -> tuple[int, int, float]:
    """(successful, failed, p95 INVITE->200 seconds) for ten seconds of calls at ``rate``
    to ``target`` (an engine's or a proxy's host:port); ``scenario``: the short call."""
    calls = rate * 10
    pause = f'<pause milliseconds="{int(SHORT_CALL * 1000)}"/>\n'
    scenario = scenario or sipp.call_scenario(pause)
    xml = workdir / f"rate{rate}.xml"
    xml.write_text(scenario)
    cmd = [
        sipp.SIPP, target, "-sf", str(xml), "-s", "support", "-m", str(calls),
        "-r", str(rate), "-l", str(rate * 4), "-i", "127.0.0.1", "-p", "0",
        "-mi", "127.0.0.1", "-timeout", "60s", "-nostdin", "-trace_rtt",
        "-rtt_freq", "1", "-trace_stat", "-stf", str(workdir / f"rate{rate}.csv"),
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=120).stdout
    ok = _screen(out, "Successful call")
    failed = _screen(out, "Failed call")
    rtts = _rtts(workdir)
    return ok, failed, percentile(rtts, 95) if rtts else float("nan")


def _screen(out: str, name: str) -> int:
    m = re.findall(rf"{name}\s*\|\s*\d+\s*\|\s*(\d+)", out)
    return int(m[-1]) if m else 0


def _rtts(workdir: Path) -> list[float]:
    """Response times (ms in SIPp's rtt file) as seconds."""
    values: list[float] = []
    for f in workdir.glob("*_rtt.csv"):
        for line in f.read_text().splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 2:  # Date_ms;response_time_ms;rtd_no
                try:
                    values.append(float(parts[1]) / 1000.0)
                except ValueError:
                    pass
        f.unlink()
    return values


async def sip_callers(
    engine: EngineProcess, pcap: Path, seconds: float, n: int, proc: psutil.Process, work: Path
) -> Run:
    async with engine.http() as http:
        before = (await http.get("/metrics")).text
    rss0 = peak = proc.memory_info().rss
    cpu0 = sum(proc.cpu_times()[:2])
    scenario = sipp.call_scenario(sipp.play(pcap, seconds + 2.0))
    xml = work / f"talk{n}.xml"
    xml.write_text(scenario)
    cmd = [
        sipp.SIPP, engine.sip, "-sf", str(xml), "-s", "support", "-m", str(n), "-r", str(n),
        "-l", str(n), "-i", "127.0.0.1", "-p", "0", "-mi", "127.0.0.1",
        "-timeout", f"{int(seconds) + 60}s", "-nostdin",
    ]  # fmt: skip
    child = await asyncio.create_subprocess_exec(
        *cmd, cwd=work, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    while child.returncode is None:
        peak = max(peak, proc.memory_info().rss)
        try:
            await asyncio.wait_for(child.wait(), 0.25)
        except TimeoutError:
            pass
    await asyncio.sleep(2.0)  # the last finals
    cpu1 = sum(proc.cpu_times()[:2])
    async with engine.http() as http:
        after = (await http.get("/metrics")).text
    run = Run(n, (cpu1 - cpu0) / (n * seconds), (peak - rss0) / n / 2**20)
    frames = metric(after, "ccengine_frames_processed_total") - metric(
        before, "ccengine_frames_processed_total"
    )
    # a phone sends RTP while it plays the speech; nothing after it, so nothing to count
    run.frames_ratio = frames / (n * seconds * 50)
    run.dropped = metric(after, "ccengine_asr_dropped_chunks_total") - metric(
        before, "ccengine_asr_dropped_chunks_total"
    )
    if child.returncode != 0:
        run.dropped += 1  # a failed call counts as not keeping up
    return run


def table(rates: list[tuple[int, int, int, float]], sip: list[Run], rtc: list[Run]) -> str:
    lines = [
        "| calls/s offered | succeeded | failed | INVITE->200 p95 | sustained |",
        "|---|---|---|---|---|",
    ]
    for rate, ok, failed, p95 in rates:
        good = failed == 0 and ok > 0 and p95 < 1.0
        lines.append(f"| {rate} | {ok} | {failed} | {p95:.2f} s | {'yes' if good else 'no'} |")
    lines += [
        "",
        "| N | SIP CPU s / call-s | WebRTC CPU s / call-s | SIP / WebRTC | SIP kept real time | "
        "SIP frames analysed | WebRTC kept real time | SIP MB / call | WebRTC MB / call |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s, w in zip(sip, rtc, strict=True):
        ratio = s.cpu_per_call_s / w.cpu_per_call_s if w.cpu_per_call_s else float("nan")
        lines.append(
            f"| {s.n} | {s.cpu_per_call_s:.3f} | {w.cpu_per_call_s:.3f} | {ratio:.2f} | "
            f"{'yes' if s.kept_up else 'NO'} | {s.frames_ratio:.1%} | "
            f"{'yes' if w.kept_up else 'NO'} | {s.mem_per_call_mb:.0f} | {w.mem_per_call_mb:.0f} |"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", type=int, nargs="+", default=[2, 5, 10, 20])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wav = make_speech(work, args.seconds)
        pcap, _, seconds = sipp.phone_pcap(wav, work / "speech.pcap", lead=0.0)
        engine = EngineProcess(
            work / "engine",
            CCENGINE_MAX_CONCURRENT_CALLS="200",
            CCENGINE_SIP_TRUNKS='["127.0.0.1"]',
            CCENGINE_IVR_PROMPT="",
        ).start()
        rates: list[tuple[int, int, int, float]] = []
        sip_runs: list[Run] = []
        rtc_runs: list[Run] = []
        try:
            assert engine.proc is not None
            ps = psutil.Process(engine.proc.pid)
            for rate in args.rates:
                print(f"setup rate {rate}/s...", flush=True)
                rates.append((rate, *setup_rate(engine.sip, work, rate)))
                await asyncio.sleep(3)
            for n in args.n:
                print(f"N={n}: SIP...", flush=True)
                sip_runs.append(await sip_callers(engine, pcap, seconds, n, ps, work))
                await asyncio.sleep(2)
                print(f"N={n}: WebRTC...", flush=True)
                rtc_runs.append(
                    await run_callers(engine.url, wav, n, ps, engine=True, headers=engine.headers)
                )
                await asyncio.sleep(2)
        finally:
            engine.stop()
    result = table(rates, sip_runs, rtc_runs)
    header = f"SIPp against one engine, {os.cpu_count()} CPUs, Moonshine (en)\n\n"
    (OUT / "sip.md").write_text(header + result + "\n")
    print()
    print(header + result)


if __name__ == "__main__":
    asyncio.run(main())
