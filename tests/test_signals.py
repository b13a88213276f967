"""Signals a supervisor expects (issue 13): caller and agent talking over each other,
dead air, a caller getting louder. Unit tests on the sans-IO core (through
``CallEscalation`` and its rules), then the call manager's wiring, in-process."""

from __future__ import annotations

import asyncio
import json
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from engine.calls import CallManager
from engine.callstate import SilenceCheck
from engine.escalation import (
    CallEscalation,
    Decision,
    EmotionSample,
    Rule,
    RuleSet,
    Utterance,
    default_rules,
    load_rules,
)
from engine.events import utcnow
from engine.livecall import Call, Leg
from engine.signals import VOICE_AHEAD_SECONDS
from media import events as me
from media.asr import ModelChoice
from media.emotion import EmotionEstimate, Prosody
from tests.controlplane import bridged_phone_call
from tests.test_manager_limits import manager, wait_until


def rule(**values: object) -> Rule:
    return RuleSet.model_validate({"rules": [{"id": "x", **values}]}).rules[0]


def load_rules_text(tmp_path: Path, text: str) -> list[Rule]:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return load_rules(path)


def only(kind: str) -> list[Rule]:
    return [r for r in default_rules() if r.kind == kind]


def caller(n: int, start: float, end: float) -> Utterance:
    return Utterance(f"c{n}", "words", start, end)


def agent(n: int, start: float, end: float) -> Utterance:
    return Utterance(f"a{n}", "words", start, end)


def loud(n: int, db: float | None) -> EmotionSample:
    return EmotionSample(f"u{n}", 3.0 * n, "neutral", 0.0, {"neutral": 0.9}, db)


# -- talk_over ---------------------------------------------------------------------------


def cut_in(
    esc: CallEscalation, n: int, at: float, *, lead: float = 1.0, overlap: float = 1.0
) -> list[Decision]:
    """The agent speaks from ``at``; the caller cuts in ``lead`` s later and they overlap
    for ``overlap`` s. What the caller's final brought."""
    assert esc.observe_agent_utterance(agent(n, at, at + lead + overlap)) == []
    return esc.observe_utterance(caller(n, at + lead, at + lead + overlap + 2.0))


def test_talk_over_fires_at_the_third_interruption_with_who_cut_into_whom() -> None:
    esc = CallEscalation(only("talk_over"))
    assert cut_in(esc, 1, 10.0) == []
    assert cut_in(esc, 2, 20.0) == []
    (d,) = cut_in(esc, 3, 30.0)
    assert d.rule_id == "talk_over" and d.actions == ["alert_supervisor"]
    assert d.reason == "caller and agent talk over each other: 3 interruptions in 20 s"
    assert d.evidence["utterance_ids"] == ["a1", "c1", "a2", "c2", "a3", "c3"]
    first = d.evidence["interruptions"][0]
    assert first == {
        "by": "caller",
        "of": "agent",
        "utterance_ids": ["a1", "c1"],
        "at": 11.0,
        "overlap_seconds": 1.0,
    }
    assert d.at == 34.0  # the caller's last final ended then: known no earlier
    assert cut_in(esc, 4, 40.0) == []  # once per call


def test_a_caller_explaining_to_a_listening_agent_is_not_dead_air() -> None:
    """The default dead-air rule hears both sides: 33 s of the caller explaining while
    the agent listens fired it when it heard the agent alone (review finding)."""
    esc = CallEscalation(default_rules())
    esc.observe_phase("agent", 0.0)
    esc.observe_utterance(caller(1, 1.0, 34.0))
    assert esc.tick(34.0) == []
    (d,) = esc.tick(64.0)
    assert d.rule_id == "agent_dead_air" and d.evidence["last_speaker"] == "caller"


