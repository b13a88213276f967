"""Post-call analytics and reports as pure functions (engine/callanalytics.py,
engine/callreports.py): talk, non-talk, interruptions, sentiment, categories, the
handle time split, and the report's sums and CSV."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine import callanalytics as ca
from engine.analyst import DEFAULT_RULES, _current, _state_changes, rules_from
from engine.callreports import CallFacts, Figures, is_direct, is_outbound, report, to_csv
from engine.store.models import CallAnalyticsRow, CallRow

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def line(speaker: str, start: float, end: float, text: str = "words here") -> ca.Line:
    return ca.Line(speaker, start, end, text)


def worded(speaker: str, start: float, end: float, text: str) -> ca.Line:
    """An utterance with word timings evenly over [start, end], padded by the
    recognizer's endpointing (0.8 s of silence after the last word)."""
    ws = text.split()
    step = (end - start) / len(ws)
    words = [
        {"word": w, "start": start + i * step, "end": start + (i + 1) * step, "conf": 1.0}
        for i, w in enumerate(ws)
    ]
    return ca.Line(speaker, start - 0.2, end + 0.8, text, words)


def test_talk_listen_and_non_talk_come_from_where_words_were_heard() -> None:
    """The endpointing pads each utterance with silence: speech is read from its words,
    so a 3 s gap between turns is reported as 3 s, not 2."""
    lines = [
        worded("caller", 1.0, 4.0, "my parcel never came"),
        worded("agent", 7.0, 9.0, "let me check"),
        worded("caller", 9.5, 10.5, "thanks"),
    ]
    speech = ca.spans(lines)
    t = ca.talk(speech)
    assert t["caller"].talk_seconds == pytest.approx(4.0)
    assert t["agent"].talk_seconds == pytest.approx(2.0)
    assert t["caller"].listen_seconds == pytest.approx(2.0)
    assert t["caller"].talk_ratio == pytest.approx(2.0)
    assert t["agent"].share == pytest.approx(1 / 3, abs=1e-3)
    quiet = ca.non_talk(speech)
    assert quiet.total_seconds == pytest.approx(3.5)
    assert quiet.longest_seconds == pytest.approx(3.0)
    assert quiet.longest_at == pytest.approx(4.0)
    assert quiet.gaps == 1


def test_one_sides_overlapping_turns_count_once_and_nobody_speaking_is_a_caller_entry() -> None:
    speech = ca.spans([line("caller", 0, 4), line("caller", 3, 5)])
    t = ca.talk(speech)
    assert t["caller"].talk_seconds == 5.0 and t["caller"].talk_ratio is None
    assert ca.talk([])["caller"].talk_seconds == 0.0
    assert ca.non_talk([]).longest_at is None


def test_words_with_no_length_leave_the_utterances_own_times() -> None:
    """A recognizer that had no audio frames to spread the words over gives them all
    0-0: the utterance is then its own start and end, not dropped."""
    words = [
        {"word": "hello", "start": 0.0, "end": 0.0},
        {"word": "there", "start": 0.0, "end": 0.0},
    ]
    (span,) = ca.spans([ca.Line("caller", 2.0, 3.5, "hello there", words)])
    assert (span.start, span.end) == (2.0, 3.5)


def test_bot_lines_said_at_an_instant_get_the_time_their_words_take() -> None:
    (bot,) = ca.spans([line("bot", 2.0, 2.0, "one two three four five six seven eight nine ten")])
    assert bot.end - bot.start == pytest.approx(10 / ca.BOT_WORDS_PER_SECOND)


def test_an_interruption_is_a_side_starting_while_the_other_talks_not_a_backchannel() -> None:
    """The agent cuts in at 2.5 s into the caller's 0-4 s turn (interruption); the
    caller's 0.4 s "mm-hmm" inside the agent's next turn is a backchannel; both starting
    together (within LEAD_SECONDS) is neither."""
    speech = ca.spans(
        [
            line("caller", 0.0, 4.0),
            line("agent", 2.5, 6.0),
            line("caller", 5.0, 5.4),  # backchannel inside the agent's turn
            line("caller", 10.0, 12.0),
            line("agent", 10.1, 11.0),  # together
            line("caller", 20.0, 23.0),
            line("agent", 23.5, 25.0),
            line("caller", 24.0, 26.0),  # the caller cuts back in
        ]
    )
    found = ca.interruptions(speech)
    assert [(i.by, i.of, i.at) for i in found] == [
        ("agent", "caller", 2.5),
        ("caller", "agent", 24.0),
    ]
    assert found[0].overlap_seconds == pytest.approx(1.5)


