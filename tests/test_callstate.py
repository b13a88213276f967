"""The call record and its state table (engine/callstate.py), and the line between the
record and the live call (engine/livecall.py).

Later steps keep the record in Redis so another node can route, show and take over a
call. That works only while the record is plain data: these tests fail if a record
type gains a live handle (a task, a queue, a callable, a peer, a pipeline), if a field
does not survive JSON, or if a live call's snapshot drags its handles along.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import subprocess
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from engine.assist.facts import Fact, FactSheet
from engine.callstate import (
    STATES,
    TRANSITIONS,
    WITH_AGENT,
    CallRecord,
    Forbidden,
    InvalidTransition,
    LegRecord,
    NotAllowed,
    check_on_line,
    check_with_agent,
)
from engine.livecall import Call, Leg
from media.asr.models import ModelChoice

# leaves a record may hold: what JSON (with ISO times) carries without loss
PLAIN = (str, int, float, bool, type(None), dt.datetime)
CONTAINERS = (list, tuple, dict, set, frozenset, Sequence, Mapping)


def not_plain(tp: Any, path: str, seen: set[type] | None = None) -> list[str]:
    """The places in type ``tp`` that are not plain data: empty if every field, down
    through lists, dicts and nested dataclasses, ends in str, numbers, bools, None,
    datetimes or literals."""
    seen = set() if seen is None else seen
    origin = typing.get_origin(tp)
    if tp in PLAIN or origin is typing.Literal:
        return []
    if origin in (typing.Union, types.UnionType):
        return [p for a in typing.get_args(tp) for p in not_plain(a, path, seen)]
    if origin in CONTAINERS:
        return [
            p
            for a in typing.get_args(tp)
            if a is not Ellipsis
            for p in not_plain(a, f"{path}[]", seen)
        ]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if tp in seen:
            return []
        seen.add(tp)
        hints = typing.get_type_hints(tp)
        return [
            p
            for f in dataclasses.fields(tp)
            for p in not_plain(hints[f.name], f"{path}.{f.name}", seen)
        ]
    return [f"{path}: {tp!r}"]


def full_record() -> CallRecord:
    """A record with every field away from its default, so a round trip tests each."""
    return CallRecord(
        id="call-1",
        channel="sip",
        language="en",
        model=ModelChoice("en", "moonshine", "/models/m", ["/models"], True, "no GPU"),
        caller="+15550001234",
        created_at=dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.UTC),
        state="held",
        legs=[
            LegRecord("leg-c", "caller", "sip", codec="PCMU"),
            LegRecord("leg-a", "agent", "webrtc", user_id="u-1", left=True, offset=31.25),
        ],
        answered_at=dt.datetime(2024, 5, 1, 9, 30, 2, 500000, tzinfo=dt.UTC),
        escalation_reason="the caller asked for a person",
        priority=3,
        queue_name="billing",
        queue_position=2,
        queued_priority=2,
        agent_id="u-1",
        agent_name="Ann Lee",
        agent_muted=True,
        previous_calls=4,
        transferred_by="alice",
        transfer_note="wants a refund",
        summary="Refund for order 12345.",
        topic="billing",
        intent="order_status",
        customer_id="c-1042",
        verified_by="pin",
        attestation="A",
        upgraded_from="chat-1",
        mood="angry",
        trend=-0.4,
        facts=FactSheet([Fact("order_number", "12345", "utt-1", 12.5)]),
        caller_said=["my order 12345 never came", "I want a refund"],
    )


def test_every_field_of_the_full_record_is_set() -> None:
    """The round trip below covers a field only if the fixture sets it: a field added
    to the record must be added here too."""
    default = CallRecord(
        "x", "webrtc", "fr", ModelChoice("fr", None, None), None, dt.datetime.now(dt.UTC)
    )
    full = full_record()
    same = [
        f.name
        for f in dataclasses.fields(CallRecord)
        if getattr(full, f.name) == getattr(default, f.name)
    ]
    assert same == []


def test_a_record_round_trips_through_json() -> None:
    record = full_record()
    text = record.to_json()
    assert CallRecord.from_json(text) == record
    assert CallRecord.from_json(text.encode()) == record
    out = json.loads(text)
    assert list(out) == [f.name for f in dataclasses.fields(CallRecord)]
    assert out["created_at"] == "2024-05-01T09:30:00Z"  # wall clock, UTC, on any node
    assert out["facts"] == {
        "facts": [{"kind": "order_number", "value": "12345", "utterance_id": "utt-1", "at": 12.5}]
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("state", "ringing"),
        ("priority", "high"),
        ("legs", [{"id": "l", "role": "boss", "transport": "sip"}]),
    ],
)
def test_json_that_is_not_a_record_is_refused(field: str, value: object) -> None:
    """A record read back from shared storage is validated: a state the table does not
    know is an error, not a call stuck in it."""
    data = json.loads(full_record().to_json())
    data[field] = value
    with pytest.raises(ValidationError):
        CallRecord.from_json(json.dumps(data))


@pytest.mark.parametrize("record_type", [CallRecord, LegRecord])
def test_record_types_hold_only_plain_data(record_type: type) -> None:
    """Fails when someone adds a task, queue, event, callable, peer, pipeline (or any
    other object JSON cannot carry) to a record type: it belongs on engine.livecall's
    Call or Leg."""
    assert not_plain(record_type, record_type.__name__) == []


def test_the_plain_data_check_sees_the_live_handles() -> None:
    """The check above is not vacuous: every handle the live types add is caught."""
    live = {
        Call: ["events", "consumer", "tasks", "ended", "forks", "recording", "escalation"],
        Leg: ["pipeline", "peer"],
    }
    for cls, names in live.items():
        hints = typing.get_type_hints(cls)
        for name in names:
            assert not_plain(hints[name], name), f"{cls.__name__}.{name} passed as plain data"


def walk(value: object, path: str = "record") -> list[str]:
    """The values in a record that are not plain data."""
    if isinstance(value, PLAIN):
        return []
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in walk(v, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in walk(k, path) + walk(v, f"{path}[{k!r}]")]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [
            p
            for f in dataclasses.fields(value)
            for p in walk(getattr(value, f.name), f"{path}.{f.name}")
        ]
    return [f"{path}: {type(value).__name__}"]


async def test_a_live_calls_record_leaves_its_handles_behind() -> None:
    """``call.record()`` and ``call.to_json()`` give the record's fields only: no queue,
    task, event, fork, peer or pipeline, and legs as LegRecord, however much the live
    call holds."""
    record = full_record()
    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(CallRecord)}
    call = Call(**(values | {"legs": []}))
    call.legs = [Leg("leg-c", "caller", "sip", codec="PCMU"), Leg("leg-a", "agent", "webrtc")]
    call.legs[0].peer = types.SimpleNamespace(close=lambda: None)  # type: ignore[assignment]
    fork: Callable[[str, object], None] = lambda role, frame: None  # noqa: E731
    call.forks.append(fork)
    call.tasks.append(asyncio.create_task(asyncio.sleep(0)))
    call.media_t0, call.queued_at = 12.0, 13.0
    call.utterance_ids[("leg-c", 0)] = "utt-1"

    snapshot = call.record()
    assert type(snapshot) is CallRecord
    assert [type(leg) for leg in snapshot.legs] == [LegRecord, LegRecord]
    assert walk(snapshot) == []
    assert snapshot.to_json() == call.to_json()
    assert CallRecord.from_json(call.to_json()) == snapshot
    live_only = {f.name for f in dataclasses.fields(Call)} - set(values)
    assert live_only and not live_only & set(json.loads(call.to_json()))
    assert "peer" not in json.loads(call.to_json())["legs"][0]

    # a copy, not a view: the call goes on without changing what was sent
    sent = CallRecord.from_json(snapshot.to_json())
    call.caller_said.append("hello?")
    call.facts.add([Fact("phone", "5551234567", "utt-2", 20.0)])
    call.legs[0].left = not call.legs[0].left
    call.model.looked_in.append("/elsewhere")
    assert snapshot.caller_said == full_record().caller_said
    assert snapshot.facts == full_record().facts
    assert snapshot == sent
    await asyncio.gather(*call.tasks)


def test_the_record_module_needs_no_event_loop_or_media() -> None:
    """engine.callstate is the pure half: importing it brings in no asyncio, no
    peers, pipelines or rules engine (a fresh interpreter, to see what it loads)."""
    live = ["asyncio", "aiortc", "media.peer", "media.pipeline", "engine.escalation", "numpy"]
    code = f"import sys, engine.callstate; print([m for m in {live!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the table --------------------------------------------------------------------------


def test_the_table_names_only_known_states_and_every_state_is_reachable() -> None:
    assert {s for pair in TRANSITIONS for s in (pair[0], TRANSITIONS[pair])} == set(STATES)
    reached, frontier = {"new"}, ["new"]
    while frontier:
        state = frontier.pop()
        for (src, _event), dst in TRANSITIONS.items():
            if src == state and dst not in reached:
                reached.add(dst)
                frontier.append(dst)
    assert reached == set(STATES)
    # every state but the last can end, and nothing leaves the last
    assert all(TRANSITIONS.get((s, "end")) == "ended" for s in STATES if s != "ended")
    assert not any(src == "ended" for src, _ in TRANSITIONS)


def test_a_move_the_table_does_not_have_is_our_bug() -> None:
    record = full_record()
    record.state = "queued"
    assert record.next_state("accept") == "bridged"
    with pytest.raises(InvalidTransition, match="call call-1: no 'hold' from 'queued'"):
        record.next_state("hold")


# -- desk-control guards ------------------------------------------------------------------


@pytest.mark.parametrize("state", STATES)
def test_desk_controls_need_an_agent_on_the_call(state: str) -> None:
    record = full_record()
    record.state = state  # type: ignore[assignment]  # every state, from the table's list
    if state in WITH_AGENT:
        check_with_agent(record)
    else:
        with pytest.raises(NotAllowed, match=f"is {state}, not with an agent"):
            check_with_agent(record)


def test_an_agent_acts_only_on_their_own_call() -> None:
    record = full_record()  # with agent u-1
    check_on_line(record, "u-1", "agent")
    check_on_line(record, "u-9", "supervisor")
    check_on_line(record, "key", "operator")
    with pytest.raises(Forbidden, match="call call-1 is not on your line"):
        check_on_line(record, "u-2", "agent")