def test_backchannels_are_not_talk_over() -> None:
    """Three "mm-hmm"s of the agent inside the caller's turns fired talk_over (review
    finding): a short turn that ends inside the other's does not take the floor."""
    esc = CallEscalation(only("talk_over"))
    for n in (1, 2, 3):
        at = 10.0 * n
        assert esc.observe_utterance(caller(n, at, at + 6.0)) == []
        assert esc.observe_agent_utterance(agent(n, at + 2.0, at + 2.7)) == []
    longer = CallEscalation(only("talk_over"))  # the same, but the agent talks on
    found = []
    for n in (1, 2, 3):
        at = 10.0 * n
        longer.observe_utterance(caller(n, at, at + 6.0))
        found += longer.observe_agent_utterance(agent(n, at + 2.0, at + 7.0))
    assert [d.rule_id for d in found] == ["talk_over"]


def test_talk_over_edges() -> None:
    """Starting together (both answering a pause) is no interruption; a brush of under
    ``overlap_seconds`` is none either; three that span more than the window are not
    three within it."""
    together = CallEscalation(only("talk_over"))
    assert [cut_in(together, n, 10.0 * n, lead=0.29) for n in (1, 2, 3)] == [[], [], []]
    led = CallEscalation(only("talk_over"))
    assert [len(cut_in(led, n, 10.0 * n, lead=0.31)) for n in (1, 2, 3)] == [0, 0, 1]

    brushed = CallEscalation(only("talk_over"))
    assert [cut_in(brushed, n, 10.0 * n, overlap=0.49) for n in (1, 2, 3)] == [[], [], []]
    exact = CallEscalation(only("talk_over"))
    assert [len(cut_in(exact, n, 10.0 * n, overlap=0.5)) for n in (1, 2, 3)] == [0, 0, 1]

    spread = CallEscalation(only("talk_over"))
    assert [cut_in(spread, n, at) for n, at in ((1, 0.0), (2, 30.0), (3, 60.5))] == [[], [], []]
    within = CallEscalation(only("talk_over"))
    assert [len(cut_in(within, n, at)) for n, at in ((1, 0.0), (2, 30.0), (3, 60.0))] == [0, 0, 1]


def test_talk_over_found_whichever_final_arrives_first() -> None:
    """Each leg has its own recognizer: the agent's final can arrive before the final of
    the caller utterance it cut into. The interruption is the agent's all the same."""
    esc = CallEscalation([rule(kind="talk_over", count=1, actions=["alert_supervisor"])])
    assert esc.observe_agent_utterance(agent(1, 12.0, 15.0)) == []  # arrives first
    (d,) = esc.observe_utterance(caller(1, 10.0, 13.0))
    assert d.evidence["interruptions"] == [
        {"by": "agent", "of": "caller", "utterance_ids": ["c1", "a1"], "at": 12.0,
         "overlap_seconds": 1.0}
    ]  # fmt: skip


def test_turn_taking_is_not_talk_over() -> None:
    """A conversation that alternates, however briskly, interrupts nobody."""
    esc = CallEscalation(only("talk_over"))
    t = 0.0
    for n in range(20):
        assert esc.observe_utterance(caller(n, t, t + 2.0)) == []
        assert esc.observe_agent_utterance(agent(n, t + 2.1, t + 4.0)) == []
        t += 4.1
    assert esc.decisions == []


# -- silence, by side --------------------------------------------------------------------


def test_agent_dead_air_counts_only_while_bridged() -> None:
    """The bot's turn is not the agent's: 100 s with the bot raise no dead air (the
    caller's silence rule does that). Once bridged, 30 s without a word from either
    side do; the caller's silence rule no longer counts then."""
    esc = CallEscalation(default_rules())
    esc.observe_utterance(caller(1, 1.0, 2.0))
    esc.observe_phase("away", 3.0)  # queued
    assert esc.tick(100.0) == []  # nobody is judged while queued
    esc.observe_phase("agent", 100.0)
    assert esc.tick(129.9) == []
    (d,) = esc.tick(130.0)
    assert d.rule_id == "agent_dead_air" and d.actions == ["alert_supervisor"]
    assert d.reason == "dead air: nobody spoke: 30 s"
    assert d.evidence == {
        "side": "both",
        "silent_since": 100.0,
        "last_speaker": None,
        "utterance_ids": [],
    }
    assert esc.tick(200.0) == []  # once per call; long_silence never: the bot is gone


