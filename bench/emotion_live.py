"""The held-out emotion set through real calls (issue 13: "the same through a real in-app
call and a real SIPp call within 5 points of offline").

    python -m bench.emotion_live [--part fresh3|fresh2|fresh|heldout] [--calls N]
                                 [--channel webrtc|sip|both] [--parallel K]

Each held-out call of the emotion set (bench/emotion_set.py) becomes one call's audio:
its utterances as the set caches them at 16 kHz (``hear(s, "wide").samples``), 1.2 s of
silence between them, 1.5 s before the first and 2 s after the last. In-app, an aiortc
caller (tests/rtc_client.py) plays it as a 48 kHz WAV, Opus to the engine; on the phone,
SIPp plays it from a trunk address as a phone sends it (300-3400 Hz at 8 kHz, G.711
u-law RTP, tests/sipp.py). One engine process per channel takes K calls at a time.

Each call's record is read back (``GET /api/v1/calls/{id}``): every emotion sample is
matched, through its utterance's start and end on the call clock, to the scripted
utterance it overlaps most. A scripted utterance the engine heard as two or more is
"split" (it is scored by the part that overlaps it most); one it never reported is
"lost" (scored wrong). The offline numbers are EmotionTracker over ``hear(s, band)`` on
the same calls, as bench/emotion_eval.py runs it (band "wide" for in-app, "phone" for
SIP). Call level: the last sample's ``call_label`` against the call's label. Escalation:
the live call's stored escalations that route to a person, against the offline rules'.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

from bench.calls import OUT, metric
from bench.emotion_eval import Tracked, _should_escalate, track
from bench.emotion_fusion import Said, calls_of
from bench.emotion_scripts import PARTS
from bench.emotion_set import Spoken, hear, plan
from media.audio import ANALYSIS_RATE
from media.wavtrack import SEND_RATE, to_send_rate
from tests import sipp, speech
from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller

Channel = Literal["webrtc", "sip"]
BAND: dict[Channel, str] = {"webrtc": "wide", "sip": "phone"}
LEAD_S, GAP_S, TAIL_S = 1.5, 1.2, 2.0
CALL_SLACK_S = 60.0  # a call's timeout: its audio plus this
ROUTES = ("route_to_human", "target_skill")


@dataclass(frozen=True)
class Script:
    """One held-out call as it is played: its audio and where each utterance lies."""

    index: int  # the call's index in plan(part)
    pcm: np.ndarray  # 16 kHz int16
    spans: list[tuple[float, float]]  # each utterance's (start, end), seconds into pcm

    @property
    def seconds(self) -> float:
        return len(self.pcm) / ANALYSIS_RATE


def script(index: int, call: list[Spoken]) -> Script:
    """The call's utterances (16 kHz, as the set caches them) with the silences between."""
    rate = ANALYSIS_RATE
    parts = [np.zeros(int(LEAD_S * rate), np.int16)]
    spans = []
    at = LEAD_S
    for i, u in enumerate(call):
        if i:
            parts.append(np.zeros(int(GAP_S * rate), np.int16))
            at += GAP_S
        samples = hear(u, "wide").samples.astype(np.int16)
        spans.append((at, at + len(samples) / rate))
        at += len(samples) / rate
        parts.append(samples)
    parts.append(np.zeros(int(TAIL_S * rate), np.int16))
    return Script(index, np.concatenate(parts), spans)


