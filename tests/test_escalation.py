from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.escalation import (
    DEFAULT_RULES,
    CallEscalation,
    EmotionSample,
    Rule,
    RuleSet,
    Utterance,
    default_rules,
    load_rules,
)
from tests import speech, styles


def said(n: int, text: str) -> Utterance:
    return Utterance(f"u{n}", text, start=3.0 * n, end=3.0 * n + 2.5)


def phrase_rules() -> list[Rule]:
    return [r for r in default_rules() if r.kind == "phrase"]


def felt(n: int, label: str, trend: float = 0.0) -> EmotionSample:
    return EmotionSample(f"u{n}", 3.0 * n + 2.5, label, trend, {label: 0.9})


@pytest.mark.parametrize(
    "text",
    ["I want to talk to a real person", "Can I speak to an agent please", "Get me a supervisor",
     "representative", "Let me talk to a human!", "Agent.", "A supervisor, please.",
     "Is there a representative available at all today?",
     "Could you put me through to your manager straight away?",
     "I'd like a human on the line, not this machine.", "A real agent, now!",
     "I want a manager.", "Is there a supervisor I can talk to?"],
)  # fmt: skip
def test_asking_for_a_person(text: str) -> None:
    esc = CallEscalation(default_rules())
    (d,) = esc.observe_utterance(said(1, text))
    assert d.rule_id == "asks_for_person"
    assert d.routes_to_human and d.priority == 2 and esc.priority == 2
    assert d.evidence["utterance_ids"] == ["u1"]
    assert d.reason.startswith("caller asked for a person: '")


@pytest.mark.parametrize(
    "text", ["I am a travel agency owner", "humanity", "my personal details", "I have a question"]
)
def test_no_false_alarm_on_similar_words(text: str) -> None:
    assert CallEscalation(default_rules()).observe_utterance(said(1, text)) == []


@pytest.mark.parametrize(
    "text",
    ["Your agent was brilliant yesterday, thank you.",
     "My manager told me to ring you about the invoice.",
     "The operator cut me off halfway through the call.",
     "The agent said the engineer would come on Tuesday.",
     "Your agent was brilliant.", "My manager is away.", "The agent hung up.",
     "The agent didn't give me a refund.", "Please tell your agent thanks."],
)  # fmt: skip
def test_a_person_told_of_is_not_asked_for(text: str) -> None:
    # found on the held-out emotion set: "Your agent was brilliant ..." went to a person
    assert CallEscalation(default_rules()).observe_utterance(said(1, text)) == []
    # a rule of one's own matches the word wherever it is, unless it says ``asks``
    mine = Rule(id="agent_named", kind="phrase", phrases=["agent", "manager", "operator"],
                actions=["alert_supervisor"])  # fmt: skip
    assert len(CallEscalation([mine]).observe_utterance(said(1, text))) == 1
    asking = mine.model_copy(update={"asks": True})
    assert CallEscalation([asking]).observe_utterance(said(1, text)) == []


def test_a_person_asked_for_in_an_alternative_reading_counts() -> None:
    esc = CallEscalation(default_rules())
    heard = Utterance(
        "u1", "your agent was really great yesterday", 0.0, 2.0, alternatives=("get me an agent",)
    )
    (d,) = esc.observe_utterance(heard)
    assert d.rule_id == "asks_for_person" and d.evidence["alternative"] == 0


def test_cancel_targets_retention() -> None:
    (d,) = CallEscalation(default_rules()).observe_utterance(said(1, "I want to cancel my account"))
    assert (d.rule_id, d.skill) == ("cancel_account", "retention")
    assert d.routes_to_human


def test_complaint_alerts_supervisor() -> None:
    (d,) = CallEscalation(default_rules()).observe_utterance(said(1, "I will call my lawyer"))
    assert "alert_supervisor" in d.actions


