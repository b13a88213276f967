"""An engine process on PostgreSQL, configured as an operator would
(``CCENGINE_DATABASE_URL=postgresql+asyncpg://...``): it migrates the empty database,
takes a call, stores what was said, sends its webhook and stops cleanly. The logic
behind each step is tested on both databases in-process (test_durability.py,
test_shared_store.py, test_migrations.py); this is the wiring."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller
from tests.webhook_receiver import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_an_engine_runs_on_postgresql(
    tmp_path: Path, pg_url: str, voices: dict[str, Path], receiver: Receiver
) -> None:
    engine = EngineProcess(
        tmp_path / "engine", database_url=pg_url, CCENGINE_MEDIA_TIMEOUT="6",
        CCENGINE_WEBHOOK_ALLOWED_NETWORKS='["127.0.0.1/32"]',
    ).start()  # fmt: skip
    caller = Caller(engine.url, voices["calm"])
    try:
        async with engine.http(timeout=30) as http:
            r = await http.post(
                "/api/v1/webhooks", json={"url": receiver.url, "events": ["call.ended"]}
            )
            assert r.status_code == 201, r.text
        await caller.dial()
        said = await caller.wait_for("transcript.final", 60)
        await caller.pc.close()  # the caller hangs up
        await asyncio.wait_for(caller.ended.wait(), 20)
        record = await caller.call_record()
        async with engine.http(timeout=30) as http:
            listed = (await http.get("/api/v1/calls", params={"state": "ended"})).json()
        await asyncio.to_thread(receiver.wait, 1, 20)
    finally:
        await caller.close()
        engine.stop()
    assert engine.proc is not None and engine.proc.returncode == 0, "no clean stop"
    assert record["state"] == "ended" and record["end_reason"] == "remote_closed"
    assert said["text"] in [u["text"] for u in record["transcript"]]
    assert caller.call_id in [c["id"] for c in listed["calls"]]
    assert b'"call.ended"' in receiver.got[0][1]
    log = engine.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