def pick(total: int, n: int) -> list[int]:
    """``n`` of ``total`` calls: every k-th, round the list, with k prime to ``total`` so
    the picks are distinct and, as the calls are listed voice by voice and kind by kind
    (ten kinds), every voice and every kind is picked once n reaches ten."""
    if n >= total:
        return list(range(total))
    k = max(1, total // n)
    while math.gcd(k, total) != 1:
        k += 1
    return sorted(i * k % total for i in range(n))


@dataclass
class Live:
    """One call as the engine stored it."""

    call_id: str
    transcript: list[dict[str, Any]]  # the caller's utterances
    emotions: list[dict[str, Any]]
    escalations: list[dict[str, Any]]

    @property
    def routed(self) -> list[str]:
        return [e["rule"] for e in self.escalations if any(a in ROUTES for a in e["actions"])]


@dataclass
class Matched:
    """The engine's samples against the script's utterances, for one call."""

    labels: list[str | None]  # per scripted utterance: the engine's label, None if lost
    parts: list[int]  # per scripted utterance: engine utterances matched to it
    texts: list[str]  # per scripted utterance: the engine's words for it, parts joined
    stray: int  # engine utterances overlapping no scripted one
    offset: float  # call clock minus script time, as calibrated
    call_label: str | None


def match(live: Live, s: Script, nominal: float) -> Matched:
    """Each emotion sample to the scripted utterance its utterance overlaps most.

    The call clock starts at the call's first audio; ``nominal`` is where the script's
    time 0 should fall on it. The rest of the offset (packets before the first counted
    frame, the VAD's start) is calibrated as the median gap between each engine
    utterance's start and the nearest scripted start."""
    by_id = {u["id"]: u for u in live.transcript}
    starts = [a + nominal for a, _ in s.spans]
    gaps = [min((u["start"] - t for t in starts), key=abs) for u in live.transcript]
    offset = nominal + (float(np.median(gaps)) if gaps else 0.0)
    best: dict[int, tuple[float, str]] = {}  # scripted utterance -> (overlap, label)
    parts = [0] * len(s.spans)
    texts: list[list[str]] = [[] for _ in s.spans]
    stray = 0
    for e in live.emotions:
        u = by_id.get(e["utterance_id"])
        if u is None:
            stray += 1
            continue
        overlaps = [min(u["end"], b + offset) - max(u["start"], a + offset) for a, b in s.spans]
        i = int(np.argmax(overlaps))
        if overlaps[i] <= 0:
            stray += 1
            continue
        parts[i] += 1
        texts[i].append(u["text"])
        if i not in best or overlaps[i] > best[i][0]:
            best[i] = (overlaps[i], e["label"])
    labels = [best[i][1] if i in best else None for i in range(len(s.spans))]
    last = live.emotions[-1]["call_label"] if live.emotions else None
    return Matched(labels, parts, [" ".join(t) for t in texts], stray, offset - nominal, last)


# -- the calls ------------------------------------------------------------------------------


async def _record(http: httpx.AsyncClient, call_id: str, within: float) -> dict[str, Any]:
    """The call's stored record once it has ended."""
    deadline = time.monotonic() + within
    while True:
        r = await http.get(f"/api/v1/calls/{call_id}")
        r.raise_for_status()
        detail: dict[str, Any] = r.json()
        if detail["state"] == "ended":
            return detail
        if time.monotonic() > deadline:
            raise TimeoutError(f"call {call_id} did not end")
        await asyncio.sleep(0.5)


def _live(detail: dict[str, Any]) -> Live:
    transcript = [u for u in detail["transcript"] if u["speaker"] == "caller"]
    caller_utts = {u["id"] for u in transcript}
    emotions = [e for e in detail["emotion_timeline"] if e["utterance_id"] in caller_utts]
    emotions.sort(key=lambda e: e["at"])  # stored in order; the last is the call's label
    return Live(detail["id"], transcript, emotions, detail["escalations"])


async def webrtc_call(engine: EngineProcess, s: Script, work: Path) -> tuple[Live, float]:
    """One in-app call; (its record, where the script's time 0 falls on the call clock)."""
    wav = speech.write_wav(work / f"call{s.index:03d}.wav",
                           to_send_rate(s.pcm, ANALYSIS_RATE), SEND_RATE)  # fmt: skip
    caller = Caller(engine.url, wav)
    try:
        async with asyncio.timeout(s.seconds + CALL_SLACK_S):
            await caller.complete_call()
            async with engine.http(timeout=30) as http:
                detail = await _record(http, caller.call_id, 30)
    finally:
        await caller.close()
        wav.unlink()
    # the track says its lead silence before the file; the clock starts at its first frame
    return _live(detail), caller.track.lead_silence


async def sip_call(engine: EngineProcess, s: Script, work: Path) -> tuple[Live, float]:
    """One phone call through SIPp from the trunk address; as ``webrtc_call``."""
    number = f"1555{s.index:07d}"
    wav = speech.write_wav(work / f"call{s.index:03d}.wav",
                           to_send_rate(s.pcm, ANALYSIS_RATE), SEND_RATE)  # fmt: skip
    pcap, _, seconds = sipp.phone_pcap(wav, work / f"call{s.index:03d}.pcap", lead=0.0)
    wav.unlink()
    scenario = sipp.call_scenario(sipp.play(pcap, seconds + 0.5), caller=number)
    timeout = s.seconds + CALL_SLACK_S
    proc, base = sipp.start(scenario, work / f"sipp{s.index:03d}", engine.sip, timeout=timeout)
    try:
        result = await asyncio.to_thread(sipp.finish, proc, base, timeout + 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    if not result.ok:
        raise RuntimeError(f"SIPp failed: {result.output[-500:]} {result.errors[-500:]}")
    async with engine.http(timeout=30) as http:
        r = await http.get("/api/v1/calls", params={"channel": "sip", "caller": number})
        r.raise_for_status()
        [call] = r.json()["calls"]
        detail = await _record(http, call["id"], 30)
    return _live(detail), 0.0


@dataclass
class Outcome:
    script: Script
    said: list[Said]
    offline: Tracked
    live: Live | None = None
    matched: Matched | None = None
    seconds: float = 0.0


@dataclass
class ChannelRun:
    channel: Channel
    outcomes: list[Outcome]
    wall_s: float = 0.0
    dropped_chunks: float = 0.0
    failed: list[str] = field(default_factory=list)


def start_engine(channel: Channel, work: Path) -> EngineProcess:
    env = {
        # the bench paces its own calls (K at a time); no refusals for load, no limit on
        # the polling of records. A recognizer falling behind shows as dropped chunks.
        "CCENGINE_ADMISSION_MAX_CPU": "1.0",
        "CCENGINE_ADMISSION_MAX_LOOP_LAG_MS": "10000",
        "CCENGINE_ADMISSION_MAX_BACKLOG_S": "60",
        "CCENGINE_ADMISSION_MAX_FRAME_LOSS": "1.0",
        "CCENGINE_RATE_PER_MINUTE": "100000",
    }
    if channel == "sip":
        # calls from 127.0.0.1 come from a carrier trunk; no key menu read to the caller
        env |= {"CCENGINE_SIP_TRUNKS": '["127.0.0.1"]', "CCENGINE_IVR_PROMPT": ""}
    return EngineProcess(work / "engine", **env).start()


async def run_channel(channel: Channel, outcomes: list[Outcome], parallel: int) -> ChannelRun:
    run = ChannelRun(channel, outcomes)
    place = webrtc_call if channel == "webrtc" else sip_call
    with tempfile.TemporaryDirectory(prefix=f"emotion-live-{channel}-") as tmp:
        work = Path(tmp)
        engine = start_engine(channel, work)
        try:
            gate = asyncio.Semaphore(parallel)

            async def one(o: Outcome, delay: float) -> None:
                await asyncio.sleep(delay)  # the first K do not all set up at once
                async with gate:
                    t0 = time.monotonic()
                    try:
                        o.live, nominal = await place(engine, o.script, work)
                        o.matched = match(o.live, o.script, nominal)
                    except Exception as exc:  # counted and shown; the other calls go on
                        run.failed.append(f"call {o.script.index}: {exc!r}")
                    o.seconds = time.monotonic() - t0
                    done = sum(x.seconds > 0 for x in outcomes)
                    print(f"  {channel} {done}/{len(outcomes)}: call {o.script.index} "
                          f"{o.seconds:.0f} s", flush=True)  # fmt: skip

            t0 = time.monotonic()
            await asyncio.gather(*(one(o, 0.3 * min(i, parallel)) for i, o in enumerate(outcomes)))
            run.wall_s = time.monotonic() - t0
            async with engine.http(timeout=30) as http:
                text = (await http.get("/metrics")).text
            run.dropped_chunks = metric(text, "ccengine_asr_dropped_chunks_total")
        finally:
            engine.stop()
    return run


# -- the report -----------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


@dataclass
class Score:
    calls: int = 0
    utterances: int = 0
    matched: int = 0
    split: int = 0
    lost: int = 0
    stray: int = 0
    live: int = 0  # utterances labelled right
    offline: int = 0
    call_live: int = 0  # calls labelled right
    call_offline: int = 0
    # calls whose call-level label is right one way only: (live right, with a split)
    call_flips: list[tuple[bool, bool]] = field(default_factory=list)
    offsets: list[float] = field(default_factory=list)
    # where live and offline part: kind of utterance -> [utterances, live right, offline right]
    kinds: dict[str, list[int]] = field(default_factory=dict)
    # word errors against the script, and the script's words
    errors_live: float = 0.0
    errors_offline: float = 0.0
    words: int = 0


def _kind(parts: int, live_text: str, offline_text: str) -> str:
    if parts == 0:
        return "lost"
    if parts > 1:
        return "split"
    same = speech.normalize(live_text) == speech.normalize(offline_text)
    return "same words" if same else "other words"


def score(run: ChannelRun) -> Score:
    r = Score()
    for o in run.outcomes:
        m = o.matched
        if m is None:
            continue
        r.calls += 1
        r.offsets.append(m.offset)
        for i, (u, est) in enumerate(zip(o.said, o.offline.estimates, strict=True)):
            r.utterances += 1
            r.matched += m.parts[i] > 0
            r.split += m.parts[i] > 1
            r.lost += m.parts[i] == 0
            live_ok = m.labels[i] == u.spoken.label
            off_ok = est is not None and est.label == u.spoken.label
            r.live += live_ok
            r.offline += off_ok
            k = r.kinds.setdefault(_kind(m.parts[i], m.texts[i], u.heard.text), [0, 0, 0])
            k[0], k[1], k[2] = k[0] + 1, k[1] + live_ok, k[2] + off_ok
            n = len(speech.normalize(u.spoken.sentence))
            r.words += n
            r.errors_live += n * speech.wer(u.spoken.sentence, m.texts[i])
            r.errors_offline += n * speech.wer(u.spoken.sentence, u.heard.text)
        r.stray += m.stray
        live_ok = m.call_label == o.said[0].spoken.call_label
        off_ok = o.offline.call_label == o.said[0].spoken.call_label
        r.call_live += live_ok
        r.call_offline += off_ok
        if live_ok != off_ok:
            r.call_flips.append((live_ok, any(p > 1 for p in m.parts)))
    return r


def table(runs: list[ChannelRun]) -> str:
    lines = [
        "| channel | calls | utterances matched | per-utterance (live) | "
        "per-utterance (offline, same calls) | difference | call-level live | "
        "call-level offline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        r = score(run)
        n, calls = max(1, r.utterances), max(1, r.calls)
        diff = 100 * (r.live - r.offline) / n
        lines.append(
            f"| {run.channel} | {r.calls} | {r.matched}/{r.utterances} "
            f"({r.split} split, {r.lost} lost) | {_pct(r.live / n)} | "
            f"{_pct(r.offline / n)} | {diff:+.1f} points | {_pct(r.call_live / calls)} | "
            f"{_pct(r.call_offline / calls)} |"
        )
    return "\n".join(lines)


def notes(run: ChannelRun) -> str:
    """Where the live and offline numbers part: by what the engine made of each utterance."""
    r = score(run)
    words = max(1, r.words)
    offset = float(np.median(r.offsets)) if r.offsets else float("nan")
    out = [
        f"{run.channel}: {r.calls} calls in {run.wall_s / 60:.1f} min; {r.stray} engine "
        f"utterances matched no scripted one; clock offset calibrated, median {offset:+.2f} s; "
        f"recognizer chunks dropped {run.dropped_chunks:.0f}; WER against the script: live "
        f"{_pct(r.errors_live / words)}, offline {_pct(r.errors_offline / words)}"
    ]
    for kind in ("same words", "other words", "split", "lost"):
        if kind in r.kinds:
            n, live, off = r.kinds[kind]
            out.append(f"  {kind}: {n} utterances, labelled right live {live}, offline {off}")
    flips = r.call_flips
    out.append(
        f"  call level right one way only: {len(flips)} calls (live right "
        f"{sum(live for live, _ in flips)}, offline right {sum(not live for live, _ in flips)}; "
        f"{sum(split for _, split in flips)} of them with a split utterance)"
    )
    out += [f"  failed: {f}" for f in run.failed]
    return "\n".join(out)


def _precision_recall(calls: list[tuple[bool, bool, bool]], which: int) -> str:
    tp = sum(c[0] and c[which] for c in calls)
    did, should = sum(c[which] for c in calls), sum(c[0] for c in calls)
    return f"precision {tp / max(1, did):.2f} recall {tp / max(1, should):.2f}"


def escalation(runs: list[ChannelRun]) -> str:
    """Per call: should it escalate (the script), did the offline rules, did the live call."""
    head = "| call | kind | voice | should | " + " | ".join(
        f"{r.channel} offline | {r.channel} live" for r in runs
    )
    lines = [head + " |", "|---" * (4 + 2 * len(runs)) + "|"]
    agree: dict[Channel, Counter[str]] = {r.channel: Counter() for r in runs}
    # per channel: (should, offline did, live did) for each call that was placed
    seen: dict[Channel, list[tuple[bool, bool, bool]]] = {r.channel: [] for r in runs}

    def mark(rules: list[str] | None) -> str:
        if rules is None:
            return "failed"
        return ", ".join(dict.fromkeys(rules)) if rules else "-"

    for i, first in enumerate(runs[0].outcomes):
        said = first.said
        should = _should_escalate(said)
        cells = [str(first.script.index), said[0].spoken.kind, said[0].spoken.voice,
                 "yes" if should else "no"]  # fmt: skip
        for run in runs:
            o = run.outcomes[i]
            live = o.live.routed if o.live is not None and o.matched is not None else None
            cells += [mark(o.offline.routed), mark(live)]
            if live is not None:
                said_live = "live" if live else "no live"
                said_off = "offline" if o.offline.fired else "no offline"
                agree[run.channel][f"{said_live}, {said_off}"] += 1
                seen[run.channel].append((should, o.offline.fired, bool(live)))
        lines.append("| " + " | ".join(cells) + " |")
    summary = []
    for run in runs:
        c = agree[run.channel]
        same = c["live, offline"] + c["no live, no offline"]
        summary.append(
            f"{run.channel}: live and offline agree on {same}/{sum(c.values())} calls "
            f"(both escalated {c['live, offline']}; live only {c['live, no offline']}; "
            f"offline only {c['no live, offline']}); against the script, "
            f"{_precision_recall(seen[run.channel], 2)} live, "
            f"{_precision_recall(seen[run.channel], 1)} offline"
        )
    return "\n".join(lines) + "\n\n" + "\n".join(summary)


def details(run: ChannelRun) -> dict[str, Any]:
    """Every scripted utterance with what the offline tracker and the live call made of
    it (bench/out/emotion-live-PART.json), to see where the two part."""
    calls = []
    for o in run.outcomes:
        m, live = o.matched, o.live
        utts = []
        for i, (u, est) in enumerate(zip(o.said, o.offline.estimates, strict=True)):
            utts.append({
                "label": u.spoken.label, "sentence": u.spoken.sentence,
                "span": o.script.spans[i], "offline_text": u.heard.text,
                "offline": est.label if est else None,
                "offline_scores": est.scores if est else None,
                "live": m.labels[i] if m else None, "parts": m.parts[i] if m else 0,
                "live_text": m.texts[i] if m else None,
            })  # fmt: skip
        calls.append({
            "index": o.script.index, "kind": o.said[0].spoken.kind,
            "voice": o.said[0].spoken.voice, "call_label": o.said[0].spoken.call_label,
            "offline_call_label": o.offline.call_label,
            "live_call_label": m.call_label if m else None,
            "offset": m.offset if m else None, "utterances": utts,
            "transcript": live.transcript if live else [],
            "emotions": live.emotions if live else [],
            "escalations": live.escalations if live else [],
        })  # fmt: skip
    return {"channel": run.channel, "calls": calls, "failed": run.failed}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=list(PARTS), default="fresh3")
    ap.add_argument("--calls", type=int, default=0, help="this many held-out calls (0: all)")
    ap.add_argument("--channel", choices=["webrtc", "sip", "both"], default="both")
    ap.add_argument("--parallel", type=int, default=4, help="calls at a time")
    a = ap.parse_args()
    channels: list[Channel] = ["webrtc", "sip"] if a.channel == "both" else [a.channel]
    runs = []
    for channel in channels:
        said = calls_of(a.part, BAND[channel])
        picked = pick(len(said), a.calls or len(said))
        spoken = plan(a.part)
        outcomes = [Outcome(script(i, spoken[i]), said[i], track(said[i], BAND[channel]))
                    for i in picked]  # fmt: skip
        print(f"{channel}: {len(outcomes)} {a.part} calls, {a.parallel} at a time...", flush=True)
        runs.append(await run_channel(channel, outcomes, a.parallel))
    text = (
        f"the emotion set's {a.part} part through real calls, {os.cpu_count()} CPUs, "
        f"{a.parallel} calls at a time\n\n{table(runs)}\n\n"
        + "\n".join(notes(r) for r in runs)
        + f"\n\nescalation (rules that routed the call to a person)\n\n{escalation(runs)}"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"emotion-live-{a.part}.md").write_text(text + "\n")
    (OUT / f"emotion-live-{a.part}.json").write_text(
        json.dumps([details(r) for r in runs], indent=1)
    )
    print()
    print(text)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