def test_upset_streak_needs_consecutive_utterances() -> None:
    esc = CallEscalation(default_rules())
    assert esc.observe_emotion(felt(1, "angry")) == []
    assert esc.observe_emotion(felt(2, "neutral")) == []
    assert esc.observe_emotion(felt(3, "frustrated")) == []
    (d,) = esc.observe_emotion(felt(4, "angry"))
    assert d.rule_id == "upset_streak"
    assert d.evidence["utterance_ids"] == ["u3", "u4"]
    assert d.evidence["labels"] == ["frustrated", "angry"]


def test_an_utterance_likely_enough_upset_counts_in_a_streak() -> None:
    """Labelled neutral at 45 %, but 55 % frustrated or angry: upset, for the streak; so
    is one 25 % upset next to an angry one (the default streak counts from 20 %,
    bench/escalation_sim.py), and one 15 % upset is not."""
    torn = {"neutral": 0.45, "positive": 0.0, "frustrated": 0.3, "angry": 0.25}
    unsure = {"neutral": 0.75, "positive": 0.0, "frustrated": 0.15, "angry": 0.1}
    calmer = {"neutral": 0.85, "positive": 0.0, "frustrated": 0.1, "angry": 0.05}
    esc = CallEscalation(default_rules())
    assert esc.observe_emotion(felt(1, "angry")) == []
    (d,) = esc.observe_emotion(EmotionSample("u2", 2.0, "neutral", -0.3, torn))
    assert d.rule_id == "upset_streak" and d.evidence["utterance_ids"] == ["u1", "u2"]
    esc = CallEscalation(default_rules())
    assert esc.observe_emotion(felt(1, "angry")) == []
    (d,) = esc.observe_emotion(EmotionSample("u2", 2.0, "neutral", -0.3, unsure))
    assert d.rule_id == "upset_streak"
    esc = CallEscalation(default_rules())
    assert esc.observe_emotion(felt(1, "angry")) == []
    assert esc.observe_emotion(EmotionSample("u2", 2.0, "neutral", -0.3, calmer)) == []


def test_a_streak_of_the_barely_upset_needs_one_surely_upset() -> None:
    """Two utterances 30-40 % upset, neither labelled so: no streak (peak_probability
    0.5); the same next to one labelled frustrated, or one 50 % upset, is."""
    low = {"neutral": 0.6, "positive": 0.0, "frustrated": 0.25, "angry": 0.15}
    half = {"neutral": 0.5, "positive": 0.0, "frustrated": 0.3, "angry": 0.2}
    esc = CallEscalation(default_rules())
    for n in range(1, 5):
        assert esc.observe_emotion(EmotionSample(f"u{n}", n, "neutral", -0.3, low)) == []
    (d,) = esc.observe_emotion(felt(5, "frustrated"))
    assert d.rule_id == "upset_streak" and d.evidence["utterance_ids"] == ["u4", "u5"]
    assert d.reason.endswith(": neutral, frustrated")
    esc = CallEscalation(default_rules())
    assert esc.observe_emotion(EmotionSample("u1", 1, "neutral", -0.3, low)) == []
    (d,) = esc.observe_emotion(EmotionSample("u2", 2, "neutral", -0.3, half))
    assert d.rule_id == "upset_streak"
    # without a peak, the rule is two at the bar, as before
    rule = next(r for r in default_rules() if r.id == "upset_streak")
    esc = CallEscalation([rule.model_copy(update={"peak_probability": None})])
    assert esc.observe_emotion(EmotionSample("u1", 1, "neutral", -0.3, low)) == []
    assert len(esc.observe_emotion(EmotionSample("u2", 2, "neutral", -0.3, low))) == 1


def test_the_parts_of_a_split_sentence_are_one_utterance_of_a_streak() -> None:
    """An angry sentence split at its comma is one upset utterance, not a streak."""
    esc = CallEscalation(default_rules())
    assert esc.observe_emotion(felt(1, "angry")) == []
    rest = EmotionSample("u1b", 4.0, "angry", 0.0, {"angry": 0.9}, continues=True)
    assert esc.observe_emotion(rest) == [] and esc.emotions_seen == 1
    (d,) = esc.observe_emotion(felt(2, "frustrated"))
    assert d.rule_id == "upset_streak" and d.evidence["utterance_ids"] == ["u1b", "u2"]


