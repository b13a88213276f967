"""Where an SSE stream resumes (engine/api/streams.py ``_resume_from``).

The failure: an EventSource opened with ``?after=N`` comes back to the same URL after
a drop, now with Last-Event-ID (the id it saw last). The stream took ``after`` and
replayed everything since N again, however long the page had been open."""

from __future__ import annotations

import pytest
from starlette.exceptions import HTTPException

from engine.api.streams import _resume_from


@pytest.mark.parametrize(
    ("after", "last_event_id", "default", "expected"),
    [
        (None, None, 0, 0),  # a first connect: the default
        (5, None, 0, 5),  # a first connect after what the page already has
        (None, "41", 0, 41),  # EventSource back, with no after in its URL
        (5, "41", 0, 41),  # EventSource back to a URL with an older after
        (50, "41", 0, 50),  # a client that says it has more than the header
        (None, "-3", 0, 0),
    ],
)
def test_the_later_of_after_and_last_event_id_wins(
    after: int | None, last_event_id: str | None, default: int, expected: int
) -> None:
    assert _resume_from(after, last_event_id, default) == expected


def test_a_last_event_id_that_is_no_id_is_refused() -> None:
    with pytest.raises(HTTPException) as refused:
        _resume_from(3, "abc", 0)
    assert refused.value.status_code == 422
