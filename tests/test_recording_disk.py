"""A call's recording (engine/recording.py) on a disk that refuses it: the recording
stops or is refused, the call goes on.

Regressions found in review: a write the disk refused (full) raised out of the leg's
audio path (the pipeline's tap), which ended the leg and with it the call; and a
recording started where its files cannot be made answered 500."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from engine.callstate import NotAllowed
from engine.events import utcnow
from engine.recording import CallRecording
from engine.store.models import UserRow
from media.audio import PcmFrame
from tests.controlplane import ControlPlane
from tests.test_monitor_legs import ROLES, password_hash, person, with_ann

FULL = Path("/dev/full")  # every write: ENOSPC, as a full disk answers


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
