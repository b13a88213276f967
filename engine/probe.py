"""Health checks and the drain of a container's own engine, with the standard library
only (it starts in ~50 ms and loads nothing of the engine): what deploy/Dockerfile's
HEALTHCHECK, deploy/compose.yaml's health checks and deploy/k8s's preStop hook run.

    python -m engine.probe healthz        # exit 0: the engine answers GET /healthz 200
    python -m engine.probe readyz         # exit 0: it takes new calls (not draining)
    python -m engine.probe drain          # start the drain, wait for the last call

``drain`` asks the engine to take no new calls (``POST`` to the drain endpoint with the
admin key in ``--key-file``, when one is given; without a key, or when that request
fails, SIGTERM to the engine, process 1 of its container, which starts the same drain),
then waits until the engine has no call in progress (``ccengine_active_calls`` in
``/metrics``) or has exited, for at most ``--timeout`` seconds. Exit 0: drained.

The engine is reached at 127.0.0.1 on ``CCENGINE_PORT`` (8080 unless set), as it binds
every address of its container or host (``CCENGINE_HOST=0.0.0.0``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
DRAIN_PATH = "/api/v1/node/drain"
ACTIVE_CALLS = "ccengine_active_calls"


def base_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('CCENGINE_PORT', '8080')}"


def status(url: str, *, method: str = "GET", key: str | None = None, timeout: float = 3) -> int:
    """The HTTP status ``url`` answers with; 0: no answer (refused, timed out)."""
    request = urllib.request.Request(url, method=method)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


def active_calls(base: str, timeout: float = 3) -> float | None:
    """Calls in progress by the engine's own gauge; None: it does not answer."""
    try:
        with urllib.request.urlopen(base + METRICS_PATH, timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == ACTIVE_CALLS:
            try:
                return float(value)
            except ValueError:
                return None
    return None


def start_drain(base: str, key_file: str | None, pid: int) -> str:
    """Tells the engine to take no new calls; how, in a few words."""
    key = ""
    if key_file:
        try:
            with open(key_file, encoding="utf-8") as f:
                key = f.read().strip()
        except OSError:
            key = ""
    if key:
        code = status(base + DRAIN_PATH, method="POST", key=key)
        if 200 <= code < 300:
            return f"POST {DRAIN_PATH}: {code}"
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError as exc:
        return f"SIGTERM to {pid} failed: {exc}"
    return f"SIGTERM to {pid}"


def wait_drained(
    base: str,
    timeout: float,
    interval: float,
    say: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """True once the engine has no call in progress or is gone; False at ``timeout``."""
    deadline = clock() + timeout
    last: float | None = -1.0
    while True:
        calls = active_calls(base)
        if calls is None:
            say("engine gone: drained")
            return True
        if calls <= 0:
            say("no calls in progress: drained")
            return True
        if calls != last:
            say(f"{calls:g} calls in progress")
            last = calls
        if clock() >= deadline:
            say(f"still {calls:g} calls after {timeout:g} s")
            return False
        time.sleep(interval)


def _pid(text: str) -> int:
    pid = int(text)
    if pid < 1:  # 0 and -1 would signal a process group, or every process
        raise argparse.ArgumentTypeError(f"not a process id: {text}")
    return pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.probe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("healthz", help=f"GET {HEALTH_PATH}: 200 or exit 1")
    sub.add_parser("readyz", help=f"GET {READY_PATH}: 200 (taking calls) or exit 1")
    drain = sub.add_parser("drain", help="start the drain, wait for the last call to end")
    drain.add_argument("--key-file", help="a file holding an admin API key (optional)")
    drain.add_argument(
        "--pid", type=_pid, default=1, help="the engine's process (default 1: in its container)"
    )
    drain.add_argument("--timeout", type=float, default=3500.0, help="seconds (default 3500)")
    drain.add_argument("--interval", type=float, default=2.0, help="seconds between looks")
    args = parser.parse_args(argv)
    base = base_url()
    if args.command in ("healthz", "readyz"):
        path = HEALTH_PATH if args.command == "healthz" else READY_PATH
        code = status(base + path)
        if code != 200:
            print(f"GET {path}: {code or 'no answer'}", file=sys.stderr)
            return 1
        return 0

    def say(line: str) -> None:
        print(f"drain: {line}", file=sys.stderr, flush=True)

    say(start_drain(base, args.key_file, args.pid))
    return 0 if wait_drained(base, args.timeout, args.interval, say) else 1


if __name__ == "__main__":
    raise SystemExit(main())
