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

from engine.callstate import STATES

COPY = Path(__file__).parent.parent / "engine" / "web" / "static" / "callcopy.js"
# what a customer must never read: engine states, reason codes, staff words
INTERNAL = re.compile(
    r"bridged|queued|agent_hangup|callback_requested|no_media|chat_idle|_|recogni[sz]|"
    r"moonshine|vosk|escalat|\bnull\b|undefined|NaN|\(|\)",
    re.I,
)
PAGE_STATES = ("idle", "dialing", "chat", "failed")
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
          names: ["ann", "ann.smith", "BOB", "", null, "  eve "].map(c.agentName),
          bridged: c.sayState("bridged", {{ agent: c.agentName("ann") }}),
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
    assert said["bridged"] == "You're through to Ann"  # the engine names her "ann"


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
