"""Dual-channel call recordings: the caller on the left, the agent(s) on the right.

Frames are placed by time on the call's own clock (the caller's first audio is 0; an
agent leg's frames are shifted by when that leg began), so both sides line up however
their packets arrived. While recording is paused nothing is written and the WAV holds
silence there: pause for card numbers and other things that must not be kept.

During the call each side goes to its own raw file at its position; when the call ends
the two are interleaved, a chunk at a time, into ``<call id>.wav`` (16 kHz, 16-bit,
stereo) and the raw files are removed.

A write the disk refuses (full, gone) stops the recording for good: ``failed`` says why,
``on_failed`` (set by the call manager) is called once so the call can tell that it is
no longer recorded, and it cannot be started or resumed again. If the merge then fails
too, the raw files are kept (what was recorded is not deleted) and the error raised.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import wave
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from media.audio import ANALYSIS_RATE, PcmFrame

CHUNK = ANALYSIS_RATE * 10  # samples per side merged at a time

log = logging.getLogger(__name__)


class CallRecording:
    def __init__(self, folder: Path, call_id: str, started_at: float) -> None:
        self.path = folder / f"{call_id}.wav"
        self._raw = [folder / f"{call_id}.caller.raw", folder / f"{call_id}.agent.raw"]
        folder.mkdir(parents=True, exist_ok=True)
        self._files: list[BinaryIO] = []
        try:
            for p in self._raw:
                self._files.append(p.open("w+b"))
        except OSError:  # the second could not be made: the first's handle must not leak
            self._close()
            raise
        self.t0 = started_at  # call-clock seconds where the recording begins
        self.active = True
        self.seconds = 0.0  # the furthest point written, from t0
        self.failed: str | None = None  # why writing stopped (a full disk), if it did
        # called once, when writing stops: (call-clock seconds, reason such as
        # "disk_full: <error>"); the manager tells it as recording.changed
        self.on_failed: Callable[[float, str], None] | None = None

    def write(self, channel: int, at: float, frame: PcmFrame) -> None:
        """``frame`` heard at ``at`` seconds on the call's clock, on channel 0 or 1.
        A write the disk refuses (full, gone) stops the recording, never the call: it
        is called from a leg's audio path, where an error would end the leg, and with
        it the call. What was written before is kept; the rest stays silent."""
        if not self.active or self.failed is not None:
            return
        try:
            self._write(channel, at, frame)
        except OSError as exc:
            # inactive from here: every later frame (the tap, a supervisor's voice)
            # stops at the check above, so a failed recording costs nothing per frame
            self.failed, self.active = str(exc), False
            log.error("recording %s: stopped, the disk refused a write: %s", self.path.name, exc)
            why = "disk_full" if exc.errno == errno.ENOSPC else "write_failed"
            if self.on_failed is not None:
                self.on_failed(at, f"{why}: {exc}")

    def _write(self, channel: int, at: float, frame: PcmFrame) -> None:
        offset = round((at - self.t0) * ANALYSIS_RATE)
        if offset < 0:
            return
        f = self._files[channel]
        if f.tell() != offset * 2:  # a gap (pause, loss) stays silent
            f.seek(offset * 2)
        data = frame.to_bytes()
        if channel == 1:
            # two agents (a consult, a conference) share the channel: each frame is
            # added to what the other wrote there, not written over it
            there = f.read(len(data))
            if there:
                mixed = np.frombuffer(data, dtype="<i2").astype(np.int32)
                mixed[: len(there) // 2] += np.frombuffer(there, dtype="<i2")
                data = np.clip(mixed, -32768, 32767).astype("<i2").tobytes()
            f.seek(offset * 2)
        f.write(data)
        self.seconds = max(self.seconds, (offset + len(frame.samples)) / ANALYSIS_RATE)

    def finish(self) -> Path:
        """Interleave both sides into the WAV (blocking: run it on a thread). An
        ``OSError`` (the disk still full: the data of a failed write is still in the
        buffer, and the flush tries it again) closes the files and is raised; the raw
        files stay on disk, so what was recorded is not deleted."""
        self.active = False
        try:
            self._merge()
        except OSError:
            self._close()
            raise
        self.discard(keep_wav=True)
        return self.path

    def _merge(self) -> None:
        for f in self._files:
            f.flush()
        total = max(f.seek(0, 2) for f in self._files) // 2
        with wave.open(str(self.path), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(ANALYSIS_RATE)
            for start in range(0, total, CHUNK):
                n = min(CHUNK, total - start)
                both = np.zeros((n, 2), dtype="<i2")
                for channel, f in enumerate(self._files):
                    f.seek(start * 2)
                    side = np.frombuffer(f.read(n * 2), dtype="<i2")
                    both[: len(side), channel] = side
                out.writeframes(both.tobytes())

    def _close(self) -> None:
        """Every raw file's handle closed; a close that fails (its buffer cannot be
        written) still closes it, and the rest."""
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()

    def discard(self, keep_wav: bool = False) -> None:
        for f in self._files:
            f.close()
        for p in self._raw if keep_wav else (*self._raw, self.path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
