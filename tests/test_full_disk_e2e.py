"""A full disk under a real engine process (issue 12, item 17): its database on a small
tmpfs that the test fills to the last page while a caller talks. A new call must be
refused (HTTP and SIP 503 with Retry-After) without leaving a ghost, and what the
caller said meanwhile, and the end of the call, must be stored once space is back.
tests/test_durability.py proves the same logic in-process with a store that fails on
demand; this proves it against SQLite's own "database or disk is full"."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from media.wavtrack import read_wav_mono
from tests import sipp, speech
from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CHROMIUM = (Path(__file__).parent / "fixtures" / "chromium_offer.sdp").read_text()
SAID = "My order never came and I want my money back."
SILENCE_BEFORE_S = 6.0  # time to fill the disk before the caller speaks


def mount_tmpfs(where: Path, megabytes: int) -> None:
    """A file system of its own, so that filling it fills nothing else: ``make test``
    runs as root (it installs Debian packages), else through sudo as the Makefile does."""
    where.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0755", "tmpfs", str(where)]
    if os.geteuid() != 0:
        cmd = ["sudo", "-n", *cmd]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"cannot mount a tmpfs for the full disk: {result.stderr}"


def umount(where: Path) -> None:
    cmd = ["umount", "-l", str(where)]
    if os.geteuid() != 0:
        cmd = ["sudo", "-n", *cmd]
    subprocess.run(cmd, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    mount_tmpfs(disk, 32)
    try:
        yield disk
    finally:
        umount(disk)


def fill(disk: Path) -> Path:
    """Write a file until the file system has no page left; the file, to delete later."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    assert shutil.disk_usage(disk).free == 0
    return filler


def wal_empty(db: Path) -> None:
    """Fold the engine's write-ahead log into the database and cut it to nothing, so
    that the engine's next write must grow a file (a WAL with room left would take a
    few more writes on a full disk, and the test would depend on how much)."""
    deadline = time.monotonic() + 20
    with contextlib.closing(sqlite3.connect(db, timeout=15)) as con:
        while True:
            busy, _log, _done = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                break
            assert time.monotonic() < deadline, "the engine's WAL never came free"
            time.sleep(0.05)
    assert db.with_name(db.name + "-wal").stat().st_size == 0


def caller_wav(folder: Path) -> Path:
    """Silence while the disk is filled, one sentence, then a little silence."""
    said = speech.piper_script([SAID], folder / "said.wav")
    pcm, rate = read_wav_mono(str(said))
    quiet = np.zeros(int(rate * SILENCE_BEFORE_S), np.int16)
    tail = np.zeros(int(rate * 1.5), np.int16)
    return speech.write_wav(folder / "caller.wav", np.concatenate([quiet, pcm, tail]), rate)


async def until(check: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def test_a_full_disk_refuses_calls_keeps_what_was_said_and_leaves_no_ghost(
    tmp_path: Path, small_disk: Path
) -> None:
    """Replayed from outside: a call created while the disk was full stayed counted in
    active_calls forever with its peer alive, and a final spoken meanwhile was lost. Now
    an offer gets 503 with Retry-After, a phone's INVITE 503 with Retry-After (it was a
    500), nothing is left counted; the live caller's final and the call's end wait in
    memory (shown on /healthz and /metrics) and are stored, and streamed, once space is
    back; and the node takes calls again."""
    engine = EngineProcess(
        tmp_path / "engine",
        CCENGINE_MEDIA_TIMEOUT="30",
        CCENGINE_SIP_TRUNKS='["127.0.0.1"]',
    )
    engine.db = small_disk / "engine.db"  # only the database is on the small disk
    engine.start()
    caller = Caller(engine.url, caller_wav(tmp_path))
    filler: Path | None = None
    try:
        async with engine.http(timeout=30) as http:
            await caller.dial()
            await caller.wait_for("call.state_changed", within=20)
            wal_empty(engine.db)
            filler = fill(small_disk)

            # a new in-app call: refused, and not counted
            r = await http.post("/api/v1/calls", json={"type": "offer", "sdp": CHROMIUM})
            assert r.status_code == 503, r.text
            assert r.json()["title"] == "Storage unavailable"
            assert int(r.headers["retry-after"]) > 0
            # a phone call: "not now" with when to try again, not a final 500
            result = await asyncio.to_thread(
                sipp.run, sipp.rejected_scenario(503), tmp_path / "sipp", engine.sip
            )
            assert result.ok, result.output + result.errors
            final = result.messages.split("SIP/2.0 503", 1)[1].split("\n\n", 1)[0]
            assert re.search(r"^Retry-After: \d+\s*$", final, re.M | re.I), final
            assert (await http.get("/healthz")).json()["active_calls"] == 1

            # the caller speaks while the disk is still full, and hangs up
            await caller.track.finished.wait()
            await asyncio.sleep(2.0)  # end of speech, recognition
            await caller.pc.close()

            async def no_calls() -> bool:
                return bool((await http.get("/healthz")).json()["active_calls"] == 0)

            await until(no_calls, 20, "the call that ended on a full disk is still counted")
            health = (await http.get("/healthz")).json()
            assert health["waiting_writes"] > 0, health
            metrics = (await http.get("/metrics")).text
            waiting = re.search(r'^ccengine_storage_waiting_writes\{kind="call"\} (\S+)$',
                                metrics, re.M)  # fmt: skip
            assert waiting and float(waiting.group(1)) > 0, metrics
            assert not any(e["type"] == "call.ended" for e in caller.events), (
                "an event reached a client before it was stored"
            )

            filler.unlink()  # space is back
            filler = None
            await asyncio.wait_for(caller.ended.wait(), 30)
            record = (await http.get(f"/api/v1/calls/{caller.call_id}")).json()

            # and the node takes calls again
            fresh = Caller(engine.url, caller.wav)
            try:
                await fresh.dial()
            finally:
                await fresh.close()
            finals = [e for e in caller.events if e["type"] == "transcript.final"]
            metrics = (await http.get("/metrics")).text
    finally:
        await caller.close()
        if filler is not None:
            filler.unlink()
        engine.stop()
    heard = " ".join(u["text"] for u in record["transcript"]).lower()
    assert "order" in heard and "money" in heard, record["transcript"]
    assert any("order" in e["text"].lower() for e in finals), "the final never reached the stream"
    assert record["state"] == "ended", record
    assert 'ccengine_storage_waiting_writes{kind="call"} 0.0' in metrics
    log = engine.log.read_text()
    assert "Traceback" not in log, log[-3000:]
