"""The virtual agent's optional brain (engine/bot/brain.py) against a real HTTP server
standing in for an OpenAI-compatible LLM endpoint, and the dialog's side of it: it
chooses only among the flow's intents, fills only slots that read as theirs (never a
secret), never speaks, and anything wrong with it is "not understood"."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from engine.bot.actions import Actions
from engine.bot.brain import Brain, Choice, read_choice, tools
from engine.bot.dialog import AskBrain, CallAction, Dialog, Say, State
from engine.bot.flows import parse_flow
from tests.engine_proc import free_port
from tests.test_bot import ORDERS, SECURED, orders


def tool_call(name: str, **args: str) -> dict[str, Any]:
    call = {"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
    return {"choices": [{"message": {"role": "assistant", "tool_calls": [call]}}]}


class Llm:
    """An OpenAI-compatible endpoint: answers what the test scripts, keeps what it got."""

    def __init__(self) -> None:
        self.asked: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.answer: tuple[int, bytes, float] = (200, b"{}", 0.0)
        llm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                llm.asked.append((dict(self.headers.items()), json.loads(body)))
                status, answer, delay = llm.answer
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def llm() -> Iterator[Llm]:
    server = Llm()
    try:
        yield server
    finally:
        server.close()


def said(outs: list[object]) -> list[str]:
    return [o.text for o in outs if isinstance(o, Say)]


def test_words_no_example_matched_go_to_the_brain_and_its_choice_is_checked() -> None:
    d = Dialog(orders())
    d.brain = True
    d.start()
    question = "my parcel thingy has gone walkabout, it was 83016"
    assert d.heard(question) == [AskBrain(question)]
    assert d.state == State.WAITING
    # an intent of the flow, with a slot that reads as its own: on as if heard
    assert said(d.brain_chose(question, "order_status", {"order": "83016"})) == [
        "Did you say 8 3 0 1 6?"
    ]
    # a value that does not fit the slot is asked for, not taken
    d = Dialog(orders())
    d.brain = True
    d.start()
    d.heard("where's me stuff")
    assert said(d.brain_chose("where's me stuff", "order_status", {"order": "12"})) == [
        "What is your order number?"
    ]
    # an intent the flow does not have (an action of its own): not understood
    d = Dialog(orders())
    d.brain = True
    d.start()
    d.heard("refund me now")
    outs = d.brain_chose("refund me now", "issue_refund", {})
    assert said(outs) == ["Sorry, I didn't catch that. Could you say it another way?"]
    assert d.failed_turns == 1 and d.task is None


def test_the_brain_never_fills_a_secret_and_never_sees_one() -> None:
    flow = parse_flow(
        ORDERS.replace(
            "        prompt: What is your order number?\n        confirm: true\n",
            "        prompt: What is your order number?\n        confirm: true\n"
            "      - name: last4\n        type: digits\n        length: 4\n"
            "        prompt: The last four digits of your card?\n        secret: true\n",
        ),
        "o.yaml",
    )
    (order_status,) = [t for t in tools(flow) if t["function"]["name"] == "order_status"]  # type: ignore[index]
    assert list(order_status["function"]["parameters"]["properties"]) == ["order"]  # type: ignore[index]
    choice = read_choice(flow, tool_call("order_status", order="83016", last4="1234"))
    assert choice == Choice("order_status", {"order": "83016"})
    d = Dialog(flow)
    d.brain = True
    d.start()
    d.heard("hmm")  # contentless: waits
    d.heard("the thing with the parcel")
    outs = d.brain_chose("x", "order_status", {"order": "83016", "last4": "1234"})
    assert d.task is not None and "last4" not in d.task.slots
    assert not any(isinstance(o, CallAction) for o in outs)


async def test_the_brain_is_asked_with_the_flows_intents_and_what_goes_wrong_is_no_answer(
    llm: Llm,
) -> None:
    flow = parse_flow(SECURED, "s.yaml")
    actions = Actions("action-secret")
    brain = Brain(llm.url, "small-model", "llm-key", 1.0, actions)
    try:
        llm.answer = (200, json.dumps(tool_call("order_status", order="83016")).encode(), 0.0)
        lines = ["hello", "[secret]", "the parcel thing, 83016"]
        assert await brain.choose(flow, lines) == Choice("order_status", {"order": "83016"})
        headers, body = llm.asked[-1]
        assert headers["Authorization"] == "Bearer llm-key"
        assert "Ccengine-Signature" not in headers  # the action secret is not the LLM's
        assert body["model"] == "small-model" and body["temperature"] == 0
        assert [m["content"] for m in body["messages"][1:]] == lines
        assert {t["function"]["name"] for t in body["tools"]} == {i.name for i in flow.intents}
        for answer in (
            (200, json.dumps(tool_call("wire_money", to="me")).encode(), 0.0),  # invented
            (200, b'{"choices": [{"message": {"content": "Sure, your refund is done!"}}]}', 0.0),
            (200, b"not json", 0.0),
            (500, b"{}", 0.0),
            (200, json.dumps(tool_call("order_status")).encode(), 2.0),  # past its timeout
        ):
            llm.answer = answer
            assert await brain.choose(flow, ["anything"]) == Choice(None, {})
    finally:
        await actions.close()
