"""What a supervisor on a call costs the outgoing audio: the per-frame mix of a party's
track (media/mixer.py) with one voice (a plain bridge, the baseline, measured in the
same run) and with more (a whisper: the agent hears the caller and the supervisor; a
barge into a conference: caller, colleague and supervisor).

    python -m bench.mixer [--frames 20000]

Each frame, every source is fed one 20 ms packet of 48 kHz speech-like noise (as the
call's legs push decoded audio) and the track asks for one 20 ms frame. The table
gives microseconds per frame and the share of one core the mixes of 100 such tracks
take (each track asks 50 frames a second).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bench.calls import OUT
from media.mixer import LiveMixer

FRAME = 960  # 20 ms at 48 kHz
MAX_SAMPLES = 48_000 * 3 // 10  # the 300 ms drift bound of a live voice


def per_frame_us(sources: int, frames: int, rounds: int = 5) -> float:
    """The median over ``rounds`` of the mean cost of feeding and mixing one frame."""
    rng = np.random.default_rng(7)
    packets = [(rng.normal(0, 3000, FRAME)).astype(np.int16) for _ in range(sources)]
    names = [f"leg-{i}" for i in range(sources)]
    results = []
    for _ in range(rounds):
        mixer = LiveMixer(MAX_SAMPLES)
        t = time.perf_counter()
        for _ in range(frames):
            for name, pcm in zip(names, packets, strict=True):
                mixer.push(name, pcm)
            out = mixer.mix(FRAME)
            assert out is not None and len(out) == FRAME
        results.append((time.perf_counter() - t) / frames * 1e6)
    return statistics.median(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=20_000)
    args = ap.parse_args()
    cases = [
        (1, "plain bridge, one voice (baseline)"),
        (2, "whisper: caller + supervisor"),
        (3, "barge into a conference: 3 voices"),
        (5, "caller + 4 supervisors (the most allowed)"),
    ]
    baseline = 0.0
    rows = []
    for sources, what in cases:
        us = per_frame_us(sources, args.frames)
        baseline = baseline or us
        core = us * 50 * 100 / 1e6  # 100 tracks, 50 frames a second each
        rows.append(
            f"| {what} | {sources} | {us:.1f} | {us / baseline:.2f}x | {100 * core:.1f} % |"
        )
    lines = [
        f"outgoing mix per 20 ms frame (media/mixer.py), {args.frames} frames, median of 5",
        "",
        "| track | voices | us per frame | vs baseline | one core, 100 tracks |",
        "|---|---|---|---|---|",
        *rows,
    ]
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "mixer.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
