import asyncio

from engine.events import (
    CallEnded,
    CallStarted,
    EventBus,
    TranscriptPartial,
    event_adapter,
)


def started(call_id: str) -> CallStarted:
    return CallStarted(
        call_id=call_id, channel="webrtc", language="en", recognizer=None, recognizer_note=""
    )


async def test_ids_increase_and_subscribers_see_publish_order() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    for i in range(5):
        bus.publish(
            TranscriptPartial(
                call_id="a", leg_id="l", speaker="caller", index=i, text=str(i), start=0
            )
        )
    bus.publish(CallEnded(call_id="a", reason="hangup", duration=1.0))
    got = [sub.queue.get_nowait() for _ in range(6)]
    assert [e.id for e in got] == [1, 2, 3, 4, 5, 6]
    assert [e.type for e in got][-1] == "call.ended"  # type: ignore[attr-defined]


async def test_call_filter_and_replay_after_id() -> None:
    bus = EventBus()
    only_b = bus.subscribe("b")
    for cid in "abab":
        bus.publish(started(cid))
    assert [e.call_id for e in bus.replay()] == list("abab")
    assert [e.id for e in bus.replay("b")] == [2, 4]
    assert [e.id for e in bus.replay(after=2)] == [3, 4]
    assert only_b.queue.qsize() == 2


async def test_ring_is_bounded() -> None:
    bus = EventBus(ring_size=10)
    for _ in range(25):
        bus.publish(started("a"))
    assert len(bus.replay()) == 10
    assert bus.oldest_id == 16


async def test_slow_subscriber_is_cut_off_not_silently_gapped() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    for _ in range(sub.queue.maxsize + 5):  # more than it can hold
        bus.publish(started("a"))
    received = []

    async def read() -> None:
        async for e in sub:
            received.append(e.id)

    await asyncio.wait_for(read(), 1)
    assert sub.lagged
    assert received == list(range(1, len(received) + 1))  # no gap inside what it got


def test_events_round_trip_through_json() -> None:
    ev = started("x")
    ev.id = 7
    back = event_adapter.validate_json(ev.model_dump_json())
    assert back == ev
