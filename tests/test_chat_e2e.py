"""Chat end to end (issue 15): a real engine process with the example flow and its
articles. A customer chats from the caller page's API: the virtual agent greets them and
answers from the knowledge base; they ask for a person and the chat rings an agent, who
takes it from the desk's API and replies; the customer then rings in by voice (aiortc)
and the conversation goes on as a call, whose record names the chat the agent can read.
Events, the stored transcript, exports and webhooks carry the chat like a call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from media.outbound import OutboundAudioTrack
from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller
from tests.test_bot_e2e import engine_agent, wait_for
from tests.webhook_receiver import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parent.parent


def example_engine(folder: Path, **env: str) -> EngineProcess:
    """An engine process answering with the example flow and its articles (deploy/),
    started."""
    return EngineProcess(
        folder,
        CCENGINE_BOT_FLOWS=str(ROOT / "deploy" / "flows"),
        CCENGINE_KNOWLEDGE_BASE=str(ROOT / "deploy" / "knowledge"),
        CCENGINE_OFFER_TIMEOUT="30",
        **env,
    ).start()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, hooks: Receiver) -> Iterator[EngineProcess]:
    proc = example_engine(
        tmp_path_factory.mktemp("chat-engine"),
        CCENGINE_WEBHOOK_ALLOWED_NETWORKS='["127.0.0.1/32"]',
    )
    try:
        with httpx.Client(base_url=proc.url, headers=proc.headers, timeout=30) as http:
            r = http.post("/api/v1/webhooks", json={"url": hooks.url, "events": ["*"]})
            assert r.status_code == 201, r.text
        yield proc
    finally:
        proc.stop()


def lines(events: list[dict[str, Any]], call_id: str) -> list[tuple[str, str]]:
    """The chat as its stream told it: (who, text)."""
    out = []
    for e in events:
        if e.get("call_id") != call_id:
            continue
        if e["type"] == "bot.said":
            out.append(("bot", e["text"]))
        elif e["type"] == "transcript.final":
            out.append((e["speaker"], e["text"]))
    return out


async def until(test: Any, within: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not test():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("not within time")
        await asyncio.sleep(0.05)


async def test_a_chat_is_answered_goes_to_a_person_and_goes_on_as_a_call(
    engine: EngineProcess, hooks: Receiver, tmp_path: Path
) -> None:
    agent = await engine_agent(engine)
    events: list[dict[str, Any]] = []
    watcher = asyncio.create_task(engine.watch_events(events))
    voice: Caller | None = None
    try:
        async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
            r = await http.post("/api/v1/chats", json={"caller": "Ann"})
            assert r.status_code == 201, r.text
            chat_id, token = r.json()["call_id"], r.json()["caller_token"]
            as_caller = {"Authorization": f"Bearer {token}"}

            async def say(text: str) -> None:
                r = await http.post(
                    f"/api/v1/calls/{chat_id}/messages", json={"text": text}, headers=as_caller
                )
                assert r.status_code == 204, r.text

            # greeted, and answered from the knowledge base
            await until(lambda: ("bot", GREETING) in lines(events, chat_id))
            await say("What are your opening hours?")
            await until(lambda: any("eight in the morning" in t for _, t in lines(events, chat_id)))
            # a person: the chat rings the agent, who takes it and replies
            await say("Can I talk to a real person please?")
            offer = await wait_for(events, "call.offered", chat_id, within=20)
            assert (offer["channel"], offer["intent"]) == ("chat", "person")
            r = await agent.post(f"/api/v1/calls/{chat_id}/accept-chat")
            assert r.status_code == 204, r.text
            r = await agent.post(
                f"/api/v1/calls/{chat_id}/messages",
                json={"text": "Hi Ann, Bea here. How can I help?"},
            )
            assert r.status_code == 204, r.text
            await say("My order 83016 has not arrived.")
            await until(
                lambda: ("caller", "My order 83016 has not arrived.") in lines(events, chat_id)
            )
            assert ("agent", "Hi Ann, Bea here. How can I help?") in lines(events, chat_id)
            # nobody else writes in it: no credentials, another chat's caller
            async with httpx.AsyncClient(base_url=engine.url) as stranger:
                r = await stranger.post(f"/api/v1/calls/{chat_id}/messages", json={"text": "x"})
                assert r.status_code == 401, r.text
                other = (await stranger.post("/api/v1/chats", json={})).json()
                r = await stranger.post(
                    f"/api/v1/calls/{chat_id}/messages",
                    json={"text": "x"},
                    headers={"Authorization": f"Bearer {other['caller_token']}"},
                )
                assert r.status_code == 403, r.text

            # the customer rings in: the chat goes on as a call
            voice = Caller(engine.url, None, mic=OutboundAudioTrack())
            voice.upgrade = (chat_id, token)
            await voice.dial()
            await wait_for(events, "call.ended", chat_id)
            ended = next(e for e in events if e["type"] == "call.ended" and e["call_id"] == chat_id)
            assert ended["reason"] == "upgraded"
            # Bea wraps up the chat and the call rings her: she had the conversation
            r = await agent.post(
                f"/api/v1/calls/{chat_id}/wrap-up", json={"disposition": "resolved"}
            )
            assert r.status_code == 204, r.text
            rang = await wait_for(events, "call.offered", voice.call_id, within=20)
            assert rang["agent_id"] == offer["agent_id"]

            record = (
                await http.get(f"/api/v1/calls/{voice.call_id}", headers=engine.headers)
            ).json()
            assert record["upgraded_from"] == chat_id
            # what the desk shows "so far" on the call: the chat's, before a word is said
            assert "83016" in record["summary"], record["summary"]
            told = (await http.get(f"/api/v1/calls/{chat_id}", headers=engine.headers)).json()
            assert told["channel"] == "chat"
            said = [(u["speaker"], u["text"]) for u in told["transcript"]]
            assert said[0] == ("bot", GREETING)
            assert ("agent", "Hi Ann, Bea here. How can I help?") in said
            assert ("caller", "My order 83016 has not arrived.") in said
            text = await http.get(f"/api/v1/calls/{chat_id}/transcript.txt", headers=engine.headers)
            assert text.status_code == 200 and "83016" in text.text
    finally:
        watcher.cancel()
        if voice is not None:
            await voice.close()
        await agent.aclose()
    await until(lambda: any(chat_id in b.decode() for _, b, _, _ in hooks.got))
    hooked = [json.loads(b) for _, b, _, _ in hooks.got]
    assert {"transcript.final", "bot.said", "call.ended"} <= {
        h["type"] for h in hooked if h.get("call_id") == chat_id
    }


async def test_a_chat_message_to_a_call_or_an_ended_chat_is_refused(engine: EngineProcess) -> None:
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
        r = await http.post("/api/v1/chats", json={})
        chat_id, token = r.json()["call_id"], r.json()["caller_token"]
        me = {"Authorization": f"Bearer {token}"}
        too_long = await http.post(
            f"/api/v1/calls/{chat_id}/messages", json={"text": "x" * 2001}, headers=me
        )
        assert too_long.status_code == 422
        assert (await http.post(f"/api/v1/calls/{chat_id}/hangup", headers=me)).status_code == 202
        await asyncio.sleep(0.5)
        r = await http.post(f"/api/v1/calls/{chat_id}/messages", json={"text": "hi"}, headers=me)
        assert r.status_code in (404, 409), r.text


GREETING = "Thanks for calling Acme. I'm the virtual assistant. How can I help you today?"
