from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.acd import (
    DEFAULT_HANDLE_TIME,
    PRESENCE,
    Acd,
    AcdError,
    MaxWaitReached,
    Offer,
    OfferExpired,
    PresenceChanged,
    QueueConfig,
    load_queues,
)

QUEUES = [
    QueueConfig(name="general"),
    QueueConfig(name="vip", priority=5),
    QueueConfig(name="billing", skills=["billing"], max_wait=60),
]


def offers(actions: list[object]) -> list[tuple[str, str]]:
    return [(a.agent_id, a.call_id) for a in actions if isinstance(a, Offer)]


def staffed(acd: Acd, *agents: tuple[str, set[str], float]) -> None:
    for agent_id, skills, idle_from in agents:
        acd.add_agent(agent_id, skills)
        acd.presence(agent_id, "login", idle_from)
        acd.presence(agent_id, "available", idle_from)


def test_longest_idle_agent_gets_the_call() -> None:
    acd = Acd(QUEUES)
    staffed(acd, ("ann", set(), 10), ("bob", set(), 5), ("cy", set(), 20))
    assert offers(acd.enqueue("c1", "general", 30)) == [("bob", "c1")]
    assert acd.agents["bob"].presence == "ringing"


def test_priority_then_longest_waiting() -> None:
    acd = Acd(QUEUES)
    acd.enqueue("old", "general", 1)
    acd.enqueue("new", "general", 2)
    acd.enqueue("vip", "vip", 3)
    acd.enqueue("boosted", "general", 4)
    acd.raise_priority("boosted", 9, 4)
    assert [w.call_id for w in acd.line()] == ["boosted", "vip", "old", "new"]
    assert [acd.position(c) for c in ("boosted", "vip", "old", "new")] == [1, 2, 3, 4]
    staffed(acd, ("ann", set(), 5))
    assert acd.agents["ann"].offered == "boosted"


def test_skills_must_all_be_present() -> None:
    acd = Acd(QUEUES)
    staffed(acd, ("generalist", set(), 1), ("biller", {"billing"}, 2))
    assert offers(acd.enqueue("c1", "billing", 3)) == [("biller", "c1")]
    # a call that also needs retention waits for someone with both skills
    acd.enqueue("c2", "billing", 4, skills={"retention"})
    assert acd.waiting["c2"].offered_to is None
    acd.add_agent("rita", {"billing", "retention"})
    acd.presence("rita", "login", 5)
    assert offers(acd.presence("rita", "available", 5)) == [("rita", "c2")]


def test_unanswered_offer_moves_on_and_sets_the_agent_away() -> None:
    acd = Acd(QUEUES, offer_timeout=20)
    staffed(acd, ("ann", set(), 1), ("bob", set(), 2))
    acd.enqueue("c1", "general", 10)
    assert acd.next_timer() == 30
    assert acd.tick(29.9) == []
    actions = acd.tick(30)
    assert OfferExpired("ann", "c1") in actions
    assert PresenceChanged("ann", "away", "ringing", "missed_call") in actions
    assert offers(actions) == [("bob", "c1")]
    assert acd.waiting["c1"].enqueued_at == 10  # kept its place in line


def test_decline_goes_to_someone_else_not_back() -> None:
    acd = Acd(QUEUES)
    staffed(acd, ("ann", set(), 1), ("bob", set(), 2))
    acd.enqueue("c1", "general", 10)
    actions = acd.decline("ann", "c1", 11)
    assert offers(actions) == [("bob", "c1")]
    acd.decline("bob", "c1", 12)
    assert acd.agents["ann"].presence == "available"
    assert acd.waiting["c1"].offered_to is None  # nobody left who has not declined


def test_accept_and_hangup_learn_handle_time() -> None:
    acd = Acd(QUEUES)
    staffed(acd, ("ann", set(), 1))
    acd.enqueue("c1", "general", 2)
    assert acd.accept("ann", "c1", 3) == [PresenceChanged("ann", "on_call", "ringing")]
    assert "c1" not in acd.waiting
    with pytest.raises(AcdError, match="not ringing"):
        acd.accept("ann", "c1", 3)
    assert acd.average_handle_time == DEFAULT_HANDLE_TIME
    acd.hangup("ann", 123, handle_time=120)
    assert acd.agents["ann"].presence == "wrap_up"
    assert acd.average_handle_time == 120


