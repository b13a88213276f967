"""The virtual agent end to end: a real engine process answers aiortc callers who talk
with it turn by turn (each line said once the agent has stopped speaking, as a person
would), a stand-in for the business's order system as a real HTTP server, and what the
caller heard recognised from the audio it received."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from media.wavtrack import read_wav_mono
from tests import sipp, speech
from tests.bot_peers import SECRET, SLOW_ORDER, OrderSystem, Talk, spoken_lines
from tests.engine_proc import EngineProcess, free_port
from tests.sniff import RtpSniffer
from tests.test_bot import ORDERS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(
    tmp_path_factory: pytest.TempPathFactory, orders: OrderSystem
) -> Iterator[EngineProcess]:
    flows = tmp_path_factory.mktemp("flows")
    flow = ORDERS.replace("http://127.0.0.1:9/status", orders.url).replace(
        "timeout: 2", "timeout: 1"
    )
    flow = flow.replace(
        "say: Order {order} is {result.status}.",
        "say: Order {order} is {result.status}, arriving {result.eta}.",
    )
    (flows / "orders.yaml").write_text(flow)
    proc = EngineProcess(
        tmp_path_factory.mktemp("bot-engine"),
        CCENGINE_BOT_FLOWS=str(flows),
        CCENGINE_BOT_ACTION_SECRET=SECRET,
        CCENGINE_OFFER_TIMEOUT="30",
        CCENGINE_SIP_TRUNKS='["127.0.0.1"]',  # SIPp calls as a trunk: no digest
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """What the callers say, one clip a line (48 kHz)."""
    said = {
        "ask": "Hi, I'm calling to find out where my order is.",
        "number": "It's eight three zero one six.",
        "slow": "It's nine nine nine nine nine.",
        "yes": "Yes, that's right.",
        "done": "No, that's all, thank you.",
    }
    return spoken_lines(tmp_path_factory.mktemp("lines"), said)


async def test_a_caller_asks_verifies_the_number_and_hears_the_status(
    engine: EngineProcess, orders: OrderSystem, lines: dict[str, np.ndarray]
) -> None:
    """Greeted, asks where their order is, gives the number, confirms it; the agent asks
    the order system (signed) and the caller hears the status; "that's all" ends the
    call, and the transcript holds both sides."""
    talk = Talk(engine.url)
    try:
        await talk.caller.dial()
        await talk.agent_done()
        greeting = talk.heard_since_mark()
        assert "calling" in greeting and "help" in greeting, greeting
        await talk.say(lines["ask"])
        await talk.agent_done()
        assert "order number" in talk.heard_since_mark()
        await talk.say(lines["number"])
        await talk.agent_done()
        assert "8 3 0 1 6" in " ".join(
            e["text"] for e in talk.caller.events if e["type"] == "bot.said"
        )
        await talk.say(lines["yes"])
        await talk.agent_done()
        status = talk.heard_since_mark()
        # "Order 8 3 0 1 6 is out for delivery, arriving Friday": the recognizer writes
        # the digits its own way, and once ran "six is out" together ("830-160 for")
        assert "for delivery" in status and "friday" in status.lower(), status
        await talk.say(lines["done"])
        await asyncio.wait_for(talk.caller.ended.wait(), 20)
    finally:
        await talk.caller.close()
    assert orders.bad_signatures == 0
    assert {"intent": "order_status", "slots": {"order": "83016"}}.items() <= next(
        a for a in orders.asked if a["call_id"] == talk.caller.call_id
    ).items()
    record = await talk.caller.call_record()
    assert record["end_reason"] == "bot_completed" and record["escalation_reason"] is None
    # the greeting is told after the call is active on the stream, never before it
    types = [(e["type"], e.get("state")) for e in talk.caller.events]
    assert types.index(("call.state_changed", "active")) < types.index(("bot.said", None))
    speakers = [u["speaker"] for u in record["transcript"]]
    assert speakers[0] == "bot" and speakers.count("caller") >= 4 and speakers.count("bot") >= 5
    assert any(
        "out for delivery" in u["text"] for u in record["transcript"] if u["speaker"] == "bot"
    )


async def test_a_caller_who_talks_over_the_greeting_stops_it(
    engine: EngineProcess, lines: dict[str, np.ndarray]
) -> None:
    """Barge-in: the greeting stops soon after the caller starts talking (measured on
    the audio the caller received; `make bench` times it, this only bounds it), and the
    agent answers what they said."""
    talk = Talk(engine.url)
    try:
        await talk.caller.dial()
        await talk.agent_speaks()
        await asyncio.sleep(0.6)  # into the greeting
        sent = await talk.say(lines["ask"])
        spoke_at = sent + talk.first_voice(lines["ask"])
        await talk.agent_done()
        heard_at, loud = talk.caller.heard_at, talk.loud()
        # the greeting's last loud frame after the caller began, before a gap of 200 ms
        stop = next(
            heard_at[i]
            for i in range(len(loud))
            if heard_at[i] > spoke_at and not any(loud[i : i + 10])
        )
        print(f"greeting stopped {1000 * (stop - spoke_at):.0f} ms after the caller spoke")
        assert stop - spoke_at < 0.6
        said = [e["text"] for e in talk.caller.events if e["type"] == "bot.said"]
        assert said[-1] == "What is your order number?"
        # the greeting's end ("How can I help?") was never played: it was cut off
        heard = speech.recognise(talk.caller.heard_pcm()).lower()
        assert "order number" in heard and "help" not in heard, heard
    finally:
        await talk.caller.close()


async def test_a_slow_order_system_is_apologised_for_and_the_agent_sees_everything(
    engine: EngineProcess, lines: dict[str, np.ndarray]
) -> None:
    """The order system does not answer within the flow's second: the caller hears an
    apology and goes to a person; the agent's ring shows what it is about, the order
    number and why, so nobody asks again."""
    agent = await engine_agent(engine)
    events: list[dict[str, Any]] = []
    watcher = asyncio.create_task(engine.watch_events(events))
    talk = Talk(engine.url)
    try:
        await talk.caller.dial()
        await talk.agent_done()
        await talk.say(lines["ask"])
        await talk.agent_done()
        await talk.say(lines["slow"])
        await talk.agent_done()
        await talk.say(lines["yes"])
        await talk.agent_done()
        # "Sorry, I can't reach that system right now": the recognizer may drop the
        # first word, which starts with no quiet before it
        assert "reach that system" in talk.heard_since_mark()
        offer = await wait_for(events, "call.offered", talk.caller.call_id)
    finally:
        watcher.cancel()
        await talk.caller.close()
        await agent.aclose()
    assert offer["intent"] == "order_status"
    assert offer["escalation_reason"] == "virtual agent: order_status: no answer within 1 s"
    assert SLOW_ORDER in offer["summary"], offer["summary"]


async def engine_agent(engine: EngineProcess) -> Any:
    engine.add_user("bea", "correct horse")
    return await engine.agent("bea", "correct horse", "login", "available")


async def wait_for(
    events: list[dict[str, Any]], kind: str, call_id: str, within: float = 15
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for e in events:
            if e["type"] == kind and e.get("call_id") == call_id:
                return e
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no {kind} for {call_id} in {within} s")


def test_a_flow_file_with_a_mistake_stops_start_up_with_file_line_and_reason(
    tmp_path: Path,
) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "orders.yaml").write_text(ORDERS.replace("    examples:\n", "    exmples:\n", 1))
    engine = EngineProcess(tmp_path / "bad", CCENGINE_BOT_FLOWS=str(flows))
    with pytest.raises(RuntimeError, match=r"orders\.yaml:5: .*unknown key 'exmples'"):
        engine.start(timeout=30)


def test_a_phone_caller_keys_the_order_number_and_hears_the_status(
    engine: EngineProcess, orders: OrderSystem, tmp_path: Path
) -> None:
    """SIPp dials the engine: the agent answers instead of the key menu, the caller says
    what they want, keys the order number and 1 for yes (RFC 4733): the keys answer the
    agent (the 0 of 83016 is not "press 0 for a person", the 1 not "billing"), and the
    phone hears the status from the order system."""
    speech.piper_alone(["Where is my order?"], tmp_path / "ask.wav")
    band = speech.sox(tmp_path / "ask.wav", tmp_path / "ask8k.wav",
                      ["highpass", "300", "lowpass", "3400"], rate=8000)  # fmt: skip
    ask8k, _ = read_wav_mono(str(band))
    # greeting 0-4 s; the request at 5 s; the prompt ~8-10 s; keys from 12 s; the
    # read-back ~13-16 s; yes at 18 s; the status from ~19 s; hang up at 30 s
    stream = np.zeros(8000 * 30, dtype=np.int16)
    stream[8000 * 5 : 8000 * 5 + len(ask8k)] = ask8k[: 8000 * 25]
    keys = [sipp.Key(d, 12.0 + 0.4 * i) for i, d in enumerate("83016")] + [sipp.Key("1", 18.0)]
    pcap = sipp.write_pcap(tmp_path / "call.pcap", sipp.phone_stream(stream, keys))
    media_port = free_port()
    heard = RtpSniffer(media_port)
    result = sipp.run(
        sipp.call_scenario(sipp.play(pcap, 31.0), caller="15550001111"),
        tmp_path / "sipp", engine.sip, media_port=media_port,
    )  # fmt: skip
    received = heard.stop()
    assert result.ok, result.output + result.errors
    said = speech.recognise(received, 8000).lower()
    print("the phone heard:", said)
    calls = httpx.get(f"{engine.url}/api/v1/calls", params={"channel": "sip"},
                      headers=engine.headers).json()["calls"]  # fmt: skip
    call = calls[0]
    detail = httpx.get(f"{engine.url}/api/v1/calls/{call['id']}", headers=engine.headers).json()
    assert detail["topic"] is None and detail["escalations"] == []  # no menu, no "press 0"
    asked = [a for a in orders.asked if a["call_id"] == call["id"]]
    assert asked and asked[0]["slots"] == {"order": "83016"}
    assert asked[0]["caller"] == "15550001111"
    assert "delivery" in said and "friday" in said, said
