"""The call's analysis stages, events in and effects out (engine/analysis.py): the real
stages, redactor, fact extraction, knowledge base and escalation rules, with no engine,
socket or database. What the stages ask to be written is the in-memory sink; the
engine's own writes are covered by tests/test_durability.py and the end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from engine.analysis import (
    Analysis,
    Effect,
    Emit,
    Route,
    Say,
    Write,
    call_stages,
)
from engine.assist.knowledge import KnowledgeBase, load_articles
from engine.assist.redact import Redactor
from engine.callstate import SilenceCheck
from engine.config import Settings
from engine.escalation import CallEscalation, default_rules
from engine.events import (
    AsrFailed,
    AssistUpdated,
    DtmfReceived,
    EmotionUpdated,
    EscalationRaised,
    EventBase,
    SupervisorAlert,
    TranscriptFinal,
    TranscriptPartial,
    utcnow,
)
from engine.livecall import Call, Leg
from engine.metrics import Metrics
from engine.store.models import EmotionRow, EscalationRow, UtteranceRow
from media import events as me
from media.asr import ModelChoice
from media.asr.base import Word
from media.emotion import EmotionEstimate, Prosody

KB = Path(__file__).parent / "fixtures" / "kb"
CALLER, AGENT = "leg-caller", "leg-agent"
AGENT_JOINED = 30.0  # the agent's first audio, on the call's clock

E = TypeVar("E", bound=EventBase)


def new_call() -> Call:
    """An active call with the default rules: a caller leg and a bridged-in agent leg."""
    call = Call("call-1", "webrtc", "en", ModelChoice("en", None, None), None, utcnow())
    call.state = "active"
    call.legs = [Leg(CALLER, "caller", "webrtc"), Leg(AGENT, "agent", "webrtc", offset=30.0)]
    call.escalation = CallEscalation(default_rules())
    return call


def run_stages(
    events: Iterable[me.MediaEvent | SilenceCheck],
    call: Call,
    apply: Callable[[Call, Effect], None] = lambda call, effect: None,
) -> list[Effect]:
    """Every event through the call's stages, in order: the effects they ask for, each
    given to ``apply`` before the stages go on (as the engine applies them)."""
    settings = Settings(_env_file=None)
    knowledge = KnowledgeBase(load_articles(KB))
    analysis = Analysis(
        call_stages(
            redactor=Redactor(settings.redact_patterns),
            menu=settings.ivr_keys,
            products=settings.products,
            knowledge=lambda: knowledge,
            metrics=Metrics(),
        )
    )
    out = []
    for ev in events:
        for effect in analysis.run(call, ev):
            apply(call, effect)
            out.append(effect)
    return out


def published(out: list[Effect], kind: type[E]) -> list[E]:
    return [e.event for e in out if isinstance(e, Emit) and isinstance(e.event, kind)]


def written(out: list[Effect], kind: type[Any]) -> list[Any]:
    return [w.row for w in out if isinstance(w, Write) and isinstance(w.row, kind)]


def where(out: list[Effect], test: Any) -> int:
    """The position of the first effect that ``test`` accepts."""
    return next(i for i, e in enumerate(out) if test(e))


def final(leg: str, index: int, text: str, start: float = 1.0) -> me.TranscriptFinal:
    words = [Word(w, start + 0.3 * i, start + 0.3 * i + 0.25) for i, w in enumerate(text.split())]
    return me.TranscriptFinal(leg, index, text, start, start + 3.0, words, 0.2, False, "sure")


def emotion(leg: str, index: int, label: str, score: float = 0.9) -> me.EmotionEstimated:
    prosody = Prosody(2.0, 4.0, -22.0, 2.5, 0.1, 0.7)
    scores = {label: score, "neutral": 1.0 - score}
    estimate = EmotionEstimate(
        label, 0.6, -0.5, scores, -0.3, prosody, label, scores,
        confidence=score, evidence=("raised voice", "'ridiculous'"),
    )  # fmt: skip
    return me.EmotionEstimated(leg, index, 4.5, estimate)


def test_a_card_number_is_redacted_where_it_is_stored_and_published_and_stored_first() -> None:
    """A caller reads out their card: neither the utterance row nor the transcript event
    (text or word timings) may carry the digits, and the row is written before the event
    is published, so no client sees what a crash would lose."""
    out = run_stages([final(CALLER, 0, "my card number is 4111 1111 1111 1111.")], new_call())
    (row,) = written(out, UtteranceRow)
    (event,) = published(out, TranscriptFinal)
    assert row.text == event.text == "my card number is [card]."
    assert "4111" not in str(row.words) and "4111" not in event.model_dump_json()
    assert [w.word for w in event.words][-1] == "[card]"
    stored = where(out, lambda e: isinstance(e, Write) and e.row is row)
    told = where(out, lambda e: isinstance(e, Emit) and e.event is event)
    assert stored < told
    assert row.id == event.utterance_id and row.speaker == "caller"


def test_an_emotion_estimate_is_stored_then_published_with_confidence_and_evidence() -> None:
    call = new_call()
    out = run_stages([final(CALLER, 0, "this is ridiculous"), emotion(CALLER, 0, "angry")], call)
    (update,) = published(out, EmotionUpdated)
    (utterance,) = published(out, TranscriptFinal)
    assert update.label == "angry" and update.speaker == "caller"
    assert update.confidence == 0.9 and update.evidence == ["raised voice", "'ridiculous'"]
    assert update.utterance_id == utterance.utterance_id  # the estimate names its words
    (row,) = written(out, EmotionRow)
    assert row.features["confidence"] == 0.9
    assert row.features["evidence"] == ["raised voice", "'ridiculous'"]
    mood = where(out, lambda e: isinstance(e, Write) and e.values == {"emotion": "angry"})
    assert mood < where(out, lambda e: isinstance(e, Emit) and e.event is update)


def test_a_caller_asking_for_a_person_is_escalated_with_reason_and_evidence() -> None:
    """The decision is stored (with the call's new reason), told, and only then routed:
    the ACD must not ring an agent about an escalation nobody can read back."""
    call = new_call()
    out = run_stages([final(CALLER, 0, "I want to talk to a real person")], call)
    (utterance,) = published(out, TranscriptFinal)
    (route,) = [e for e in out if isinstance(e, Route)]
    assert route.to_person and route.decision.rule_id == "asks_for_person"
    assert "asked for a person" in route.decision.reason
    assert route.decision.evidence["utterance_ids"] == [utterance.utterance_id]
    assert call.escalation_reason == route.decision.reason
    (raised,) = published(out, EscalationRaised)
    assert raised.reason == route.decision.reason and raised.evidence == route.decision.evidence
    (write,) = [w for w in out if isinstance(w, Write) and isinstance(w.row, EscalationRow)]
    assert write.values is not None and write.values["escalation_reason"] == raised.reason
    order = [
        where(out, lambda e: isinstance(e, Emit) and e.event is utterance),
        where(out, lambda e: e is write),
        where(out, lambda e: isinstance(e, Emit) and e.event is raised),
        where(out, lambda e: e is route),
    ]
    assert order == sorted(order)


def test_partials_are_published_redacted_and_never_stored() -> None:
    out = run_stages([me.TranscriptPartial(CALLER, 0, "my card is 4111 11", 1.0)], new_call())
    assert not [e for e in out if isinstance(e, Write)]
    (partial,) = published(out, TranscriptPartial)
    assert "4111" not in partial.text and partial.speaker == "caller"


def test_facts_from_a_final_appear_in_the_assist_update_of_its_emotion() -> None:
    """Facts are shown to the agent once the utterance's estimate closes it; new once."""
    said = "my order number is 98765 and the router keeps dropping"
    call = new_call()
    out = run_stages(
        [
            final(CALLER, 0, said),
            emotion(CALLER, 0, "neutral", 0.8),
            final(CALLER, 1, "it happens every evening", 6.0),
            emotion(CALLER, 1, "neutral", 0.8),
        ],
        call,
    )
    first, second = published(out, AssistUpdated)
    (utterance, _) = published(out, TranscriptFinal)
    assert [(f.kind, f.value, f.utterance_id) for f in first.new_facts] == [
        ("order_number", "98765", utterance.utterance_id)
    ]
    assert [f.value for f in second.facts] == ["98765"] and second.new_facts == []
    assert "Given: order 98765" in first.summary
    assert first.suggestions, "the knowledge base has a router article"
    summary = where(out, lambda e: isinstance(e, Write) and e.values is not None
                    and e.values.get("summary") == first.summary)  # fmt: skip
    assert summary < where(out, lambda e: isinstance(e, Emit) and e.event is first)


def test_an_upset_caller_is_assisted_then_escalated_then_assisted_with_why() -> None:
    """Assist runs before the escalation it may cause (the offer that rings an agent
    carries the mood), and again once it gave the call its reason (the summary says
    why), as the call manager did before the stages."""
    call = new_call()
    before = run_stages([final(CALLER, 0, "this is ridiculous"), emotion(CALLER, 0, "angry")], call)
    assert not [e for e in before if isinstance(e, Route)]
    out = run_stages([final(CALLER, 1, "I am so fed up", 6.0), emotion(CALLER, 1, "angry")], call)
    after_final = where(out, lambda e: isinstance(e, Emit) and isinstance(e.event, EmotionUpdated))
    kinds = [
        type(e.event).__name__ if isinstance(e, Emit) else type(e).__name__
        for e in out[after_final + 1 :]
    ]
    assert kinds == [
        "Write", "AssistUpdated",  # assist: mood and summary, before any routing
        "Write", "EscalationRaised", "SupervisorAlert", "Route",  # upset_streak
        "Write", "AssistUpdated",  # the summary now says why
    ]  # fmt: skip
    early, late = published(out, AssistUpdated)
    assert "Escalated" not in early.summary and "Mood: angry" in early.summary
    assert late.summary.endswith(f"Escalated: {call.escalation_reason}.")
    (alert,) = published(out, SupervisorAlert)
    assert alert.state == "active"


def test_agent_words_are_on_the_call_clock_and_keys_choose_the_topic() -> None:
    """An agent's words are not the caller's (no facts) and sit on the call's clock; a
    menu key chooses the topic once and is answered; 0 asks for a person; silence
    checks reach the rules."""
    call = new_call()
    out = run_stages(
        [
            final(AGENT, 0, "your order number is 12345", 2.0),
            me.KeyPressed(CALLER, "1", 3.0),
            me.KeyPressed(CALLER, "2", 4.0),
            me.KeyPressed(CALLER, "0", 5.0),
            SilenceCheck(60.0),
        ],
        call,
    )
    (words,) = published(out, TranscriptFinal)
    assert words.speaker == "agent" and words.start == AGENT_JOINED + 2.0
    assert call.facts.facts == [] and call.caller_said == []
    keys = published(out, DtmfReceived)
    assert [(k.digit, k.menu) for k in keys] == [("1", "billing"), ("2", "technical_support"),
                                                  ("0", None)]  # fmt: skip
    assert call.topic == "billing"
    assert [e.text for e in out if isinstance(e, Say)] == ["billing. How can I help?"]
    topic = [e.values for e in out if isinstance(e, Write) and e.row is None]
    assert topic == [{"topic": "billing"}]
    routes = [(r.decision.rule_id, r.to_person) for r in out if isinstance(r, Route)]
    assert routes == [("pressed_zero", True), ("long_silence", False)]


def test_each_effect_is_applied_before_the_next_decision_is_judged() -> None:
    """One sentence fires two routing rules. The first routes the caller to a person
    (the engine queues the call); the second must see that: it does not route again,
    and the supervisor is told the call is queued, not active. A runner that judged
    every decision before applying any would tell the supervisor "active"."""

    def engine_queues(call: Call, effect: Effect) -> None:
        if isinstance(effect, Route) and effect.to_person:
            call.state = "queued"

    text = "I want to cancel my account, and I am calling my lawyer."
    out = run_stages([final(CALLER, 0, text)], new_call(), engine_queues)
    routes = [e for e in out if isinstance(e, Route)]
    assert [(r.decision.rule_id, r.to_person) for r in routes] == [
        ("cancel_account", True),
        ("complaint_or_legal", False),
    ]
    (alert,) = published(out, SupervisorAlert)
    assert alert.state == "queued"


def test_an_agents_emotion_is_stored_but_neither_assists_nor_escalates() -> None:
    """The agent's mood is kept for the record; the caller's mood, the assist and the
    rules are about the caller only (an angry-sounding agent does not escalate)."""
    call = new_call()
    out = run_stages(
        [final(AGENT, 0, "this is ridiculous"), emotion(AGENT, 0, "angry"),
         final(AGENT, 1, "this is absurd"), emotion(AGENT, 1, "angry")],
        call,
    )  # fmt: skip
    assert len(written(out, EmotionRow)) == 2
    assert [u.speaker for u in published(out, EmotionUpdated)] == ["agent", "agent"]
    assert not [w for w in out if isinstance(w, Write) and w.values and "emotion" in w.values]
    assert not published(out, AssistUpdated) and not published(out, EscalationRaised)
    assert call.mood is None and call.escalation_reason is None


def new_chat() -> Call:
    """A chat with an agent on it: both legs typed, no pipelines."""
    call = Call("chat-1", "chat", "en", ModelChoice("en", None, None), None, utcnow())
    call.state = "bridged"
    call.legs = [Leg(CALLER, "caller", "chat"), Leg(AGENT, "agent", "chat", offset=30.0)]
    call.escalation = CallEscalation(default_rules())
    return call


def typed(leg: str, index: int, text: str, at: float = 1.0) -> me.TranscriptFinal:
    return me.TranscriptFinal(leg, index, text, at, at, [], 0.0, False, "sure")


def test_a_chat_line_is_followed_by_its_emotion_read_from_the_line_as_told() -> None:
    """A chat has no pipeline to estimate its emotion: Feel does, after Redact, so the
    words judged are the redacted ones; the estimate names its line, is kept (with no
    voice measured) before it is told, and sets the call's mood, as a call's does."""
    call = new_chat()
    card = "4111 1111 1111 1111"
    out = run_stages(
        [typed(CALLER, 1, f"you charged my card {card} twice, you people are useless!")], call
    )
    (line,) = published(out, TranscriptFinal)
    (update,) = published(out, EmotionUpdated)
    assert update.utterance_id == line.utterance_id and update.speaker == "caller"
    assert update.label in ("angry", "frustrated") and update.arousal == 0.0
    assert any("useless" in e for e in update.evidence)
    assert "4111" not in update.model_dump_json()
    (row,) = written(out, EmotionRow)
    assert set(row.features) == {"confidence", "evidence"}  # no voice: no prosody
    assert where(out, lambda e: isinstance(e, Write) and e.row is row) < where(
        out, lambda e: isinstance(e, Emit) and e.event is update
    )
    assert call.mood == update.call_label
    # one desk refresh a line, from its estimate (not one from the line and one more)
    assert len(published(out, AssistUpdated)) == 1


def test_a_chat_agents_lines_are_judged_and_kept_but_neither_assist_nor_escalate() -> None:
    """As on a call, where the agent's leg has its own pipeline: the agent's emotion,
    from their own tracker, is kept; the caller's mood, the assist and the rules are
    about the caller only."""
    call = new_chat()
    out = run_stages(
        [typed(AGENT, 1, "this is ridiculous, you are useless"),
         typed(AGENT, 2, "I am fed up, this is the third time")],
        call,
    )  # fmt: skip
    assert len(written(out, EmotionRow)) == 2
    felt = published(out, EmotionUpdated)
    assert [u.speaker for u in felt] == ["agent", "agent"]
    assert all(u.label in ("angry", "frustrated") for u in felt)
    assert not [w for w in out if isinstance(w, Write) and w.values and "emotion" in w.values]
    assert not published(out, AssistUpdated) and not published(out, EscalationRaised)
    assert call.mood is None and call.escalation_reason is None
    caller, agent = call.legs
    assert caller.emotion is None and agent.emotion is not None  # each leg its own


def test_a_lost_recognizer_is_told_and_speech_starting_is_not() -> None:
    out = run_stages(
        [me.SpeechStarted(CALLER, 1.0),
         me.RecognitionFailed(CALLER, 3, "worker process died", recovered=True)],
        new_call(),
    )  # fmt: skip
    (failed,) = published(out, AsrFailed)
    assert failed.reason == "worker process died" and failed.recovered
    assert len(out) == 1  # nothing stored, nothing else told
