"""Capacity of one engine on this box: fully analysed calls per core, how soon the finals
come, event-loop lag and memory, for Moonshine (the default English recognizer) and
pocketsphinx (the old path, as the baseline), over SIP and WebRTC.

    python -m bench.capacity [--n 2 4 8 12] [--seconds 60] [--soak-minutes 0]
                             [--backends moonshine pocketsphinx] [--transports sip webrtc]
                             [--in-step] [--soak-n N] [--soak-only] [--idle-only]

For each backend, transport and N a fresh engine starts (admission thresholds raised so
the bench measures instead of being refused; any refusal is still counted), its idle
memory is read, then N callers talk at once for ``--seconds``: CALM_SCRIPT + ANGRY_SCRIPT
(piper, sentences with pauses) looped to length, whole sentences only, then 2 s of quiet
line. Caller i of N starts i/N of the way into the script, so the callers end their
sentences at different moments, as real ones do; ``--in-step`` makes them all say the
same words at once, the worst case for the recognizers' queues. SIP callers are SIPp (one
per caller: SIPp loads one capture per scenario) playing it as a phone would (300-3400 Hz,
8 kHz G.711 RTP); WebRTC callers are aiortc peers in this process, as ``bench.calls``
drives them. Per row:

- engine CPU s / call-s: user+system CPU of the engine process and its descendants (the
  recognition workers), psutil, over the run, divided by the seconds of caller media; in
  brackets the engine process alone (its event loop: media, VAD, events, storage); the
  callers' own CPU (SIPp, or this process for aiortc) is a separate column;
- calls / core = 1 / that: calls one core could analyse in real time;
- frames analysed: ``ccengine_frames_processed`` over the 20 ms frames the callers sent
  (50 a second a call), and dropped chunks (``ccengine_asr_dropped_chunks``);
- finals p50 / p95: ``asr_latency`` (last voiced audio -> final) of every caller
  ``transcript.final`` on ``/api/v1/events``; "finals" counts them (events / histogram);
- seen by a client: from the end of each sentence to its final arriving on that
  stream: what ``asr_latency`` leaves out (the VAD's own hangover, jitter buffer,
  decoding, resampling, storing and streaming the event) included. WebRTC: the end as
  this process sent it; SIP: the call's ``answered_at`` (SIPp plays from the ACK on)
  plus the sentence's end in the capture, which counts the set-up after the answer
  against the engine;
- loop lag p99 over the run, from the ``ccengine_event_loop_lag_seconds`` buckets (linear
  within a bucket, as PromQL's histogram_quantile), and the worst 10 s p99 ``/healthz``
  gave while sampled every 2 s; the largest recognition backlog seen there too;
- memory: PSS (shared pages split, unlike RSS) of the engine and its workers, idle after
  start and at its peak; MB / call = (peak - idle) / N;
- rejected: offers refused (``ccengine_offers_rejected``) and calls that failed;
- box CPU: how busy the whole machine was; from 90 % the callers and the engine fight
  for the cores, and the notes say the box could not drive that N cleanly. The notes
  also list the engine log's most frequent warnings.

The table goes to bench/out/capacity.md, followed by the issue's goals checked at the
largest N of each backend and transport.

``--soak-minutes M`` then runs one Moonshine engine with N SIPp callers (the largest
``--n``, or ``--soak-n``) calling again and again for M minutes, reading the PSS every
30 s: first, last, max and the least-squares slope in MB per minute (after two minutes of
warm-up), and whether that is flat (under 10 MB in 30 min); the slope of the engine and
of the recognition workers apart, the engine's malloc heap in use
(``ccengine_malloc_in_use_bytes``: flat while the PSS grows is freed pages kept, not a
leak), and the PSS once the last call has ended against the idle one before; to
bench/out/capacity-soak.md.
The issue asks for 30 minutes: ``python -m bench.capacity --soak-only --soak-minutes 30
--soak-n 12 --seconds 60``.

``--idle-only`` starts three fresh Moonshine engines one after the other and prints each
one's idle PSS per process, read once its start-up prompts are made (the memory goal's
number), and, as root, "alone": its resident pages counted once, what the PSS reads on a
box where no other process shares them (other engines running make the PSS read lower);
nothing else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import re
import resource
import signal
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

import httpx
import numpy as np
import psutil
import websockets
from prometheus_client.parser import text_string_to_metric_families

from bench.calls import OUT, percentile
from bench.sip import _screen
from media.wavtrack import read_wav_mono
from tests import sipp, speech
from tests.engine_proc import EngineProcess, free_port
from tests.rtc_client import Caller

Backend = Literal["moonshine", "pocketsphinx"]
Transport = Literal["sip", "webrtc"]
ProcessKind = Literal["engine", "worker", "other"]

# the goals
GOAL_CALLS_PER_CORE = 12  # i.e. <= 0.083 engine CPU s per call-second
GOAL_FRAMES = 0.99  # "every frame analysed", less call set-up and tear-down at the edges
GOAL_BACKLOG_S = 1.0  # "no backlog": never more than a second of audio waiting
GOAL_P50, GOAL_P95 = 0.300, 0.500  # s, end of speech -> final
GOAL_LAG_P99 = 0.020  # s
GOAL_BASE_MB, GOAL_PER_CALL_MB = 350.0, 20.0
FLAT_MB_PER_30_MIN = 10.0  # a soak is flat when its trend adds less than this in 30 min
BOX_BUSY = 0.90  # the whole machine this busy: callers and engine fight for the cores

SENTENCE_GAP_S = 0.5  # silence between a script's sentences (speech.PAUSE_S: 0.9 s)
SENTENCE_PAD_S = 0.15  # of that silence kept before and after a sentence
TAIL_S = 2.0  # quiet line after the speech, so the endpointer closes the last utterance
HANGUP_AFTER_S = 0.5  # SIPp hangs up this long after its capture (played in a thread) ends
IDLE_SETTLE_S = 3.0  # after start, before the idle memory is read
IDLE_ONLY_SETTLE_S = 20.0  # --idle-only: the start-up prompts are made by then
IDLE_ONLY_ENGINES = 3
PAGE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_S = 2.0  # /healthz and PSS while a row runs
SOAK_SAMPLE_S = 30.0
SOAK_WARMUP_S = 120.0
SETUP_GRACE_S = 60.0  # on top of the call: set-up and the last finals, at most
ENGINE_ENV = {
    "CCENGINE_MAX_CONCURRENT_CALLS": "500",
    "CCENGINE_ADMISSION_MAX_LOOP_LAG_MS": "100000",
    "CCENGINE_ADMISSION_MAX_BACKLOG_S": "100000",
    "CCENGINE_ADMISSION_MAX_CPU": "1.0",  # the most Settings allows: all usable cores
    "CCENGINE_SIP_TRUNKS": '["127.0.0.1"]',
    "CCENGINE_IVR_PROMPT": "",
}
BACKEND_ENV: dict[Backend, dict[str, str]] = {
    "moonshine": {},  # the default for English
    "pocketsphinx": {"CCENGINE_ASR_BACKENDS": '{"en": "pocketsphinx"}'},
}


# -- measuring the engine ---------------------------------------------------------------


class EngineTree:
    """The engine process and its descendants (recognition workers, a TTS run)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def procs(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu_seconds(self) -> tuple[float, float]:
        """User+system CPU so far: the engine process's own (its event loop and threads),
        and in all: each live process's own and that of the children it has reaped (so a
        worker that exited still counts, once)."""
        own = total = 0.0
        for p in self.procs():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
                if p.pid == self.root.pid:
                    own = t.user + t.system
        return own, total

    def rollups(self) -> list[tuple[ProcessKind, dict[str, int]]]:
        """Each process's ``smaps_rollup`` (kB), the engine first: its PSS, and that PSS
        in anonymous pages and in pages of files, read together so they agree."""
        out: list[tuple[ProcessKind, dict[str, int]]] = []
        for p in self.procs():
            try:
                kind: ProcessKind = "engine" if p.pid == self.root.pid else "other"
                if kind == "other" and "media.asr.worker" in p.cmdline():
                    kind = "worker"
                with open(f"/proc/{p.pid}/smaps_rollup") as f:
                    kb = {k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in f)
                          if k in ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem")}  # fmt: skip
            except (OSError, psutil.Error):  # the process ended: its pages are gone too
                continue
            out.append((kind, kb))
        return out

    def pss_parts_mb(
        self, rollups: list[tuple[ProcessKind, dict[str, int]]] | None = None
    ) -> list[tuple[ProcessKind, float]]:
        """PSS of each process, the engine first (from ``rollups``, or read now)."""
        return [(kind, kb["Pss"] / 1024) for kind, kb in (rollups or self.rollups())]

    def pss_mb(self) -> float:
        return total_mb(self.pss_parts_mb())

    def pss_kinds_mb(
        self, rollups: list[tuple[ProcessKind, dict[str, int]]] | None = None
    ) -> tuple[float, float]:
        """PSS of all these processes in anonymous pages (the heap, arenas, stacks) and in
        pages of files (libraries, models): what grows tells a heap that keeps pages from
        code and model pages first touched late. NaN on a kernel that does not split them
        (before 5.13)."""
        rolls = rollups or self.rollups()
        if any("Pss_Anon" not in kb for _, kb in rolls):
            return math.nan, math.nan
        anon = sum(kb["Pss_Anon"] for _, kb in rolls) / 1024
        file = sum(kb.get("Pss_File", 0) + kb.get("Pss_Shmem", 0) for _, kb in rolls) / 1024
        return anon, file

    def alone_mb(self) -> float | None:
        """Resident pages of these processes, each counted once however many of them map
        it: what their PSS adds up to when no other process shares their pages (PSS splits
        a library's pages with every process on the box that maps it, so it reads lower
        while other engines run). None without the page frame numbers (root only)."""
        frames = []
        for p in self.procs():
            with contextlib.suppress(OSError), open(f"/proc/{p.pid}/maps") as maps:
                with open(f"/proc/{p.pid}/pagemap", "rb") as pagemap:
                    for line in maps:
                        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                        if lo >= 1 << 47:  # [vsyscall]: not in the pagemap
                            continue
                        pagemap.seek(lo // PAGE * 8)
                        raw = np.frombuffer(pagemap.read((hi - lo) // PAGE * 8), np.uint64)
                        present = raw[(raw >> np.uint64(63)) == 1]
                        frames.append(present & np.uint64((1 << 55) - 1))
        if not frames:
            return None
        every = np.concatenate(frames)
        if every.size and not every.any():  # frame numbers hidden from non-root
            return None
        return len(np.unique(every)) * PAGE / 2**20


def total_mb(parts: list[tuple[ProcessKind, float]]) -> float:
    return sum(mb for _, mb in parts)


def split_mb(parts: list[tuple[ProcessKind, float]]) -> str:
    """Where the memory is: 820 (engine 382, workers 216 + 216, other 7)."""
    kinds: list[ProcessKind] = ["engine", "worker", "other"]
    shares = [
        f"{kind}{'s' if len(mbs) > 1 else ''} " + " + ".join(f"{mb:.0f}" for mb in mbs)
        for kind in kinds
        if (mbs := [mb for k, mb in parts if k == kind])
    ]
    return f"{total_mb(parts):.0f} ({', '.join(shares)})"


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(text: str) -> Samples:
    """Prometheus text as {(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def grew(after: Samples, before: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """How much each series of ``name`` grew between two scrapes."""
    return {
        labels: value - before.get((n, labels), 0.0)
        for (n, labels), value in after.items()
        if n == name
    }


def one_series(samples: Samples, label: str, value: str) -> Samples:
    """The samples whose ``label`` is ``value`` (and those without it): one series of a
    labelled histogram, for histogram_quantile, which reads every series of a name."""
    return {k: v for k, v in samples.items() if dict(k[1]).get(label, value) == value}


def end_rules(after: Samples, before: Samples) -> dict[str, tuple[float, float | None]]:
    """Finals by what ended their utterance: how many, and their asr_latency p50."""
    out = {}
    for labels, count in grew(after, before, "ccengine_asr_latency_seconds_count").items():
        if count > 0:
            end = dict(labels).get("end", "?")
            p50 = histogram_quantile(
                one_series(after, "end", end), before, "ccengine_asr_latency_seconds", 0.5
            )
            out[end] = (count, p50)
    return dict(sorted(out.items(), key=lambda kv: -kv[1][0]))


def gc_note(after: Samples, before: Samples) -> str:
    """The engine's garbage collections during the run, by generation: how many, and
    their p99 pause (ccengine_gc_pause_seconds), which the event loop waited out."""
    parts = []
    for labels, count in sorted(grew(after, before, "ccengine_gc_pause_seconds_count").items()):
        gen = dict(labels).get("generation", "?")
        only = one_series(after, "generation", gen)
        p99 = histogram_quantile(only, before, "ccengine_gc_pause_seconds", 0.99)
        pause = "-" if p99 is None else f"{p99 * 1000:.1f}"
        parts.append(f"generation {gen}: {count:.0f} (p99 {pause} ms)")
    return "garbage collections in the engine: " + (", ".join(parts) or "none seen")


def histogram_quantile(after: Samples, before: Samples, name: str, q: float) -> float | None:
    """The q-quantile of what ``name`` observed between two scrapes: linear within the
    bucket it falls in, the largest finite bound when it falls in +Inf (as PromQL)."""
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for labels, count in grew(after, before, name + "_bucket").items()
    )
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


class Background:
    """Runs ``_run`` as a task from ``start()`` to ``stop()``."""

    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class FinalsTap(Background):
    """Every caller ``transcript.final`` on the all-events stream, with its asr_latency.
    Resumes after its last id when the engine closes it as too slow (1013)."""

    def __init__(self, engine: EngineProcess) -> None:
        self.url = engine.url.replace("http", "ws", 1) + "/api/v1/events"
        self.headers = engine.headers
        self.latencies: list[float] = []
        # (call id, time.monotonic(), time.time()) of each final's arrival
        self.arrivals: list[tuple[str, float, float]] = []
        self.resumed = 0
        self._last = 0

    async def _run(self) -> None:
        for _ in range(20):  # bounded: a stream that keeps failing is a finding, not a loop
            url = f"{self.url}?after={self._last}" if self._last else self.url
            with contextlib.suppress(websockets.ConnectionClosed, OSError):
                async with websockets.connect(
                    url, max_size=None, additional_headers=self.headers
                ) as ws:
                    async for message in ws:
                        event = json.loads(message)
                        self._last = max(self._last, int(event.get("id") or 0))
                        if event["type"] == "transcript.final" and event["speaker"] == "caller":
                            self.latencies.append(float(event["asr_latency"]))
                            came = (event["call_id"], time.monotonic(), time.time())
                            self.arrivals.append(came)
            self.resumed += 1
            await asyncio.sleep(0.2)


@dataclass
class Probe(Background):
    """While a row runs: the worst /healthz load and the peak PSS."""

    engine: EngineProcess
    tree: EngineTree
    peak_parts_mb: list[tuple[ProcessKind, float]]
    worst_lag_ms: float = 0.0
    worst_backlog_s: float = 0.0

    async def stop(self) -> None:
        await super().stop()
        await self.sample()

    @property
    def peak_mb(self) -> float:
        return total_mb(self.peak_parts_mb)

    async def sample(self) -> None:
        # psutil reads /proc: off the loop, so the aiortc callers' pacing is not held up
        parts = await asyncio.to_thread(self.tree.pss_parts_mb)
        if total_mb(parts) > self.peak_mb:
            self.peak_parts_mb = parts
        with contextlib.suppress(httpx.HTTPError, KeyError, TypeError):
            async with httpx.AsyncClient(timeout=5) as http:
                load = (await http.get(f"{self.engine.url}/healthz")).json()["load"]
            self.worst_lag_ms = max(self.worst_lag_ms, load["loop_lag_p99_ms"] or 0.0)
            self.worst_backlog_s = max(self.worst_backlog_s, load["backlog_s"] or 0.0)

    async def _run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(SAMPLE_S)


# -- driving callers --------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    """What one caller says."""

    wav: Path  # 48 kHz, for a WebRTC caller (its track adds the quiet line itself)
    pcap: Path  # 8 kHz G.711 RTP with the quiet line, for a SIPp caller
    pcap_seconds: float


class Talk:
    """Callers talking for ``seconds``: the calm then the angry script, looped, whole
    sentences only (a caller cut off mid-word would be an utterance no endpointer can
    call complete). Caller i of N is i/N of the way into the script, so N callers do not
    end their sentences at the same instant, as real callers do not; the sentence it is
    in the middle of there is silence, and so is the one the call would cut off at its
    end. ``in_step`` starts them all at the beginning: every caller says the same words
    at the same moment, the worst case for the recognizers' queues."""

    def __init__(self, work: Path, seconds: float, *, in_step: bool = False) -> None:
        script = speech.piper_script(speech.CALM_SCRIPT + speech.ANGRY_SCRIPT, work / "scripts.wav")
        pcm, self.rate = read_wav_mono(str(script))
        self.script_seconds = len(pcm) / self.rate  # ~29 s
        again = math.ceil((seconds + self.script_seconds) / self.script_seconds)
        self.looped = np.tile(pcm, again + 1)
        self.sentences = sentences(self.looped, self.rate)
        self.work = work
        self.seconds = seconds
        self.in_step = in_step
        self._voices: dict[int, Voice] = {}  # by offset in ms

    def voices(self, n: int) -> list[Voice]:
        step = 0.0 if self.in_step else self.script_seconds / n
        return [self._voice(round(i * step * 1000)) for i in range(n)]

    def _voice(self, offset_ms: int) -> Voice:
        if offset_ms not in self._voices:
            t = offset_ms / 1000
            start = min(s for s, _ in self.sentences if s >= t)
            start = max(t, start - SENTENCE_PAD_S)  # t is in the pause before it
            end = max(e for _, e in self.sentences if e + SENTENCE_PAD_S <= t + self.seconds)
            end = end + SENTENCE_PAD_S
            said = self.looped[round(start * self.rate) : round(end * self.rate)]
            pcm = np.zeros(round(self.seconds * self.rate), dtype=np.int16)
            lead = round((start - t) * self.rate)
            pcm[lead : lead + len(said)] = said
            name = self.work / f"talk-{offset_ms}"
            wav = speech.write_wav(name.with_suffix(".wav"), pcm, self.rate)
            padded = speech.sox(wav, name.with_suffix(".tail.wav"), ["pad", "0", f"{TAIL_S:g}"])
            pcap, _, pcap_seconds = sipp.phone_pcap(padded, name.with_suffix(".pcap"), lead=0.0)
            self._voices[offset_ms] = Voice(wav, pcap, pcap_seconds)
        return self._voices[offset_ms]


def sentences(pcm: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """(start, end) seconds of the voiced stretches that pauses of ``SENTENCE_GAP_S``
    or more separate (the scripts' sentences: speech.PAUSE_S apart)."""
    return speech.sentence_spans(pcm, rate, SENTENCE_GAP_S)


@dataclass
class Driven:
    """What the callers did: calls up, media they sent, what it cost them."""

    calls: int
    failed: int
    media_seconds: float  # summed over the calls
    frames_sent: float
    caller_cpu_s: float
    note: str = ""
    # when each caller stopped speaking, by call id: time.monotonic() for WebRTC (this
    # process sends the audio, so it knows when each sentence ended); time.time() for
    # SIP (from when the engine answered: SIPp plays from the ACK on)
    speech_ends: dict[str, list[float]] = field(default_factory=dict)
    wall_clock: bool = False


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sipp_command(
    engine: EngineProcess, voice: Voice, work: Path, calls: int, timeout: float,
    caller: str = "15551230001",
) -> list[str]:  # fmt: skip
    """One SIPp caller playing ``voice`` in ``calls`` calls, one after the other (SIPp
    loads a capture with its scenario: one capture, one SIPp)."""
    xml = work / f"{voice.pcap.stem}.xml"
    played = sipp.play(voice.pcap, voice.pcap_seconds + HANGUP_AFTER_S)
    xml.write_text(sipp.call_scenario(played, caller=caller))
    return [
        sipp.SIPP, engine.sip, "-sf", str(xml), "-s", "support", "-m", str(calls),
        "-r", "1", "-l", "1", "-i", "127.0.0.1", "-p", "0", "-mi", "127.0.0.1",
        "-mp", str(free_port()), "-timeout", f"{int(timeout)}s", "-nostdin",
    ]  # fmt: skip


async def start_sipp(
    cmd: list[str], work: Path
) -> tuple[asyncio.subprocess.Process, asyncio.Task[str]]:
    """SIPp started, and a task reading its output (the tail of it) as it comes."""
    child = await asyncio.create_subprocess_exec(
        *cmd, cwd=work, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    return child, asyncio.create_task(last_output(child.stdout))


async def last_output(stream: asyncio.StreamReader | None, keep: int = 16384) -> str:
    """A child's output as it comes, keeping only the last ``keep`` bytes (SIPp redraws
    its screen every second: a pipe nobody reads would fill and stall it)."""
    tail = b""
    while stream is not None and (chunk := await stream.read(4096)):
        tail = (tail + chunk)[-keep:]
    return tail.decode(errors="replace")


async def soft_exit(child: asyncio.subprocess.Process, within: float) -> None:
    """SIGUSR1: SIPp places no new calls and hangs up when the ongoing one ends."""
    if child.returncode is None:
        child.send_signal(signal.SIGUSR1)
    try:
        await asyncio.wait_for(child.wait(), within)
    except TimeoutError:
        child.kill()
        await child.wait()


async def drive_sip(engine: EngineProcess, talk: Talk, n: int, work: Path) -> Driven:
    """N SIPp callers at once, each playing its voice and hanging up after it."""
    voices = talk.voices(n)
    timeout = voices[0].pcap_seconds + SETUP_GRACE_S
    cpu0 = children_cpu()
    numbers = [f"1555{i:07d}" for i in range(n)]  # which voice a call is, in its record
    started = [
        await start_sipp(sipp_command(engine, v, work, 1, timeout, caller=number), work)
        for v, number in zip(voices, numbers, strict=True)
    ]
    for child, _ in started:
        try:
            await asyncio.wait_for(child.wait(), timeout + 10)
        except TimeoutError:
            child.kill()
            await child.wait()
    outputs = [await output for _, output in started]
    ok = sum(_screen(out, "Successful call") for out in outputs)
    failed = sum(_screen(out, "Failed call") for out in outputs)
    note = ""
    if ok + failed < n:
        codes = sorted({child.returncode for child, _ in started}, key=str)
        note = f"SIPp placed {ok + failed} of {n} calls (exit {codes})"
    elif failed:
        note = f"{failed} of {n} SIPp calls failed"
    seconds = voices[0].pcap_seconds
    frames = ok * round(seconds * 50)
    driven = Driven(ok, n - ok, ok * seconds, frames, children_cpu() - cpu0, note, wall_clock=True)
    offsets = {}
    for number, voice in zip(numbers, voices, strict=True):
        pcm, rate = read_wav_mono(str(voice.wav))
        offsets[number] = [end for _, end in sentences(pcm, rate)]
    async with engine.http(timeout=30) as http:
        r = await http.get("/api/v1/calls", params={"channel": "sip", "limit": 500})
    for call in r.json()["calls"] if r.status_code == 200 else []:
        if call["answered_at"] and call["caller"] in offsets:
            answered = datetime.fromisoformat(call["answered_at"]).timestamp()
            driven.speech_ends[call["id"]] = [answered + end for end in offsets[call["caller"]]]
    return driven


async def drive_webrtc(engine: EngineProcess, talk: Talk, n: int) -> Driven:
    """N aiortc callers in this process, as bench.calls: dial at once, talk, hang up."""
    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    callers = [Caller(engine.url, v.wav) for v in talk.voices(n)]
    notes: list[str] = []
    try:
        dialled = await asyncio.gather(*(c.dial() for c in callers), return_exceptions=True)
        up = [c for c, r in zip(callers, dialled, strict=True) if not isinstance(r, BaseException)]
        errors = [r for r in dialled if isinstance(r, BaseException)]
        if errors:
            notes.append(f"{len(errors)} of {n} offers failed: {errors[0]!r}"[:200])
        ended = await asyncio.gather(
            *(c.talk_and_hang_up(tail=TAIL_S, end_timeout=SETUP_GRACE_S) for c in up),
            return_exceptions=True,
        )
        if lost := sum(isinstance(r, BaseException) for r in ended):
            notes.append(f"{lost} calls did not end cleanly")
    finally:
        await asyncio.gather(*(c.close() for c in callers), return_exceptions=True)
    ends: dict[str, list[float]] = {}
    for caller in up:
        if caller.track.started_at is None:
            continue
        pcm, rate = read_wav_mono(str(caller.wav))
        sent_from = caller.track.started_at + caller.track.lead_silence
        ends[caller.call_id] = [sent_from + end for _, end in sentences(pcm, rate)]
    return Driven(
        len(up),
        n - len(up),
        sum(c.connected_seconds for c in up),
        sum(c.track.frames_sent for c in up),
        sum(me.cpu_times()[:2]) - cpu0,
        "; ".join(notes),
        ends,
    )


def seen_by_client(
    arrivals: list[tuple[str, float, float]], ends: dict[str, list[float]], wall_clock: bool
) -> list[float]:
    """Seconds from the end of each sentence a caller said to its final reaching a
    client of the event stream: what a person watching the call waits, resampling,
    jitter buffers, storage and the stream included (``asr_latency`` starts at the last
    voiced audio the engine analysed). A final is matched to the last sentence that
    ended before it came (within 3 s); a second final for the same sentence, a split,
    is not counted again."""
    out: list[float] = []
    used: set[tuple[str, float]] = set()
    for call_id, monotonic, wall in arrivals:
        came = wall if wall_clock else monotonic
        before = [e for e in ends.get(call_id, []) if e <= came and came - e <= 3.0]
        if before and (call_id, before[-1]) not in used:
            used.add((call_id, before[-1]))
            out.append(came - before[-1])
    return out


# -- one row ----------------------------------------------------------------------------


@dataclass
class Row:
    backend: Backend
    transport: Transport
    n: int
    driven: Driven
    engine_cpu_s: float  # the engine process and its workers
    main_cpu_s: float  # the engine process alone
    frames: float
    dropped: float
    latencies: list[float]
    client_latencies: list[float]  # see seen_by_client
    finals_metric: float
    # what ended the utterances (ccengine_asr_latency_seconds{end}): count, engine's p50
    ends: dict[str, tuple[float, float | None]]
    lag_p99_s: float | None
    worst_lag_ms: float
    worst_backlog_s: float
    idle_parts_mb: list[tuple[ProcessKind, float]]  # PSS of each process
    peak_parts_mb: list[tuple[ProcessKind, float]]  # at the highest total
    rejected: dict[str, float]
    box_busy: float
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_per_call_s(self) -> float:
        return self.engine_cpu_s / self.driven.media_seconds if self.driven.media_seconds else 0.0

    @property
    def main_per_call_s(self) -> float:
        return self.main_cpu_s / self.driven.media_seconds if self.driven.media_seconds else 0.0

    @property
    def calls_per_core(self) -> float:
        return 1.0 / self.cpu_per_call_s if self.cpu_per_call_s > 0 else math.inf

    @property
    def frames_ratio(self) -> float:
        return self.frames / self.driven.frames_sent if self.driven.frames_sent else 0.0

    @property
    def idle_mb(self) -> float:
        return total_mb(self.idle_parts_mb)

    @property
    def peak_mb(self) -> float:
        return total_mb(self.peak_parts_mb)

    @property
    def mb_per_call(self) -> float:
        return (self.peak_mb - self.idle_mb) / self.n

    @property
    def driven_cleanly(self) -> bool:
        return self.driven.failed == 0 and self.box_busy < BOX_BUSY


def engine_for(backend: Backend, workdir: Path) -> EngineProcess:
    return EngineProcess(workdir, **ENGINE_ENV, **BACKEND_ENV[backend]).start(timeout=120)


async def metrics(engine: EngineProcess) -> Samples:
    async with engine.http(timeout=30) as http:
        r = await http.get("/metrics")
    r.raise_for_status()
    return scrape(r.text)


async def until_no_calls(engine: EngineProcess, within: float) -> None:
    """Until the engine has torn every call down (dropped chunks count at teardown)."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=engine.url, timeout=5) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/healthz")).json()["active_calls"] == 0:
                    return
            await asyncio.sleep(0.5)


def box_busy(before: Any, after: Any) -> float:
    """Fraction of all the machine's CPU time that was not idle between two readings."""
    idle = (after.idle + after.iowait) - (before.idle + before.iowait)
    total = sum(after) - sum(before)
    return 1.0 - idle / total if total > 0 else 0.0


async def measure(backend: Backend, transport: Transport, n: int, talk: Talk, work: Path) -> Row:
    engine = engine_for(backend, work / f"{backend}-{transport}-{n}")
    try:
        assert engine.proc is not None
        tree = EngineTree(engine.proc.pid)
        await asyncio.sleep(IDLE_SETTLE_S)
        idle_parts = await asyncio.to_thread(tree.pss_parts_mb)
        tap = FinalsTap(engine)
        tap.start()
        probe = Probe(engine, tree, idle_parts)
        await asyncio.sleep(0.5)  # the tap is listening
        before = await metrics(engine)
        cpu0, box0 = tree.cpu_seconds(), psutil.cpu_times()
        probe.start()
        if transport == "sip":
            driven = await drive_sip(engine, talk, n, work)
        else:
            driven = await drive_webrtc(engine, talk, n)
        await until_no_calls(engine, SETUP_GRACE_S)
        await asyncio.sleep(1.0)  # the last events on the stream
        cpu1, box1 = tree.cpu_seconds(), psutil.cpu_times()
        await probe.stop()
        await tap.stop()
        after = await metrics(engine)
    finally:
        engine.stop()
    warnings = log_warnings(engine.log)
    rejected = {
        dict(labels).get("reason", "?"): v
        for labels, v in grew(after, before, "ccengine_offers_rejected_total").items()
        if v > 0
    }
    row = Row(
        backend=backend,
        transport=transport,
        n=n,
        driven=driven,
        engine_cpu_s=cpu1[1] - cpu0[1],
        main_cpu_s=cpu1[0] - cpu0[0],
        frames=sum(grew(after, before, "ccengine_frames_processed_total").values()),
        dropped=sum(grew(after, before, "ccengine_asr_dropped_chunks_total").values()),
        latencies=tap.latencies,
        client_latencies=seen_by_client(tap.arrivals, driven.speech_ends, driven.wall_clock),
        finals_metric=sum(grew(after, before, "ccengine_asr_latency_seconds_count").values()),
        ends=end_rules(after, before),
        lag_p99_s=histogram_quantile(after, before, "ccengine_event_loop_lag_seconds", 0.99),
        worst_lag_ms=probe.worst_lag_ms,
        worst_backlog_s=probe.worst_backlog_s,
        idle_parts_mb=idle_parts,
        peak_parts_mb=probe.peak_parts_mb,
        rejected=rejected,
        box_busy=box_busy(box0, box1),
    )
    if driven.note:
        row.notes.append(driven.note)
    row.notes.append(gc_note(after, before))
    if row.box_busy >= BOX_BUSY:
        row.notes.append(
            f"the box was {row.box_busy:.0%} busy: callers and engine competed for the cores"
        )
    row.notes += [f"engine log: {count} x {line}" for line, count in warnings.most_common(3)]
    if tap.resumed > 1:
        row.notes.append(f"the event stream was reopened {tap.resumed - 1} times")
    return row


def log_warnings(log: Path) -> collections.Counter[str]:
    """The engine's warnings and errors, told apart by their text less ids and numbers."""
    found: collections.Counter[str] = collections.Counter()
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            if m := re.search(r" (WARNING|ERROR|CRITICAL) (.*)", line):
                text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(\.\d+)?", "#", m.group(0).strip())
                found[text[:160]] += 1
    return found


# -- the report -------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.0f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| ASR | transport | N | calls up | engine CPU s / call-s (main process) | calls / core | "
        "frames analysed | dropped chunks | finals (events / metric) | final p50 ms | "
        "p95 ms | seen by a client p50 / p95 ms | loop lag p99 ms (run) | "
        "worst 10 s p99 ms | max backlog s | "
        "PSS idle MB | PSS peak MB | MB / call | rejected | "
        "callers' CPU s / call-s | box CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rejected = ", ".join(f"{k} {v:.0f}" for k, v in r.rejected.items()) or "0"
        if r.driven.failed:
            rejected += f"; {r.driven.failed} failed"
        caller_cpu = r.driven.caller_cpu_s / r.driven.media_seconds if r.driven.media_seconds else 0
        lines.append(
            f"| {r.backend} | {r.transport} | {r.n} | {r.driven.calls} | "
            f"{r.cpu_per_call_s:.3f} ({r.main_per_call_s:.3f}) | {r.calls_per_core:.1f} | "
            f"{r.frames_ratio:.1%} | "
            f"{r.dropped:.0f} | {len(r.latencies)} / {r.finals_metric:.0f} | "
            f"{_ms(percentile(r.latencies, 50))} | {_ms(percentile(r.latencies, 95))} | "
            f"{_seen(r)} | {_ms(r.lag_p99_s)} | {r.worst_lag_ms:.0f} | {r.worst_backlog_s:.1f} | "
            f"{split_mb(r.idle_parts_mb)} | {split_mb(r.peak_parts_mb)} | "
            f"{r.mb_per_call:.1f} | {rejected} | {caller_cpu:.3f} | {r.box_busy:.0%} |"
        )
    return "\n".join(lines)


def _seen(r: Row) -> str:
    if not r.client_latencies:
        return "-"
    return (
        f"{_ms(percentile(r.client_latencies, 50))} / {_ms(percentile(r.client_latencies, 95))}"
        f" ({len(r.client_latencies)})"
    )


def _mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def goals(rows: list[Row]) -> str:
    """The issue's goals, checked at the largest N of each backend and transport."""
    out: list[str] = []
    seen: dict[tuple[Backend, Transport], Row] = {}
    for r in rows:
        key = (r.backend, r.transport)
        if key not in seen or r.n > seen[key].n:
            seen[key] = r
    for (backend, transport), r in seen.items():
        # as a client sees them (see seen_by_client), else as the engine measures them
        finals = r.client_latencies or r.latencies
        seen = "seen by a client" if r.client_latencies else "engine's asr_latency"
        p50, p95 = percentile(finals, 50), percentile(finals, 95)
        lag = r.lag_p99_s if r.lag_p99_s is not None else math.inf
        limit_mb = GOAL_BASE_MB + GOAL_PER_CALL_MB * r.n
        analysed = (
            r.frames_ratio >= GOAL_FRAMES and r.dropped == 0 and r.worst_backlog_s <= GOAL_BACKLOG_S
        )
        checks = [
            (
                f">= {GOAL_CALLS_PER_CORE} calls / core",
                r.calls_per_core >= GOAL_CALLS_PER_CORE,
                f"{r.calls_per_core:.1f} ({r.cpu_per_call_s:.3f} CPU s / call-s)",
            ),
            (
                "every frame analysed, nothing dropped, no backlog",
                analysed,
                f"{r.frames_ratio:.1%} frames, {r.dropped:.0f} dropped, "
                f"backlog up to {r.worst_backlog_s:.1f} s",
            ),
            (
                f"finals p50 <= {_ms(GOAL_P50)} ms, p95 <= {_ms(GOAL_P95)} ms",
                p50 <= GOAL_P50 and p95 <= GOAL_P95,  # NaN (no finals) compares False
                f"{_ms(p50)} / {_ms(p95)} ms over {len(finals)} finals ({seen}); ended by "
                + ", ".join(
                    f"{end} {count:.0f} (p50 {_ms(mid)} ms)" for end, (count, mid) in r.ends.items()
                ),
            ),
            (
                f"loop lag p99 <= {_ms(GOAL_LAG_P99)} ms",
                lag <= GOAL_LAG_P99,
                f"{_ms(r.lag_p99_s)} ms over the run, worst 10 s window {r.worst_lag_ms:.0f} ms",
            ),
            (
                f"memory <= {GOAL_BASE_MB:.0f} MB + {GOAL_PER_CALL_MB:.0f} MB / call",
                r.idle_mb <= GOAL_BASE_MB and r.peak_mb <= limit_mb,
                f"idle {r.idle_mb:.0f} MB, peak {r.peak_mb:.0f} MB (limit {limit_mb:.0f}), "
                f"{r.mb_per_call:.1f} MB / call",
            ),
        ]
        driven = "" if r.driven_cleanly else " (the box did not drive it cleanly: see notes)"
        out.append(f"**{backend}, {transport}, N = {r.n}**{driven}")
        out += [f"- {name}: {_mark(ok)}: {value}" for name, ok, value in checks]
        out.append("")
    return "\n".join(out).rstrip()


def notes(rows: list[Row]) -> str:
    return "\n".join(
        f"- {r.backend} {r.transport} N = {r.n}: {note}" for r in rows for note in r.notes
    )


# -- the soak ---------------------------------------------------------------------------


@dataclass
class Soak:
    n: int
    minutes: float
    idle_mb: float
    samples: list[tuple[float, float]]  # (s since the callers started, PSS MB)
    # (s, MB) at the same moments: what the engine's bounded caches held
    # (ccengine_bounded_cache_bytes: the prompt cache, the ring of recent events), which
    # fill up to their bound during a soak and then stay: growth, but not a leak
    bounded: list[tuple[float, float]]
    calls: int
    failed: int
    dropped: float
    latencies: list[float]
    rejected: float
    # (s, engine MB, workers MB) at the same moments: which process grows
    parts: list[tuple[float, float, float]] = field(default_factory=list)
    # (s, MB) the engine process held from malloc (ccengine_malloc_in_use_bytes): flat
    # while the PSS grows means freed pages kept, not objects
    heap: list[tuple[float, float]] = field(default_factory=list)
    # the PSS once the last call has ended, to compare with idle_mb: no calls in progress,
    # so none of the sample-to-sample noise of calls starting and ending
    idle_after_mb: float = math.nan
    # (s, anonymous MB, file MB) of PSS (smaps_rollup), all processes
    kinds: list[tuple[float, float, float]] = field(default_factory=list)

    def slope_mb_per_min(self, samples: list[tuple[float, float]] | None = None) -> float:
        """Least-squares trend of PSS (or ``samples``) after the warm-up (all samples
        if too few)."""
        samples = self.samples if samples is None else samples
        points = [(t, m) for t, m in samples if t >= SOAK_WARMUP_S]
        if len(points) < 3:
            points = samples
        if len(points) < 2:
            return 0.0
        mean_t = sum(t for t, _ in points) / len(points)
        mean_m = sum(m for _, m in points) / len(points)
        var = sum((t - mean_t) ** 2 for t, _ in points)
        cov = sum((t - mean_t) * (m - mean_m) for t, m in points)
        return cov / var * 60.0 if var else 0.0

    def unbounded(self) -> list[tuple[float, float]]:
        """PSS less what the bounded caches held at each sample."""
        held = dict(self.bounded)
        return [(t, m - held.get(t, 0.0)) for t, m in self.samples]

    def report(self) -> str:
        mbs = [m for _, m in self.samples]
        slope = self.slope_mb_per_min()
        flat = abs(slope) * 30 <= FLAT_MB_PER_30_MIN
        caches = self.slope_mb_per_min(self.bounded)
        rest = self.slope_mb_per_min(self.unbounded())
        rest_flat = abs(rest) * 30 <= FLAT_MB_PER_30_MIN
        engine_slope = self.slope_mb_per_min([(t, e) for t, e, _ in self.parts])
        worker_slope = self.slope_mb_per_min([(t, w) for t, _, w in self.parts])
        limit = GOAL_BASE_MB + GOAL_PER_CALL_MB * self.n
        anon = self.slope_mb_per_min([(t, a) for t, a, _ in self.kinds])
        files = self.slope_mb_per_min([(t, f) for t, _, f in self.kinds])
        lines = [
            f"soak: moonshine, {self.n} SIPp callers calling again and again for "
            f"{self.minutes:g} min ({self.calls} calls, {self.failed} failed, "
            f"{self.rejected:.0f} offers rejected, {self.dropped:.0f} chunks dropped, "
            f"finals p50 {_ms(percentile(self.latencies, 50))} ms / "
            f"p95 {_ms(percentile(self.latencies, 95))} ms over {len(self.latencies)})",
            "",
            f"| PSS idle MB | first | last | max | slope MB / min | flat | max <= {limit:.0f} MB |",
            "|---|---|---|---|---|---|---|",
            f"| {self.idle_mb:.0f} | {mbs[0]:.0f} | {mbs[-1]:.0f} | {max(mbs):.0f} | "
            f"{slope:+.2f} | {'yes' if flat else 'NO'} (30 min of slope "
            f"{'<=' if flat else '>'} {FLAT_MB_PER_30_MIN:.0f} MB) | "
            f"{'yes' if max(mbs) <= limit else 'NO'} |",
            "",
            f"of the slope, the bounded caches (prompts, recent events; "
            f"{self.bounded[-1][1] if self.bounded else 0.0:.1f} MB at the end): "
            f"{caches:+.2f} MB / min; the rest: {rest:+.2f} MB / min, "
            f"{'flat' if rest_flat else 'NOT flat'} by the same rule",
            "",
            f"by process: engine {engine_slope:+.2f} MB / min, recognition workers "
            f"{worker_slope:+.2f} MB / min; idle before {self.idle_mb:.0f} MB, idle after the "
            f"last call {self.idle_after_mb:.0f} MB ({self.idle_after_mb - self.idle_mb:+.0f})",
            "",
            f"the engine's malloc heap in use: {self.heap[0][1] if self.heap else math.nan:.0f}"
            f" -> {self.heap[-1][1] if self.heap else math.nan:.0f} MB, "
            f"{self.slope_mb_per_min(self.heap) if self.heap else math.nan:+.2f} MB / min "
            "(ccengine_malloc_in_use_bytes)",
            "",
            f"by kind of page: anonymous {anon:+.2f} MB / min, files (libraries, models) "
            f"{files:+.2f} MB / min",
            "",
            "samples (s, MB): " + ", ".join(f"{t:.0f} {m:.0f}" for t, m in self.samples),
            "bounded caches (s, MB): " + ", ".join(f"{t:.0f} {m:.1f}" for t, m in self.bounded),
        ]
        return "\n".join(lines)


async def soak(n: int, minutes: float, talk: Talk, work: Path) -> Soak:
    engine = engine_for("moonshine", work / "soak")
    voices = talk.voices(n)
    length = voices[0].pcap_seconds + HANGUP_AFTER_S
    span = minutes * 60.0
    calls = math.ceil(span / length) + 1  # each caller's, bounded: enough for the span
    samples: list[tuple[float, float]] = []
    bounded: list[tuple[float, float]] = []
    parts: list[tuple[float, float, float]] = []
    heap: list[tuple[float, float]] = []
    kinds: list[tuple[float, float, float]] = []
    try:
        assert engine.proc is not None
        tree = EngineTree(engine.proc.pid)

        async def take(elapsed: float) -> None:
            rolls = await asyncio.to_thread(tree.rollups)
            split = tree.pss_parts_mb(rolls)
            samples.append((elapsed, total_mb(split)))
            kinds.append((elapsed, *tree.pss_kinds_mb(rolls)))
            engine_mb = sum(mb for kind, mb in split if kind == "engine")
            parts.append((elapsed, engine_mb, sum(mb for kind, mb in split if kind == "worker")))
            now = await metrics(engine)
            held = sum(v for (name, _), v in now.items() if name == "ccengine_bounded_cache_bytes")
            bounded.append((elapsed, held / 2**20))  # MiB, as the PSS
            in_use = now.get(("ccengine_malloc_in_use_bytes", ()), math.nan)
            heap.append((elapsed, in_use / 2**20))

        await asyncio.sleep(IDLE_SETTLE_S)
        idle_mb = await asyncio.to_thread(tree.pss_mb)
        tap = FinalsTap(engine)
        tap.start()
        before = await metrics(engine)
        started = [
            await start_sipp(sipp_command(engine, v, work, calls, span + SETUP_GRACE_S), work)
            for v in voices
        ]
        start = time.monotonic()
        try:
            while (elapsed := time.monotonic() - start) < span:
                await take(elapsed)
                print(f"  {elapsed:5.0f} s: {samples[-1][1]:.0f} MB (engine {parts[-1][1]:.0f}, "
                      f"workers {parts[-1][2]:.0f}; bounded caches {bounded[-1][1]:.1f}; "
                      f"engine heap in use {heap[-1][1]:.0f})", flush=True)  # fmt: skip
                await asyncio.sleep(min(SOAK_SAMPLE_S, span - elapsed))
            await take(time.monotonic() - start)
        finally:
            await asyncio.gather(*(soft_exit(child, length + 30.0) for child, _ in started))
            outputs = [await output for _, output in started]
        await until_no_calls(engine, SETUP_GRACE_S)
        await asyncio.sleep(IDLE_SETTLE_S)
        idle_after_mb = await asyncio.to_thread(tree.pss_mb)
        await tap.stop()
        after = await metrics(engine)
    finally:
        engine.stop()
    return Soak(
        n=n,
        minutes=minutes,
        idle_mb=idle_mb,
        samples=samples,
        bounded=bounded,
        calls=round(sum(grew(after, before, "ccengine_calls_total").values())),
        failed=sum(_screen(out, "Failed call") for out in outputs),
        dropped=sum(grew(after, before, "ccengine_asr_dropped_chunks_total").values()),
        latencies=tap.latencies,
        rejected=sum(grew(after, before, "ccengine_offers_rejected_total").values()),
        parts=parts,
        heap=heap,
        idle_after_mb=idle_after_mb,
        kinds=kinds,
    )


# -- main -------------------------------------------------------------------------------


def _choices(kind: Any) -> list[str]:
    return list(get_args(kind))


def header(args: argparse.Namespace, talk: Talk) -> str:
    cpu = re.sub(r"\s+", " ", _cpu_model())
    if talk.in_step:
        who = "callers in step (all from the start of the script)"
    else:
        who = f"caller i of N starts i/N into the {talk.script_seconds:.0f} s script"
    return (
        f"capacity: {args.seconds:g} s of caller speech + {TAIL_S:g} s quiet line per call, "
        f"{who}; {os.cpu_count()} CPUs ({cpu}), "
        f"{os.environ.get('CCENGINE_ASR_WORKERS') or 'default'} recognition workers"
    )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


async def idle_only(work: Path) -> str:
    """Idle PSS of fresh engines, per process kind, one line each, and their median."""
    lines, totals, alones = [], [], []
    for i in range(IDLE_ONLY_ENGINES):
        engine = engine_for("moonshine", work / f"idle-{i}")
        try:
            assert engine.proc is not None
            await asyncio.sleep(IDLE_ONLY_SETTLE_S)
            tree = EngineTree(engine.proc.pid)
            parts = await asyncio.to_thread(tree.pss_parts_mb)
            alone = await asyncio.to_thread(tree.alone_mb)
        finally:
            engine.stop()
        kinds = collections.Counter[str]()
        for kind, mb in parts:
            kinds[kind] += mb
        totals.append(total_mb(parts))
        lines.append(
            f"engine {kinds['engine']:.0f} MB + worker {kinds['worker']:.0f} MB"
            f" + other {kinds['other']:.0f} MB = {totals[-1]:.0f} MB PSS idle"
            + (f"; {alone:.0f} MB alone" if alone is not None else "")
        )
        alones.append(alone or 0.0)
    lines.append(f"median: {sorted(totals)[len(totals) // 2]:.0f} MB PSS")
    if all(alones):
        lines.append(f"median: {sorted(alones)[len(alones) // 2]:.0f} MB alone")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[2, 4, 8, 12])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--soak-minutes", type=float, default=0.0)
    parser.add_argument("--soak-n", type=int, default=0, help="callers in the soak (max --n)")
    parser.add_argument("--soak-only", action="store_true", help="skip the table, only soak")
    parser.add_argument("--idle-only", action="store_true", help="only idle memory, per process")
    parser.add_argument(
        "--in-step", action="store_true", help="all callers say the same words at the same time"
    )
    parser.add_argument("--backends", nargs="+", choices=_choices(Backend),
                        default=_choices(Backend))  # fmt: skip
    parser.add_argument("--transports", nargs="+", choices=_choices(Transport),
                        default=_choices(Transport))  # fmt: skip
    args = parser.parse_args()
    if min(args.n) < 1 or args.seconds <= 0 or args.soak_minutes < 0:
        parser.error("N and seconds must be positive")
    if args.soak_only and not args.soak_minutes:
        parser.error("--soak-only needs --soak-minutes")
    OUT.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ccengine-capacity-") as tmp:
        work = Path(tmp)
        if args.idle_only:
            print(await idle_only(work), flush=True)
            return
        talk = Talk(work, args.seconds, in_step=args.in_step)
        top = header(args, talk)
        print(top, flush=True)
        for backend in [] if args.soak_only else args.backends:
            for transport in args.transports:
                for n in args.n:
                    print(f"{backend} {transport} N={n}...", flush=True)
                    row = await measure(backend, transport, n, talk, work)
                    rows.append(row)
                    print(table([row]).splitlines()[-1], flush=True)
        if rows:
            report = f"{top}\n\n{table(rows)}\n\ngoals at the largest N:\n\n{goals(rows)}\n"
            if extra := notes(rows):
                report += f"\nnotes:\n\n{extra}\n"
            (OUT / "capacity.md").write_text(report)
            print()
            print(report)
        if args.soak_minutes > 0:
            n = args.soak_n or max(args.n)
            print(f"soak: {n} callers for {args.soak_minutes:g} min...", flush=True)
            result = await soak(n, args.soak_minutes, talk, work)
            (OUT / "capacity-soak.md").write_text(result.report() + "\n")
            print()
            print(result.report())


if __name__ == "__main__":
    asyncio.run(main())