def test_dead_air_runs_from_the_agents_last_words_and_restarts_after_hold() -> None:
    agent_side = rule(kind="silence", side="agent", seconds=30, actions=["alert_supervisor"])
    esc = CallEscalation([*only("silence")[:1], agent_side])  # long_silence, the agent's
    esc.observe_phase("agent", 10.0)
    esc.observe_agent_utterance(agent(1, 12.0, 15.0))
    esc.observe_utterance(caller(1, 16.0, 40.0))  # the caller talking is not the agent
    assert esc.tick(44.9) == []
    esc.observe_phase("away", 44.9)  # on hold: the agent is not heard
    assert esc.tick(80.0) == []
    esc.observe_phase("agent", 80.0)  # resumed
    assert esc.tick(109.0) == []
    (d,) = esc.tick(110.0)
    assert d.evidence["silent_since"] == 80.0

    esc = CallEscalation([*only("silence")[:1], agent_side])
    esc.observe_phase("agent", 10.0)
    esc.observe_agent_utterance(agent(1, 12.0, 15.0))
    (d,) = esc.tick(45.0)
    assert d.evidence == {
        "side": "agent",
        "silent_since": 15.0,
        "last_speaker": "agent",
        "utterance_ids": ["a1"],
    }


def test_silence_of_both_sides() -> None:
    esc = CallEscalation(
        [rule(kind="silence", side="both", seconds=10, actions=["alert_supervisor"])]
    )
    assert esc.tick(50.0) == []  # the bot's call: "both" means caller and agent
    esc.observe_phase("agent", 50.0)
    esc.observe_agent_utterance(agent(1, 51.0, 53.0))
    esc.observe_utterance(caller(1, 54.0, 58.0))
    assert esc.tick(67.9) == []
    (d,) = esc.tick(68.0)
    assert d.evidence == {
        "side": "both",
        "silent_since": 58.0,
        "last_speaker": "caller",
        "utterance_ids": ["c1"],
    }


def test_a_caller_still_talking_while_the_recognizer_lags_is_not_silent() -> None:
    """The caller's last final ended at 5 s; they have been talking since 6 s, but the
    recognizer (busy node) has not given that utterance back. The VAD heard them until
    11.8 s: at 12 s that is not 7 s of silence (it was, by the finals alone)."""
    esc = CallEscalation([rule(kind="silence", seconds=3, actions=["route_to_human"])])
    esc.observe_utterance(caller(1, 2.0, 5.0))
    assert esc.tick(12.0, {"caller": 11.8}) == []
    (d,) = esc.tick(14.9, {"caller": 11.8})
    assert d.evidence == {
        "side": "caller",
        "silent_since": 11.8,
        "last_speaker": "caller",
        "utterance_ids": [],  # not transcribed yet
    }
    # sound the recognizer makes nothing of (music on an open line) goes on for ever
    # with no final: past VOICE_AHEAD_SECONDS from the last final it is not speech owed
    esc = CallEscalation([rule(kind="silence", seconds=3, actions=["route_to_human"])])
    esc.observe_utterance(caller(1, 2.0, 5.0))
    assert esc.tick(24.0, {"caller": 5.0 + VOICE_AHEAD_SECONDS}) == []
    (d,) = esc.tick(26.0, {"caller": 25.9})
    assert d.evidence["silent_since"] == 5.0 and d.evidence["utterance_ids"] == ["c1"]
    # voice from before the phase began does not count for the new phase
    esc = CallEscalation(
        [rule(kind="silence", side="agent", seconds=3, actions=["alert_supervisor"])]
    )
    esc.observe_phase("agent", 20.0)
    (d,) = esc.tick(23.0, {"agent": 19.0})
    assert d.evidence["silent_since"] == 20.0