def test_a_call_of_unknown_length_is_not_learned() -> None:
    """A call cut off by its engine's death ends with no known length: it used to be
    learned as 0 s, shortening every expected wait promised after it."""
    acd = Acd(QUEUES)
    staffed(acd, ("ann", set(), 1))
    for n, took in enumerate((90, None)):
        acd.enqueue(f"c{n}", "general", 2 + n)
        acd.accept("ann", f"c{n}", 3 + n)
        assert acd.hangup("ann", 4 + n, handle_time=took)
        acd.presence("ann", "available", 5 + n)
    assert acd.agents["ann"].presence == "available" and acd.average_handle_time == 90


def test_expected_wait_and_position() -> None:
    acd = Acd(QUEUES)
    acd.enqueue("c1", "general", 1)
    assert acd.expected_wait("c1") is None  # nobody staffed: no promise
    staffed(acd, ("ann", set(), 2), ("bob", set(), 3))
    acd.accept("ann", "c1", 4)
    acd.hangup("ann", 64, handle_time=60)
    acd.enqueue("c2", "general", 5)
    acd.accept("bob", "c2", 6)
    for n in range(3, 7):
        acd.enqueue(f"c{n}", "general", n)
    # 4 waiting, 2 staffed (wrap-up and on call), 60 s per call
    assert [acd.position(f"c{n}") for n in range(3, 7)] == [1, 2, 3, 4]
    assert acd.expected_wait("c3") == pytest.approx(30)
    assert acd.expected_wait("c6") == pytest.approx(120)


def test_max_wait_is_signalled_once() -> None:
    acd = Acd(QUEUES)
    acd.enqueue("c1", "billing", 0)
    assert acd.next_timer() == 60
    assert acd.tick(59) == []
    assert acd.tick(60) == [MaxWaitReached("c1", "billing")]
    assert acd.tick(61) == []


def test_caller_leaving_frees_the_ringing_agent() -> None:
    acd = Acd(QUEUES)
    staffed(acd, ("ann", set(), 1))
    acd.enqueue("c1", "general", 2)
    actions = acd.remove("c1", 3)
    assert PresenceChanged("ann", "available", "ringing") in actions
    assert acd.agents["ann"].offered is None and acd.next_timer() is None


def test_presence_only_moves_through_the_table() -> None:
    acd = Acd(QUEUES)
    acd.add_agent("ann")
    with pytest.raises(AcdError, match="cannot 'available' while offline"):
        acd.presence("ann", "available", 0)
    with pytest.raises(AcdError, match="not something an agent asks for"):
        acd.presence("ann", "accept", 0)
    acd.presence("ann", "login", 0)
    acd.presence("ann", "available", 0)
    acd.enqueue("c1", "general", 1)
    with pytest.raises(AcdError, match="cannot 'logout' while ringing"):
        acd.presence("ann", "logout", 2)
    # every state is reachable and every event named in the table is one we use
    assert {s for (s, _), t in PRESENCE.items()} | {t for t in PRESENCE.values()} == {
        "offline", "available", "ringing", "on_call", "wrap_up", "away",
    }  # fmt: skip


def test_unknown_names_are_errors() -> None:
    acd = Acd(QUEUES)
    with pytest.raises(AcdError, match="unknown queue"):
        acd.enqueue("c1", "nope", 0)
    acd.enqueue("c1", "general", 0)
    with pytest.raises(AcdError, match="already waiting"):
        acd.enqueue("c1", "general", 0)
    with pytest.raises(AcdError, match="unknown agent"):
        acd.presence("ghost", "login", 0)


def test_queue_file(tmp_path: Path) -> None:
    path = tmp_path / "queues.toml"
    path.write_text('[[queues]]\nname = "retention"\nskills = ["retention"]\npriority = 3\n')
    (q,) = load_queues(path)
    assert (q.name, q.skills, q.priority) == ("retention", ["retention"], 3)
    assert [q.name for q in load_queues(None)] == ["general"]
    path.write_text('[[queues]]\nname = "Bad Name"\n')
    with pytest.raises(ValidationError, match="name"):
        load_queues(path)


