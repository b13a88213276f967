"""schemathesis against the engine's own OpenAPI document: whatever the input, no 500,
and every response matches the schema it declares. It runs with an admin key (with a
rate limit it cannot reach), so it gets past authentication to every operation's
validation; the endless event streams (SSE) are left out, as they never finish, and so
is draining the node, which would end the engine (engine/drain.py: an idle node that
drains exits at once)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.engine_proc import EngineProcess


def test_no_server_errors_and_responses_match_the_schema(tmp_path: Path) -> None:
    engine = EngineProcess(tmp_path / "engine", CCENGINE_SIP_ENABLED="false").start()
    try:
        key = engine.ccengine(
            "keys", "create", "fuzz", "--scope", "admin", "--rate", "1000000", "--quiet"
        ).strip()
        cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
        assert cli is not None, "schemathesis is a test dependency"
        result = subprocess.run(
            [cli, "run", f"{engine.url}/openapi.json",
             "--checks", "not_a_server_error,response_schema_conformance",
             "--max-examples", "25", "--seed", "4475", "--no-color",
             "--header", f"Authorization: Bearer {key}",
             "--exclude-path-regex", r"/events$|/node/drain$"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        print(result.stdout[-3000:])
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert " passed" in result.stdout
    finally:
        engine.stop()