def test_sentiment_arc_per_side_in_time_order_with_its_change() -> None:
    samples = [
        ca.Sample("caller", 9.0, "angry", -0.6, 0.8),
        ca.Sample("caller", 3.0, "neutral", 0.0, 0.2),
        ca.Sample("caller", 15.0, "happy", 0.5, 0.4),
        ca.Sample("agent", 5.0, "neutral", 0.1, 0.1),
    ]
    arc = ca.sentiment(samples)
    assert [p.at for p in arc["caller"].points] == [3.0, 9.0, 15.0]
    assert arc["caller"].start_valence == 0.0 and arc["caller"].end_valence == 0.5
    assert arc["caller"].change == pytest.approx(0.5)
    assert arc["agent"].mean_valence == 0.1


def test_a_long_arc_is_thinned_to_its_bound() -> None:
    samples = [ca.Sample("caller", float(i), "neutral", 0.0, 0.0) for i in range(1000)]
    points = ca.sentiment(samples)["caller"].points
    assert len(points) == ca.MAX_ARC_POINTS
    assert points[0].at == 0.0 and points[-1].at == 999.0


def test_categories_match_whole_phrases_in_either_sides_words() -> None:
    rules = ca.parse_rules(
        "refund request: [refund, money back]\nbilling: [bill]\ndelivery: [parcel]\n"
    )
    lines = [
        line("caller", 1.0, 2.0, "I want my MONEY back, a refund!"),
        line("agent", 3.0, 4.0, "The billion-dollar question: your refund is on the way."),
    ]
    found = ca.categorize(lines, rules)
    assert [(c.name, c.count) for c in found] == [("refund request", 3)]
    assert [(h.speaker, h.phrase) for h in found[0].hits] == [  # in the order said
        ("caller", "money back"),
        ("caller", "refund"),
        ("agent", "refund"),
    ]


def test_the_shipped_rule_file_loads_and_bad_ones_say_why(tmp_path: Path) -> None:
    rules = rules_from(None)
    assert rules is not None and DEFAULT_RULES.is_file()
    assert {"refund request", "cancellation", "complaint", "billing", "delivery"} <= set(
        rules.categories
    )
    assert rules_from("") is None
    with pytest.raises(ca.RulesError, match="No such file"):
        rules_from(str(tmp_path / "missing.yaml"))
    with pytest.raises(ca.RulesError, match="not YAML"):
        ca.parse_rules("a: [b")
    with pytest.raises(ca.RulesError, match="valid list"):
        ca.parse_rules("refund: refund")
    with pytest.raises(ca.RulesError, match="phrase '!!' is empty"):
        ca.parse_rules("refund: ['!!']")
    with pytest.raises(ca.RulesError, match="larger than"):
        ca.parse_rules("x: [" + "a, " * 100_000 + "]")
    assert ca.parse_rules('{"categories": {"x": ["y"]}}').categories == {"x": ["y"]}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def change(seconds: float, state: str, previous: str) -> ca.StateChange:
    return ca.StateChange(at(seconds), state, previous)


def test_handle_time_splits_by_the_states_the_call_went_through() -> None:
    """bot 10 s, queue 20 s, agent 30 + 20 s around a 15 s hold, wrap-up 25 s."""
    times = ca.CallTimes(T0, at(1), at(11), at(96), at(121))
    changes = [
        change(1, "connecting", "new"),
        change(1, "active", "connecting"),
        change(11, "queued", "active"),
        change(31, "bridged", "queued"),
        change(61, "held", "bridged"),
        change(76, "bridged", "held"),
        change(96, "ended", "bridged"),
    ]
    split = ca.handle_split(times, changes)
    assert (split.bot, split.queue, split.agent, split.hold, split.wrap_up) == (
        10.0, 20.0, 50.0, 15.0, 25.0,
    )  # fmt: skip
    assert split.total == 121.0


