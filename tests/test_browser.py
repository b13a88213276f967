"""Real Chromium: the caller page, the live view and the agent desk, driven by Playwright.
Each browser's microphone is a WAV file, so the caller and the agent each need their own."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, Route, expect, sync_playwright

from tests import sipp, speech
from tests.engine_proc import PAGE_HEADERS, EngineProcess, free_port
from tests.sniff import RtpSniffer, voiced_seconds

pytestmark = [pytest.mark.browser, pytest.mark.integration]
CHROMIUM = "/usr/bin/chromium"
# what the desk says an angry caller who asks for a person escalated for
WHY_ESCALATED = re.compile("asked for a person|upset in consecutive utterances")


def chromium_args(microphone: Path, loop: bool = True) -> list[str]:
    """Chromium's flags for a test: its microphone is ``microphone`` (a WAV file),
    played from the page's getUserMedia on, again and again, or once then silence."""
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}{'' if loop else '%noloop'}",
    ]


def launch(p: Playwright, microphone: Path) -> Browser:
    return p.chromium.launch(executable_path=CHROMIUM, args=chromium_args(microphone))


@pytest.fixture
def browser(voices: dict[str, Path]) -> Iterator[Browser]:
    with sync_playwright() as p:
        b = launch(p, voices["calm"])
        try:
            yield b
        finally:
            b.close()


def test_call_link_puts_the_customer_through_to_the_agent(
    engine: EngineProcess, browser: Browser
) -> None:
    """Ann sends a customer a call link; the customer opens it in Chromium and presses
    Call: the call rings Ann at once, with the identity the link carries. The token
    leaves the address bar; a forged link is refused on the page."""
    engine.add_user("ann", "pw-ann-123")
    with httpx.Client(base_url=engine.url, timeout=30, headers=PAGE_HEADERS) as ann:
        assert ann.post("/api/v1/auth/login", json={"username": "ann", "password": "pw-ann-123"})
        for event in ("login", "available"):
            ann.post("/api/v1/agents/me/presence", json={"event": event}).raise_for_status()
        r = ann.post("/api/v1/call-links", json={"caller": "cust-77", "ttl_minutes": 30})
        assert r.status_code == 201, r.text
        link = r.json()
        assert link["url"].startswith(f"{engine.url}/call#invite=")
        context = browser.new_context(permissions=["microphone"])
        page = context.new_page()
        page.goto(link["url"])
        expect(page.get_by_test_id("notice")).to_contain_text("invited")
        assert "invite" not in page.url
        page.get_by_test_id("call").click()
        call: dict[str, object] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and call.get("state") not in ("queued", "bridged"):
            calls = ann.get("/api/v1/calls").json()["calls"]
            call = calls[0] if calls else {}
            time.sleep(0.3)
        me = ann.get("/api/v1/auth/me").json()
        agents = {a["username"]: a["presence"] for a in ann.get("/api/v1/agents").json()}
        page.get_by_test_id("hangup").click()
        forged = context.new_page()
        forged.goto(f"{engine.url}/call#invite=not-a-token")
        forged.get_by_test_id("call").click()
        expect(forged.get_by_test_id("error")).to_contain_text("not valid", timeout=20_000)
        context.close()
    assert call["caller"] == "cust-77" and call["state"] == "queued", call
    assert call["escalation_reason"] == "call link from ann"
    assert agents["ann"] == "ringing" and me["username"] == "ann"  # offered to her at once


