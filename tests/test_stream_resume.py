"""What a stream says: where an SSE stream resumes (engine/api/streams.py
``_resume_from``), what a caller's own stream carries, who the caller is told answered.

The failure: an EventSource opened with ``?after=N`` comes back to the same URL after
a drop, now with Last-Event-ID (the id it saw last). The stream took ``after`` and
replayed everything since N again, however long the page had been open."""

from __future__ import annotations

import contextlib
import json

import pytest
from starlette.exceptions import HTTPException

from engine.api.streams import _resume_from, for_caller
from engine.events import CallStateChanged
from tests.controlplane import ControlPlane
from tests.test_controls import bridged_call


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


# -- what a caller's own stream carries (engine/api/streams.py ``for_caller``) -----------


def test_a_callers_stream_carries_only_what_their_page_shows() -> None:
    """The failure: a caller's own stream (their page's cookie, their token) carried
    everything about their call: the escalation's reason and evidence, their mood, the
    agent's assist (summary, suggestions), the agents' notes, supervisor alerts, and the
    summary inside a callback. Those stay with the staff; what the page shows passes
    unchanged."""
    said = {"type": "transcript.final", "id": 7, "text": "hello", "call_id": "c"}
    assert for_caller(json.dumps(said)) == json.dumps(said)
    for kind in ("escalation.raised", "emotion.updated", "assist.updated", "call.annotated",
                 "supervisor.alert", "call.offered", "call.transferred", "made.up"):  # fmt: skip
        assert for_caller(json.dumps({"type": kind, "text": "secret"})) is None, kind
    callback = {"type": "callback.requested", "contact": "+441234567", "summary": "angry"}
    assert json.loads(for_caller(json.dumps(callback)) or "{}") == {
        "type": "callback.requested",
        "contact": "+441234567",
    }
    line = {"type": "queue.updated", "position": 2, "priority": 9, "expected_wait": 60.0}
    assert json.loads(for_caller(json.dumps(line)) or "{}") == {
        "type": "queue.updated",
        "position": 2,
        "expected_wait": 60.0,
    }


def test_a_callers_stream_carries_no_login_in_a_state_change() -> None:
    """The failure: a caller's stream carried the staff's reason for each state change,
    "jdoe" when bridged, "jdoe: consult cancelled", "handed over to msmith": the agents'
    logins, which the page never shows and the caller is never told. The end's reason
    (a code the page turns into a sentence) still reaches them."""
    for reason in ("jdoe", "jdoe: consult cancelled", "handed over to msmith"):
        change = {"type": "call.state_changed", "state": "bridged", "previous": "held",
                  "reason": reason, "agent_name": "Jo Doe"}  # fmt: skip
        assert json.loads(for_caller(json.dumps(change)) or "{}") == {
            "type": "call.state_changed", "state": "bridged", "previous": "held",
            "agent_name": "Jo Doe",
        }  # fmt: skip
    ended = {"type": "call.state_changed", "state": "ended", "previous": "bridged",
             "reason": "agent_hangup"}  # fmt: skip
    assert for_caller(json.dumps(ended)) == json.dumps(ended)
    # nor an agent's user id with their words (found in review)
    said = {"type": "transcript.final", "speaker": "agent", "agent_id": "u-7", "text": "hi"}
    assert json.loads(for_caller(json.dumps(said)) or "{}") == {
        "type": "transcript.final", "speaker": "agent", "text": "hi"
    }  # fmt: skip


async def test_bridged_names_the_agent_by_display_name_not_login(
    control_plane: ControlPlane,
) -> None:
    """The failure: the caller page said "You're through to Jdoe", the agent's login.
    ``call.state_changed`` to bridged now carries ``agent_name`` (their display name;
    none when it was left as the login), and keeps the username in ``reason``."""
    cp = control_plane
    people = {"jdoe": ("pw-jdoe-123", "Jane Doe"), "bob": ("pw-bob-123", None)}
    for username, (password, name) in people.items():
        await cp.add_user(username, password, *(["--name", name] if name else []))
        desk = await cp.agent(username, password, "login", "available")
        async with contextlib.aclosing(desk), cp.events() as sub:
            agent = await cp.store.user_by_name(username)
            assert agent is not None
            call = await bridged_call(cp.calls, agent)
            while True:
                changed = await cp.next_event(sub, "call.state_changed")
                assert isinstance(changed, CallStateChanged)
                if changed.call_id == call.id and changed.state == "bridged":
                    break
            assert (changed.reason, changed.agent_name) == (username, name)
            await cp.calls.end_call(call.id, "agent_hangup")
