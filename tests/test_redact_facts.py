import pytest

from engine.assist.facts import FactSheet, extract
from engine.assist.redact import RedactedWord, Redactor, luhn_valid


def timed(text: str) -> list[RedactedWord]:
    return [RedactedWord(w, i * 0.5, i * 0.5 + 0.4) for i, w in enumerate(text.split())]


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize(
    ("said", "shown"),
    [
        ("my card is four one one one one one one one one one one one one one one one thanks",
         "my card is [card] thanks"),
        ("card 4111 1111 1111 1111 expires soon", "card [card] expires soon"),
        ("card 4111-1111-1111-1111", "card [card]"),
        ("the security code is one two three", "the security code is [card_security_code]"),
        ("ssn 078-05-1120 please", "ssn [ssn] please"),
        # not Luhn-valid: an order number stays
        ("order four one one one one one one one one one one one one one one two",
         "order four one one one one one one one one one one one one one one two"),
        ("nothing to hide here", "nothing to hide here"),
    ],
)  # fmt: skip
def test_redaction_of_text(said: str, shown: str) -> None:
    assert Redactor().redact(said).text == shown


def test_redacted_words_keep_times_but_not_digits() -> None:
    said = "card four one one one one one one one one one one one one one one one ok"
    r = Redactor().redact(said, timed(said))
    assert [w.word for w in r.words] == ["card", "[card]", "ok"]
    assert (r.words[1].start, r.words[1].end) == (0.5, 8.4)
    assert r.kinds == ["card"]


def test_card_after_the_word_card_needs_no_luhn() -> None:
    """ASR got one digit wrong: still a card number, still hidden."""
    said = "my card number is four one one one one one one one one one one one one one one two"
    assert Redactor().redact(said).text == "my card number is [card]"


def test_partials_hide_numbers_still_being_said() -> None:
    said = "my card number is four one one one one one one one one"
    assert Redactor().redact(said).text == said  # a final this short is not a card
    assert Redactor().redact(said, partial=True).text == "my card number is [digits]"
    assert Redactor().redact("card four one one one", partial=True).text == "card [digits]"
    assert Redactor().redact("forty nine dollars", partial=True).text == "forty nine dollars"


def test_misaligned_words_are_dropped_not_leaked() -> None:
    said = "card 4111 1111 1111 1111"
    r = Redactor().redact(said, timed("card 4111 1111"))
    assert r.words == [] and "[card]" in r.text


def test_configured_patterns_replace_defaults() -> None:
    r = Redactor({"member_id": r"\bm\d{6}\b"})
    assert r.redact("my id is m123456").text == "my id is [member_id]"
    assert r.redact("ssn 078-05-1120").text == "ssn 078-05-1120"
    assert r.redact("card 4111 1111 1111 1111").text == "card [card]"  # cards always


@pytest.mark.parametrize(
    ("said", "facts"),
    [
        ("my order number is four five seventy two", [("order_number", "4572")]),
        ("order a b c", []),
        ("account number one two three four five", [("account_number", "12345")]),
        ("i was charged forty nine dollars and fifty cents",
         [("amount", "49 dollars and 50 cents")]),
        ("it was $12.50", [("amount", "$12.50")]),
        ("it was supposed to arrive last week", [("date", "last week")]),
        ("it came on march third", [("date", "march 3")]),
        ("since january twenty first 2024", [("date", "january 21 2024")]),
        ("email me at john dot smith at example dot com",
         [("email", "john.smith@example.com")]),
        ("my email is jane@example.org", [("email", "jane@example.org")]),
        ("call me on five five five one two three four five six seven",
         [("phone", "5551234567")]),
    ],
)  # fmt: skip
def test_fact_extraction(said: str, facts: list[tuple[str, str]]) -> None:
    assert [(f.kind, f.value) for f in extract(said)] == facts


def test_products_and_the_fact_sheet() -> None:
    sheet = FactSheet()
    first = sheet.add(extract("my Acme Router X2 is broken", "u1", 1.0, ["Acme Router X2"]))
    again = sheet.add(extract("the acme router x2 again", "u2", 5.0, ["Acme Router X2"]))
    assert [(f.kind, f.value, f.utterance_id) for f in first] == [
        ("product", "Acme Router X2", "u1")
    ]
    assert again == [] and len(sheet.facts) == 1


def test_redacted_card_never_becomes_a_fact() -> None:
    said = "my account number is four one one one one one one one one one one one one one one one"
    text = Redactor().redact(said).text
    assert extract(text) == []


def test_summary_names_intent_facts_mood_and_escalation() -> None:
    from engine.assist.summary import summarize

    said = [
        "hi good morning",
        "i am calling to check on my order",
        "it is order four five seventy two",
    ]
    facts = [f for i, s in enumerate(said) for f in extract(s, f"u{i}")]
    text = summarize(said, facts, "frustrated", -0.4, "caller asked for a person: 'agent'")
    assert text == (
        'Caller: "i am calling to check on my order". Given: order 4572. '
        "Mood: frustrated, getting worse. Escalated: caller asked for a person: 'agent'."
    )
    assert summarize([], []) == ""
