"""Whether an agent is really at a desk (engine/liveness.py), and what routing does when
they are not (engine/routing.py): sans-IO, with a fake clock and the real ACD.

The failure this guards against (issue 16): a closed desk tab or a crashed
``ccengine phone`` left the agent available, so escalated callers were offered to nobody
for the offer timeout, agent after agent, while told "about a minute"."""

from __future__ import annotations

import asyncio

import pytest

from engine import desks
from engine.desks import DeskStreams
from engine.events import AgentPresenceChanged, OfferWithdrawn
from engine.liveness import Liveness
from engine.routing import StopRinging
from engine.routingcopy import RoutingCopy
from engine.routinglog import RoutingUnavailable
from engine.store.models import UserRow
from tests.test_routing import QUEUES, Desk, emitted, offers

GRACE = 10.0


def test_an_agent_is_absent_once_every_engine_has_lost_their_streams() -> None:
    live = Liveness(GRACE)
    assert live.state("ann") is None and live.next_timer() is None
    live.count("ann", "engine-a", 1, 100.0)  # the desk
    live.count("ann", "engine-b", 1, 101.0)  # the phone, on another engine
    live.count("ann", "engine-a", 0, 102.0)
    assert live.state("ann") == "present" and live.next_timer() is None
    live.count("ann", "engine-b", 0, 103.0)
    assert live.state("ann") == "absent" and live.away_from_desk("ann")
    assert live.next_timer() == 103.0 + GRACE
    assert live.due(112.9) == [] and live.state("ann") == "absent"
    assert live.due(113.0) == ["ann"] and live.state("ann") == "vanished"
    assert live.next_timer() is None and live.due(200.0) == []  # reported once
    assert live.count("ann", "engine-a", 1, 300.0) is True  # came back
    assert live.state("ann") == "present"


def test_a_lost_engine_takes_its_streams_with_it_and_a_copy_keeps_them() -> None:
    live = Liveness(GRACE)
    live.count("ann", "engine-a", 2, 1.0)
    live.count("bob", "engine-b", 1, 1.0)
    live.holder_lost("engine-a", 5.0)
    assert live.state("ann") == "absent" and live.state("bob") == "present"
    assert live.holders() == {"engine-b"}
    again = Liveness(1.0)
    again.restore(live.snapshot())
    assert again.snapshot() == live.snapshot() and again.next_timer() == 5.0 + GRACE


def test_a_closed_desk_is_offered_nothing_then_set_away_and_comes_back_away() -> None:
    """Ann (idle longest) closes her tab: the next caller rings Bob at once, not her; the
    wait callers are told counts Bob alone; after the grace Ann is away, saying why;
    her desk reopening does not make her available again."""
    desk = Desk()
    ann, bob = desk.agent("ann"), desk.agent("bob")
    desk.clock.now += 1
    desk.run(desk.routing.clients(ann, "engine-a", 1))
    desk.run(desk.routing.clients(ann, "engine-a", 0))
    closed = desk.clock.now
    first = desk.call("c1")
    assert offers(desk.escalate(first)) == [(bob, "c1")]
    second = desk.call("c2")
    desk.escalate(second)
    # second in line with one agent really there (Bob), not two
    assert desk.routing.acd.expected_wait("c2") == 2 * desk.routing.acd.average_handle_time
    assert desk.routing.next_timer() == closed + GRACE
    desk.clock.now += GRACE
    effects = desk.run(desk.routing.tick())
    (changed,) = emitted(effects, AgentPresenceChanged)
    assert (changed.agent_id, changed.presence, changed.previous, changed.reason) == (
        ann, "away", "available", "disconnected",
    )  # fmt: skip
    assert desk.routing.presence_of(ann) == "away"
    desk.run(desk.routing.clients(ann, "engine-a", 1))  # the tab reopened
    assert desk.routing.presence_of(ann) == "away"
    assert offers(desk.run(desk.routing.presence(user(ann), "available"))) == [(ann, "c2")]


def test_an_offer_ringing_a_desk_that_went_moves_on_at_once() -> None:
    desk = Desk(offer_timeout=20.0)
    ann, bob = desk.agent("ann"), desk.agent("bob")
    desk.run(desk.routing.clients(ann, "engine-a", 1))
    desk.run(desk.routing.clients(bob, "engine-a", 1))
    assert offers(desk.escalate(desk.call("c1"))) == [(ann, "c1")]
    desk.run(desk.routing.presence(user(bob), "away"))  # nobody else free yet
    desk.run(desk.routing.clients(ann, "engine-a", 0))
    desk.run(desk.routing.presence(user(bob), "available"))  # not offered: Ann still rings
    desk.clock.now += GRACE  # half the offer timeout
    assert desk.routing.next_timer() == desk.clock.now
    effects = desk.run(desk.routing.tick())
    (withdrawn,) = emitted(effects, OfferWithdrawn)
    assert (withdrawn.agent_id, withdrawn.reason) == (ann, "disconnected")
    assert StopRinging("c1") in effects
    assert offers(effects) == [(bob, "c1")]
    assert desk.routing.presence_of(ann) == "away"


