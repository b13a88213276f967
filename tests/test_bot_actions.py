"""The virtual agent's actions against a real HTTP server standing in for the
business's system (engine/bot/actions.py): a good answer, and every way one can go
wrong, each a clear reason and never a hang or a crash."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.bot.actions import MAX_ANSWER_BYTES, ActionFailed, Actions
from engine.bot.agent import VirtualAgent
from engine.bot.dialog import CallAction, CheckIdentity, Dialog, Known, SendCode
from engine.bot.events import CodeSent, IdentityChecked
from engine.bot.flows import parse_flow
from engine.customers import CustomerIn, Customers
from engine.metrics import Metrics
from engine.store.db import Store
from engine.webhooks import verify
from tests.engine_proc import free_port
from tests.test_analysis import new_call
from tests.test_bot import SECURED

ANSWERS: dict[str, tuple[int, bytes, float]] = {  # path: status, body, delay
    "/ok": (200, b'{"status": "shipped"}', 0.0),
    "/error": (500, b'{"error": "db down"}', 0.0),
    "/html": (200, b"<html>maintenance</html>", 0.0),
    "/nested": (200, b"[" * 60_000, 0.0),  # under the size cap, past the stack
    "/huge": (200, b'"' + b"x" * (MAX_ANSWER_BYTES + 10) + b'"', 0.0),
    "/slow": (200, b"{}", 2.0),
    "/moved": (302, b"", 0.0),
    # the business's own verification check
    "/verify-ok": (200, b'{"verified": true, "customer_id": "crm-77"}', 0.0),
    "/verify-no": (200, b'{"verified": false}', 0.0),
    "/verify-locked": (200, b'{"verified": false, "locked": true}', 0.0),
    "/verify-odd": (200, b'{"verified": "yes"}', 0.0),
    # an id no column holds: the record the call knew stands
    "/verify-long": (200, b'{"verified": true, "customer_id": "' + b"x" * 100 + b'"}', 0.0),
    "/sms": (202, b"{}", 0.0),  # the business's SMS sender
}


@pytest.fixture(scope="module")
def system() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []  # (signature header, body)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append((self.headers.get("Ccengine-Signature", ""), body.decode()))
            status, answer, delay = ANSWERS[self.path]
            time.sleep(delay)
            self.send_response(status)
            if status == 302:
                self.send_header("Location", "/ok")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


def action(base: str, path: str, timeout: float = 1.0) -> CallAction:
    return CallAction("order_status", base + path, timeout, {"order": "83016"})


async def test_a_good_answer_is_its_json_and_the_request_is_signed(
    system: tuple[str, list[tuple[str, str]]],
) -> None:
    base, seen = system
    actions = Actions("s3cret")
    try:
        result = await actions.run("call-1", "+15550100", action(base, "/ok"), ("c-7", "pin"))
    finally:
        await actions.close()
    assert result == {"status": "shipped"}
    signature, body = seen[-1]
    assert verify("s3cret", signature, body.encode(), time.time())
    assert json.loads(body) == {
        "call_id": "call-1",
        "intent": "order_status",
        "slots": {"order": "83016"},
        "caller": "+15550100",
        "customer_id": "c-7",  # the system may check the order is this customer's
        "verified_by": "pin",
    }


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/error", "it answered 500"),
        ("/html", "its answer is not JSON"),
        ("/nested", "its answer is not JSON"),  # RecursionError in json, found in review
        ("/huge", "its answer is over 64 KiB"),
        ("/slow", "no answer within 1 s"),
        ("/moved", "it answered 302"),  # a redirect is not followed
        ("/closed", "could not be reached"),
    ],
)
async def test_what_goes_wrong_is_a_reason(
    system: tuple[str, list[tuple[str, str]]], path: str, reason: str
) -> None:
    base, _ = system
    if path == "/closed":
        base = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    actions = Actions(None)
    started = time.monotonic()
    try:
        with pytest.raises(ActionFailed, match=reason):
            await actions.run("call-1", None, action(base, path))
    finally:
        await actions.close()
    assert time.monotonic() - started < 1.9  # within the action's second, never a hang


@pytest.mark.parametrize(
    ("path", "outcome", "customer"),
    [
        ("/verify-ok", "ok", "crm-77"),
        ("/verify-no", "wrong", "c-1"),
        ("/verify-locked", "locked", "c-1"),
        ("/verify-odd", "failed", "c-1"),  # not a true/false: never taken as a yes
        ("/verify-long", "ok", "c-1"),
        ("/error", "failed", "c-1"),
        ("/slow", "failed", "c-1"),
    ],
)
async def test_a_flows_own_verification_check_is_asked_signed_and_never_logs_the_answer(
    system: tuple[str, list[tuple[str, str]]],
    path: str,
    outcome: str,
    customer: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``verify.action``: the business checks the PIN itself. Its answer is the
    outcome; anything but a clear true or false is a failure (an apology and a person),
    and the PIN is in the signed request only, never in a log line."""
    base, seen = system
    flow = parse_flow(
        SECURED.replace(
            "  max_attempts: 2\n",
            f"  max_attempts: 2\n  action:\n    url: {base}{path}\n    timeout: 1\n",
        ),
        "v.yaml",
    )
    agent = VirtualAgent([flow], Metrics(), "s3cret")
    call = new_call()
    call.bot = Dialog(flow, known=Known(customer_id="c-1"))
    check = CheckIdentity("pin", "583927", "c-1", None, 1)
    try:
        with caplog.at_level(logging.DEBUG):
            agent.act(call, check)
            await asyncio.wait_for(asyncio.gather(*call.tasks), 5)
    finally:
        await agent.close()
    answered = call.events.get_nowait()
    assert answered == IdentityChecked(outcome, customer, 1)  # type: ignore[arg-type]
    signature, body = seen[-1]
    assert verify("s3cret", signature, body.encode(), time.time())
    assert json.loads(body) == {
        "call_id": call.id,
        "customer_id": "c-1",
        "account": None,
        "factor": "pin",
        "value": "583927",
    }
    assert "583927" not in caplog.text


