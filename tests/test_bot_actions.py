"""The virtual agent's actions against a real HTTP server standing in for the
business's system (engine/bot/actions.py): a good answer, and every way one can go
wrong, each a clear reason and never a hang or a crash."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.bot.actions import MAX_ANSWER_BYTES, ActionFailed, Actions
from engine.bot.dialog import CallAction
from engine.webhooks import verify
from tests.engine_proc import free_port

ANSWERS: dict[str, tuple[int, bytes, float]] = {  # path: status, body, delay
    "/ok": (200, b'{"status": "shipped"}', 0.0),
    "/error": (500, b'{"error": "db down"}', 0.0),
    "/html": (200, b"<html>maintenance</html>", 0.0),
    "/nested": (200, b"[" * 60_000, 0.0),  # under the size cap, past the stack
    "/huge": (200, b'"' + b"x" * (MAX_ANSWER_BYTES + 10) + b'"', 0.0),
    "/slow": (200, b"{}", 2.0),
    "/moved": (302, b"", 0.0),
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
