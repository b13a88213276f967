"""The engine's pages in Chromium, against one engine process and one browser:

* an axe-core audit of every page: none may have a "serious" or "critical" violation
  (contrast, names of buttons and fields, ARIA misuse...). axe-core comes from npm,
  pinned in tests/web/package-lock.json (``make test`` runs ``npm ci`` there), and is
  injected into each page as it is. A page someone adds is one line of ``PAGES``;
* the one event client (engine/web/static/events.js) resuming after a dropped
  connection, and saying when it is refused; waiting as a 429 says, and not forever
  for the answer that says why;
* the caller page's callback: asked once, then said in words, never offered again; a
  number that is no phone number refused in plain words; a Call that fails during a
  chat leaves the chat as it was;
* a caller's own stream (SSE and WebSocket) without what is for staff only.

The failures these guard: mood badges at 2.75:1, a keypad that announced nothing,
pages nobody had audited; a caller page that kept offering a callback it had booked,
booked one on the caller's name, showed "[object Object]", or lost its chat's status
after a failed Call; an event client that hammered a throttled engine or hung; a
caller's stream that carried their escalation, mood and the agents' notes.

Without axe-core only the audit fails: the other checks need no npm.

Every page is audited in a state worth looking at: the calls list with a call in it,
the desk with a chat on screen, the caller page in a chat, the call's view with a
transcript and an escalation. The violations of every impact are kept in
test-output/a11y.json (the moderate and minor ones are not failures, but are worth a
look), with a screenshot of each page."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets.sync.client
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect, sync_playwright

from tests import speech
from tests.engine_proc import EngineProcess
from tests.test_browser import launch
from tests.test_web_security import LIGHT

# what a caller's own stream may carry (engine/api/streams.py), spelled out again here
CALLER = {"call.state_changed", "transcript.partial", "transcript.final", "bot.said",
          "queue.updated", "call.verified", "call.verification_failed", "dtmf.received",
          "callback.requested", "call.ended"}  # fmt: skip

pytestmark = [pytest.mark.browser, pytest.mark.integration]
AXE = Path(__file__).parent / "web" / "node_modules" / "axe-core" / "axe.min.js"
FAILING = ("serious", "critical")
PERSON = "I want to speak to a person please"
AGENT, SUPERVISOR = ("ann", "pw-ann-123"), ("sue", "pw-sue-123")
WATCHER = ("sam", "pw-sam-123")  # a supervisor of their own, signed out by a test


@dataclass
class Site:
    """The engine, a browser on it, and what the pages show: a chat that asked for a
    person (queued until Ann's desk opens) and a context per kind of visitor."""

    engine: EngineProcess
    browser: Browser
    call_id: str
    caller_token: str  # the chat's, as its caller's page holds it
    contexts: dict[str, BrowserContext]
    report: dict[str, Any]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, output_dir: Path) -> Iterator[Site]:
    engine = EngineProcess(tmp_path_factory.mktemp("a11y") / "engine", **LIGHT).start()
    report: dict[str, Any] = {}
    try:
        engine.add_user(*AGENT)
        engine.add_user(*SUPERVISOR, "--role", "supervisor")
        engine.add_user(*WATCHER, "--role", "supervisor")
        with httpx.Client(base_url=engine.url, timeout=30) as http:
            chat = http.post("/api/v1/chats", json={"language": "en", "caller": "Kim"}).json()
            token = {"Authorization": f"Bearer {chat['caller_token']}"}
            for text in ("Where is my order?", PERSON):
                r = http.post(
                    f"/api/v1/calls/{chat['call_id']}/messages", json={"text": text}, headers=token
                )
                assert r.status_code == 204, r.text
        mic = speech.write_wav(
            tmp_path_factory.mktemp("mic") / "silence.wav", np.zeros(48000, np.int16), 48000
        )
        with sync_playwright() as p:
            browser = launch(p, mic)
            try:
                # the audit's script is injected as it is: the pages' content security
                # policy allows no inline script, which is right for them, not for axe
                contexts = {
                    who: browser.new_context(bypass_csp=True, permissions=["microphone"])
                    for who in ("anonymous", "agent", "supervisor")
                }
                sign_in(contexts["supervisor"], engine.url, *SUPERVISOR)
                yield Site(engine, browser, chat["call_id"], chat["caller_token"], contexts, report)
            finally:
                browser.close()
    finally:
        engine.stop()
        (output_dir / "a11y.json").write_text(json.dumps(report, indent=1))


