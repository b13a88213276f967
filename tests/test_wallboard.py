"""The wallboard's figures (engine/wallboard.py), from an ACD and events, no engine.

The failures these guard against: a supervisor told the wrong queue figures (service
level counting callers still waiting, abandoned callers not counted), an agent's mood
taken for the caller's, and the calls at risk not first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from engine.acd import Acd, QueueConfig
from engine.wallboard import Floor, Person, heat, risks, snapshot

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def ev(kind: str, call: str, s: float, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "call_id": call, "time": (T0 + timedelta(seconds=s)).isoformat(),
            **fields}  # fmt: skip


def queued(floor: Floor, call: str, s: float, queue: str = "general") -> None:
    floor.feed(ev("call.started", call, s, channel="chat"))
    floor.feed(ev("call.state_changed", call, s, state="queued"))
    floor.feed(ev("queue.updated", call, s, queue=queue))


def mood(call: str, s: float, label: str, trend: float, speaker: str = "caller") -> dict[str, Any]:
    scores = {"neutral": 0.2, "positive": 0.0, "frustrated": 0.3, "angry": 0.5}
    return ev("emotion.updated", call, s, speaker=speaker, label="neutral", call_label=label,
              call_scores=scores, trend=trend)  # fmt: skip


PEOPLE = [Person("a1", "ann", "Ann"), Person("b1", "bob", "Bob")]


def test_service_level_counts_answered_within_the_threshold_and_abandoned_callers() -> None:
    floor = Floor(threshold=20)
    queued(floor, "c1", 0)
    floor.feed(ev("call.offered", "c1", 5, agent_id="a1"))
    floor.feed(ev("call.state_changed", "c1", 10, state="bridged"))  # 10 s: within
    queued(floor, "c2", 0)
    floor.feed(ev("call.state_changed", "c2", 30, state="bridged"))  # 30 s: not within
    queued(floor, "c3", 0)
    # abandoned: the engine tells the state first, then the end (counted once)
    floor.feed(ev("call.state_changed", "c3", 40, state="ended"))
    floor.feed(ev("call.ended", "c3", 40, reason="hangup", duration=40))
    queued(floor, "c4", 0, queue="billing")  # still waiting: counts nowhere yet
    acd = Acd([QueueConfig(name="general"), QueueConfig(name="billing")])
    board = snapshot(acd, 100.0, floor, T0 + timedelta(seconds=50), PEOPLE, 20)
    general = next(q for q in board["queues"] if q["name"] == "general")
    assert (general["answered_today"], general["answered_within"]) == (2, 1)
    assert general["abandoned_today"] == 1
    assert general["service_level"] == round(1 / 3, 3)
    billing = next(q for q in board["queues"] if q["name"] == "billing")
    assert billing["service_level"] is None
    assert floor.calls["c1"].agent_id == "a1"  # the agent it rang, once bridged


def test_the_counters_restart_at_midnight_utc() -> None:
    floor = Floor()
    queued(floor, "c1", 0)
    floor.feed(ev("call.ended", "c1", 5))
    assert floor.queues["general"].abandoned == 1
    floor.feed(ev("call.started", "c2", 86_400, channel="sip"))  # the next day
    assert floor.queues == {}


def test_queue_and_agent_figures_come_from_the_acd() -> None:
    acd = Acd([QueueConfig(name="general")])
    for agent in ("a1", "b1"):
        acd.add_agent(agent)
        acd.presence(agent, "login", 0.0)
    acd.presence("a1", "available", 10.0)
    acd.enqueue("c1", "general", 20.0)  # rings ann at once
    acd.accept("a1", "c1", 25.0)
    acd.enqueue("c2", "general", 30.0)
    acd.enqueue("c3", "general", 40.0)
    floor = Floor()
    queued(floor, "c1", 0)
    floor.feed(ev("call.offered", "c1", 1, agent_id="a1"))
    floor.feed(ev("call.state_changed", "c1", 2, state="bridged"))
    floor.feed(mood("c1", 3, "frustrated", -0.2))
    floor.feed(mood("c1", 4, "positive", 0.5, speaker="agent"))  # the agent's: not the call's
    board = snapshot(acd, 100.0, floor, T0 + timedelta(seconds=5), PEOPLE, 20)
    (q,) = board["queues"]
    assert q["waiting"] == 2
    assert q["longest_wait"] == 70.0
    # for a caller joining now: two ahead, so third; one staffed agent (bob is away),
    # the default handle time
    assert q["expected_wait"] == 3 / 1 * acd.average_handle_time
    ann, bob = board["agents"]
    assert (ann["presence"], ann["time_in_state"], ann["call_id"]) == ("on_call", 75.0, "c1")
    assert ann["caller_mood"] == "frustrated"
    assert (bob["presence"], bob["time_in_state"], bob["call_id"]) == ("away", 100.0, None)
    assert board["totals"]["waiting"] == 2
    assert board["totals"]["agents"]["on_call"] == 1


def test_calls_at_risk_come_first_each_with_its_reason() -> None:
    floor = Floor(threshold=20)
    floor.feed(ev("call.started", "calm", 0, channel="webrtc"))
    floor.feed(ev("call.state_changed", "calm", 0, state="bridged"))
    floor.feed(mood("calm", 1, "neutral", 0.1))
    queued(floor, "waits", 0)  # 60 s in line by the snapshot
    floor.feed(ev("call.started", "falls", 0, channel="webrtc"))
    for i, trend in enumerate((0.1, -0.1, -0.35)):
        floor.feed(mood("falls", i, "angry", trend))
    floor.feed(
        ev("escalation.raised", "falls", 3, rule="repeats_request",
           reason="caller repeats a request: 'cancel it' (said before: 'cancel it')",
           evidence={"similarity": [100.0]})
    )  # fmt: skip
    floor.feed(ev("call.started", "held", 0, channel="sip"))
    floor.feed(ev("call.state_changed", "held", 0, state="held"))
    board = snapshot(Acd([QueueConfig(name="general")]), 0.0, floor, T0 + timedelta(seconds=90),
                     PEOPLE, 20)  # fmt: skip
    order = [c["id"] for c in board["calls"]]
    assert order[0] == "falls" and order[-1] == "calm", order
    assert board["at_risk"] == order[:3]
    falls = board["calls"][0]
    kinds = [r["kind"] for r in falls["risks"]]
    assert kinds == ["mood_falling", "upset", "repeated"]
    assert "+0.10 to -0.35" in falls["risks"][0]["reason"]
    assert "said before" in falls["risks"][2]["reason"]
    assert falls["escalated"] and falls["mood"] == "angry"
    held = next(c for c in board["calls"] if c["id"] == "held")
    assert held["risks"] == [{"kind": "long_hold", "reason": "on hold 90 s"}]
    waits = next(c for c in board["calls"] if c["id"] == "waits")
    assert waits["risks"][0]["reason"] == "waiting 90 s (service level 20 s)"
    calm = board["calls"][-1]
    assert calm["risks"] == [] and calm["risk"] == 0.0


def test_heat_follows_the_call_mood_then_upset_scores_and_a_falling_trend() -> None:
    floor = Floor()
    floor.feed(ev("call.started", "c", 0, channel="chat"))
    floor.feed(mood("c", 1, "neutral", -0.6))
    calm = heat(floor.calls["c"])  # upset scores, but the call's mood is neutral yet
    floor.feed(mood("c", 2, "angry", -0.6))
    warm = heat(floor.calls["c"])
    floor.feed(mood("c", 3, "angry", -0.6))  # the third reading: a falling mood now
    assert 0.0 < calm < 0.5 < warm < heat(floor.calls["c"]) <= 1.0


def test_the_floor_follows_a_bounded_number_of_calls() -> None:
    from engine import wallboard

    floor = Floor()
    for i in range(wallboard.MAX_CALLS + 3):
        floor.feed(ev("call.started", f"c{i}", 0, channel="chat"))
    assert len(floor.calls) == wallboard.MAX_CALLS and floor.dropped == 3
    assert "c0" not in floor.calls


def test_a_reading_or_two_is_not_a_mood_yet_three_low_ones_are() -> None:
    """A plain "I want a person" can read -0.6 on its own: flagging every such caller
    at risk made the overlay useless (every call was at risk)."""
    floor = Floor()
    floor.feed(ev("call.started", "c", 0, channel="chat"))
    for i in range(2):
        floor.feed(mood("c", i, "neutral", -0.6))
    at = T0 + timedelta(seconds=5)
    assert risks(floor.calls["c"], at, 20) == []
    floor.feed(mood("c", 3, "neutral", -0.6))
    assert risks(floor.calls["c"], at, 20) == [
        {"kind": "mood_falling", "reason": "mood low: trend -0.60"}
    ]


def test_this_engines_own_calls_tell_an_agents_call_before_the_events_do() -> None:
    """The ACD has ann on a call as soon as she accepts; the floor learns which call
    from the events a moment later. The wallboard had her on a call with no call."""
    acd = Acd([QueueConfig(name="general")])
    acd.add_agent("a1")
    acd.presence("a1", "login", 0.0)
    acd.presence("a1", "available", 1.0)
    acd.enqueue("c1", "general", 2.0)
    acd.accept("a1", "c1", 3.0)
    floor = Floor()
    queued(floor, "c1", 0)  # the offer and the bridging not told yet
    at = T0 + timedelta(seconds=4)
    (ann, _bob) = snapshot(acd, 4.0, floor, at, PEOPLE, 20)["agents"]
    assert (ann["presence"], ann["call_id"]) == ("on_call", None)
    (ann, _bob) = snapshot(acd, 4.0, floor, at, PEOPLE, 20, {"a1": "c1"})["agents"]
    assert ann["call_id"] == "c1"


def test_a_callback_or_the_engine_stopping_is_not_an_abandoned_caller() -> None:
    """Callers who chose a callback, and calls the engine ended (a shutdown, a dead
    engine's calls ended by another), were counted abandoned and lowered the service
    level. A caller who hangs up while waiting still is abandoned."""
    floor = Floor(threshold=20)
    queued(floor, "answered", 0)
    floor.feed(ev("call.state_changed", "answered", 5, state="bridged"))
    queued(floor, "cb", 0)
    floor.feed(ev("call.state_changed", "cb", 30, state="ended", reason="callback_requested"))
    floor.feed(ev("call.ended", "cb", 30, reason="callback_requested", duration=30))
    for i, reason in enumerate(("engine_shutdown", "engine_restart", "node_lost", "engine_lost")):
        queued(floor, f"e{i}", 0)
        floor.feed(ev("call.state_changed", f"e{i}", 30, state="ended", reason=reason))
        floor.feed(ev("call.ended", f"e{i}", 30, reason=reason, duration=30))
    queued(floor, "shut", 0)  # the end told without a state change first
    floor.feed(ev("call.ended", "shut", 30, reason="engine_shutdown", duration=30))
    queued(floor, "gone", 0)
    floor.feed(ev("call.ended", "gone", 31, reason="hangup", duration=31))
    day = floor.queues["general"]
    assert (day.answered, day.abandoned, day.callbacks) == (1, 1, 1)
    board = snapshot(Acd([QueueConfig(name="general")]), 0.0, floor, T0 + timedelta(seconds=40),
                     PEOPLE, 20)  # fmt: skip
    (q,) = board["queues"]
    assert (q["abandoned_today"], q["callbacks_today"]) == (1, 1)
    assert q["service_level"] == 0.5  # answered within / (answered + abandoned)
    assert list(floor.calls) == ["answered"]


def test_a_call_ended_before_its_start_was_told_is_not_a_ghost() -> None:
    """The caller hung up while the engine stored the new call: its end was told before
    its call.started, and the wallboard kept a live call that never ended."""
    from engine import wallboard

    floor = Floor()
    floor.feed(ev("call.state_changed", "c1", 1, state="ended", reason="caller_cancelled"))
    floor.feed(ev("call.ended", "c1", 1, reason="caller_cancelled", duration=0.1))
    floor.feed(ev("call.started", "c1", 1, channel="sip"))
    assert floor.calls == {}
    floor.feed(ev("call.started", "c2", 2, channel="sip"))  # others still follow
    assert list(floor.calls) == ["c2"]
    for i in range(wallboard.RECENT_ENDS + 5):  # the ids kept are bounded
        floor.feed(ev("call.ended", f"x{i}", 3, reason="hangup", duration=1))
    assert len(floor._ended) == len(floor._ended_set) == wallboard.RECENT_ENDS
    floor.feed(ev("call.started", "c1", 4, channel="sip"))  # forgotten by now
    assert "c1" in floor.calls


def test_a_late_event_of_yesterday_does_not_wipe_todays_counters() -> None:
    """Around midnight another engine's event of 23:59:59 can come after one of
    00:00:01: the counters went back to yesterday (wiped), then forward (wiped again).
    And just after midnight, before the day's first event, the snapshot showed
    yesterday's figures as today's."""
    floor = Floor()
    midnight = 15 * 3600  # T0 is 09:00
    queued(floor, "c1", midnight - 60)
    queued(floor, "c2", midnight + 1)
    floor.feed(ev("call.ended", "c2", midnight + 2, reason="hangup"))  # today's
    floor.feed(ev("call.ended", "c1", midnight - 1, reason="hangup"))  # yesterday's, late
    assert floor.day == (T0 + timedelta(seconds=midnight)).date()
    assert floor.queues["general"].abandoned == 1
    assert floor.calls == {}
    acd = Acd([QueueConfig(name="general")])
    day_after = T0 + timedelta(days=1, seconds=midnight + 5)
    (q,) = snapshot(acd, 0.0, floor, day_after, PEOPLE, 20)["queues"]
    assert (q["abandoned_today"], q["service_level"]) == (0, None)


def test_expected_wait_is_a_new_callers_and_longest_wait_never_negative() -> None:
    """The expected wait shown was the last waiting caller's own (one place short); and
    an ACD clock behind a caller's enqueue time (wall clocks of several engines) showed
    a negative longest wait."""
    acd = Acd([QueueConfig(name="general"), QueueConfig(name="vip", priority=5)])
    acd.add_agent("a1")
    acd.presence("a1", "login", 0.0)
    acd.presence("a1", "available", 0.0)
    empty = {q["name"]: q for q in snapshot(acd, 0.0, Floor(), T0, PEOPLE, 20)["queues"]}
    assert empty["general"]["expected_wait"] == 0.0  # first in line, someone available
    acd.enqueue("c1", "general", 10.0)  # rings a1
    acd.accept("a1", "c1", 11.0)
    acd.enqueue("c2", "general", 12.0)
    board = snapshot(acd, 5.0, Floor(), T0, PEOPLE, 20)  # the clock behind c2's enqueue
    queues = {q["name"]: q for q in board["queues"]}
    aht = acd.average_handle_time
    assert queues["general"]["expected_wait"] == 2 * aht  # behind c2
    assert queues["vip"]["expected_wait"] == 1 * aht  # its priority goes ahead of c2
    assert queues["general"]["longest_wait"] == 0.0


def test_a_consulted_colleague_is_not_taken_for_the_calls_agent() -> None:
    """The failure: Ann, on the call, consults Bob (he is offered the call) and makes it
    a conference (the call is bridged again, from held): the floor took Bob, the last
    offered, for the call's agent, so the live calls named him and Ann's engine's peers
    showed her with no call."""
    floor = Floor()
    queued(floor, "c1", 0)
    floor.feed(ev("call.offered", "c1", 1, agent_id="a1"))
    floor.feed(ev("call.state_changed", "c1", 2, state="bridged"))
    assert floor.calls["c1"].agent_id == "a1"
    floor.feed(ev("call.state_changed", "c1", 10, state="held"))  # the consult's hold
    floor.feed(ev("call.offered", "c1", 11, agent_id="b1"))  # Bob rung for the consult
    floor.feed(ev("call.state_changed", "c1", 20, state="bridged"))  # the conference
    assert floor.calls["c1"].agent_id == "a1"


def test_after_a_warm_transfer_the_colleague_has_the_call() -> None:
    """Ann hands the caller to Bob (``call.consult_completed``): the wallboard showed the
    call as still Ann's (she is in wrap-up) and Bob, on it, with no call."""
    acd = Acd([QueueConfig(name="general")])
    for agent in ("a1", "b1"):
        acd.add_agent(agent)
        acd.presence(agent, "login", 0.0)
        acd.presence(agent, "available", 0.0)
    acd.offer_to("b1", "c1", 5.0)
    acd.accept("b1", "c1", 6.0)  # Bob on the call (the consult's answer)
    floor = Floor()
    queued(floor, "c1", 0)
    floor.feed(ev("call.offered", "c1", 1, agent_id="a1"))
    floor.feed(ev("call.state_changed", "c1", 2, state="bridged"))
    floor.feed(ev("call.consult_completed", "c1", 30, host="ann", guest="bob"))
    snap = snapshot(acd, 31.0, floor, T0 + timedelta(seconds=31), PEOPLE, 20)
    (_ann, bob) = snap["agents"]
    assert (bob["presence"], bob["call_id"]) == ("on_call", "c1")
    assert [c["agent_id"] for c in snap["calls"]] == ["b1"]