def test_a_reload_within_the_grace_changes_nothing() -> None:
    desk = Desk()
    ann = desk.agent("ann")
    desk.run(desk.routing.clients(ann, "engine-a", 1))
    desk.run(desk.routing.clients(ann, "engine-a", 0))
    desk.clock.now += GRACE - 1
    assert offers(desk.run(desk.routing.clients(ann, "engine-a", 1))) == []
    assert offers(desk.escalate(desk.call("c1"))) == [(ann, "c1")]
    desk.clock.now += 60
    assert emitted(desk.run(desk.routing.tick()), AgentPresenceChanged)[0].presence == "away"
    assert emitted(desk.effects, OfferWithdrawn)[-1].reason == "no_answer"  # not "disconnected"


@pytest.mark.parametrize("presence", ["on_call", "untracked"])
def test_on_a_call_or_without_any_stream_an_agent_is_not_set_away(presence: str) -> None:
    """On a call the media says whether it goes on; the agent is set away after it. An
    agent who never opened a stream (a program on the REST API) is never judged by one."""
    desk = Desk()
    ann = desk.agent("ann")
    if presence == "on_call":
        desk.run(desk.routing.clients(ann, "engine-a", 1))
        desk.escalate(desk.call("c1"))
        desk.run(desk.routing.answered(ann, "c1"))
        desk.run(desk.routing.clients(ann, "engine-a", 0))
    desk.clock.now += 100
    desk.run(desk.routing.tick())
    assert desk.routing.presence_of(ann) == ("on_call" if presence == "on_call" else "available")
    if presence == "on_call":
        effects = desk.run(desk.routing.hung_up(ann, desk.clock.now - 50))
        assert [(p.presence, p.reason) for p in emitted(effects, AgentPresenceChanged)] == [
            ("wrap_up", None), ("away", "disconnected"),
        ]  # fmt: skip


def test_every_engine_copy_agrees_and_a_joiner_gets_the_streams() -> None:
    """Several engines: the streams each engine holds are operations of the shared log;
    a copy made for a joiner keeps who is absent and when they go."""
    copy = RoutingCopy(QUEUES, 20.0, GRACE)
    card = {"id": "id-ann", "username": "ann", "skills": [], "role": "agent"}
    for event in ("login", "available"):
        copy.apply({"op": "presence", "user": card, "event": event, "origin": "a"}, 1.0)
    copy.apply({"op": "clients", "user_id": "id-ann", "streams": 1, "origin": "a"}, 2.0)
    copy.apply({"op": "clients", "user_id": "id-ann", "streams": 1, "origin": "b"}, 2.0)
    copy.apply({"op": "clients", "user_id": "id-ann", "streams": 0, "origin": "a"}, 3.0)
    assert copy.routing.next_timer() is None  # still on engine b
    copy.apply({"op": "holder_lost", "holder": "b", "origin": "a"}, 4.0)
    joiner = RoutingCopy(QUEUES, 20.0, 99.0)
    joiner.restore(copy.snapshot())
    for c in (copy, joiner):
        assert c.routing.acd.absent == {"id-ann"}
        assert c.routing.next_timer() == 4.0 + GRACE
        effects, error = c.apply({"op": "tick", "origin": "a"}, 4.0 + GRACE)
        assert error is None
        assert [e.reason for e in emitted(effects, AgentPresenceChanged)] == ["disconnected"]


async def test_desk_reports_tell_the_latest_count_in_order_and_again_until_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """engine/desks.py: while routing is slow to answer, the changes made meanwhile are
    told once, as the count then is (not one report each, nor an older count after a
    newer one); a report routing could not take is tried again, with the count as it is
    then, until it is told. Review of 3b37cd4: such a report was dropped."""
    monkeypatch.setattr(desks, "RETRY_FIRST", 0.01)
    told: list[tuple[str, int]] = []
    gate, failing = asyncio.Event(), [False]
    telling, most = 0, 0

    async def tell(agent: str, streams: int) -> None:
        nonlocal telling, most
        telling += 1
        most = max(most, telling)
        try:
            if not told:
                await gate.wait()
            if failing[0]:
                raise RoutingUnavailable("Redis away")
            told.append((agent, streams))
        finally:
            telling -= 1

    reports = DeskStreams(tell)
    reports.opened("ann")
    await asyncio.sleep(0)  # ann's 1 is being told
    for _ in range(50):  # reloads meanwhile
        reports.opened("ann")
        reports.closed("ann")
    reports.opened("ann")  # a phone as well: 2
    gate.set()
    async with asyncio.timeout(5):
        while reports.untold():  # noqa: ASYNC110  # the reports' own tasks
            await asyncio.sleep(0.01)
    assert told == [("ann", 1), ("ann", 2)]
    assert reports.counts() == {"ann": 2}

    failing[0] = True
    reports.closed("ann")
    await asyncio.sleep(0.1)  # tried and failed, a few times
    reports.closed("ann")
    failing[0] = False
    async with asyncio.timeout(5):
        while reports.untold():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert told[2:] == [("ann", 0)] and reports.counts() == {}
    assert most == 1  # one report at a time
    reports.retell()  # nothing open here: nothing to tell
    assert not reports.untold()
    await reports.close()


def user(agent_id: str) -> UserRow:
    name = agent_id.removeprefix("id-")
    return UserRow(id=agent_id, username=name, role="agent", skills=[])