def sign_in(context: BrowserContext, url: str, username: str, password: str) -> None:
    r = context.request.post(
        f"{url}/api/v1/auth/login", data={"username": username, "password": password}
    )
    assert r.ok, r.text()


# -- each page, made ready to audit --------------------------------------------------


def calls_list(page: Page, site: Site) -> None:
    expect(page.locator(f"a[href='/calls/{site.call_id}']")).to_have_count(1, timeout=15_000)


def calls_list_signed_out(page: Page, site: Site) -> None:
    expect(page.locator("#calls")).to_contain_text("Calls are private", timeout=15_000)


def caller_page(page: Page, site: Site) -> None:
    expect(page.get_by_test_id("call")).to_be_enabled()


def caller_in_a_chat(page: Page, site: Site) -> None:
    page.get_by_test_id("chat").click()
    page.get_by_test_id("message").fill("What are your opening hours?")
    page.get_by_test_id("send").click()
    expect(page.locator("[data-testid=captions] .line")).not_to_have_count(0, timeout=15_000)


def desk_signed_out(page: Page, site: Site) -> None:
    expect(page.get_by_test_id("login")).to_be_visible(timeout=15_000)


def desk_on_a_chat(page: Page, site: Site) -> None:
    """Ann signs in and goes available: the waiting chat rings her; she takes it."""
    page.get_by_test_id("username").fill(AGENT[0])
    page.get_by_test_id("password").fill(AGENT[1])
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("presence")).to_have_text("away", timeout=15_000)
    page.get_by_test_id("go-available").click()
    expect(page.get_by_test_id("ring")).to_be_visible(timeout=20_000)
    page.get_by_test_id("accept").click()
    expect(page.get_by_test_id("call-state")).to_have_text("bridged", timeout=20_000)
    expect(page.get_by_test_id("transcript")).to_contain_text(PERSON)


def call_view(page: Page, site: Site) -> None:
    expect(page.get_by_test_id("transcript")).to_contain_text(PERSON, timeout=15_000)


def api_docs(page: Page, site: Site) -> None:
    """Swagger UI, one operation open: its parameters, responses and schemas too."""
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("ccengine", timeout=20_000)
    page.locator('.opblock-get .opblock-summary-path[data-path="/api/v1/calls"]').click()
    expect(page.locator(".opblock.is-open .responses-wrapper")).to_contain_text("200")


def api_reference(page: Page, site: Site) -> None:
    """ReDoc, one operation's 200 response open: its schema too."""
    expect(page.locator("h1").first).to_contain_text("ccengine", timeout=20_000)
    operation = page.locator('[id="operation/list_calls_api_v1_calls_get"]')
    operation.get_by_role("button", name=re.compile(r"^200 ")).click()
    expect(operation).to_contain_text("Response Schema")


def supervisor_console(page: Page, site: Site) -> None:
    """The wallboard, signed in and following the events."""
    expect(page.get_by_test_id("who")).to_contain_text("(supervisor)", timeout=15_000)
    expect(page.get_by_test_id("stream")).to_have_text("live", timeout=15_000)
    expect(page.get_by_test_id("total-live")).not_to_be_empty()


def reports(page: Page, site: Site) -> None:
    """Today's report, its charts drawn."""
    expect(page.get_by_test_id("report-status")).not_to_be_empty(timeout=15_000)
    expect(page.get_by_test_id("chart-volume").locator("svg.main-svg").first).to_be_visible()


def admin(page: Page, site: Site) -> None:
    """The people tab, with Ann in it."""
    expect(page.get_by_test_id("console")).to_be_visible(timeout=15_000)
    expect(page.get_by_test_id("people-table")).to_contain_text(AGENT[0])


def page_loaded(page: Page, site: Site) -> None:
    """For a new page's row until it has its own: loaded, nothing waited for."""
    expect(page.locator("main, body").first).to_be_visible()


@dataclass(frozen=True)
class Audit:
    name: str
    path: str  # {call} is the chat's id
    who: str  # anonymous, agent, supervisor: whose browser context opens it
    ready: Callable[[Page, Site], None]
    optional: bool = False  # a page being built elsewhere: skipped while it is a 404