def test_the_silence_check_carries_each_sides_latest_voice_on_the_call_clock() -> None:
    call = Call("c", "sip", "en", ModelChoice("en", None, None), None, utcnow())
    caller_leg, gone, agent_leg = (
        Leg("l1", "caller", "sip"),
        Leg("l2", "agent", "sip"),
        Leg("l3", "agent", "sip", offset=30.0),
    )
    gone.left = True  # transferred away: its voice is not this call's any more
    caller_leg.pipeline = types.SimpleNamespace(voiced_until=41.5)  # type: ignore[assignment]
    gone.pipeline = types.SimpleNamespace(voiced_until=50.0)  # type: ignore[assignment]
    agent_leg.pipeline = types.SimpleNamespace(voiced_until=12.0)  # type: ignore[assignment]
    call.legs = [caller_leg, gone, agent_leg]
    assert dict(call.voiced()) == {"caller": 41.5, "agent": 42.0}
    agent_leg.pipeline = types.SimpleNamespace(voiced_until=0.0)  # type: ignore[assignment]
    assert dict(call.voiced()) == {"caller": 41.5}  # not heard yet: left out


def test_an_agents_clock_keeps_the_calls_time_through_hold_and_mute() -> None:
    """An agent's audio is not analysed while held or muted, so their leg's own clock
    stood still while the call's went on: after a 40 s mute their words were placed 40 s
    early on the call's clock, and dead air was read from the mute at once. The skipped
    time now goes into the leg's offset."""
    call = Call("c", "sip", "en", ModelChoice("en", None, None), None, utcnow())
    agent_leg = Leg("l2", "agent", "webrtc", offset=30.0)
    call.legs = [Leg("l1", "caller", "sip"), agent_leg]
    pushed: list[int] = []
    pipeline = types.SimpleNamespace(push_pcm=lambda pcm, rate, ch: pushed.append(pcm.size) or 50)
    second = np.zeros(2 * 48000, np.int16)  # 1 s of 48 kHz stereo, interleaved

    def analyse() -> int:
        return CallManager._analyse(call, agent_leg, pipeline, second, 48000, 2)  # type: ignore[arg-type]

    call.state = "bridged"
    assert analyse() == 50 and pushed == [second.size] and agent_leg.offset == 30.0
    call.agent_muted = True
    assert [analyse() for _ in range(40)] == [0] * 40
    assert agent_leg.offset == 70.0 and len(pushed) == 1
    call.agent_muted, call.state = False, "held"
    assert analyse() == 0 and agent_leg.offset == 71.0
    call.state = "bridged"
    assert analyse() == 50 and agent_leg.offset == 71.0
    agent_leg.left = True  # transferred away: its audio is nobody's now
    assert analyse() == 0 and agent_leg.offset == 71.0


def test_silence_side_defaults_to_the_caller(tmp_path: Path) -> None:
    (r,) = load_rules_text(
        tmp_path, '[[rules]]\nid = "q"\nkind = "silence"\nactions = ["route_to_human"]\n'
    )
    assert r.side == "caller"
    esc = CallEscalation([r])
    esc.observe_utterance(caller(1, 1.0, 5.5))
    (d,) = esc.tick(25.5)
    assert d.evidence["silent_since"] == 5.5 and d.evidence["side"] == "caller"
    esc = CallEscalation([r])
    esc.observe_phase("agent", 1.0)
    assert esc.tick(100.0) == []  # with an agent, the caller's silence is theirs to handle


# -- loudness_rising ---------------------------------------------------------------------


def test_loudness_rising_fires_on_a_rise_of_six_db_over_three_utterances() -> None:
    esc = CallEscalation(only("loudness_rising"))
    assert esc.observe_emotion(loud(1, -30.0)) == []
    assert esc.observe_emotion(loud(2, -27.0)) == []
    (d,) = esc.observe_emotion(loud(3, -24.0))
    assert d.rule_id == "loudness_rising"
    assert d.actions == ["raise_priority", "alert_supervisor"] and esc.priority == 1
    assert d.reason == "caller getting louder: +6 dB over 3 utterances"
    assert d.evidence == {
        "utterance_ids": ["u1", "u2", "u3"],
        "energy_db": [-30.0, -27.0, -24.0],
        "rise_db": 6.0,
    }
    assert d.at == 9.0
    assert esc.observe_emotion(loud(4, -10.0)) == []  # once per call