def test_trend_rule_waits_for_enough_utterances() -> None:
    esc = CallEscalation([r for r in default_rules() if r.kind == "trend_below"])
    assert esc.observe_emotion(felt(1, "neutral", -0.9)) == []
    assert esc.observe_emotion(felt(2, "neutral", -0.9)) == []
    (d,) = esc.observe_emotion(felt(3, "neutral", -0.5))
    assert d.rule_id == "mood_falling" and d.evidence["trend"] == -0.5


def test_silence_and_dtmf() -> None:
    esc = CallEscalation(default_rules())
    esc.observe_utterance(said(1, "hello"))  # speech ends at 5.5 s
    assert esc.tick(20.0) == []
    (d,) = esc.tick(25.6)
    assert d.rule_id == "long_silence" and d.evidence["silent_since"] == 5.5
    assert esc.observe_dtmf("5", 30) == []
    assert esc.observe_dtmf("0", 31)[0].rule_id == "pressed_zero"


def test_each_rule_fires_once_per_call() -> None:
    esc = CallEscalation(default_rules())
    assert len(esc.observe_utterance(said(1, "agent"))) == 1
    assert esc.observe_utterance(said(2, "agent agent")) == []
    assert [d.rule_id for d in esc.decisions] == ["asks_for_person"]


def test_scripted_conversations() -> None:
    """The calm script escalates nothing; the angry one escalates for the reasons a
    supervisor would name: repeated anger, then the request for a person."""
    labels = {"calm": ["positive", "neutral", "neutral", "neutral", "positive"],
              "angry": ["frustrated", "frustrated", "frustrated", "angry", "neutral"]}  # fmt: skip
    fired = {}
    for name, script in (("calm", speech.CALM_SCRIPT), ("angry", speech.ANGRY_SCRIPT)):
        esc = CallEscalation(default_rules())
        trend = 0.0
        for n, (text, label) in enumerate(zip(script, labels[name], strict=True)):
            esc.observe_utterance(said(n, text))
            trend = 0.6 * trend + 0.4 * (-0.6 if label in {"angry", "frustrated"} else 0.2)
            esc.observe_emotion(felt(n, label, trend))
        fired[name] = [d.rule_id for d in esc.decisions]
    assert fired["calm"] == []
    assert fired["angry"] == ["upset_streak", "mood_falling", "asks_for_person"]


