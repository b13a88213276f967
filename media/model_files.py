"""Models we convert once into the models folder: a manifest of checksums beside the
files, written in a temporary folder and renamed into place, checked at every load.

Shared by the Moonshine recognizer (media/asr/moonshine_convert.py) and the int8
prompt voice (media/piper_convert.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class ModelPrepareError(RuntimeError):
    """The model could not be converted or read: the message says which file and why."""


def is_prepared(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def publish(work: Path, target: Path, about: dict[str, Any]) -> None:
    """Write ``work``'s manifest (``about`` and every file's checksum) and rename the
    folder to ``target``, so a crash or a full disk never leaves a half model that
    looks finished."""
    manifest = {
        **about,
        "sha256": {f.name: sha256(f) for f in sorted(work.iterdir()) if f.is_file()},
    }
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    try:
        work.rename(target)
    except OSError:
        if not is_prepared(target):  # another process finished first: keep theirs
            raise


def verify(path: Path) -> None:
    """Check the cached files against their manifest (a truncated or edited file)."""
    if not (path / MANIFEST).is_file():
        raise ModelPrepareError(f"{path} is missing (ccengine models prepare makes it)")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        sums: dict[str, str] = manifest["sha256"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelPrepareError(f"{path / MANIFEST} is unreadable: {exc}") from exc
    for name, digest in sums.items():
        f = path / name
        if not f.is_file():
            raise ModelPrepareError(f"{f} is missing")
        if sha256(f) != digest:
            raise ModelPrepareError(f"{f} is corrupt (checksum differs from its manifest)")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class DropRecord(logging.Filter):
    """Drops log records starting with ``prefix`` (onnxruntime's quantizer advises on the
    root logger at every call)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


Progress = Callable[[str], None]


def made_and_checked(
    make: Callable[[Progress | None], Path], what: str, progress: Progress | None = None
) -> Path:
    """The folder ``make`` prepares (converting only if it is missing), checked against
    its manifest; removed and made once more when the check fails. Raises
    ``ModelPrepareError``."""
    for attempt in range(2):
        path = make(progress)
        try:
            verify(path)
            return path
        except ModelPrepareError as exc:
            if attempt:
                raise
            (progress or logging.getLogger(__name__).warning)(f"{what}: {exc}; converting it again")
            shutil.rmtree(path, ignore_errors=True)
    raise AssertionError("unreachable")


def to_stderr(line: str) -> None:
    """Progress from a child process that makes a model: its stderr, at once."""
    print(line, file=sys.stderr, flush=True)
