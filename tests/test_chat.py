"""Chats in one engine, in-process (engine/calls.py create_chat, chat_message,
upgrade_chat): their clock and transcript order, verification by chat, their caps and
line rate, what a chat cannot be (held, recorded, answered on a phone), and taking one
on to a call while the virtual agent waits for an answer. The end-to-end test with a
real engine process is tests/test_chat_e2e.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.bot.dialog import State
from engine.callstate import NotAllowed, Overloaded, Throttled
from engine.customers import CustomerIn
from engine.events import BotSaid, TranscriptFinal
from engine.users import ApiActor
from tests.bot_peers import SECRET, SLOW_ORDER, OrderSystem
from tests.controlplane import ControlPlane
from tests.test_bot import SECURED


@pytest.fixture
async def cp(tmp_path: Path, orders: OrderSystem) -> AsyncIterator[ControlPlane]:
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "orders.yaml").write_text(SECURED.replace("http://127.0.0.1:9/status", orders.url))
    async with ControlPlane(
        tmp_path / "engine",
        bot_flows=str(folder),
        bot_action_secret=SECRET,
        max_chats_per_address=2,
        max_chats=3,
    ) as plane:
        yield plane


async def write(cp: ControlPlane, call_id: str, *lines: str) -> None:
    """The caller's lines, a second apart as a person types them (the line rate)."""
    for text in lines:
        cp.calls.chat_message(call_id, None, text)
        await asyncio.sleep(1.0)


async def test_a_chat_keeps_its_order_and_a_verified_chat_is_not_masked_after_the_pin(
    cp: ControlPlane,
) -> None:
    """Found in review: a chat's clock stood at 0.0, so its transcript came back with
    every assistant line first, and after a PIN every line stayed masked."""
    await cp.calls.customers.put(
        "c-1", CustomerIn(name="Ann", phones=("5550100",), secrets={"pin": "4321"}), by="t"
    )
    chat = await cp.calls.create_chat("en", "Ann", "10.0.0.1")
    async with cp.events(chat.id) as sub:
        await cp.next_event(sub, "bot.said")
        await write(cp, chat.id, "where is my order", "83016", "yes", "5550100", "4321")
        await write(cp, chat.id, "thanks, and how do returns work")
        told: list[TranscriptFinal] = []
        while len(told) < 6:
            event = await cp.next_event(sub, "transcript.final")
            assert isinstance(event, TranscriptFinal)
            told.append(event)
    assert [t.text for t in told] == [
        "where is my order", "83016", "yes", "5550100", "[secret]",
        "thanks, and how do returns work",
    ]  # fmt: skip
    assert chat.verified_by == "pin"
    stored = await cp.store.get_call(chat.id)
    assert stored is not None
    lines = [(u.speaker, u.text) for u in stored.utterances]
    # in the order they were written: the greeting, then caller and assistant in turn
    assert lines[:5] == [
        ("bot", "Thanks for calling Acme. How can I help?"),
        ("caller", "where is my order"),
        ("bot", "What is your order number?"),
        ("caller", "83016"),
        ("bot", "Did you say 8 3 0 1 6?"),
    ]
    await cp.calls.end_call(chat.id, "hangup")


async def test_chats_are_capped_apart_from_calls_and_take_a_line_a_second(
    cp: ControlPlane,
) -> None:
    """Found in review: 64 anonymous chats took every call slot; a flood of lines ran
    every stage on each."""
    first = await cp.calls.create_chat(None, None, "10.0.0.1")
    await cp.calls.create_chat(None, None, "10.0.0.1")
    with pytest.raises(Throttled, match="2 chats from your address"):
        await cp.calls.create_chat(None, None, "10.0.0.1")
    await cp.calls.create_chat(None, None, "10.0.0.2")
    with pytest.raises(Overloaded, match="3 chats are open"):
        await cp.calls.create_chat(None, None, "10.0.0.3")
    assert cp.calls.calls_in_progress() == 0  # no call slot is a chat's
    for i in range(5):  # a few at once
        cp.calls.chat_message(first.id, None, f"line {i}")
    with pytest.raises(Throttled, match="a line a second"):
        cp.calls.chat_message(first.id, None, "one too many")
    await asyncio.sleep(1.1)
    cp.calls.chat_message(first.id, None, "and one more a second later")
    await cp.calls.end_call(first.id, "hangup")
    await cp.calls.create_chat(None, None, "10.0.0.1")  # its place is free again


async def test_a_chat_is_not_held_recorded_or_answered_like_a_call(cp: ControlPlane) -> None:
    chat = await cp.calls.create_chat(None, None, "10.0.0.1")
    admin = ApiActor("key:tests", "api:tests", "admin")
    with pytest.raises(NotAllowed, match="recorded"):
        cp.calls.recording(admin, chat.id, True)
    with pytest.raises(NotAllowed, match="chat"):
        await cp.calls.accept_peer("u-1", chat.id, None, "sip", "PCMU")  # type: ignore[arg-type]
    with pytest.raises(NotAllowed, match="not with you"):
        cp.calls.chat_message(chat.id, "u-1", "not my chat")
    await cp.calls.end_call(chat.id, "hangup")


async def test_a_chat_taken_on_while_the_agent_waits_for_an_answer_starts_afresh_by_voice(
    cp: ControlPlane,
) -> None:
    """Found in review: the dialog moved to the call while the chat's check of a PIN
    was under way; that check ended with the chat, and the call's agent hung waiting
    (and masked every word)."""
    await cp.calls.customers.put(
        "c-1", CustomerIn(name="Ann", phones=("5550100",), secrets={"pin": "4321"}), by="t"
    )
    chat = await cp.calls.create_chat(None, None, "10.0.0.1")
    async with cp.events(chat.id) as sub:
        await cp.next_event(sub, "bot.said")
        # the order system takes 3 s over this order: the agent waits for its answer
        await write(cp, chat.id, f"where is order {SLOW_ORDER}", "yes", "5550100", "4321")
        said = await cp.next_event(sub, "bot.said")
        while isinstance(said, BotSaid) and "verified" not in said.text:
            said = await cp.next_event(sub, "bot.said")
    assert chat.bot is not None and chat.bot.state == State.WAITING
    voice, _sdp = await cp.calls.create_webrtc_call(OFFER, None, None, "10.0.0.9")
    await cp.calls.upgrade_chat(chat.id, voice)
    assert voice.bot is not None and voice.bot is not chat.bot
    assert voice.bot.state == State.START and not voice.bot.secret_pending
    assert voice.upgraded_from == chat.id and chat.ended.is_set()
    await cp.calls.end_call(voice.id, "hangup")


OFFER = (Path(__file__).parent / "fixtures" / "chromium_offer.sdp").read_text()
