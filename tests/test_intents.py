"""Escalation phrases as a recognizer hears them, and a caller repeating a request
(issue 13): misheard requests must still fire, negated and everyday sentences must not."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine.escalation import CallEscalation, Decision, Rule, RuleSet, Utterance, default_rules
from engine.intents import PhraseIndex, fuzzy_threshold, read
from engine.repetition import marker
from tests import styles

PERSON, CANCEL, LEGAL = "asks_for_person", "cancel_account", "complaint_or_legal"


def said(n: int, text: str, *alternatives: str) -> Utterance:
    return Utterance(f"u{n}", text, 3.0 * n, 3.0 * n + 2.5, tuple(alternatives))


def phrase_rules() -> list[Rule]:
    return [r for r in default_rules() if r.kind == "phrase"]


def fired(text: str, *alternatives: str) -> list[Decision]:
    return CallEscalation(phrase_rules()).observe_utterance(said(1, text, *alternatives))


def rule(**fields: object) -> Rule:
    return RuleSet.model_validate({"rules": [{"id": "x", **fields}]}).rules[0]


# -- each default phrase rule, misheard ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match", "heard", "phrase"),
    styles.cases(
        ("council my account", "Council my account.", "phonetic", "council my account",
         "cancel my account"),
        ("cancel my count", "Cancel my count!", "fuzzy", "cancel my count", "cancel my account"),
        ("cancel the account", "Cancel the account.", "gapped", "cancel the account",
         "cancel my account"),
        ("cancel my accounts", "Cancel my accounts.", "fuzzy", "cancel my accounts",
         "cancel my account"),
        ("i want to cancel this subscription", "I want to cancel this subscription.",
         "gapped", "cancel this subscription", "cancel my subscription"),
        ("please cancel account", "Please, cancel account.", "gapped", "cancel account",
         "cancel my account"),
        ("cancel my whole account", "Cancel my whole account.", "gapped",
         "cancel my whole account", "cancel my account"),
        ("uh cancel um my account", "Uh, cancel, um, my account.", "exact",
         "cancel um my account", "cancel my account"),
    ),
)  # fmt: skip
def test_a_misheard_cancellation_fires(text: str, match: str, heard: str, phrase: str) -> None:
    """ "council my account" and the rest never matched the exact phrase, so a caller who
    wanted to cancel was never sent to retention."""
    (d,) = fired(text)
    assert (d.rule_id, d.skill, d.evidence["phrase"]) == (CANCEL, "retention", phrase)
    assert d.evidence["match"] == match and d.evidence["heard"] == heard
    assert 0 < d.evidence["score"] <= 1 and (d.evidence["score"] == 1) == (match == "exact")


@pytest.mark.parametrize(
    ("text", "phrase", "heard"),
    styles.cases(
        ("get me a super visor", "Get me a super visor!", "supervisor", "super visor"),
        ("supervisors please", "Supervisors, please.", "supervisor", "supervisors"),
        ("can i speak to a man ager", "Can I speak to a man ager?", "manager", "man ager"),
        ("i want to speak to some one", "I want to speak to some one.", "speak to someone",
         "speak to some one"),
        ("give me a real living person", "Give me a real, living person.",
         "real person", "real living person"),
        ("speak to the person", "Speak to the person.", "speak to a person", "speak to the person"),
    ),
)  # fmt: skip
def test_a_misheard_request_for_a_person_fires(text: str, phrase: str, heard: str) -> None:
    (d,) = fired(text)
    assert (d.rule_id, d.evidence["phrase"], d.evidence["heard"]) == (PERSON, phrase, heard)
    assert d.evidence["match"] != "exact"
    assert d.reason == f"caller asked for a person: '{phrase}' (heard '{heard}')"


@pytest.mark.parametrize(
    ("text", "phrase"),
    styles.cases(
        ("i want to file a complaint", "I want to file a complaint.", "complaint"),
        ("i'll take them to court", "I’ll take them to court!", "take you to court"),
        ("i'm going to report you", "I'm going to report you.", "report you"),
        ("my attorneys will hear about this", "My attorneys will hear about this.", "attorney"),
        ("i want to complain about the service", "I want to complain about the service.",
         "complain"),
    ),
)  # fmt: skip
def test_complaints_and_legal_threats(text: str, phrase: str) -> None:
    (d,) = fired(text)
    assert (d.rule_id, d.evidence["phrase"]) == (LEGAL, phrase)


def test_an_exact_match_keeps_todays_reason() -> None:
    (d,) = fired("I want to cancel my account")
    assert d.reason == "caller wants to cancel: 'cancel my account'"
    evidence = d.evidence
    assert (evidence["match"], evidence["score"], evidence["alternative"]) == ("exact", 1, None)


# -- negation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    styles.cases(
        ("i don't want to cancel my account", "I don't want to cancel my account."),
        ("i do not want to cancel my account", "I do not want to cancel my account."),
        ("i do not need a supervisor", "I do not need a supervisor."),
        ("no i never asked for a manager", "No, I never asked for a manager."),
        ("i didn't ask for an agent", "I didn’t ask for an agent."),
        ("i'm not trying to close my account", "I'm not trying to close my account."),
        ("i don't have any complaints", "I don't have any complaints."),
        ("no complaints here", "No complaints here."),
        ("please do not transfer me to an agent", "Please do not transfer me to an agent."),
        ("i no longer need a supervisor", "I no longer need a supervisor."),
    ),
)
def test_a_negated_phrase_does_not_fire(text: str) -> None:
    """ "I don't want to cancel my account" contains the phrase: firing on it would send
    a caller who is staying to retention, as a cancellation."""
    assert fired(text) == []


@pytest.mark.parametrize(
    ("text", "rule_id"),
    styles.cases(
        ("i don't want to wait cancel my account", "I don't want to wait, cancel my account.",
         CANCEL),
        ("i no longer want this service cancel my account",
         "I no longer want this service, cancel my account.", CANCEL),
        ("why can't i talk to a human", "Why can't I talk to a human?", PERSON),
        ("i don't want a robot i want a human", "I don't want a robot, I want a human.", PERSON),
        ("i don't care just cancel my account", "I don't care. Just cancel my account.", CANCEL),
        ("no cancel my account please", "No, cancel my account, please.", CANCEL),
    ),
)  # fmt: skip
def test_a_negator_elsewhere_does_not_take_the_request_back(text: str, rule_id: str) -> None:
    """The negator reaches only over the light words of its verb: "don't want to wait"
    negates waiting, not the cancellation that follows."""
    assert [d.rule_id for d in fired(text)] == [rule_id]


# -- the recognizer's alternatives ----------------------------------------------------------


def test_a_phrase_may_match_in_an_alternative() -> None:
    (d,) = fired("can sell my account", "can sell my a count", "cancel my account")
    assert (d.rule_id, d.evidence["alternative"], d.evidence["match"]) == (CANCEL, 1, "exact")
    assert d.evidence["text"] == "can sell my account"  # what the transcript says


def test_the_transcript_wins_over_its_alternatives() -> None:
    """The best reading says the caller is not cancelling: another guess at the same
    words does not overrule it."""
    assert fired("I don't want to cancel my account", "I do want to cancel my account") == []


# -- the matcher itself ---------------------------------------------------------------------


def test_short_words_match_only_exactly() -> None:
    assert [fuzzy_threshold(n) for n in (2, 3, 4, 6, 9)] == [None, None, 88, 80, 78]
    index = PhraseIndex([("x", ["end my plan"])])
    assert index.find("and my plan") == {}  # "end" has 3 letters
    assert index.find("end my plans")["x"][0].match == "fuzzy"


def test_a_single_word_phrase_has_no_fuzzy_or_phonetic_neighbours() -> None:
    """ "operate" is 93 % "operator", "layer" sounds like "lawyer", "compliant" like
    "complaint": with no words around it, a single word matches exactly, in the plural
    or split, never by a near spelling or a sound."""
    index = PhraseIndex([("x", ["operator", "lawyer", "complaint", "agent"])])
    for text in ("how do i operate this", "a layer of paint", "is it compliant", "it is urgent"):
        assert index.find(text) == {}, text
    assert index.find("two agents")["x"][0].heard == "agents"


def test_one_gap_only_and_never_a_joining_word() -> None:
    index = PhraseIndex([("x", ["end my contract", "sue you"])])
    assert index.find("the end of my contract") == {}  # "of" joins, it does not insert
    assert index.find("council the count") == {}
    assert PhraseIndex([("x", ["cancel my account"])]).find("council the count") == {}
    assert index.find("sue") == {}  # a 2-word phrase never drops a word
    assert index.find("end my current contract")["x"][0].match == "gapped"


def test_clauses_and_sentences() -> None:
    (first, second) = read("Well, I don't know. Cancel — my account!")
    assert [h.clause for h in first.heard] == [0, 1, 1, 1]
    assert [h.text for h in second.heard] == ["cancel", "my", "account"]
    assert [h.clause for h in second.heard] == [0, 1, 1]
    assert {h.clause for h in read("4,572 e-mail 10:30 a - b")[0].heard} == {0, 1}


# -- precision and recall -------------------------------------------------------------------

MISHEARD = [
    ("council my account", CANCEL), ("cancel my count", CANCEL), ("cancel the account", CANCEL),
    ("cancel my accounts", CANCEL), ("I want to cancel this subscription", CANCEL),
    ("uh i want to counsel my account", CANCEL), ("Please cancel account.", CANCEL),
    ("I'd like to cancel my whole account", CANCEL), ("cancel my subscriptions please", CANCEL),
    ("i need to cancel my membership", CANCEL), ("Can you close my account?", CANCEL),
    ("i want to terminate my contract", CANCEL), ("cancel my contact please", CANCEL),
    ("I want to end my service today.", CANCEL), ("stop my subscription", CANCEL),
    ("cancel my service plan", CANCEL), ("i want to cancer my account", CANCEL),
    ("I no longer want this service, cancel my account.", CANCEL),
    ("I don't want to wait, cancel my account.", CANCEL),
    ("i don't care anymore just cancel my account", CANCEL),
    ("Why can't I cancel my account?", CANCEL), ("cancel all my accounts", CANCEL),
    ("super visor", PERSON), ("supervisors please", PERSON), ("speak to a man ager", PERSON),
    ("can i talk to a real human", PERSON), ("I want to speak with a person.", PERSON),
    ("get me a live person", PERSON), ("customer service representatives", PERSON),
    ("i need someone real", PERSON), ("Let me talk to somebody.", PERSON),
    ("put me through to an operator", PERSON), ("agents please", PERSON),
    ("talk to the person", PERSON), ("i want to speak to some one", PERSON),
    ("Can I talk to a real live person?", PERSON), ("why can't i talk to a human", PERSON),
    ("i don't want a robot i want a human", PERSON), ("uh can i speak to uh someone", PERSON),
    ("I want an actual person.", PERSON),
    ("i want to file a complaint", LEGAL), ("I'll take you to court.", LEGAL),
    ("i'm going to report you", LEGAL), ("my attorneys will hear about this", LEGAL),
    ("I'm calling my lawyers.", LEGAL), ("we will take legal actions", LEGAL),
    ("I want to complain about the service.", LEGAL), ("i will sue your company", LEGAL),
    ("I'm filing a lawsuit.", LEGAL), ("i'll take them to court", LEGAL),
    ("I'm reporting this to the better business bureau.", LEGAL),
    ("i want to cancel my a count", CANCEL), ("could i speak with someone", PERSON),
    ("I want to close out my account.", CANCEL), ("i need to terminate the contract", CANCEL),
]  # fmt: skip
HARD_NEGATIVES = [
    # a review of the first phrase lists found these routed (review finding)
    "Can someone real quick check my balance", "At the end my service was fine",
    "Did you stop my service yesterday?",
    "I don't want to cancel my account", "i do not want to cancel my account",
    "I do not need a supervisor", "no, I never asked for a manager",
    "i never asked for a manager", "I'm not trying to close my account.",
    "i would never cancel my subscription", "I don't need to speak to a person.",
    "i didn't ask for an agent", "I don't have any complaints.", "no complaints here",
    "I'm not a lawyer.", "I can sell my car.", "it is urgent", "It's urgent!",
    "my account number is four five seven two", "My account number is 4572.",
    "I am a travel agency owner", "humanity", "my personal details",
    "my agent's name is Bob", "I want to cancel my order.", "can i cancel my appointment",
    "what happens at the end of my contract", "How do I operate this?",
    "is it PCI compliant", "I need to update my contact details.",
    "i want to check my account balance", "what is my plan", "I can't complain.",
    "the count is wrong on my bill", "we have a layer of paint", "I'll sell my car",
    "I want to change my subscription to the family plan.", "my contract ends in May",
    "can you manage my account", "i need to manage my account",
    "I was charged twice this month.", "the service was fine",
    "I'd like to upgrade my service", "Don't cancel. My account is fine.",
    "I don't want to close my account, just update it.",
    "please do not transfer me to an agent", "I'm super busy today",
    "i want to pause my subscription", "can i add a person to my account",
    "I lost my account password", "the person I spoke to was nice",
    "I was talking to someone yesterday", "I talked to someone last week",
    "I already closed my account.", "i cancelled my account but i was still charged",
    "I do not want a human, the bot is fine.", "there is no need for a manager",
    "i am not going to sue anyone", "can i keep my account open", "I counted my accounts.",
]  # fmt: skip


def test_precision_and_recall_over_misheard_and_hard_negative_sentences() -> None:
    """The default phrase rules over sentences a recognizer wrote for a request it
    misheard, and sentences that look like a request and are not: negated, near words,
    everyday contact-center talk. Both numbers must stay at 0.95 or above."""
    assert len(MISHEARD) >= 40 and len(HARD_NEGATIVES) >= 40
    hits, misses, wrong = 0, [], []
    for text, expected in MISHEARD:
        got = [d.rule_id for d in fired(text)]
        hits += expected in got
        if expected not in got:
            misses.append(text)
        wrong += [(text, r) for r in got if r != expected]
    for text in HARD_NEGATIVES:
        wrong += [(text, d.reason) for d in fired(text)]
    precision = hits / (hits + len(wrong)) if hits else 0.0
    recall = hits / len(MISHEARD)
    print(f"precision {precision:.3f}, recall {recall:.3f}; missed {misses}; wrong {wrong}")
    assert precision >= 0.95 and recall >= 0.95, (misses, wrong)


# -- repetition -----------------------------------------------------------------------------


def call(*texts: str) -> list[Decision]:
    esc = CallEscalation([r for r in default_rules() if r.kind == "repeated_request"])
    for n, text in enumerate(texts):
        esc.observe_utterance(said(n, text))
    return esc.decisions


@pytest.mark.parametrize(
    ("first", "again"),
    [
        ("i want to check the status of my refund",
         "i want to check the status of my refund please"),
        ("I want to check the status of my refund.",
         "Please, I want to check the status of my refund."),
        ("my internet keeps dropping every evening", "the internet keeps dropping every evening"),
        ("My internet keeps dropping every evening.",
         "The internet keeps dropping every evening!"),
    ],
    ids=["sphinx: refund", "moonshine: refund", "sphinx: internet", "moonshine: internet"],
)  # fmt: skip
def test_a_repeated_request_raises_priority_and_alerts(first: str, again: str) -> None:
    """A caller who says the same thing again is not being heard: the supervisor should
    know, and the evidence shows both times."""
    (d,) = call(first, "yes", again)
    assert d.rule_id == "repeats_request"
    assert d.actions == ["raise_priority", "alert_supervisor"] and not d.routes_to_human
    assert d.evidence["utterance_ids"] == ["u0", "u2"]
    assert d.evidence["texts"] == [first, again]
    assert d.evidence["similarity"][0] >= 80


@pytest.mark.parametrize(
    "texts",
    [
        ("I want to check my order status.", "I want to change my delivery address."),
        ("yes", "okay", "yes", "okay", "yes that's right", "yes that's right"),
        ("yes i do", "yes i do think so"),
        ("My account number is 4572.", "My account number is 4575."),
        # what the engine hands over once redacted: two hidden cards may be two cards
        ("My card number is [card].", "No, my card number is [card]."),
        ("i need help with my bill", "the bill is wrong"),
        ("I said to the driver to leave it at the door.", "Can you say that again?"),
    ],
)
def test_different_requests_and_short_replies_are_no_repeat(texts: tuple[str, ...]) -> None:
    """Confirmations repeat by nature, a corrected number is a correction, and two
    requests that share their frame ("I want to ...") are two requests."""
    assert call(*texts) == []


@pytest.mark.parametrize(
    ("text", "found"),
    styles.cases(
        ("i already told you my address", "I already told you my address!", "i already told you"),
        ("like i said the router is broken", "Like I said, the router is broken.", "like i said"),
        ("for the third time i need a refund", "For the third time: I need a refund.",
         "for the third time"),
        ("again i want to cancel", "Again, I want to cancel.", "again"),
        ("no i said a refund", "No, I said a refund.", "i said"),
    ),
)  # fmt: skip
def test_a_repetition_marker_fires_on_its_own(text: str, found: str) -> None:
    assert marker(read(text)) == found
    (d,) = call(text)
    assert d.evidence == {"utterance_ids": ["u0"], "texts": [text], "marker": found}
    assert d.reason.startswith(f"caller repeats a request: '{found}'")


def test_count_asks_for_more_repeats_and_is_validated() -> None:
    thrice = rule(kind="repeated_request", count=3, actions=["alert_supervisor"])
    esc = CallEscalation([thrice])
    request = "please send me a new router"
    assert esc.observe_utterance(said(0, request)) == []
    assert esc.observe_utterance(said(1, request)) == []
    (d,) = esc.observe_utterance(said(2, request))
    assert d.evidence["utterance_ids"] == ["u0", "u1", "u2"]
    with pytest.raises(ValidationError, match="count >= 2"):
        rule(kind="repeated_request", count=1, actions=["alert_supervisor"])
    with pytest.raises(ValidationError, match="min_similarity"):
        rule(kind="repeated_request", min_similarity=120, actions=["alert_supervisor"])
