"""A chat's emotion, read from its typed lines, in one engine in-process (engine/analysis.py
``Feel``, media/emotion.py ``EmotionTracker.update_words``): each caller line is
followed by an ``emotion.updated`` with its label, confidence and the words' cues; the
sample is kept in the call's emotion timeline; the rules on emotion escalate an upset
chat as they do a call; a calm one stays calm; and a line masked while the virtual
agent asks for a secret tells nothing of what was typed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.analysis import MASKED_WORDS
from engine.customers import CustomerIn
from engine.events import (
    EmotionUpdated,
    EscalationRaised,
    EventBase,
    Subscription,
    TranscriptFinal,
)
from tests.bot_peers import SECRET, OrderSystem
from tests.controlplane import ControlPlane
from tests.test_bot import SECURED


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """No virtual agent: a chat goes straight to the queue, and only the rules act."""
    async with ControlPlane(tmp_path / "engine") as plane:
        yield plane


@pytest.fixture
async def secured(tmp_path: Path, orders: OrderSystem) -> AsyncIterator[ControlPlane]:
    """The virtual agent of tests/test_bot.py's SECURED flow: it asks for a PIN."""
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "orders.yaml").write_text(SECURED.replace("http://127.0.0.1:9/status", orders.url))
    async with ControlPlane(
        tmp_path / "engine", bot_flows=str(folder), bot_action_secret=SECRET
    ) as plane:
        yield plane


async def write(cp: ControlPlane, call_id: str, *lines: str) -> None:
    """The caller's lines, a second apart as a person types them (the line rate)."""
    for text in lines:
        cp.calls.chat_message(call_id, None, text)
        await asyncio.sleep(1.0)


async def told(sub: Subscription, kinds: set[str], n: int) -> list[EventBase]:
    """The next ``n`` events of the ``kinds`` on ``sub``, in the order told."""
    out: list[EventBase] = []
    async with asyncio.timeout(15):
        while len(out) < n:
            event = await sub.queue.get()
            assert event is not None, "the subscription lagged"
            if getattr(event, "type", None) in kinds:
                out.append(event)
    return out


ANGRY = "You people are useless, I want this fixed right now!"
FED_UP = "I am fed up, this is the third time I write about it"


async def test_an_angry_chat_line_is_told_and_kept_with_its_label_and_evidence(
    cp: ControlPlane,
) -> None:
    """Before, a chat had no emotion at all: the desk showed none, and the timeline of
    GET /api/v1/calls/{id} stayed empty however the customer wrote."""
    chat = await cp.calls.create_chat("en", "Ann", "10.0.0.1")
    async with cp.events(chat.id) as sub:
        await write(cp, chat.id, ANGRY)
        final, felt = await told(sub, {"transcript.final", "emotion.updated"}, 2)
    assert isinstance(final, TranscriptFinal) and isinstance(felt, EmotionUpdated)
    assert felt.utterance_id == final.utterance_id and felt.speaker == "caller"
    assert felt.label == felt.call_label == "angry"
    assert felt.confidence == felt.scores["angry"] >= 0.6
    assert felt.arousal == 0.0  # no voice was heard to be stirred up
    assert any("useless" in e for e in felt.evidence), felt.evidence
    assert not any(e.startswith("voice") for e in felt.evidence), felt.evidence
    async with cp.http() as http:
        record = (await http.get(f"/api/v1/calls/{chat.id}")).json()
    (sample,) = record["emotion_timeline"]
    assert sample["utterance_id"] == final.utterance_id and sample["label"] == "angry"
    assert sample["confidence"] == felt.confidence and sample["evidence"] == felt.evidence
    assert record["emotion"] == "angry"  # the call's label, as for a voice call
    await cp.calls.end_call(chat.id, "hangup")


async def test_two_upset_lines_in_a_row_escalate_the_chat_by_the_upset_rule(
    cp: ControlPlane,
) -> None:
    """The README said it: the emotion rules never fired on a chat, so a customer who
    wrote two furious lines waited in line like any other."""
    chat = await cp.calls.create_chat("en", "Ann", "10.0.0.1")
    async with cp.events(chat.id) as sub:
        await write(cp, chat.id, "Where is my parcel?", ANGRY, FED_UP)
        events = await told(sub, {"emotion.updated", "escalation.raised"}, 4)
    labels = [e.label for e in events if isinstance(e, EmotionUpdated)]
    assert labels == ["neutral", "angry", "frustrated"]
    raised = events[-1]  # after the second upset line, not before
    assert isinstance(raised, EscalationRaised) and raised.rule == "upset_streak"
    assert raised.reason == "caller upset in consecutive utterances: angry, frustrated"
    felt = [e for e in events if isinstance(e, EmotionUpdated)]
    assert raised.evidence["utterance_ids"] == [felt[1].utterance_id, felt[2].utterance_id]
    assert "route_to_human" in raised.actions
    assert chat.escalation_reason == raised.reason
    stored = await cp.store.get_call(chat.id)
    assert stored is not None and stored.call.escalation_reason == raised.reason
    await cp.calls.end_call(chat.id, "hangup")


async def test_a_calm_polite_chat_stays_neutral_and_is_not_escalated(cp: ControlPlane) -> None:
    chat = await cp.calls.create_chat("en", "Ann", "10.0.0.1")
    lines = ("Hello, could you tell me how returns work, please?", "I bought a lamp last week.")
    async with cp.events(chat.id) as sub:
        await write(cp, chat.id, *lines)
        felt = await told(sub, {"emotion.updated"}, 2)
    assert [(e.label, e.call_label) for e in felt if isinstance(e, EmotionUpdated)] == [
        ("neutral", "neutral"),
        ("neutral", "neutral"),
    ]
    assert chat.escalation_reason is None and chat.mood == "neutral"
    stored = await cp.store.get_call(chat.id)
    assert stored is not None and not stored.escalations and stored.call.emotion == "neutral"
    await cp.calls.end_call(chat.id, "hangup")


async def test_a_line_typed_for_a_secret_leaks_nothing_through_its_emotion(
    secured: ControlPlane,
) -> None:
    """The PIN's line is stored and told as [secret]; its emotion is read from that,
    not from what was typed: the words typed with the PIN must not come back as the
    evidence (or the label) of its emotion, on the stream or in the timeline."""
    cp = secured
    await cp.calls.customers.put(
        "c-1", CustomerIn(name="Ann", phones=("5550100",), secrets={"pin": "4321"}), by="t"
    )
    chat = await cp.calls.create_chat("en", "Ann", "10.0.0.1")
    typed = "4321 and you are all useless idiots"
    async with cp.events(chat.id) as sub:
        await cp.next_event(sub, "bot.said")
        await write(cp, chat.id, "where is my order", "83016", "yes", "5550100", typed)
        events = await told(sub, {"transcript.final", "emotion.updated"}, 10)
    finals = [e for e in events if isinstance(e, TranscriptFinal)]
    felt = {e.utterance_id: e for e in events if isinstance(e, EmotionUpdated)}
    assert [f.text for f in finals][-1] == "[secret]"
    masked = felt[finals[-1].utterance_id]
    assert masked.evidence == [MASKED_WORDS] and masked.label == "neutral"
    for e in felt.values():
        dumped = e.model_dump_json()
        assert "4321" not in dumped and "useless" not in dumped and "idiots" not in dumped
    async with cp.http() as http:
        record = (await http.get(f"/api/v1/calls/{chat.id}")).json()
    assert len(record["emotion_timeline"]) == 5
    assert "useless" not in str(record["emotion_timeline"]) and "4321" not in str(record)
    await cp.calls.end_call(chat.id, "hangup")