@pytest.mark.parametrize(
    ("levels", "fires"),
    [
        ([-30.0, -27.0, -24.5], False),  # 5.5 dB: not enough
        ([-30.0, -22.0, -23.0], True),  # a 1 dB dip is still a rise
        ([-30.0, -21.0, -22.5], False),  # a 1.5 dB fall is not
        ([-24.0, -27.0, -30.0], False),  # getting quieter
        ([-40.0, -20.0], False),  # two utterances are not three
        ([-20.0, -40.0, -37.0, -34.0], True),  # the last three count
    ],
)
def test_loudness_rising_edges(levels: list[float], fires: bool) -> None:
    esc = CallEscalation(only("loudness_rising"))
    for n, db in enumerate(levels):
        esc.observe_emotion(loud(n, db))
    assert bool(esc.decisions) == fires


def test_utterances_without_a_voiced_loudness_are_skipped() -> None:
    esc = CallEscalation(only("loudness_rising"))
    for n, db in enumerate([-30.0, None, -27.0, None, -24.0]):
        esc.observe_emotion(loud(n, db))
    (d,) = esc.decisions
    assert d.evidence["utterance_ids"] == ["u0", "u2", "u4"]


# -- rules -------------------------------------------------------------------------------


def test_defaults_are_appended_and_parameters_have_their_defaults() -> None:
    ids = [r.id for r in default_rules()]
    assert ids[-3:] == ["talk_over", "agent_dead_air", "loudness_rising"]
    talk, dead, louder = default_rules()[-3:]
    assert (talk.count, talk.overlap_seconds, talk.window_seconds) == (3, 0.5, 60.0)
    assert (dead.kind, dead.side, dead.seconds) == ("silence", "both", 30.0)
    assert (louder.count, louder.db) == (3, 6.0)
    # count's default stays 2 for the upset streak, and a count given is kept
    assert rule(kind="emotion_streak", actions=["alert_supervisor"]).count == 2
    assert rule(kind="talk_over", count=2, actions=["alert_supervisor"]).count == 2
    # a rule read back from the API or the store keeps what it says
    again = Rule.model_validate(louder.model_dump(mode="json"))
    assert again == louder


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('kind = "silence"\nside = "bot"\n', "side"),
        ('kind = "talk_over"\noverlap_seconds = 0\n', "overlap_seconds"),
        ('kind = "talk_over"\nwindow_seconds = -1\n', "window_seconds"),
        ('kind = "talk_over"\ncount = 0\n', "count"),
        ('kind = "loudness_rising"\ndb = 0\n', "db"),
        ('kind = "loudness_rising"\ndb = nan\n', "db"),
        ('kind = "loudness_rising"\ncount = 1\n', "a rise needs a count of 2"),
    ],
)
def test_bad_signal_parameters_are_rejected_with_the_reason(
    tmp_path: Path, body: str, message: str
) -> None:
    text = f'[[rules]]\nid = "x"\nactions = ["alert_supervisor"]\n{body}'
    with pytest.raises(ValidationError, match=message):
        load_rules_text(tmp_path, text)


# -- the call manager's wiring, in-process -----------------------------------------------


def raised(m: CallManager, call: Call) -> list[dict[str, Any]]:
    bodies = [json.loads(e.body) for e in m.bus.replay(call.id)]
    return [b for b in bodies if b["type"] in ("escalation.raised", "supervisor.alert")]


def rules_fired(m: CallManager, call: Call) -> list[str]:
    return [str(b["rule"]) for b in raised(m, call) if b["type"] == "escalation.raised"]


def final(leg: Leg, index: int, start: float, end: float) -> me.TranscriptFinal:
    return me.TranscriptFinal(leg.id, index, "words", start, end, [], 0.1, False, "sure")


