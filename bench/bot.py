"""The virtual agent's benchmark (`make bench` prints these tables).

Containment: 20 scripted requests (``REQUESTS``) to the example flow
(deploy/flows/example.yaml) with the caller-facing articles of deploy/knowledge/, said
by piper and heard by the engine's recognizer at 16 kHz and over a phone line, walked
through the dialog in-process, each follow-up said when the agent asks for it. The
callers' record is known (caller ID): an order's status is told once they say their
PIN, which the bench checks in place of the customers table. A
request is *contained* when the agent finished it without a person, and *right* when
that is what should happen (asking for a person, a bill dispute or a cancellation
should reach one). The order system answers in-process here. Baseline, same run: the
key menu, which contains nothing.

CPU per bot turn: ``time.process_time`` of the dialog's reading of each heard line;
baseline, the escalation rules on the same lines (which run on every utterance anyway).

Latency, through a real engine process and aiortc callers in conversation with it
(tests/bot_peers.py), against a stand-in order system over HTTP: from the call's answer
to the first audio of the greeting; from the end of the caller's speech to the first
audio of the answer, without an action (a knowledge-base answer) and with one (the
order status; the callers come from the business's app with its signed token, so they
are verified and no PIN is asked). Baseline, same calls: from the end of speech to the
final transcript reaching the caller's event stream (what any reply waits for).

    python -m bench.bot [--calls 8] [--skip-live]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import numpy as np

from engine.assist.knowledge import KnowledgeBase, load_articles
from engine.bot.dialog import (
    AskKnowledge,
    CallAction,
    CheckIdentity,
    Dialog,
    End,
    HandOff,
    Known,
    Output,
    Say,
)
from engine.bot.flows import Flow, load_flows
from engine.bot.stage import spoken_answer
from engine.escalation import CallEscalation, Utterance, default_rules
from media.audio import AnalysisResampler
from media.wavtrack import read_wav_mono
from tests import speech

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "deploy" / "flows"
KNOWLEDGE = ROOT / "deploy" / "knowledge"
GREETING_GOAL, ANSWER_GOAL = 1.0, 0.8  # seconds (issue 15): greeting, answer p50
APP_KEY = "bench-app-signing-key-0123456789abcdef"  # the app's customer tokens (live part)


@dataclass(frozen=True)
class Request:
    lines: tuple[str, ...]  # the first line, then each answer when the agent asks
    person: bool  # whether it should reach a person


PIN = "1234"  # the callers' PIN (their record is found by caller ID: asked for the PIN only)
REQUESTS = [
    Request(
        ("Hi, where is my order?", "It's eight three zero one six.", "Yes.", "1 2 3 4."), False
    ),
    Request(
        (
            "I'm calling to track my order, it's 4 5 1 2 9.",
            "Yes, that's right.",
            "One two three four.",
        ),
        False,
    ),
    Request(
        ("Has my order shipped yet?", "Two two seven one four.", "Correct.", "It's 1234."), False
    ),
    Request(("My parcel has not arrived.", "It's 6 0 3 3 8.", "Yes.", "1, 2, 3, 4."), False),
    Request(
        ("When will my order arrive? The number is 9 1 4 0 2.", "Yep.", "My PIN is 1 2 3 4."),
        False,
    ),
    Request(
        ("Can you check my order status please?", "Seven seven one two five.", "Yes.", "1234."),
        False,
    ),
    Request(
        ("Hello, I want to know where my order is.", "It's 3 0 9 1 7.", "That's right.", "1234."),
        False,
    ),
    Request(("What are your opening hours?",), False),
    Request(("When are you open on Sunday?",), False),
    Request(("What time do you close today?",), False),
    Request(("How do I return an item?",), False),
    Request(("I want to send something back, what is your returns policy?",), False),
    Request(("Can I speak to a person please?",), True),
    Request(("I need to talk to an agent.",), True),
    Request(("Get me a real person.",), True),
    Request(("I was charged twice this month.",), True),
    Request(("I have a question about my bill.",), True),
    Request(("I want to cancel my subscription.",), True),
    Request(("I'd like to change my address.", "I moved house last week."), True),
    Request(("My internet keeps dropping out.", "The connection is really slow."), True),
]
STATUS = {"status": "out for delivery", "eta": "Friday"}


def hear(text: str, band: str, work: Path) -> str:
    wav = speech.piper_script([text], work / "line.wav")
    if band == "phone":
        wav = speech.phone_line(wav, work / "phone.wav")
    pcm, rate = read_wav_mono(str(wav))
    rec = speech.english().create()
    for frame in AnalysisResampler().push(pcm, rate):
        rec.accept(frame.to_bytes())
    return str(rec.finish().text)


def walk(flow: Flow, kb: KnowledgeBase, heard: list[str], cpu: list[float]) -> str:
    """One request through the dialog: "contained", "person" or "unfinished"."""
    d = Dialog(flow, known=Known(customer_id="c-1"))
    d.start()
    for line in heard:
        t0 = time.process_time()
        out: list[Output] = d.heard(line)
        cpu.append(1000 * (time.process_time() - t0))
        while True:  # what takes no caller: an action's answer, an article
            if (check := next((o for o in out if isinstance(o, CheckIdentity)), None)) is not None:
                out = d.checked("ok" if check.value == PIN else "wrong", "c-1")
            elif any(isinstance(o, CallAction) for o in out):
                out = d.action_done(STATUS)
            elif (ask := next((o for o in out if isinstance(o, AskKnowledge)), None)) is not None:
                found = kb.suggest(ask.question, k=1)
                out = d.answered(spoken_answer(found[0].answer) if found else None)
            else:
                break
        if any(isinstance(o, HandOff) for o in out):
            return "person"
        if any(isinstance(o, End) for o in out) or (d.done and d.task is None):
            return "contained"
        assert all(isinstance(o, Say) for o in out)
    return "unfinished"


def containment() -> None:
    flow = load_flows(FLOWS)[0]
    kb = KnowledgeBase(load_articles(KNOWLEDGE))
    rows, cpu, rules_cpu = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for band in ("wide", "phone"):
            contained = right = 0
            for r in REQUESTS:
                heard = [hear(line, band, work) for line in r.lines]
                outcome = walk(flow, kb, heard, cpu)
                contained += outcome == "contained"
                right += (outcome == "person") == r.person and outcome != "unfinished"
                rules = CallEscalation(default_rules())
                for i, line in enumerate(heard):
                    t0 = time.process_time()
                    rules.observe_utterance(Utterance(str(i), line, i, i + 1))
                    rules_cpu.append(1000 * (time.process_time() - t0))
                if (outcome == "person") != r.person or outcome == "unfinished":
                    should = "person" if r.person else "contained"
                    print(f"  {band}: {outcome}, should be {should}: {' / '.join(heard)}")
            rows.append((band, contained, right))
    n = len(REQUESTS)
    print(f"\n## Virtual agent: containment on {n} scripted requests (deploy/flows/example.yaml)\n")
    print("| heard at | contained | right outcome | baseline: key menu contained |")
    print("|---|---|---|---|")
    for band, contained, right in rows:
        print(f"| {band} | {contained}/{n} ({contained / n:.0%}) | {right}/{n} | 0/{n} |")
    print("\n| CPU per caller line | p50 | p95 |")
    print("|---|---|---|")
    for name, ms in (("the agent's reading (intent, slots)", cpu),
                     ("baseline: escalation rules", rules_cpu)):  # fmt: skip
        print(f"| {name} | {np.percentile(ms, 50):.2f} ms | {np.percentile(ms, 95):.2f} ms |")


async def live(calls: int) -> None:
    from tests.bot_peers import OrderSystem, Talk
    from tests.engine_proc import EngineProcess

    greet, plain, acted, finals = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp, OrderSystem() as orders:
        work = Path(tmp)
        flows = work / "flows"
        flows.mkdir()
        flow = (FLOWS / "example.yaml").read_text()
        (flows / "example.yaml").write_text(
            flow.replace("http://127.0.0.1:9000/orders/status", orders.url)
        )
        lines = {}
        for key, text in {"hours": "What are your opening hours?",
                          "order": "Where is my order? It's eight three zero one six.",
                          "yes": "Yes, that's right."}.items():  # fmt: skip
            pcm, _ = read_wav_mono(str(speech.piper_alone([text], work / f"{key}.wav")))
            lines[key] = pcm
        from tests.bot_peers import SECRET

        engine = EngineProcess(
            work / "engine",
            CCENGINE_BOT_FLOWS=str(flows),
            CCENGINE_BOT_ACTION_SECRET=SECRET,
            CCENGINE_KNOWLEDGE_BASE=str(KNOWLEDGE),
            CCENGINE_CUSTOMER_TOKEN_KEY=APP_KEY,
        ).start()
        try:
            for n in range(calls):
                talk = Talk(engine.url)
                # a new app user each call: none is greeted as a returning caller
                talk.caller.customer_token = jwt.encode(
                    {"sub": f"bench-{n}", "aud": "ccengine", "exp": int(time.time()) + 600},
                    APP_KEY,
                )
                try:
                    await talk.caller.dial()
                    answered = time.monotonic()
                    await talk.agent_done()
                    first = talk.first_loud_after(answered)
                    assert first is not None
                    greet.append(first - answered)
                    for key, into in (("hours", plain), ("order", None), ("yes", acted)):
                        seen = len(talk.caller.events)  # the final comes while it plays on
                        sent = await talk.say(lines[key])
                        ended = sent + talk.last_voice(lines[key])
                        await talk.agent_done()
                        reply = talk.first_loud_after(ended)
                        got = zip(talk.caller.events, talk.caller.events_at, strict=True)
                        final = next(
                            (at for i, (e, at) in enumerate(got)
                             if i >= seen and e["type"] == "transcript.final"),
                            None,
                        )  # fmt: skip
                        if into is not None and reply is not None:
                            into.append(reply - ended)
                        if final is not None:
                            finals.append(final - ended)
                finally:
                    await talk.caller.close()
        finally:
            engine.stop()

    def row(name: str, xs: list[float], goal: float | None) -> str:
        if not xs:
            return f"| {name} | – | – | 0 |"
        p50, p95 = statistics.median(xs), float(np.percentile(xs, 95))
        mark = "" if goal is None else (" ✓" if p50 <= goal else " ✗")
        return f"| {name} | {1000 * p50:.0f} ms{mark} | {1000 * p95:.0f} ms | {len(xs)} |"

    print(f"\n## Virtual agent: latency through a real engine, {calls} in-app calls\n")
    print("| from → to | p50 | p95 | n |")
    print("|---|---|---|---|")
    print(row("call answered → greeting heard", greet, GREETING_GOAL))
    print(row("end of speech → answer heard, no action", plain, ANSWER_GOAL))
    print(row("end of speech → answer heard, with action", acted, ANSWER_GOAL))
    print(row("baseline: end of speech → final transcript", finals, None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--skip-live", action="store_true")
    a = ap.parse_args()
    containment()
    if not a.skip_live:
        asyncio.run(live(a.calls))


if __name__ == "__main__":
    main()
