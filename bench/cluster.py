"""Many engines behind one SIP edge: call setups per second through Kamailio.

    python -m bench.cluster [--rates 5 10 20 40]

SIPp places short calls (INVITE, 200, ACK, 1 s, BYE; ACK and BYE along the Record-Route)
at each rate for ten seconds, in one run and on the same machine:

    direct       straight to one engine (the baseline: what the edge costs)
    edge, 1      through Kamailio (deploy/kamailio/kamailio.cfg) to one engine
    edge, 2      through Kamailio to two engines, spread by Call-ID

A rate is sustained when every call succeeds and the p95 time from INVITE to 200 OK
stays under one second. Then the event bus, in the same run (bench/shared_events.py):
publish-to-subscriber latency and throughput in-process against Redis shared by two
engines. Then the added latency of a cross-node agent offer (bench/shared_routing.py):
escalation to offer decided by one engine alone against through the shared routing log
and seen by the other engine. All processes share this machine's cores: two engines on
one 2-core box show what the edge costs and that it spreads, not what two machines
would take.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench import shared_events, shared_routing
from bench.calls import OUT
from bench.sip import SHORT_CALL, setup_rate
from tests import sipp
from tests.engine_proc import EngineProcess
from tests.kamailio import Kamailio

Row = tuple[str, int, int, int, float]


def engine(work: Path, name: str) -> EngineProcess:
    return EngineProcess(
        work / name,
        CCENGINE_MAX_CONCURRENT_CALLS="400",
        CCENGINE_SIP_TRUNKS='["127.0.0.1"]',
        CCENGINE_IVR_PROMPT="",
    ).start()


def rates_through(target: str, work: Path, rates: list[int], scenario: str, name: str) -> list[Row]:
    rows: list[Row] = []
    for rate in rates:
        print(f"{name}: {rate} calls/s...", flush=True)
        ok, failed, p95 = setup_rate(target, work, rate, scenario)
        rows.append((name, rate, ok, failed, p95))
        time.sleep(SHORT_CALL + 2)  # the last calls end before the next rate
        if failed > ok:  # far past what it takes: higher rates only fail longer
            break
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| path | calls/s offered | succeeded | failed | INVITE->200 p95 | sustained |",
        "|---|---|---|---|---|---|",
    ]
    for name, rate, ok, failed, p95 in rows:
        good = failed == 0 and ok > 0 and p95 < 1.0
        lines.append(
            f"| {name} | {rate} | {ok} | {failed} | {p95:.3f} s | {'yes' if good else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[5, 10, 20, 40])
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    pause = f'<pause milliseconds="{int(SHORT_CALL * 1000)}"/>\n'
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        a = engine(work, "a")
        b: EngineProcess | None = None
        edges: list[Kamailio] = []
        try:
            rows += rates_through(a.sip, work, args.rates, sipp.call_scenario(pause), "direct")
            edges.append(Kamailio(work / "edge1", [a.sip], ping=2).start())
            proxied = sipp.proxied_call_scenario(pause)
            rows += rates_through(edges[-1].sip, work, args.rates, proxied, "edge, 1 engine")
            edges[-1].stop()
            b = engine(work, "b")
            edges.append(Kamailio(work / "edge2", [a.sip, b.sip], ping=2).start())
            rows += rates_through(edges[-1].sip, work, args.rates, proxied, "edge, 2 engines")
        finally:
            for edge in edges:
                edge.stop()
            for e in (a, b):
                if e is not None:
                    e.stop()
    bus = asyncio.run(shared_events.measure(5_000, 200.0, 5.0))
    result = table(rows) + "\n\n| event bus | publish -> subscriber | throughput |\n|---|---|---|\n"
    result += "\n".join(f"| {name} | {lat} | {thr} |" for name, lat, thr in bus)
    offers = shared_routing.measure(200)
    result += "\n\n| escalation -> agent offer | p50 / p95 |\n|---|---|\n"
    result += "\n".join(f"| {path} | {took} |" for path, took in offers)
    header = f"Call setups through the SIP edge, {os.cpu_count()} CPUs, one machine\n\n"
    (OUT / "cluster.md").write_text(header + result + "\n")
    print()
    print(header + result)


if __name__ == "__main__":
    main()