# Order matters once: the desk takes the chat before the call's view shows it bridged.
PAGES = [
    Audit("calls list, signed out", "/", "anonymous", calls_list_signed_out),
    Audit("calls list", "/", "supervisor", calls_list),
    Audit("caller page", "/call", "anonymous", caller_page),
    Audit("caller page in a chat", "/call", "anonymous", caller_in_a_chat),
    Audit("desk, signed out", "/agent", "anonymous", desk_signed_out),
    Audit("desk on a chat", "/agent", "agent", desk_on_a_chat),
    Audit("call view", "/calls/{call}", "supervisor", call_view),
    Audit("API docs", "/docs", "anonymous", api_docs),
    Audit("API reference", "/redoc", "anonymous", api_reference),
    Audit("supervisor console", "/supervisor", "supervisor", supervisor_console),
    Audit("reports", "/reports", "supervisor", reports),
    Audit("admin", "/admin", "supervisor", admin),
    # a page being built elsewhere: Audit(name, path, who, page_loaded, optional=True)
]


@pytest.mark.parametrize("audit", PAGES, ids=[a.name for a in PAGES])
def test_no_serious_accessibility_violations(site: Site, audit: Audit, output_dir: Path) -> None:
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `make test` (or `cd tests/web && npm ci`)")
    url = site.engine.url + audit.path.format(call=site.call_id)
    page = site.contexts[audit.who].new_page()
    try:
        response = page.goto(url)
        assert response is not None
        if audit.optional and response.status == 404:
            pytest.skip(f"{audit.path} is not built yet")
        assert response.ok, f"{url}: HTTP {response.status}"
        audit.ready(page, site)
        started = time.monotonic()
        page.add_script_tag(path=AXE)
        result = page.evaluate(
            "async () => await axe.run(document, { resultTypes: ['violations'] })"
        )
        took = time.monotonic() - started
        violations = [
            {
                "rule": v["id"],
                "impact": v["impact"],
                "help": v["help"],
                "nodes": [(n["target"], n["failureSummary"]) for n in v["nodes"]],
            }
            for v in result["violations"]
        ]
        site.report[audit.name] = {"url": url, "seconds": round(took, 2), "violations": violations}
        slug = audit.name.replace(",", "").replace(" ", "-")
        page.screenshot(path=str(output_dir / f"a11y-{slug}.png"), full_page=True)
        serious = [v for v in violations if v["impact"] in FAILING]
        assert serious == [], json.dumps(serious, indent=1)
    finally:
        page.close()


class Relay:
    """A TCP relay in front of the engine whose connections a test can cut, as a
    network that drops does: the browser sees its streams end without a goodbye."""

    def __init__(self, port: int) -> None:
        self.upstream = ("127.0.0.1", port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed
            while True:
                client, _ = self.server.accept()
                threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream) as engine:
            self.open += [client, engine]
            back = threading.Thread(target=self._pump, args=(engine, client), daemon=True)
            back.start()
            self._pump(client, engine)
            back.join()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for s in (a, b):  # either side gone: the other goes too
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        for s in self.open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.open = []

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_the_event_client_resumes_by_id_and_says_when_it_is_refused(site: Site) -> None:
    """The pages' one event client (engine/web/static/events.js) is an EventSource on
    the call's SSE stream, with the page's sign-in cookie and no token in its URL. Cut
    off (its connection dropped), it comes back by itself with the id of the last event
    it had (Last-Event-ID): nothing is missed or shown twice. Signed out, its stream
    ends and it says it is refused rather than retrying forever.

    The call's view opens no stream of everything for a supervisor who is not on the
    call: the browser's 6 connections per site went on streams nobody needed."""
    relay = Relay(int(site.engine.url.rsplit(":", 1)[1]))
    context = site.browser.new_context()
    try:
        sign_in(context, relay.url, *WATCHER)
        page = context.new_page()
        streams: list[dict[str, str]] = []
        everything: list[str] = []
        events_path = f"/api/v1/calls/{site.call_id}/events"

        def on_request(request: Any) -> None:
            if request.url.endswith(events_path) or events_path + "?" in request.url:
                streams.append({"url": request.url, **request.all_headers()})
            elif "/api/v1/events" in request.url:
                everything.append(request.url)

        page.on("request", on_request)
        page.goto(f"{relay.url}/calls/{site.call_id}")
        status = page.locator("#stream")
        expect(status).to_have_text("stream: live", timeout=15_000)
        lines = page.locator("[data-testid=transcript] .line")
        expect(lines.filter(has_text=PERSON)).to_have_count(1)
        before = lines.count()
        assert streams and streams[0]["url"].endswith(events_path), streams  # no token
        assert "last-event-id" not in streams[0], streams[0]
        expect(page.get_by_test_id("monitor")).to_be_visible()  # a supervisor, not on the call
        assert everything == [], everything

        relay.cut()
        expect(status).to_have_text("stream: reconnecting", timeout=15_000)
        expect(status).to_have_text("stream: live", timeout=15_000)  # retry: 2000 ms
        resumed = streams[-1]
        assert len(streams) >= 2 and int(resumed.get("last-event-id", "0")) > 0, streams
        assert lines.count() == before  # the replay brought nothing twice

        r = context.request.post(
            f"{relay.url}/api/v1/auth/logout", headers={"X-Requested-With": "t"}
        )
        assert r.ok, r.text()
        expect(status).to_have_text(re.compile("^stream: refused: .*sign in"), timeout=15_000)
    finally:
        context.close()
        relay.close()


