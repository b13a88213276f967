"""The store's searches answer alike on SQLite and PostgreSQL (the ``db_url`` fixture):
times with their zone, filters through the legs, NULL tests, paging."""

from __future__ import annotations

from datetime import timedelta

from engine.events import as_utc, utcnow
from engine.store.db import Store
from engine.store.models import CallbackRow, CallRow, LegRow


async def test_call_filters_answer_alike_on_both_databases(db_url: str) -> None:
    store = Store(db_url)
    await store.open()
    now = utcnow()

    def call(call_id: str, minutes_ago: int, **values: object) -> CallRow:
        return CallRow(
            id=call_id, channel="webrtc", state=values.pop("state", "ended"), language="en",
            recognizer=None, recognizer_note="", caller=values.pop("caller", "+1555"),
            created_at=now - timedelta(minutes=minutes_ago), **values,
        )  # fmt: skip

    try:
        await store.add(
            call("old", 90, queue="billing"),
            call("mid", 30, queue="support", escalated_at=now - timedelta(minutes=29)),
            call("new", 1, state="active", caller="+1666", emotion="angry"),
        )
        await store.add(
            LegRow(id="l1", call_id="mid", role="agent", transport="webrtc", codec=None,
                   user_id="ann", created_at=now),
            LegRow(id="l2", call_id="new", role="caller", transport="webrtc", codec=None,
                   created_at=now),
            CallbackRow(id="cb", call_id="old", caller="+1555", contact=None, queue="billing",
                        priority=2, summary="", escalation_reason=None, status="pending",
                        requested_at=now),
        )  # fmt: skip

        async def ids(**filters: object) -> list[str]:
            return [c.id for c in await store.list_calls(**filters)]  # type: ignore[arg-type]

        assert await ids() == ["new", "mid", "old"]  # newest first
        assert await ids(limit=1, offset=1) == ["mid"]
        assert await ids(since=now - timedelta(minutes=60)) == ["new", "mid"]
        assert await ids(until=now - timedelta(minutes=10)) == ["mid", "old"]
        assert await ids(agent_id="ann") == ["mid"]
        assert await ids(escalated=True) == ["mid"]
        assert await ids(escalated=False) == ["new", "old"]
        assert await ids(state="active", emotion="angry") == ["new"]
        assert await ids(queue="billing", caller="+1555") == ["old"]
        assert [c.id for c in await store.history("+1555", before="mid", limit=5)] == ["old"]
        record = await store.get_call("mid")
        assert record is not None and as_utc(record.call.created_at) == now - timedelta(minutes=30)
        assert [c.id for c in await store.callbacks("pending")] == ["cb"]
        done = await store.finish_callback("cb", "ann", now)
        assert done is not None and done.status == "done"
        assert await store.finish_callback("cb", "ann", now) is None  # once
    finally:
        await store.close()