def test_with_the_log_pruned_the_call_and_its_agent_legs_give_the_split() -> None:
    """The event log keeps 7 days: an escalated call analysed later (a new VERSION, a
    late wrap-up) must still get its queue and agent time, from the call's escalation
    and its agent legs (two agents one after the other, overlapping a second)."""
    times = ca.CallTimes(T0, at(1), at(11), at(96), None)
    legs = [(at(31), at(61)), (at(60), None)]  # the second still on at the end
    split = ca.handle_split(times, [], legs)
    assert (split.bot, split.queue, split.agent, split.hold) == (10.0, 20.0, 65.0, 0.0)
    assert split.total == 96.0
    nobody = ca.handle_split(ca.CallTimes(T0, at(1), at(11), at(40), None), [])
    assert (nobody.bot, nobody.queue, nobody.agent) == (10.0, 29.0, 0.0)  # left waiting
    assert ca.handle_split(ca.CallTimes(T0, None, None, None, None), []).total == 0.0
    # half the log pruned (its start is gone): the call's times, not half the stretches
    half = ca.handle_split(times, [change(76, "bridged", "held")], legs)
    assert half.agent == 65.0 and half.queue == 20.0


def test_a_recovered_calls_parts_never_outgrow_the_call() -> None:
    """A call ended by Recovery: its last state change is older than its end, and a
    stretch read past the end (or before the start) is clamped to the call."""
    times = ca.CallTimes(T0, at(1), None, at(50), None)
    changes = [
        change(-5, "connecting", "new"),  # clocks apart: before the row's start
        change(1, "active", "connecting"),
        change(20, "bridged", "active"),
        change(70, "ended", "bridged"),  # after the end the row says
    ]
    split = ca.handle_split(times, changes)
    assert (split.bot, split.agent) == (19.0, 30.0)
    assert split.bot + split.agent + split.queue + split.hold <= split.total == 50.0


def test_analyze_puts_it_together() -> None:
    times = ca.CallTimes(T0, at(0), None, at(12), None)
    result = ca.analyze(
        [line("caller", 0, 4, "cancel it"), line("agent", 3, 5)],
        [],
        times,
        [change(0, "bridged", "new"), change(12, "ended", "bridged")],
        ca.parse_rules("cancellation: [cancel]"),
    )
    assert result.interruptions_by == {"agent": 1}
    assert result.reached_agent and not result.queued
    assert [c.name for c in result.categories] == ["cancellation"]
    assert result.speech_seconds == 5.0 and result.handle.agent == 12.0


def facts(
    n: int, queue: str | None, agent: str | None, day: int, figures: Figures | None
) -> CallFacts:
    return CallFacts(
        id=f"c{n}",
        created_at=T0 + timedelta(days=day, minutes=n),
        queue=queue,
        agent=agent,
        escalated=queue is not None,
        reached_agent=agent is not None,
        disposition=None,
        figures=figures,
    )


def fig(handle: float, caller: float, agent: float, cats: tuple[str, ...] = ()) -> Figures:
    return Figures(handle, (1.0, 2.0, handle - 3.0, 0.0, 0.0), caller, agent, 4.0, 3.0, 1, 2, cats)


def test_a_report_adds_up_calls_per_group_and_in_all() -> None:
    calls = [
        facts(1, "billing", "ann", 0, fig(60, 30, 10, ("billing",))),
        facts(2, "billing", None, 0, None),  # abandoned, not analysed
        facts(3, None, None, 1, fig(20, 0, 0)),  # the bot did it all; nobody spoke
        facts(4, "billing", "bob", 1, fig(100, 10, 30, ("billing", "refund request"))),
    ]
    rows, total = report(calls, "queue")
    assert [r.key for r in rows] == ["(none)", "billing"]
    billing = rows[1]
    assert (billing.calls, billing.escalated, billing.abandoned, billing.analysed) == (3, 3, 1, 2)
    assert billing.avg_handle_seconds == 80.0
    assert billing.avg_split_seconds == {"queue": 1.0, "bot": 2.0, "agent": 77.0, "hold": 0.0,
                                         "wrap_up": 0.0}  # fmt: skip
    assert billing.caller_talk_share == pytest.approx((0.75 + 0.25) / 2)
    assert billing.categories == {"billing": 2, "refund request": 1}
    assert (billing.caller_interruptions, billing.agent_interruptions) == (2, 4)
    assert rows[0].caller_talk_share is None  # nobody spoke: no share, not 0
    assert (total.calls, total.analysed, total.avg_handle_seconds) == (4, 3, 60.0)
    days, _ = report(calls, "day")
    assert [(r.key, r.calls) for r in days] == [("2026-11-27", 2), ("2026-11-28", 2)]
    agents, _ = report(calls, "agent")
    assert [r.key for r in agents] == ["(none)", "ann", "bob"]
    per_call, _ = report(calls, "call")
    assert [r.key for r in per_call] == ["c1", "c2", "c3", "c4"]


