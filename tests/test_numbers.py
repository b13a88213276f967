import pytest

from engine.assist.numbers import normalize, normalize_text, words_of
from tests import styles


@pytest.mark.parametrize(
    ("spoken", "written"),
    [
        ("my order number is four five seventy two", "my order number is 4572"),
        ("forty nine dollars and fifty cents", "49 dollars and 50 cents"),
        ("one hundred and five", "105"),
        ("two thousand twenty four", "2024"),
        ("twenty twenty four", "2024"),
        ("it is oh seven", "it is 07"),
        ("oh no", "oh no"),
        ("twelve point five percent", "12.5 percent"),
        ("one and two", "1 and 2"),
        ("i have called three times", "i have called 3 times"),
        ("four one one one one one one one one one one one one one one one",
         "4111111111111111"),
        ("already written 4111-1111 stays", "already written 4111-1111 stays"),
        # what recognizers write for digits
        ("what card is for one one one one", "what card is 41111"),
        ("the account numbers by five six to nine", "the account numbers by 5629"),
        ("my account numbers for five seventy", "my account numbers 4570"),
        ("i called for one hour", "i called for 1 hour"),
        ("i want to go to two places", "i want to go to 2 places"),
    ],
)  # fmt: skip
def test_spoken_numbers(spoken: str, written: str) -> None:
    assert normalize_text(spoken) == written


def test_tokens_remember_their_words() -> None:
    words = words_of("card four five five six then more")
    tokens = normalize(words)
    assert [(t.text, t.first, t.last) for t in tokens] == [
        ("card", 0, 0), ("4556", 1, 4), ("then", 5, 5), ("more", 6, 6),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("said", "written"),
    styles.cases(
        ("my order number is eight three zero one six", "My order number is 83016.",
         "my order number is 83016"),
        ("my order number is eight three zero one six",
         "My order number is eight three zero one six.", "my order number is 83016"),
        ("my order number is eight three zero one six", "My order number is eight three 016.",
         "my order number is 83016"),
        ("my order number is eight three zero one six", "My order number is 830 one six.",
         "my order number is 83016"),
        ("my order number is eight three zero one six", "My order number is 8-3-0-1-6.",
         "my order number is 83016"),
        ("order number four thousand five hundred seventy two", "Order number 4,572!",
         "order number 4572"),
        ("i've called three times", "I’ve called 3 times.", "i've called 3 times"),
        ("i was charged forty nine dollars", "I was charged forty-nine dollars.",
         "i was charged 49 dollars"),
        ("my account number is four five seven two", "My account number is four, five, seven, two.",
         "my account number is 4572"),
        ("since twenty twenty four", "Since twenty twenty-four.", "since 2024"),
        ("twelve point five percent", "Twelve point five percent.", "12.5 percent"),
    ),
)  # fmt: skip
def test_numbers_in_both_styles(said: str, written: str) -> None:
    """Digits glued to a full stop broke a run ("eight three zero one six." gave
    "8301 six."), "4,572" split at its comma, "forty-nine" (hyphen) was no number, and
    a number read out partly as digits ("eight three 016", "8-3-0-1-6") stayed apart."""
    assert normalize_text(said) == written


@pytest.mark.parametrize(
    ("said", "written"),
    [
        ("I paid 100 one time.", "i paid 100 1 time"),
        ("Room 12 three times.", "room 12 3 times"),
        ("It's 4111 one one one one.", "it's 41111111"),
        ("Between 9 and 5.", "between 9 and 5"),
        ("Call 555-123-4567 on 2024-03-14.", "call 555-123-4567 on 2024-03-14"),
        ("The card number is for 1111.", "the card number is 4 1111"),
        ("I waited for 20 minutes.", "i waited for 20 minutes"),
    ],
)
def test_digits_join_words_only_when_read_out(said: str, written: str) -> None:
    """Written digits join number words only when those are digits read out one by one
    (two or more): "100 one time" is not 1001. A homophone before written digits is a
    digit where a number is being read out ("is for 1111"), not elsewhere ("waited for
    20 minutes")."""
    assert normalize_text(said) == written


@pytest.mark.parametrize(
    "said",
    styles.both("card four five five six then more", "Card: four five, five six. Then more!"),
)
def test_tokens_remember_their_words_in_both_styles(said: str) -> None:
    tokens = normalize(words_of(said))
    assert [(t.text, t.first, t.last) for t in tokens] == [
        ("card", 0, 0), ("4556", 1, 4), ("then", 5, 5), ("more", 6, 6),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("said", "words"),
    [
        ("It's $49.99, I was charged twice.", ["it's", "$49.99", "i", "was", "charged", "twice"]),
        ("I’ll e-mail jane@example.org.", ["i'll", "e-mail", "jane@example.org"]),
        (
            "Call (555) 123-4567 — or “555.123.4567”!",
            ["call", "555", "123-4567", "or", "555.123.4567"],
        ),
        ("It cost $1,049.99; a lot.", ["it", "cost", "$1049.99", "a", "lot"]),
        ("On 3/14/2024 ... at #2", ["on", "3/14/2024", "at", "2"]),
    ],
)
def test_words_of_written_text(said: str, words: list[str]) -> None:
    """Punctuation around a word goes, what makes it an amount, address or number stays."""
    assert words_of(said) == words


def test_hyphenated_number_words_map_to_their_word() -> None:
    """ "forty-nine" is one word of the transcript (and of its word timings) read as two
    number words: its token must point at that one word, or redaction hides the wrong
    words."""
    tokens = normalize(words_of("I paid forty-nine, then twenty-one dollars."))
    assert [(t.text, t.first, t.last) for t in tokens] == [
        ("i", 0, 0), ("paid", 1, 1), ("49", 2, 2), ("then", 3, 3), ("21", 4, 4),
        ("dollars", 5, 5),
    ]  # fmt: skip
