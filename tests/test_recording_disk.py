"""A call's recording (engine/recording.py) on a disk that refuses it: the recording
stops or is refused, the call goes on.

Regressions found in review: a write the disk refused (full) raised out of the leg's
audio path (the pipeline's tap), which ended the leg and with it the call; and a
recording started where its files cannot be made answered 500. Then, of the recording
that stopped: its ``finish`` raised on the flush of what the disk refused and left both
raw files open; it stayed "active", so a start answered 204 and a pause then resume told
recording.changed(recording=true) of a call that was not written; nobody was told it
had stopped."""

from __future__ import annotations

import asyncio
import io
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.callstate import NotAllowed
from engine.events import utcnow
from engine.recording import CallRecording
from engine.store.models import UserRow
from media.audio import PcmFrame
from tests.controlplane import ControlPlane
from tests.test_monitor_legs import (
    PASSWORD,
    ROLES,
    cp,
    password_hash,
    person,
    published,
    with_ann,
)

__all__ = ["cp"]  # the fixture, shared with tests/test_monitor_legs.py

FULL = Path("/dev/full")  # every write: ENOSPC, as a full disk answers


def fill_up(rec: CallRecording) -> None:
    """The agent side's disk fills up: every write to it is refused (ENOSPC), at once
    (unbuffered, as a write of more than the buffer holds would be)."""
    rec._files[1].close()
    rec._files[1] = FULL.open("w+b", buffering=0)


async def changes(cp: ControlPlane, n: int) -> list[dict[str, Any]]:
    """The recording.changed events, once there are ``n`` (an event reaches the bus
    once the event log has it)."""
    async with asyncio.timeout(5):
        while len(got := published(cp, "recording.changed")) < n:  # noqa: ASYNC110  # polled
            await asyncio.sleep(0.02)
    return got


def frame(at: float, value: int = 1000) -> PcmFrame:
    return PcmFrame(np.full(320, value, np.int16), at)


def test_a_full_disk_stops_the_recording_and_raises_nothing(tmp_path: Path) -> None:
    rec = CallRecording(tmp_path, "c1", 0.0)
    for i in range(10):
        rec.write(0, i * 0.02, frame(i * 0.02, 7))
    rec._files[1].close()
    rec._files[1] = FULL.open("w+b", buffering=0)  # the agent side's disk fills up
    for i in range(10):
        rec.write(1, i * 0.02, frame(i * 0.02))  # raised OSError (ENOSPC) to the leg
    assert rec.failed is not None and "No space" in rec.failed
    rec.write(0, 0.2, frame(0.2, 7))  # nothing more is tried: it stays as it was
    assert rec.seconds == pytest.approx(0.2)
    rec._files[1].close()
    rec._files[1] = (tmp_path / "spare.raw").open("w+b")  # space again, for the merge
    with wave.open(str(rec.finish())) as w:
        both = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert len(both) == 3200 and set(both[:, 0]) == {7}  # the caller's side is kept


async def test_a_recording_that_cannot_be_made_is_refused_not_a_server_error(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the recordings folder should be")
    async with ControlPlane(tmp_path / "engine", recordings_dir=str(blocked / "rec")) as cp:
        for name, role in ROLES.items():
            await cp.store.add_user(
                UserRow(id=f"id-{name}", username=name, display_name=name, role=role,
                        skills=[], password_hash=password_hash(), created_at=utcnow())
            )  # fmt: skip
        call = await with_ann(cp)
        ann = await person(cp, "ann")
        with pytest.raises(NotAllowed, match="recording cannot be started"):
            cp.calls.recording(ann, call.id, True)
        assert call.recording is None and not call.ended.is_set()


def test_finish_on_a_disk_still_full_closes_the_files_and_keeps_the_raw_ones(
    tmp_path: Path,
) -> None:
    """Regression: with the files' ordinary buffering the refused data stays in the
    buffer, so ``finish`` raised on its flush before ``discard``: both raw files' handles
    stayed open. Now it closes them and raises (end_call logs it); the raw files, what
    was recorded, stay on disk."""
    rec = CallRecording(tmp_path, "c1", 0.0)
    for i in range(10):
        rec.write(0, i * 0.02, frame(i * 0.02, 7))
    rec._files[1].close()
    rec._files[1] = FULL.open("w+b")  # default buffering, as CallRecording opens them
    for i in range(30):
        rec.write(1, i * 0.02, frame(i * 0.02))
    assert rec.failed is not None
    files = list(rec._files)
    with pytest.raises(OSError, match="No space"):
        rec.finish()
    assert all(f.closed for f in files)
    caller = tmp_path / "c1.caller.raw"
    assert caller.stat().st_size == 10 * 640 and (tmp_path / "c1.agent.raw").exists()


def test_a_second_raw_file_that_cannot_be_made_closes_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the caller's raw file was left open when the agent's could not be
    opened (here a folder is in its place)."""
    (tmp_path / "c1.agent.raw").mkdir()
    opened: list[io.IOBase] = []
    real_open = Path.open

    def open_(self: Path, *args: Any, **kwargs: Any) -> Any:
        f = real_open(self, *args, **kwargs)
        opened.append(f)
        return f

    monkeypatch.setattr(Path, "open", open_)
    with pytest.raises(IsADirectoryError):
        CallRecording(tmp_path, "c1", 0.0)
    assert len(opened) == 1 and opened[0].closed


async def test_a_recording_the_disk_stopped_is_told_and_cannot_be_resumed(cp: ControlPlane) -> None:
    """Regression: the recording stopped by a full disk stayed active: the desk and the
    console kept showing "recording", a start answered 204 doing nothing, and a pause
    then resume told recording.changed(recording=true) though nothing was written. Now
    the failure is told once, recording.changed(recording=false) with its reason, and a
    start or resume is refused (409) naming it; the call goes on."""
    call = await with_ann(cp)
    ann = await person(cp, "ann")
    cp.calls.recording(ann, call.id, True)
    rec = call.recording
    assert rec is not None
    fill_up(rec)
    for i in range(5):  # the agent's leg taps its audio (engine/calls.py), frame by frame
        rec.write(1, 1 + i * 0.02, frame(1 + i * 0.02))
    told = await changes(cp, 2)
    assert [(e["recording"], e["by"]) for e in told] == [(True, "ann"), (False, "engine")]
    assert told[-1]["reason"].startswith("disk_full: ") and told[-1]["at"] == pytest.approx(1.0)
    assert told[0]["reason"] is None
    for on in (True, False, True):  # start; pause (nothing to pause) then resume
        if on:
            with pytest.raises(NotAllowed, match="the recording stopped: .*No space"):
                cp.calls.recording(ann, call.id, on)
        else:
            cp.calls.recording(ann, call.id, on)
    desk = await cp.agent("ann", PASSWORD)
    try:
        r = await desk.post(f"/api/v1/calls/{call.id}/recording/start")
        assert r.status_code == 409 and "the recording stopped" in r.json()["detail"], r.text
    finally:
        await desk.aclose()
    await asyncio.sleep(0.1)  # anything told since has reached the bus
    assert len(published(cp, "recording.changed")) == 2 and not call.ended.is_set()