def test_browser_call_shows_live_words(
    engine: EngineProcess, browser: Browser, output_dir: Path
) -> None:
    context = browser.new_context(permissions=["microphone"])
    caller = context.new_page()
    caller.goto(f"{engine.url}/call")
    caller.get_by_test_id("call").click()
    expect(caller.get_by_test_id("state")).to_have_attribute("data-state", "active", timeout=20_000)
    # which recognizer runs is for the staff (the call's view below), not the caller
    expect(caller.get_by_test_id("notice")).not_to_contain_text("moonshine")
    # the caller's own captions, from the event stream
    expect(caller.get_by_test_id("captions")).to_contain_text(
        "order", timeout=30_000, ignore_case=True
    )
    call_id = caller.evaluate("window.ccengineCallId")

    # the call's view is the staff's: a supervisor's sign-in, not the caller's cookie,
    # whose stream carries only what the caller page shows (no emotion, no assist)
    engine.add_user("lee", "pw-lee-1234", "--role", "supervisor")
    staff = browser.new_context()
    r = staff.request.post(
        f"{engine.url}/api/v1/auth/login", data={"username": "lee", "password": "pw-lee-1234"}
    )
    assert r.ok, r.text()
    live = staff.new_page()
    live.goto(f"{engine.url}/calls/{call_id}")
    expect(live.get_by_test_id("state")).to_contain_text("active")
    expect(live.get_by_test_id("meta")).to_contain_text("moonshine")
    # new words arrive live (the fake microphone loops the script)
    expect(live.get_by_test_id("transcript")).to_contain_text(
        "morning", timeout=40_000, ignore_case=True
    )
    expect(live.locator("[data-testid=call-emotion]")).to_have_count(1, timeout=20_000)
    expect(live.get_by_test_id("timeline")).not_to_be_empty()
    # the label comes with how sure it is and why: the words' reading, at least
    expect(live.get_by_test_id("last-emotion")).to_contain_text("% sure")
    expect(live.get_by_test_id("emotion-evidence")).to_contain_text("words read as")
    # agent assist: what the caller wants, and the article that answers it
    expect(live.get_by_test_id("summary")).to_contain_text("Caller:", timeout=20_000)
    expect(live.get_by_test_id("suggestions")).to_contain_text("Where is my order?")
    live.screenshot(path=str(output_dir / "live-view.png"), full_page=True)
    caller.screenshot(path=str(output_dir / "caller-page.png"), full_page=True)

    # the list of calls is for staff: a caller's browser is told to sign in
    index = context.new_page()
    index.goto(engine.url)
    expect(index.locator("#calls")).to_contain_text("Calls are private")
    staff = browser.new_context()
    engine.add_user("sue", "supervisor pw", "--role", "supervisor")
    r = staff.request.post(
        f"{engine.url}/api/v1/auth/login", data={"username": "sue", "password": "supervisor pw"}
    )
    assert r.ok, r.text()
    board = staff.new_page()
    board.goto(engine.url)
    expect(board.locator(f"a[href='/calls/{call_id}']")).to_have_count(1)
    staff.close()

    caller.get_by_test_id("hangup").click()
    expect(caller.get_by_test_id("state")).to_have_text("Call ended. Thank you for calling.")
    expect(live.get_by_test_id("state")).to_contain_text("ended (hangup)", timeout=15_000)
    live.screenshot(path=str(output_dir / "live-view-ended.png"), full_page=True)
    context.close()


MEDIA_BYTES = """async (pc, kind) => {
  let sent = 0, received = 0;
  (await pc.getStats()).forEach((r) => {
    if (r.kind !== kind) return;
    if (r.type === "outbound-rtp") sent += r.bytesSent;
    if (r.type === "inbound-rtp") received += r.bytesReceived;
  });
  return { sent, received };
}"""


def audio_flow(page: Page, peer: str, seconds: float = 2.0, kind: str = "audio") -> dict[str, int]:
    """Bytes of ``kind`` media sent and received by the page's peer over ``seconds``."""
    stats = f"() => ({MEDIA_BYTES})({peer}, '{kind}')"
    before = page.evaluate(stats)
    page.wait_for_timeout(seconds * 1000)
    after = page.evaluate(stats)
    return {k: after[k] - before[k] for k in ("sent", "received")}


def test_available_is_offered_only_once_the_desk_knows_the_presence(
    engine: EngineProcess, browser: Browser
) -> None:
    """On a slow network the desk still reads the agent's presence after signing in.
    The "Available" button used to show at once, so a click before the login reached
    the ACD was refused (an offline agent cannot go available) and left the agent away
    (a CI failure). The agent list is held back 1.5 s to open that window every time."""
    engine.add_user("cy", "pw-cy-123")
    page = browser.new_context(permissions=["microphone"]).new_page()

    def slow_agents(route: Route) -> None:
        time.sleep(1.5)
        route.continue_()

    page.route("**/api/v1/agents", slow_agents)
    page.goto(f"{engine.url}/agent")
    page.get_by_test_id("username").fill("cy")
    page.get_by_test_id("password").fill("pw-cy-123")
    page.get_by_test_id("sign-in").click()
    # no wait for "away": the click comes as soon as the button can be clicked
    page.get_by_test_id("go-available").click()
    expect(page.get_by_test_id("presence")).to_have_text("available")
    expect(page.get_by_test_id("desk-error")).to_have_text("")