def test_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        '[[rules]]\nid = "refund"\nkind = "phrase"\nphrases = ["Refund"]\n'
        'actions = ["target_skill"]\nskill = "billing"\n'
    )
    (rule,) = load_rules(path)
    assert rule.phrases == ["refund"]
    (d,) = CallEscalation([rule]).observe_utterance(said(1, "I want a refund now"))
    assert d.skill == "billing"
    # no file: the built-in set (a count here conflicted with every new default rule)
    assert [r.id for r in load_rules(None)] == [r["id"] for r in DEFAULT_RULES]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[rules]]\nid = "x"\nkind = "phrase"\nactions = ["route_to_human"]\n', "needs phrases"),
        ('[[rules]]\nid = "x"\nkind = "dtmf"\nactions = ["target_skill"]\n', "needs skill"),
        ('[[rules]]\nid = "x"\nkind = "psychic"\nactions = ["route_to_human"]\n', "kind"),
        ('[[rules]]\nid = "x"\nkind = "dtmf"\nactions = ["page_ceo"]\n', "actions"),
        ('[[rules]]\nid = "x"\nkind = "dtmf"\nactions = ["route_to_human"]\n' * 2, "unique"),
        (
            '[[rules]]\nid = "x"\nkind = "emotion_streak"\nactions = ["route_to_human"]\n'
            "min_probability = 0.6\npeak_probability = 0.4\n",
            "peak_probability below",
        ),
    ],
)
def test_bad_rules_are_rejected_with_the_reason(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(toml)
    with pytest.raises(ValidationError, match=message):
        load_rules(path)


@pytest.mark.parametrize(
    ("text", "rule_id", "phrase"),
    styles.cases(
        ("i want to talk to a real person", "I want to talk to a real person!",
         "asks_for_person", "real person"),
        ("uh yeah cancel my account", "Uh, yeah. Cancel my account.",
         "cancel_account", "cancel my account"),
        ("i'll call my lawyer", "I’ll call my LAWYER.", "complaint_or_legal", "lawyer"),
        ("can i speak to a supervisor", "Can I speak to a SUPERVISOR?",
         "asks_for_person", "supervisor"),
        ("i said agent", "I said 'agent'.", "asks_for_person", "agent"),
        ("i want to talk to a real person", "I want to talk to a real-person.",
         "asks_for_person", "real person"),
    ),
)  # fmt: skip
def test_phrases_match_in_both_styles(text: str, rule_id: str, phrase: str) -> None:
    """A neural recognizer writes "I said 'agent'.": the quotes glued to the word hid it
    from the rule, so the caller who asked for a person was not routed to one. (The
    phrase rules alone: "I said" also fires ``repeats_request``.)"""
    (d,) = CallEscalation(phrase_rules()).observe_utterance(said(1, text))
    assert (d.rule_id, d.evidence["phrase"]) == (rule_id, phrase)
    assert d.evidence["text"] == text  # the caller's words as written, not our normal form


@pytest.mark.parametrize(
    "text",
    styles.cases(
        ("i am a travel agency owner", "I'm a travel-agency owner."),
        ("humanity", "Humanity?"),
        ("my personal details", "My personal details."),
        ("my agent's name is bob", "My agent’s name is Bob."),
    ),
)  # fmt: skip
def test_no_false_alarm_in_both_styles(text: str) -> None:
    """ "agent’s" (typographic apostrophe) split into "agent s" and matched "agent", while
    the same words with "'" did not: both styles must read the same."""
    assert CallEscalation(default_rules()).observe_utterance(said(1, text)) == []


def test_a_phrase_does_not_run_over_a_full_stop() -> None:
    """ "Don't cancel. My account is fine." matched "cancel my account" across the full
    stop: with punctuation we know the sentence ended, so it is not a request."""
    esc = CallEscalation(default_rules())
    assert esc.observe_utterance(said(1, "Don't cancel. My account is fine.")) == []
    assert esc.observe_utterance(said(2, "No, cancel my account, please.")) != []


@pytest.mark.parametrize(
    ("text", "phrase"),
    styles.cases(
        ("i'm done", "I’m done with this.", "i'm done"),
        ("i'm done", "I'm done!", "i’m done"),
        ("i have called three times", "I've called 3 times!", "called three times"),
        ("i have called three times", "I've called 3 times!", "called 3 times"),
        ("i never got the e mail", "I never got the e-mail.", "e-mail"),
    ),
)
def test_configured_phrases_match_in_both_styles(text: str, phrase: str) -> None:
    """A configured phrase is read the way a transcript is: "i'm done" missed "I’m done"
    (typographic apostrophe), "called three times" missed "I've called 3 times!" (digits),
    and "e-mail" could never match at all (the text side split it into "e mail")."""
    rule = RuleSet.model_validate(
        {
            "rules": [
                {"id": "x", "kind": "phrase", "phrases": [phrase], "actions": ["alert_supervisor"]}
            ]
        }
    ).rules[0]
    (d,) = CallEscalation([rule]).observe_utterance(said(1, text))
    assert d.evidence["phrase"] == " ".join(phrase.lower().split())


def test_a_phrase_of_punctuation_only_is_no_phrase() -> None:
    """A phrase with no words in it would match every utterance."""
    with pytest.raises(ValidationError, match="needs phrases"):
        RuleSet.model_validate(
            {
                "rules": [
                    {"id": "x", "kind": "phrase", "phrases": ["!!!"], "actions": ["route_to_human"]}
                ]
            }
        )
