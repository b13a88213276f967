import pytest

from engine.assist.numbers import normalize, normalize_text, words_of


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