def test_a_desk_that_cannot_read_the_presence_says_so(
    engine: EngineProcess, browser: Browser
) -> None:
    """The presence request fails (here: the network drops it). The desk used to stop
    there, its error in the hidden sign-in form; now it says so and loads the rest."""
    engine.add_user("di", "pw-di-123")
    page = browser.new_context(permissions=["microphone"]).new_page()
    page.route("**/api/v1/agents/me/presence", lambda route: route.abort())
    page.goto(f"{engine.url}/agent")
    page.get_by_test_id("username").fill("di")
    page.get_by_test_id("password").fill("pw-di-123")
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("desk-error")).to_contain_text("Your presence is unknown")
    expect(page.locator("#queue-card")).to_be_visible()
    expect(page.get_by_test_id("go-available")).to_be_hidden()


def test_agent_desk_answers_an_escalated_caller(
    engine: EngineProcess, tmp_path: Path, output_dir: Path
) -> None:
    """The whole story in two real browsers: Ann signs in and goes available; an upset
    caller asks for a person; Ann's desk rings with why; she answers, both hear each
    other (WebRTC stats), she sees both sides of the transcript, the emotion chart and
    a suggested answer; she hangs up and wraps up; all of it is stored."""
    engine.add_user("ann", "pw-ann-1", "--name", "Ann Lee")
    # the request comes first: the caller is upset from the first sentence, so the call
    # may be offered (and the announcement play over the caller) before a second one
    caller_wav = speech.piper_script(
        ["I am calling because my order never arrived, and this is ridiculous.",
         "I want to talk to a real person right now.",
         "I am really angry and fed up."],
        tmp_path / "caller.wav", speech.ANGRY_EFFECTS,
    )  # fmt: skip
    agent_wav = speech.piper_script(
        ["Hello, this is Ann from customer care.",
         "I am sorry about your order. I can help you with that right now."],
        tmp_path / "ann.wav",
    )  # fmt: skip
    with sync_playwright() as p:
        caller_browser, agent_browser = launch(p, caller_wav), launch(p, agent_wav)
        try:
            agent = agent_browser.new_context(permissions=["microphone"]).new_page()
            agent.goto(f"{engine.url}/agent")
            agent.get_by_test_id("username").fill("ann")
            agent.get_by_test_id("password").fill("wrong")
            agent.get_by_test_id("sign-in").click()
            expect(agent.get_by_test_id("login-error")).to_have_text("wrong username or password")
            agent.get_by_test_id("password").fill("pw-ann-1")
            agent.get_by_test_id("sign-in").click()
            expect(agent.get_by_test_id("presence")).to_have_text("away")
            agent.get_by_test_id("go-available").click()
            expect(agent.get_by_test_id("presence")).to_have_text("available")

            caller = caller_browser.new_context(permissions=["microphone"]).new_page()
            caller.goto(f"{engine.url}/call")
            caller.get_by_test_id("identity").fill("cust-42")
            caller.get_by_test_id("camera").check()
            caller.get_by_test_id("call").click()
            expect(agent.get_by_test_id("ring")).to_be_visible(timeout=60_000)
            expect(agent.get_by_test_id("preview")).to_contain_text("cust-42")
            # why, whichever rule saw it first: the caller is angry from the first
            # sentence, so two upset sentences may come before the request for a person
            expect(agent.get_by_test_id("preview")).to_contain_text(WHY_ESCALATED)
            expect(caller.get_by_test_id("state")).to_have_attribute("data-state", "queued")
            expect(caller.get_by_test_id("queue")).to_contain_text("in line")
            agent.screenshot(path=str(output_dir / "agent-ringing.png"), full_page=True)
            agent.get_by_test_id("with-camera").check()
            agent.get_by_test_id("accept").click()
            expect(agent.get_by_test_id("call-state")).to_have_text("bridged", timeout=20_000)
            expect(caller.get_by_test_id("state")).to_have_text("You're through to Ann")
            expect(caller.get_by_test_id("queue")).to_be_hidden()  # no stale place in line
            agent_flow = audio_flow(agent, "window.ccAgent.pc")
            caller_flow = audio_flow(caller, "window.ccengineCall.pc")
            print("agent:", agent_flow, "caller:", caller_flow)
            # Opus at speech rates is kilobytes a second; silence would be far less
            assert agent_flow["received"] > 3000 and agent_flow["sent"] > 3000
            assert caller_flow["received"] > 3000 and caller_flow["sent"] > 3000
            # both cameras, relayed by the engine: each side's video element shows a picture
            for page in (agent, caller):
                expect(page.get_by_test_id("remote-video")).to_be_visible(timeout=15_000)
                page.wait_for_function(
                    "document.querySelector('[data-testid=remote-video]').videoWidth > 0",
                    timeout=15_000,
                )
            agent_video = audio_flow(agent, "window.ccAgent.pc", kind="video")
            print("agent video:", agent_video)
            assert agent_video["received"] > 10_000 and agent_video["sent"] > 10_000

            transcript = agent.get_by_test_id("transcript")
            expect(transcript.locator(".line.final.caller").first).to_be_visible()
            expect(transcript.locator(".line.final.agent").first).to_be_visible(timeout=40_000)
            expect(agent.get_by_test_id("escalation-reason")).to_contain_text("Needs a person")
            expect(agent.get_by_test_id("summary")).to_contain_text("Caller:")
            expect(agent.get_by_test_id("suggestions")).to_contain_text("Where is my order?")
            expect(agent.locator("[data-testid=chart] circle").first).to_be_visible()
            # the angry caller's label, its confidence and the cues behind it
            expect(agent.get_by_test_id("last-emotion")).to_contain_text("% sure")
            # a cue group and its words, e.g. "words: hostile (ridiculous)"
            expect(agent.get_by_test_id("emotion-evidence")).to_contain_text(
                re.compile(r"words: \w+ \(")
            )
            agent.screenshot(path=str(output_dir / "agent-on-call.png"), full_page=True)
            call_id = agent.evaluate("window.ccAgent.callId")

            agent.get_by_test_id("hangup").click()
            expect(agent.get_by_test_id("wrapup")).to_be_visible()
            # the agent hung up: thanked, with no reason code
            expect(caller.get_by_test_id("state")).to_have_text(
                "Call ended. Thank you for calling.", timeout=15_000
            )
            expect(agent.get_by_test_id("presence")).to_have_text("wrap up")
            agent.get_by_test_id("disposition").select_option("resolved")
            agent.get_by_test_id("notes-input").fill("Order located; apologised.")
            agent.screenshot(path=str(output_dir / "agent-wrap-up.png"), full_page=True)
            agent.get_by_test_id("wrapup-submit").click()
            expect(agent.get_by_test_id("presence")).to_have_text("available")
            expect(agent.get_by_test_id("wrapup")).to_be_hidden()
        finally:
            caller_browser.close()
            agent_browser.close()
    record = httpx.get(f"{engine.url}/api/v1/calls/{call_id}", headers=engine.headers).json()
    assert record["disposition"] == "resolved" and record["caller"] == "cust-42"
    assert [(n["kind"], n["author"], n["text"]) for n in record["notes"]] == [
        ("wrap_up", "ann", "Order located; apologised.")
    ]
    assert {u["speaker"] for u in record["transcript"]} == {"caller", "agent"}
    assert record["end_reason"] == "agent_hangup"


