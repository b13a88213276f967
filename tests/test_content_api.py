"""Escalation rules and knowledge-base articles changed through the API: the next call
is judged and helped by them, and the change outlives a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.client import ApiError, Client
from engine.escalation import Rule
from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller


async def test_new_rule_and_article_reach_the_next_call(
    tmp_path: Path, voices: dict[str, Path]
) -> None:
    engine = EngineProcess(tmp_path / "engine", CCENGINE_MEDIA_TIMEOUT="6").start()
    restarted: EngineProcess | None = None
    reader = engine.ccengine("keys", "create", "wallboard", "--scope", "control", "--quiet")
    try:
        async with Client(engine.url, api_key=engine.api_key) as cc:
            rule = Rule(
                id="late_delivery", kind="phrase", phrases=["order", "arrive", "delivered"],
                actions=["route_to_human", "target_skill"], skill="logistics",
                description="a late delivery",
            )  # fmt: skip
            assert await cc.put_rule(rule) == rule
            await cc.delete_rule("pressed_zero")
            added = await cc.put_article(
                "late-parcel", "My parcel is late",
                "Sorry it is late. Parcels delayed over five days are refunded in full.",
                ["order", "delivery", "late"],
            )  # fmt: skip
            assert added.id == "late-parcel"
            with pytest.raises(ApiError) as mismatch:
                await cc._call(
                    "PUT", "/api/v1/escalation-rules/other", Rule,
                    json=rule.model_dump(mode="json"),
                )  # fmt: skip
            assert mismatch.value.status == 422
            with pytest.raises(ApiError) as gone:
                await cc.delete_rule("pressed_zero")
            assert gone.value.status == 404
        async with Client(engine.url, api_key=reader.strip()) as control:
            with pytest.raises(ApiError) as refused:
                await control.delete_article("late-parcel")
            assert refused.value.status == 403 and "admin" in refused.value.detail
            assert [a.id for a in await control.articles()] == ["late-parcel"]

        caller = Caller(engine.url, voices["calm"])
        record = await caller.complete_call()
        engine.stop()
        restarted = EngineProcess(tmp_path / "engine").start()
        async with Client(restarted.url, api_key=restarted.api_key) as cc:
            rules = {r.id for r in await cc.escalation_rules()}
            kept = [a.id for a in await cc.articles()]
    finally:
        engine.stop()
        if restarted is not None:
            restarted.stop()
    raised = [e for e in caller.events if e["type"] == "escalation.raised"]
    assert [e["rule"] for e in raised] == ["late_delivery"]
    assert raised[0]["skill"] == "logistics"
    assert record["escalation_reason"] and "late delivery" in record["escalation_reason"]
    suggested = {
        s["article_id"] for e in caller.events if e["type"] == "assist.updated"
        for s in e["suggestions"]
    }  # fmt: skip
    assert "late-parcel" in suggested
    assert "late_delivery" in rules and "pressed_zero" not in rules
    assert kept == ["late-parcel"]
