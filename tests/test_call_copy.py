"""What the caller page says (engine/web/static/callcopy.js), run under node: every state
a call can be in, its place in line, a callback and every way a call ends, in plain
sentences for customers.

The failure this guards: the page showed engine words ("bridged"), reason codes
("Call ended (agent_hangup)") and operator advice (which recognizer runs) to callers,
and "Number 1 in line" after the call had left the line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from engine.api.schemas import CallbackIn
from engine.callstate import STATES

COPY = Path(__file__).parent.parent / "engine" / "web" / "static" / "callcopy.js"
# what a customer must never read: engine states, reason codes, staff words
INTERNAL = re.compile(
    r"bridged|queued|agent_hangup|callback_requested|no_media|chat_idle|_|recogni[sz]|"
    r"moonshine|vosk|escalat|\bnull\b|undefined|NaN|\(|\)",
    re.I,
)
PAGE_STATES = ("idle", "dialing", "chat", "failed")
# (number, required): a valid few, a wrong few, then empty when required and when not
PHONES = [
    *[(n, True) for n in ("+44 20 7946 0018", "(020) 7946-0018", "555.0100.12", "123456")],
    *[(n, True) for n in ("Kim", "12345", "+1 (55) 5", "call me", "1" * 31, "+44 20 7946 0018 x")],
    ("", True),
    ("", False),
]
REASONS = ("hangup", "agent_hangup", "callback_requested", "no_media", "chat_idle",
           "caller_cancelled", "shutdown", None)  # fmt: skip


def run(script: str) -> Any:
    """The result of ``script`` (a module that sets ``out``), as JSON from node."""
    node = shutil.which("node")
    assert node is not None, "node is needed (make sysdeps installs it)"
    module = f"import * as c from {json.dumps(COPY.as_uri())};\nlet out;\n{script}\n"
    module += "process.stdout.write(JSON.stringify(out));"
    done = subprocess.run(
        [node, "--input-type=module", "-e", module], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def said() -> dict[str, Any]:
    """Everything the page can say, in one node run."""
    states = [*STATES, *PAGE_STATES]
    return run(  # type: ignore[no-any-return]
        f"""
        const states = {json.dumps(states)}, reasons = {json.dumps(REASONS)};
        const contexts = [{{}}, {{ chat: true }}, {{ assistant: true }},
          {{ chat: true, assistant: true }}, {{ agent: "Ann" }}, {{ chat: true, agent: "Ann" }}];
        out = {{
          states: states.flatMap((s) => contexts.map((ctx) => [s, ctx, c.sayState(s, ctx)])),
          ended: reasons.flatMap((r) => [false, true].map((chat) =>
            [r, chat, c.sayEnded(r, {{ chat, contact: "+44 20 7946 0018" }})])),
          line: [
            c.sayLine({{ position: 2, expected_wait: 170, callback_offered: false }}),
            c.sayLine({{ position: 1, expected_wait: 20, callback_offered: true }}),
            c.sayLine({{ position: 4, expected_wait: null, callback_offered: false }}),
          ],
          callback: [c.sayCallback("+44 20 7946 0018"), c.sayCallback(null), c.sayCallback("")],
          names: ["Ann Smith", "ann", "BOB", "", null, "  eve  adams "].map(c.agentName),
          bridged: c.sayState("bridged", {{ agent: c.agentName("Ann Smith") }}),
          nameless: c.sayState("bridged", {{ agent: c.agentName(null) }}),
          phones: {json.dumps(PHONES)}.map(([n, required]) => c.phoneProblem(n, required)),
        }};
        """
    )


def test_every_state_is_a_plain_sentence(said: dict[str, Any]) -> None:
    for state, ctx, text in said["states"]:
        assert text and not INTERNAL.search(text), (state, ctx, text)
    by = {(s, json.dumps(ctx, sort_keys=True)): text for s, ctx, text in said["states"]}
    assert by[("connecting", "{}")] == "Connecting…"
    assert by[("active", '{"assistant": true}')] == "You're talking with our assistant"
    assert by[("bridged", '{"agent": "Ann"}')] == "You're through to Ann"
    assert by[("bridged", '{"agent": "Ann", "chat": true}')] == "You're chatting with Ann"
    assert by[("held", "{}")] == "On hold — we'll be right back"
    assert by[("ended", "{}")] == "Call ended. Thank you for calling."
    # the engine names her by her display name (agent_name), never her login
    assert said["bridged"] == "You're through to Ann"
    assert said["nameless"] == "You're talking with one of our team"


def test_every_ending_thanks_without_a_reason_code(said: dict[str, Any]) -> None:
    for reason, _chat, text in said["ended"]:
        assert not INTERNAL.search(text), (reason, text)
        assert ("Thank you" in text and text.endswith(".")) or reason == "no_media", text
    ended = {(r, chat): text for r, chat, text in said["ended"]}
    assert ended[("agent_hangup", False)] == "Call ended. Thank you for calling."
    assert ended[("callback_requested", False)] == (
        "We'll call you back at +44 20 7946 0018. Thank you for calling."
    )
    assert ended[("hangup", True)] == "Chat ended. Thank you for contacting us."


def test_the_line_says_place_and_wait_in_words(said: dict[str, Any]) -> None:
    assert said["line"] == [
        "You're number 2 in line, about 3 minutes.",
        "You're next in line, about 1 minute. You can ask us to call you back instead.",
        "You're number 4 in line. Everyone is busy right now: we'll be with you as soon as we can.",
    ]
    assert said["callback"] == [
        "We'll call you back at +44 20 7946 0018.",
        "We'll call you back as soon as someone is free.",
        "We'll call you back as soon as someone is free.",
    ]
    assert said["names"] == ["Ann", "Ann", "BOB", None, None, "Eve"]


def test_a_callback_number_is_a_phone_number(said: dict[str, Any]) -> None:
    """The failure: the callback form sent the caller's name ("Kim") when the number was
    left empty, and any text as a number. The page checks what the engine checks."""
    problems = dict(zip([n for n, _ in PHONES], said["phones"], strict=True))
    for ok in ("+44 20 7946 0018", "(020) 7946-0018", "555.0100.12", "123456"):
        assert problems[ok] is None, ok
    for bad in ("Kim", "12345", "+1 (55) 5", "call me", "1" * 31, "+44 20 7946 0018 x"):
        assert problems[bad] == "Please enter a phone number, like +44 20 7946 0018.", bad
    assert said["phones"][-2:] == ["Please enter the number we should call you back on.", None]
    # the engine agrees with the page on every number (a 422 that says so, otherwise)
    for number, problem in problems.items():
        if not number:
            continue
        try:
            CallbackIn.model_validate({"contact": number})
            refused = None
        except ValidationError as exc:
            refused = exc.errors()[0]["msg"]
        assert (problem is None) == (refused is None), (number, refused)
        assert refused is None or "must be a phone number" in refused
    assert CallbackIn.model_validate({"contact": None}).contact is None  # the caller's own