def test_a_waiting_caller_books_a_callback_once_and_is_told_when(site: Site) -> None:
    """A chat that asks for a person waits in line (nobody is free); the page says its
    place in words and offers a callback; booked, the offer goes, the page says where
    we will call, and the chat ends with thanks: no place in line is left on screen.

    On the way: a Call the engine refuses during the chat leaves the chat as it was
    (its state, Hang up, and its own updates still shown); the callback wants a phone
    number (the caller's name is no number), the engine's 422 is said in its words and
    a reply that is no JSON as a plain error, and a booking clears the last error."""
    page = site.contexts["anonymous"].new_page()
    try:
        page.goto(f"{site.engine.url}/call")
        state, line = page.get_by_test_id("state"), page.get_by_test_id("queue")
        error, hangup = page.get_by_test_id("error"), page.get_by_test_id("hangup")
        page.get_by_test_id("identity").fill("Kim")
        page.get_by_test_id("chat").click()
        open_chat = "Chat open: type your message below"  # "chat", then the call's "active"
        expect(state).to_have_text(open_chat, timeout=15_000)

        def refuse(route: Route) -> None:
            if route.request.method != "POST":
                route.fallback()
                return
            problem = {"title": "Forbidden", "detail": "calls are closed"}
            route.fulfill(status=403, content_type="application/problem+json", json=problem)

        page.route("**/api/v1/calls", refuse)
        page.get_by_test_id("call").click()
        expect(error).to_have_text(
            "Sorry, we couldn't connect your call: calls are closed", timeout=15_000
        )
        expect(state).to_have_text(open_chat)
        expect(hangup).to_be_enabled()
        page.unroute("**/api/v1/calls")

        page.get_by_test_id("message").fill(PERSON)
        page.get_by_test_id("send").click()
        expect(state).to_have_attribute("data-state", "queued", timeout=15_000)  # still heard
        expect(state).to_have_text("Waiting for the next available person")
        expect(line).to_have_text(re.compile(r"^You're (next|number \d+) in line"))

        number, book = page.get_by_test_id("callback-number"), page.get_by_test_id("callback")
        book.click()  # empty: a chat from this page has no number the engine knows
        expect(error).to_have_text("Please enter the number we should call you back on.")
        number.fill("Kim")
        book.click()
        expect(error).to_have_text("Please enter a phone number, like +44 20 7946 0018.")
        # the engine refuses what is no phone number too; the page says its words
        bearer = {"Authorization": f"Bearer {site.caller_token}"}
        refused = httpx.post(
            f"{site.engine.url}/api/v1/calls/{site.call_id}/callback",
            json={"contact": "Kim"}, headers=bearer, timeout=30,
        )  # fmt: skip
        assert refused.status_code == 422, refused.text
        assert "contact: Value error, must be a phone number" in refused.json()["detail"]
        replies = iter([(422, "application/problem+json", refused.text),
                        (502, "text/html", "<h1>Bad gateway</h1>")])  # fmt: skip

        def reply(route: Route) -> None:
            status, kind, body = next(replies)
            route.fulfill(status=status, content_type=kind, body=body)

        page.route("**/callback", reply)
        number.fill("+44 20 7946 0018")
        book.click()
        expect(error).to_have_text(
            "Sorry, we couldn't book the callback: must be a phone number: 6 to 30 digits,"
            " spaces and + ( ) . -, with 6 digits at least"
        )
        book.click()
        expect(error).to_have_text("Sorry, we couldn't book the callback: the service answered 502")
        page.unroute("**/callback")

        book.click()
        thanks = "We'll call you back at +44 20 7946 0018. Thank you for contacting us."
        expect(state).to_have_text(thanks, timeout=15_000)
        expect(page.get_by_test_id("callback-box")).to_be_hidden()
        expect(line).to_be_hidden()
        expect(error).to_have_text("")
    finally:
        page.close()