def test_the_csv_has_a_header_a_line_a_row_and_defuses_formulas() -> None:
    rows, total = report(
        [facts(1, "=HYPERLINK(1)", "ann", 0, fig(60, 30, 10, ("a", "b")))], "queue"
    )
    text = to_csv([*rows, total], "queue")
    table = list(csv.reader(io.StringIO(text)))
    assert table[0][:3] == ["queue", "calls", "escalated"]
    assert table[1][0] == "'=HYPERLINK(1)"
    assert table[1][-1] == "a=1;b=1"
    assert table[2][0] == "total" and len(table) == 3


def test_stored_analytics_are_stale_after_a_wrap_up_or_a_new_version() -> None:
    """A call wrapped up after it was analysed is analysed again (the wrap-up is part of
    its handle time), and so is one analysed by an older computation."""
    call = CallRow(id="c", wrapped_up_at=None)
    row = CallAnalyticsRow(call_id="c", version=ca.VERSION, computed_at=at(10))
    assert _current(row, call)
    call.wrapped_up_at = at(20)
    assert not _current(row, call)
    row.computed_at = at(21)
    assert _current(row, call)
    row.version = ca.VERSION - 1
    assert not _current(row, call)


def test_state_changes_are_read_from_the_log_and_a_bad_body_is_skipped() -> None:
    good = json.dumps(
        {"type": "call.state_changed", "time": "2026-11-27T10:00:05Z", "state": "queued",
         "previous": "active"}
    )  # fmt: skip
    changes = _state_changes([good, "not json", '{"time": "2026-11-27T10:00:06Z"}'])
    assert changes == [ca.StateChange(at(5), "queued", "active")]


def test_categories_scan_a_line_once_a_category_not_once_a_phrase() -> None:
    """Regression: one regex a phrase a line made a long call with a big rule file take
    seconds (4,000,000 scans here, 3 s); one alternation a category takes milliseconds.
    The longest phrase is found as itself."""
    text = "\n".join(
        f"cat{c}: [" + ", ".join(f"phrase{c}x{p} word" for p in range(100)) + "]" for c in range(20)
    )
    rules = ca.parse_rules(text + "\nrefunds: [refund, refund request]")
    said = "I'd like phrase3x7 word, a refund request"
    lines = [line("caller", i, i + 1, f"{said} {i}") for i in range(2000)]
    started = time.perf_counter()
    found = ca.categorize(lines, rules)
    took = time.perf_counter() - started
    print(f"categorize: 2000 lines x 2002 phrases in {took:.3f} s")
    assert [(c.name, c.count) for c in found] == [("cat3", 2000), ("refunds", 2000)]
    assert found[1].hits[0].phrase == "refund request"
    assert took < 1.0


def test_a_chat_has_no_talk_time_nor_non_talk_nor_interruptions() -> None:
    """Typed lines start and end at once: their talk figures are None, not 0 (a 0 would
    pull the voice calls' averages down in the reports)."""
    times = ca.CallTimes(T0, at(0), None, at(60), None)
    lines = [line("caller", 1, 1, "hello"), line("agent", 1, 1, "hi"), line("caller", 5, 5)]
    result = ca.analyze(lines, [], times, [change(0, "active", "new")], None, channel="chat")
    assert result.talk["caller"].talk_seconds is None and result.talk["caller"].turns == 2
    assert result.talk["agent"].talk_ratio is None and result.talk["agent"].turns == 1
    assert result.non_talk is None and result.interruptions == []


