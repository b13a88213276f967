"""The typed client and the commands built on it, against a real engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.client import ApiError, Client
from tests.engine_proc import ROOT, EngineProcess
from tests.rtc_client import Caller


def cli(engine: EngineProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CCENGINE_API_KEY": engine.api_key}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args, "--url", engine.url],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_client_and_commands_cover_a_call_and_refusals(
    engine: EngineProcess, voices: dict[str, Path]
) -> None:
    caller = Caller(engine.url, voices["calm"], caller="cust-42")
    record = await caller.complete_call()
    async with Client(engine.url, api_key=engine.api_key) as cc:
        listed = await cc.calls(state="ended")
        assert [c.id for c in listed.calls] == [caller.call_id]
        soon = datetime.now(UTC) + timedelta(hours=1)
        found = {
            name: [c.id for c in (await cc.calls(**f)).calls]
            for name, f in {
                "webrtc": {"channel": "webrtc", "caller": "cust-42", "until": soon},
                "sip": {"channel": "sip"},
                "later": {"since": soon},
                "escalated": {"escalated": True},
                "another caller": {"caller": "cust-43"},
            }.items()
        }
        assert found == {
            "webrtc": [caller.call_id], "sip": [], "later": [], "escalated": [],
            "another caller": [],
        }  # fmt: skip
        with pytest.raises(ApiError) as nobody:
            await cc.calls(agent="nobody")
        assert nobody.value.status == 422 and "no user nobody" in nobody.value.detail
        detail = await cc.call(caller.call_id)
        assert [u.text for u in detail.transcript] == [u["text"] for u in record["transcript"]]
        assert detail.caller == "cust-42" and detail.end_reason == record["end_reason"]
        text = await cc.transcript(caller.call_id)
        assert text.count("caller:") == len(detail.transcript)
        assert [u.id for u in await cc.transcript_lines(caller.call_id)] == [
            u.id for u in detail.transcript
        ]
        events = []
        async for event in cc.events(caller.call_id, reconnect=False):
            events.append(event)
            if event["type"] == "call.ended":
                break
        assert events == caller.events
        assert [q.name for q in await cc.queues()] == ["general"]
        assert (await cc.models("en"))[0].language == "en"
        assert {r.id for r in await cc.escalation_rules()} >= {"asks_for_person"}
        hook = await cc.create_webhook("https://crm.example.com/hook", ["call.ended"])
        assert [h.id for h in await cc.webhooks()] == [hook.id]
        assert await cc.deliveries(hook.id) == []
        await cc.delete_webhook(hook.id)
        with pytest.raises(ApiError) as gone:
            await cc.delete_webhook(hook.id)
        assert gone.value.status == 404 and hook.id in gone.value.detail
        with pytest.raises(ApiError) as not_live:
            await cc.hangup(caller.call_id)
        assert not_live.value.status == 404
    async with Client(engine.url, token=caller.answer["caller_token"]) as own:
        assert (await own.caller_view(caller.call_id)).id == caller.call_id
        with pytest.raises(ApiError) as refused:
            await own.calls()
        assert refused.value.status == 403 and refused.value.problem["status"] == 403
    # the commands, on the same ended call
    listed = cli(engine, "calls")
    assert listed.returncode == 0, listed.stderr
    assert caller.call_id in listed.stdout and "ended" in listed.stdout
    shown = cli(engine, "call", caller.call_id)
    assert json.loads(shown.stdout)["id"] == caller.call_id
    added = cli(engine, "webhooks", "add", "https://crm.example.com/hook", "call.ended")
    hook = json.loads(added.stdout)
    assert hook["secret"].startswith("whsec_")
    assert hook["id"] in cli(engine, "webhooks", "list").stdout
    assert cli(engine, "webhooks", "remove", hook["id"]).returncode == 0
    missing = cli(engine, "call", "nope")
    assert missing.returncode == 1 and "404" in missing.stderr and "no call nope" in missing.stderr