def test_phone_caller_reaches_an_agent_in_the_browser(tmp_path: Path, output_dir: Path) -> None:
    """A SIPp phone asks for a person; Ben answers at the desk in Chromium. His browser
    receives the caller's audio (WebRTC stats), and the phone receives Ben's: the RTP
    reaching the phone's port is captured and recognised. Ben hangs up; the phone gets
    a BYE."""
    engine = EngineProcess(
        tmp_path / "engine",
        CCENGINE_SIP_TRUNKS='["127.0.0.1"]',
        CCENGINE_MEDIA_TIMEOUT="10",
    ).start()
    try:
        engine.add_user("ben", "pw-ben-1", "--name", "Ben Ode")
        caller_wav = speech.piper_script(
            ["My order never arrived, and this is ridiculous.",
             "I want to talk to a real person right now."],
            tmp_path / "caller.wav", speech.ANGRY_EFFECTS,
        )  # fmt: skip
        # a caller who keeps talking, as phones send audio all the time
        pcap, _, _ = sipp.phone_pcap(caller_wav, tmp_path / "caller.pcap", repeat=12)
        agent_wav = speech.piper_script(
            ["Hello, this is Ben from customer care.",
             "I can see your order and I will send a new one today."],
            tmp_path / "ben.wav",
        )  # fmt: skip
        scenario = sipp.call_scenario(sipp.play(pcap, 0), hangup="engine")
        with sync_playwright() as p:
            agent_browser = launch(p, agent_wav)
            try:
                agent = agent_browser.new_context(permissions=["microphone"]).new_page()
                agent.goto(f"{engine.url}/agent")
                agent.get_by_test_id("username").fill("ben")
                agent.get_by_test_id("password").fill("pw-ben-1")
                agent.get_by_test_id("sign-in").click()
                agent.get_by_test_id("go-available").click()
                expect(agent.get_by_test_id("presence")).to_have_text("available")
                media_port = free_port()
                heard = RtpSniffer(media_port)
                phone, base = sipp.start(
                    scenario, tmp_path / "sipp", engine.sip, timeout=150, media_port=media_port
                )
                expect(agent.get_by_test_id("ring")).to_be_visible(timeout=60_000)
                expect(agent.get_by_test_id("preview")).to_contain_text("15551230001")
                expect(agent.get_by_test_id("preview")).to_contain_text(WHY_ESCALATED)
                agent.get_by_test_id("accept").click()
                expect(agent.get_by_test_id("call-state")).to_have_text("bridged", timeout=20_000)
                bridged_at = time.monotonic()
                flow = audio_flow(agent, "window.ccAgent.pc", seconds=3.0)
                print("agent with a phone caller:", flow)
                assert flow["received"] > 3000 and flow["sent"] > 3000
                transcript = agent.get_by_test_id("transcript")
                expect(transcript.locator(".line.final.agent").first).to_be_visible(timeout=40_000)
                expect(transcript.locator(".line.final.agent")).to_contain_text(
                    ["customer care"],
                    timeout=30_000,
                    ignore_case=True,  # Moonshine may write "Customer Care"
                )
                agent.screenshot(path=str(output_dir / "agent-phone-call.png"), full_page=True)
                # long enough bridged for Ben to say both sentences (pauses included)
                agent.wait_for_timeout(max(0.0, 9.0 - (time.monotonic() - bridged_at)) * 1000)
                call_id = agent.evaluate("window.ccAgent.callId")
                agent.get_by_test_id("hangup").click()
                expect(agent.get_by_test_id("wrapup")).to_be_visible()
            finally:
                agent_browser.close()
        result = sipp.finish(phone, base)
        assert result.ok, result.output + result.errors
        assert "BYE sip:" in result.messages
        record = httpx.get(f"{engine.url}/api/v1/calls/{call_id}", headers=engine.headers).json()
        assert record["channel"] == "sip" and record["end_reason"] == "agent_hangup"
        received = heard.stop(since=bridged_at)

        print(f"once bridged, the phone heard {voiced_seconds(received):.1f} s of speech:",
              speech.recognise(received, 8000))  # fmt: skip
        # announcements stop when Ben answers: what the phone hears after that is Ben
        assert voiced_seconds(received) >= 2.0
    finally:
        engine.stop()


