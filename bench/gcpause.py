"""How long a full garbage collection stops the engine's event loop, with and without
the start-up objects frozen (engine.gcpauses), in the same run.

    python -m bench.gcpause [--repeat 5]

An engine app is made in this process (what ``create_app`` imports and builds; the
start-up its lifespan runs, opening the store and the SIP front, is not run here), then
``gc.collect(2)`` is timed ``--repeat`` times as it is (the baseline), then again after
``freeze_startup()``. Python runs a full collection whenever the objects that survived
younger ones have grown by a quarter: on a busy engine, every few minutes, on the event
loop's thread.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from bench.calls import OUT
from engine.app import create_app
from engine.gcpauses import freeze_startup


def timed(repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        gc.collect(2)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    create_app(freeze_gc=True)  # (its freeze happens at start-up, which is not run here)
    gc.collect()
    tracked = len(gc.get_objects())
    baseline = timed(args.repeat)
    frozen = freeze_startup()
    after = timed(args.repeat)
    gc.unfreeze()
    lines = [
        f"full garbage collection after making the engine app ({tracked} objects tracked), "
        f"{args.repeat} times each",
        "",
        "| start-up objects | median ms | max ms |",
        "|---|---|---|",
        f"| walked (baseline) | {1000 * statistics.median(baseline):.1f} | "
        f"{1000 * max(baseline):.1f} |",
        f"| frozen ({frozen}) | {1000 * statistics.median(after):.1f} | {1000 * max(after):.1f} |",
    ]
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "gcpause.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