async def test_a_one_time_code_goes_to_the_phone_of_record_once_and_is_never_logged(
    system: tuple[str, list[tuple[str, str]]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The code is texted to the record's phone through the flow's sender (signed), is
    checked here in constant time, counts once and not after it ran out, and is in no
    log line. A record without a phone gets no code."""
    base, seen = system
    flow = parse_flow(
        SECURED.replace(
            "  factor: pin\n  length: 4\n  prompt: Please key in your four digit PIN.\n",
            f"  factor: otp\n  send_code:\n    url: {base}/sms\n",
        ),
        "otp.yaml",
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}")
    await store.open()
    customers = Customers(store)
    await customers.put("c-1", CustomerIn(name="Ann", phones=("+15550102030",)), by="t")
    await customers.put("c-2", CustomerIn(name="Bo"), by="t")
    agent = VirtualAgent([flow], Metrics(), "s3cret", customers)
    try:
        with caplog.at_level(logging.DEBUG, logger="engine"):
            call = new_call()
            call.bot = Dialog(flow)
            # the caller gave the number on their account: the record it finds gets it
            agent.act(call, SendCode(None, "15550102030"))
            await asyncio.wait_for(asyncio.gather(*call.tasks), 5)
            assert call.events.get_nowait() == CodeSent(True)
            signature, body = seen[-1]
            assert verify("s3cret", signature, body.encode(), time.time())
            sent = json.loads(body)
            code = sent["code"]
            assert (sent["customer_id"], sent["phone"]) == ("c-1", "+15550102030")
            assert re.fullmatch(r"\d{6}", code) and code in sent["text"]
            wrong = "000000" if code != "000000" else "111111"
            for value, expected in ((wrong, ("wrong", "c-1")), (code, ("ok", "c-1")),
                                    (code, ("wrong", None))):  # fmt: skip
                agent.act(call, CheckIdentity("otp", value, None, "15550102030", 1))
                await asyncio.wait_for(asyncio.gather(*call.tasks), 5)
                checked = call.events.get_nowait()
                assert (checked.outcome, checked.customer_id) == expected  # type: ignore[union-attr]
            # run out: the right code proves nothing
            call.otp = (code, time.monotonic() - 1, "c-1")
            agent.act(call, CheckIdentity("otp", code, None, None, 1))
            await asyncio.wait_for(asyncio.gather(*call.tasks), 5)
            assert call.events.get_nowait().outcome == "wrong"  # type: ignore[union-attr]
            # a record without a phone: no code, and the caller goes to a person
            other = new_call()
            other.bot = Dialog(flow)
            agent.act(other, SendCode("c-2", None))
            await asyncio.wait_for(asyncio.gather(*other.tasks), 5)
            assert other.events.get_nowait() == CodeSent(False)
    finally:
        await agent.close()
        await store.close()
    assert code not in caplog.text