class StunServer:
    """A STUN server on the loopback (RFC 5389 Binding only) that counts who asked."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.asked: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from aioice import stun

        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
                request = stun.parse_message(data)
            except (TimeoutError, ValueError):
                continue
            if request.message_method != stun.Method.BINDING:
                continue
            self.asked.append(addr)
            response = stun.Message(
                stun.Method.BINDING, stun.Class.RESPONSE, request.transaction_id,
                {"XOR-MAPPED-ADDRESS": (addr[0], addr[1])},
            )  # fmt: skip
            response.add_fingerprint()
            self.sock.sendto(bytes(response), addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_caller_page_uses_the_configured_ice_servers(tmp_path: Path, browser: Browser) -> None:
    """The caller page's RTCPeerConnection gets the engine's configured STUN server (from
    GET /api/v1/ice-servers), asks it, and the call still goes through."""
    stun_server = StunServer()
    url = f"stun:127.0.0.1:{stun_server.port}"
    engine = EngineProcess(tmp_path / "engine", CCENGINE_ICE_SERVERS=f'[{{"urls": "{url}"}}]')
    engine.start()
    try:
        context = browser.new_context(permissions=["microphone"])
        page = context.new_page()
        page.goto(f"{engine.url}/call")
        page.get_by_test_id("call").click()
        expect(page.get_by_test_id("state")).to_have_attribute(
            "data-state", "active", timeout=20_000
        )
        given = page.evaluate("window.ccengineCall.pc.getConfiguration().iceServers")
        page.get_by_test_id("hangup").click()
        context.close()
    finally:
        engine.stop()
        stun_server.close()
    assert [s["urls"] for s in given] == [[url]], given
    assert stun_server.asked, "nobody asked the configured STUN server"