def test_the_event_client_waits_as_a_429_says_and_not_forever_for_why(site: Site) -> None:
    """The failures: throttled (429), the event client asked again after 500 ms whatever
    Retry-After said, with two requests a try (the stream and the GET asking why); and
    that GET had no timeout, so an engine that never answered it left the page
    "reconnecting" for good. Now a 429 waits its Retry-After and is asked again by the
    GET alone; a GET with no answer within its time counts as "try again"."""
    asked: dict[str, list[float]] = {"throttled": [], "silent": []}
    go_away = {"title": "Forbidden", "detail": "go away"}

    def throttled(route: Route) -> None:
        asked["throttled"].append(time.monotonic())
        if len(asked["throttled"]) <= 2:
            route.fulfill(status=429, headers={"Retry-After": "1"}, json={"detail": "slow down"})
        else:
            route.fulfill(status=403, json=go_away)

    def silent(route: Route) -> None:
        asked["silent"].append(time.monotonic())
        n = len(asked["silent"])
        if n == 2:
            return  # the GET asking why the stream failed: never answered
        route.fulfill(status=503 if n == 1 else 403, json=go_away)

    page = site.contexts["anonymous"].new_page()
    try:
        page.route("**/test-events/throttled*", throttled)
        page.route("**/test-events/silent*", silent)
        page.goto(f"{site.engine.url}/call")
        page.evaluate(
            """async () => {
              const { connectEvents } = await import("/static/events.js");
              window.said = { throttled: [], silent: [] };
              for (const name of Object.keys(window.said)) {
                connectEvents(`/test-events/${name}`, () => {}, {
                  askWithin: 1000, onStatus: (s) => window.said[name].push(s) });
              }
            }"""
        )
        page.wait_for_function(
            "() => Object.values(window.said).every((s) => s.some((x) => x.startsWith('refused')))",
            timeout=15_000,
        )
        said = page.evaluate("window.said")
        assert said["throttled"][-1] == said["silent"][-1] == "refused: go away", said
        stream, why, again = asked["throttled"]  # the stream, the GET, the GET once more
        assert again - why >= 0.9, asked  # Retry-After: 1
        assert len(asked["silent"]) == 4, asked  # stream, GET unanswered, stream, GET
    finally:
        page.close()


def test_a_callers_own_stream_has_nothing_for_staff_only(site: Site) -> None:
    """The failure: a caller's stream (their page's cookie or token, SSE or WebSocket)
    carried all of their call's events: the escalation's reason and evidence, their
    mood, the agent's assist, the agents' notes. A caller reads only what their page
    shows (engine/api/streams.py CALLER_EVENTS), in the same order with the same ids;
    staff read everything."""
    note = "Kim sounds like a chargeback risk"
    url, path = site.engine.url, f"/api/v1/calls/{site.call_id}/events"
    r = httpx.post(
        f"{url}/api/v1/calls/{site.call_id}/notes", json={"text": note},
        headers=site.engine.headers, timeout=30,
    )  # fmt: skip
    assert r.status_code == 201, r.text
    caller = {"Authorization": f"Bearer {site.caller_token}"}

    def sse(headers: dict[str, str]) -> list[dict[str, Any]]:
        """The replay of the call's stream: what comes before it goes quiet."""
        got: list[dict[str, Any]] = []
        timeout = httpx.Timeout(30, read=1.5)
        with httpx.stream("GET", url + path, headers=headers, timeout=timeout) as r:
            assert r.status_code == 200
            with contextlib.suppress(httpx.ReadTimeout):
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        got.append(json.loads(line.removeprefix("data: ")))
        return got

    def ws(headers: dict[str, str]) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        ws_url = url.replace("http", "ws", 1) + path
        with websockets.sync.client.connect(ws_url, additional_headers=headers) as sock:
            with contextlib.suppress(TimeoutError):
                while True:
                    got.append(json.loads(sock.recv(timeout=1.5)))
        return got

    staff = sse(site.engine.headers)
    kinds = {e["type"] for e in staff}
    assert {"escalation.raised", "call.annotated"} <= kinds, kinds
    assert note in json.dumps(staff)
    for read in (sse, ws):
        mine = read(caller)
        assert mine, read
        allowed = [e["id"] for e in staff if e["type"] in CALLER]
        assert [e["id"] for e in mine][: len(allowed)] == allowed, read
        assert {e["type"] for e in mine} <= CALLER, read
        text = json.dumps(mine)
        assert note not in text and "escalat" not in text, read