def test_dead_air_leaves_out_the_queue_and_the_hold() -> None:
    """Non-talk is dead air: nobody spoke while the caller was with the bot or an agent.
    The 20 s in the queue and the 15 s on hold are silence too, but not dead air."""
    times = ca.CallTimes(T0, at(0), at(10), at(80), None)
    changes = [
        change(0, "active", "new"),
        change(10, "queued", "active"),
        change(30, "bridged", "queued"),
        change(50, "held", "bridged"),
        change(65, "bridged", "held"),
    ]
    lines = [line("bot", 0, 0, "how can I help"), line("caller", 3, 9),
             line("agent", 32, 48), line("caller", 67, 70)]  # fmt: skip
    nt = ca.analyze(lines, [], times, changes, None).non_talk
    assert nt is not None
    # gaps: the bot's 4 words to 3 s; 9-32 (queue 10-30 out: 9-10 and 30-32 left);
    # 48-67 (hold 50-65 out: 48-50 and 65-67 left)
    bot_gap = 3 - 4 / ca.BOT_WORDS_PER_SECOND
    assert nt.total_seconds == pytest.approx(bot_gap + 1 + 2 + 2 + 2, abs=0.001)
    assert nt.longest_seconds == 2.0
    assert nt.excluded_seconds == 20 + 15
    pruned = ca.analyze(lines, [], times, [], None, agent_legs=[(at(30), None)]).non_talk
    assert pruned is not None and pruned.excluded_seconds == 20.0  # the queue, from times


def test_the_bots_estimated_overlaps_are_not_interruptions() -> None:
    """The bot's lines get lengths from their words (an estimate): a caller starting
    while the bot "still talks" is not reported as an interruption."""
    lines = [line("bot", 0, 0, "one two three four five six seven eight nine ten"),
             line("caller", 2, 5), line("agent", 6, 9), line("caller", 7, 10)]  # fmt: skip
    result = ca.analyze(lines, [], ca.CallTimes(T0, at(0), None, at(12), None), [], None)
    assert [(i.by, i.of) for i in result.interruptions] == [("caller", "agent")]


def test_abandoned_is_a_caller_leaving_a_person_before_they_answer() -> None:
    """Regression: a callback chosen, an engine stopping or lost, are not abandons; a
    caller hanging up while a directly dialled agent rings is; an outbound call placed
    to a queue is not an escalation."""

    def one(escalated: bool, end: str, *, direct: bool = False) -> CallFacts:
        return CallFacts(id=end, created_at=T0, queue="q", agent=None, escalated=escalated,
                         reached_agent=False, disposition=None, figures=None, direct=direct,
                         end_reason=end)  # fmt: skip

    calls = [
        one(True, "hangup"),
        one(True, "callback_requested"),
        one(True, "engine_shutdown"),
        one(True, "node_lost"),
        one(True, "engine_lost"),
        one(False, "hangup", direct=True),
    ]
    (row,), _ = report(calls, "queue")
    assert (row.escalated, row.abandoned, row.callbacks) == (5, 2, 1)
    assert not is_direct("outbound call placed by ann") and is_outbound(
        "outbound call placed by ann"
    )
    assert is_direct("dialled ann directly")


def test_chats_are_left_out_of_the_talk_and_non_talk_means() -> None:
    """Regression: a chat's None talk figures must not count as 0 in the means."""
    chat = Figures(30, (0.0, 30.0, 0.0, 0.0, 0.0), None, None, None, None, 0, 0, ())
    calls = [facts(1, None, None, 0, fig(60, 30, 10)), facts(2, None, None, 0, chat)]
    (row,), _ = report(calls, "queue")
    assert row.analysed == 2 and row.avg_handle_seconds == 45.0
    assert row.caller_talk_share == 0.75 and row.avg_non_talk_seconds == 4.0
    assert row.avg_longest_non_talk_seconds == 3.0


def test_the_per_call_csv_says_when_which_queue_and_agent_and_how_it_ended() -> None:
    rows, total = report([facts(1, "billing", "ann", 0, fig(60, 30, 10))], "call")
    table = list(csv.reader(io.StringIO(to_csv([*rows, total], "call"))))
    assert table[0][:7] == ["call", "started_at", "queue", "agent", "disposition",
                            "end_reason", "calls"]  # fmt: skip
    assert table[1][:4] == ["c1", "2026-11-27T10:01:00+00:00", "billing", "ann"]
    assert len(table[0]) == len(table[1]) == len(table[2])