def test_transfer_to_one_agent_rings_only_them_then_falls_back_to_the_queue() -> None:
    acd = Acd(QUEUES, offer_timeout=20)
    staffed(acd, ("ann", set(), 1), ("bob", set(), 2))
    acd.add_agent("cy", set())
    acd.presence("cy", "login", 3)  # away: the call waits for cy, not for ann
    assert offers(acd.enqueue("c1", "general", 10, agent="cy")) == []
    assert acd.expected_wait("c1") is None  # cy is not staffed yet
    assert offers(acd.presence("cy", "available", 11)) == [("cy", "c1")]
    # cy lets it ring out: back to the queue, to the longest-idle agent
    actions = acd.tick(31)
    assert OfferExpired("cy", "c1") in actions
    assert offers(actions) == [("ann", "c1")]
    assert acd.waiting["c1"].target is None


def test_transfer_target_must_be_signed_in() -> None:
    acd = Acd(QUEUES)
    acd.add_agent("dee", set())
    with pytest.raises(AcdError, match="offline"):
        acd.enqueue("c1", "general", 1, agent="dee")
    with pytest.raises(AcdError, match="unknown agent"):
        acd.enqueue("c1", "general", 1, agent="nobody")
    assert "c1" not in acd.waiting


def test_a_ringing_call_expects_no_wait() -> None:
    acd = Acd(QUEUES)
    staffed(acd, ("ann", set(), 1))
    acd.enqueue("c1", "general", 2)
    assert acd.agents["ann"].presence == "ringing"
    assert acd.expected_wait("c1") == 0.0  # not "3 minutes" while the phone rings
    acd.enqueue("c2", "general", 3)
    assert acd.expected_wait("c2") == 2 * DEFAULT_HANDLE_TIME


def test_queues_change_at_run_time(tmp_path: Path) -> None:
    acd = Acd([QueueConfig(name="general")])
    acd.set_queue(QueueConfig(name="billing", skills=["billing"], priority=2))
    acd.enqueue("c1", "billing", 1)
    assert acd.waiting["c1"].priority == 2
    with pytest.raises(AcdError, match="calls are waiting"):
        acd.remove_queue("billing")
    acd.remove("c1", 2)
    acd.remove_queue("billing")
    with pytest.raises(AcdError, match="last queue"):
        acd.remove_queue("general")
    path = tmp_path / "queues.yaml"
    path.write_text("queues:\n  - name: vip\n    priority: 5\n    max_wait: 30\n")
    assert load_queues(path) == [QueueConfig(name="vip", priority=5, max_wait=30)]


def test_a_queue_removed_elsewhere_serves_its_callers_but_takes_no_new_ones() -> None:
    acd = Acd([QueueConfig(name="general"), QueueConfig(name="billing", max_wait=60)])
    acd.enqueue("c1", "billing", 0)
    acd.enqueue("c2", "billing", 1)
    acd.close_queue("billing")  # another engine removed it while two callers wait here
    assert "billing" not in acd.queues, "new callers are not put in it"
    with pytest.raises(AcdError, match="unknown queue"):
        acd.enqueue("c3", "billing", 2)
    assert acd.next_timer() == 60, "the callers in it still get their callback offer"
    assert [a.call_id for a in acd.tick(61) if isinstance(a, MaxWaitReached)] == ["c1", "c2"]
    staffed(acd, ("ann", set(), 0))
    assert acd.agents["ann"].offered == "c1", "and still reach an agent"
    acd.accept("ann", "c1", 63)
    assert "billing" in acd.closing, "one caller still waits in it"
    acd.remove("c2", 64)
    assert "billing" not in acd.closing and "billing" not in acd.queues
    acd.close_queue("general")  # not waited in: gone at once
    assert acd.queues == {} and acd.closing == {}
    acd.set_queue(QueueConfig(name="billing"))
    acd.enqueue("c4", "billing", 65)
    acd.close_queue("billing")
    acd.set_queue(QueueConfig(name="billing"))  # put back before its last caller left
    assert "billing" in acd.queues and acd.closing == {}