def emotion(leg: Leg, index: int, energy: float, *, voiced: bool = True) -> me.EmotionEstimated:
    prosody = Prosody(0.0 if voiced else None, 2.0, energy, None, 0.1, 0.8 if voiced else 0.0)
    scores = {"neutral": 0.9}
    estimate = EmotionEstimate("neutral", 0.0, 0.0, scores, 0.0, prosody, "neutral", scores)
    return me.EmotionEstimated(leg.id, index, 3.0 * index + 2.0, estimate)


async def test_calls_feed_agent_finals_and_caller_loudness_to_the_rules(tmp_path: Path) -> None:
    """Agent-leg finals reach the talk-over rule (before, only the caller's finals were
    judged), and the caller's voiced loudness reaches the loudness rule; an utterance
    with nothing voiced (prosody then measures the whole stretch, noise included) is
    no loudness. Each decision is stored, streamed and alerts a supervisor."""
    async with manager(tmp_path, media_timeout=60.0) as m:
        call, agent_leg = await bridged_phone_call(m)
        caller_leg = call.caller_leg()
        for n in range(3):
            t = 10.0 * n
            m._enqueue(call, final(agent_leg, n, t, t + 2.0))
            m._enqueue(call, final(caller_leg, n, t + 1.0, t + 4.0))
        await wait_until(lambda: "talk_over" in rules_fired(m, call), 5, "no talk_over")
        for n, (db, voiced) in enumerate([(-30, True), (-27, True), (-10, False), (-24, True)]):
            m._enqueue(call, final(caller_leg, 10 + n, 40.0 + 3 * n, 41.0 + 3 * n))
            m._enqueue(call, emotion(caller_leg, 10 + n, db, voiced=voiced))
        await wait_until(lambda: "loudness_rising" in rules_fired(m, call), 5, "not louder")
        events = raised(m, call)
        record = await m.store.get_call(call.id)
    assert rules_fired(m, call) == ["talk_over", "loudness_rising"]
    talk = next(e for e in events if e.get("rule") == "talk_over")
    assert talk["evidence"]["interruptions"][0]["by"] == "caller"
    louder = next(e for e in events if e.get("rule") == "loudness_rising")
    assert louder["evidence"]["energy_db"] == [-30.0, -27.0, -24.0]
    assert [e["type"] for e in events].count("supervisor.alert") == 2
    assert record is not None
    assert {e.rule for e in record.escalations} == {"talk_over", "loudness_rising"}


async def test_the_silence_clock_ticks_while_bridged_and_hold_stops_dead_air(
    tmp_path: Path,
) -> None:
    """Silence checks were queued only while the bot had the call, so dead air with an
    agent could never be noticed. They now tick while bridged too; a hold is not dead
    air, and the agent's clock starts again when the call resumes, at the caller's now."""
    async with manager(tmp_path, media_timeout=60.0) as m:
        call, _agent_leg = await bridged_phone_call(m)
        # a stand-in for the caller's pipeline: the clock reads only how much media came in
        media = types.SimpleNamespace(seconds_in=0.0, voiced_until=0.0)
        call.caller_leg().pipeline = media  # type: ignore[assignment]
        task = asyncio.create_task(m._silence_clock(call, media))  # type: ignore[arg-type]
        try:
            await m._transition(call, "hold")  # as hold() makes it, without its prompt
            media.seconds_in = 100.0  # 80 s on hold
            call.events.put_nowait(SilenceCheck(100.0))
            await asyncio.sleep(0.5)
            assert rules_fired(m, call) == []
            await m._transition(call, "resume")  # at 100 s
            media.seconds_in = 129.0
            await asyncio.sleep(1.5)
            assert rules_fired(m, call) == []
            media.seconds_in = 130.0
            await wait_until(lambda: rules_fired(m, call) == ["agent_dead_air"], 5, "no dead air")
        finally:
            task.cancel()
            call.caller_leg().pipeline = None
        (esc,) = [e for e in raised(m, call) if e["type"] == "escalation.raised"]
    assert esc["evidence"] == {
        "side": "both", "silent_since": 100.0, "last_speaker": None, "utterance_ids": []
    }  # fmt: skip
