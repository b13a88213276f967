"""Web security on a real engine, each test replaying an attack that once worked:
a page on another port of the same host using a supervisor's cookie, an agent forking
the audio of someone else's call, tokens outliving a sign-out or a new password,
X-Forwarded-For picking one's own rate-limit bucket, pages without a content security
policy and cookies without Secure behind TLS, and webhooks aimed inside the network.
What needs WebSockets, event streams or a call runs on engine processes; the rest
in-process (tests/controlplane.py)."""

from __future__ import annotations

import asyncio
import html.parser
import json
import re
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.controlplane import ControlPlane
from tests.engine_proc import PAGE_HEADERS, EngineProcess
from tests.rtc_client import Caller
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.integration
WEB = Path(__file__).resolve().parent.parent / "engine" / "web"
# engines that take no calls need no recognizer loaded nor SIP: they start in seconds
LIGHT = {"CCENGINE_PRELOAD_LANGUAGES": "[]", "CCENGINE_SIP_ENABLED": "false"}


@pytest.fixture(scope="module")
def web_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """One engine for the tests that take no call; each uses its own people."""
    engine = EngineProcess(tmp_path_factory.mktemp("web") / "engine", **LIGHT).start()
    try:
        yield engine
    finally:
        engine.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ws_url(engine: EngineProcess, path: str) -> str:
    return engine.url.replace("http", "ws", 1) + path


async def ws_refusal(url: str, headers: dict[str, str]) -> tuple[int, str]:
    """The close code and reason a WebSocket is refused with before any message."""
    with pytest.raises(ConnectionClosed) as closed:
        async with websockets.connect(url, additional_headers=headers) as ws:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def closed_code(ws: websockets.ClientConnection) -> int:
    """Reads until the engine closes the socket (a message at least every 10 s); its
    close code."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def sign_in(engine: EngineProcess, username: str, password: str) -> httpx.AsyncClient:
    """A client holding the sign-in cookie, and nothing else (no X-Requested-With)."""
    http = httpx.AsyncClient(base_url=engine.url, timeout=30)
    r = await http.post("/api/v1/auth/login", json={"username": username, "password": password})
    r.raise_for_status()
    return http


def cookie_of(http: httpx.AsyncClient) -> dict[str, str]:
    return {"Cookie": f"ccengine_token={http.cookies['ccengine_token']}"}


def cookie_attributes(set_cookie: str) -> set[str]:
    """A Set-Cookie header's attributes, without its value and lifetime."""
    parts = [p.strip().lower() for p in set_cookie.split(";")[1:]]
    return {p for p in parts if not p.startswith(("max-age", "expires"))}


async def test_pages_on_another_origin_cannot_use_the_sign_in_cookie(
    web_engine: EngineProcess,
) -> None:
    """A page on another port of the same host is the same site, so even SameSite=Strict
    cookies travel with its requests: it read the live event stream, transcripts and
    all, and hung up a call with a supervisor's cookie. Now the cookie works only for
    the engine's own origin, and its writes need X-Requested-With; a program's bearer
    token is not affected, and the engine's own pages still stream."""
    engine = web_engine
    engine.add_user("sue", "pw-sue-123", "--role", "supervisor")
    engine.add_user("ann", "pw-ann-123")
    own, foreign = engine.url, f"http://127.0.0.1:{engine.port + 1}"
    sue = await sign_in(engine, "sue", "pw-sue-123")
    hangup = "/api/v1/calls/no-such-call/hangup"
    try:
        events = ws_url(engine, "/api/v1/events")
        code, reason = await ws_refusal(events, {**cookie_of(sue), "Origin": foreign})
        assert code == 4403 and "origin" in reason
        code, _ = await ws_refusal(
            ws_url(engine, "/api/v1/calls/x/audio"), {**cookie_of(sue), "Origin": foreign}
        )
        assert code == 4403
        # the engine's own page streams as before
        own_page = {**cookie_of(sue), "Origin": own}
        async with websockets.connect(events, additional_headers=own_page) as stream:
            ann = await engine.agent("ann", "pw-ann-123", "login")
            await ann.aclose()
            seen = [json.loads(await asyncio.wait_for(stream.recv(), 10))]
            while seen[-1]["type"] != "agent.presence_changed":
                seen.append(json.loads(await asyncio.wait_for(stream.recv(), 10)))

        foreign_write = await sue.post(hangup, headers={"Origin": foreign, **PAGE_HEADERS})
        no_header = await sue.post(hangup)
        own_write = await sue.post(hangup, headers={"Origin": own, **PAGE_HEADERS})
        foreign_read = await sue.get("/api/v1/calls", headers={"Origin": foreign})
        own_read = await sue.get("/api/v1/calls")
        sign_in_there = await sue.post(
            "/api/v1/auth/login",
            json={"username": "sue", "password": "pw-sue-123"},
            headers={"Origin": foreign},
        )
        token = (
            await sue.post("/api/v1/auth/login", json={"username": "sue", "password": "pw-sue-123"})
        ).json()["token"]
    finally:
        await sue.aclose()
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as program:
        program_write = await program.post(hangup, headers={**bearer(token), "Origin": foreign})
    assert foreign_write.status_code == 403 and "origin" in foreign_write.json()["detail"]
    assert no_header.status_code == 403 and "X-Requested-With" in no_header.json()["detail"]
    assert own_write.status_code == 404  # past the checks: there is no such call
    assert foreign_read.status_code == 403 and own_read.status_code == 200
    assert sign_in_there.status_code == 403
    assert program_write.status_code == 404


def silence(path: Path, seconds: float = 20.0) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))
    return path


async def test_an_agent_cannot_fork_the_audio_of_a_call_not_on_their_line(
    tmp_path: Path,
) -> None:
    """Any agent could open the audio fork of any call, to listen and to speak into
    it, though /play and /recording refused them: the fork now keeps the same rule.
    A supervisor still may."""
    # one quiet call: a busy test box must not turn it away
    engine = EngineProcess(
        tmp_path / "engine", CCENGINE_SIP_ENABLED="false",
        CCENGINE_ADMISSION_MAX_LOOP_LAG_MS="100000", CCENGINE_ADMISSION_MAX_CPU="1",
    ).start()  # fmt: skip
    engine.add_user("bob", "pw-bob-123")
    engine.add_user("sue", "pw-sue-123", "--role", "supervisor")
    caller = Caller(engine.url, silence(tmp_path / "quiet.wav"))
    bob = await engine.agent("bob", "pw-bob-123", "login")
    sue = await sign_in(engine, "sue", "pw-sue-123")
    try:
        await caller.dial()
        fork = ws_url(engine, f"/api/v1/calls/{caller.call_id}/audio")
        code, reason = await ws_refusal(fork, cookie_of(bob))
        play = await bob.post(f"/api/v1/calls/{caller.call_id}/play", json={"text": "hi"})
        async with websockets.connect(fork, additional_headers=cookie_of(sue)) as ws:
            start = json.loads(await asyncio.wait_for(ws.recv(), 10))
    finally:
        await caller.close()
        await bob.aclose()
        await sue.aclose()
        engine.stop()
    assert (code, reason) == (4403, "this call is not on your line")
    assert play.status_code == 403 and "not on your line" in play.json()["detail"]
    assert start["type"] == "start" and start["call_id"] == caller.call_id


async def test_signing_out_and_a_new_password_end_earlier_tokens(web_engine: EngineProcess) -> None:
    """Signing out only cleared the cookie, and a token from before a password change
    stayed good for its 12 hours. Now both end every token the person holds."""
    engine = web_engine
    engine.add_user("cara", "pw-cara-123")
    login = {"username": "cara", "password": "pw-cara-123"}
    async with (
        httpx.AsyncClient(base_url=engine.url, timeout=30, headers=PAGE_HEADERS) as page,
        httpx.AsyncClient(base_url=engine.url, timeout=30) as program,
    ):
        (await page.post("/api/v1/auth/login", json=login)).raise_for_status()
        page_token = page.cookies["ccengine_token"]
        elsewhere = (await program.post("/api/v1/auth/login", json=login)).json()["token"]
        program.cookies.clear()
        before = (await program.get("/api/v1/auth/me", headers=bearer(elsewhere))).status_code
        events = ws_url(engine, "/api/v1/events")
        # streams open with the token end too, at once
        async with (
            websockets.connect(events, additional_headers=bearer(elsewhere)) as open_ws,
            program.stream("GET", "/api/v1/events", headers=bearer(elsewhere)) as open_sse,
        ):
            out = await page.post("/api/v1/auth/logout")
            open_ws_closed = await closed_code(open_ws)
            await asyncio.wait_for(open_sse.aread(), 10)  # the engine ended it
        after = [
            await program.get("/api/v1/auth/me", headers=bearer(t)) for t in (page_token, elsewhere)
        ]
        stream = await ws_refusal(events, bearer(elsewhere))

        again = (await program.post("/api/v1/auth/login", json=login)).json()["token"]
        program.cookies.clear()
        async with websockets.connect(events, additional_headers=bearer(again)) as open_ws:
            r = await program.patch(
                "/api/v1/agents/cara", json={"password": "pw-cara-456"}, headers=engine.headers
            )
            r.raise_for_status()
            open_ws_closed_too = await closed_code(open_ws)
        old_password = await program.get("/api/v1/auth/me", headers=bearer(again))
        login["password"] = "pw-cara-456"
        new = (await program.post("/api/v1/auth/login", json=login)).json()["token"]
        fresh = await program.get("/api/v1/auth/me", headers=bearer(new))
    assert before == 200 and out.status_code == 204
    for r in (*after, old_password):
        assert r.status_code == 401 and "sign-in has ended" in r.json()["detail"]
    assert stream[0] == open_ws_closed == open_ws_closed_too == 4401
    assert fresh.status_code == 200 and fresh.json()["username"] == "cara"


async def test_forwarded_for_from_an_untrusted_peer_changes_nothing(tmp_path: Path) -> None:
    """Anyone on the engine's host could rotate X-Forwarded-For and get a fresh
    anonymous rate-limit bucket per request (and claim https). With no trusted proxies
    configured, those headers change nothing."""
    async with (
        ControlPlane(tmp_path / "engine", anonymous_rate_per_minute=3) as engine,
        engine.anonymous() as http,
    ):
        codes = [
            (
                await http.get(
                    "/api/v1/calls",
                    headers={"X-Forwarded-For": f"203.0.113.{i}", "X-Forwarded-Proto": "https"},
                )
            ).status_code
            for i in range(4)
        ]
    assert codes == [401, 401, 401, 429]


async def test_a_trusted_proxy_names_the_client_and_the_scheme(tmp_path: Path) -> None:
    """Behind a configured proxy, X-Forwarded-For picks the bucket (each client its own,
    still limited), and X-Forwarded-Proto: https makes the cookies Secure, set and
    cleared with the same attributes. (In-process: requests come from 127.0.0.1.)"""
    async with ControlPlane(
        tmp_path / "engine", anonymous_rate_per_minute=3, trusted_proxies=["127.0.0.1"]
    ) as engine:
        await engine.add_user("ann", "pw-ann-123")
        async with engine.anonymous() as http:
            clients = [
                (
                    await http.get("/api/v1/calls", headers={"X-Forwarded-For": f"203.0.113.{i}"})
                ).status_code
                for i in range(4)
            ]
            one = {"X-Forwarded-For": "198.51.100.7"}
            same = [(await http.get("/api/v1/calls", headers=one)).status_code for _ in range(4)]
            tls = {"X-Forwarded-For": "198.51.100.8", "X-Forwarded-Proto": "https"}
            signed_in = await http.post(
                "/api/v1/auth/login",
                json={"username": "ann", "password": "pw-ann-123"},
                headers=tls,
            )
            signed_out = await http.post(
                "/api/v1/auth/logout",
                headers={
                    **tls,
                    **PAGE_HEADERS,
                    "Cookie": signed_in.headers["set-cookie"].split(";")[0],
                },
            )
    assert clients == [401] * 4
    assert same == [401, 401, 401, 429]
    assert signed_in.status_code == 200 and signed_out.status_code == 204
    assert "secure" in cookie_attributes(signed_in.headers["set-cookie"])
    assert cookie_attributes(signed_out.headers["set-cookie"]) == cookie_attributes(
        signed_in.headers["set-cookie"]
    )


class _Inline(html.parser.HTMLParser):
    """What a content security policy without 'unsafe-inline' would block in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag in ("script", "style") and (tag == "style" or "src" not in names):
            self.found.append(f"inline <{tag}>")
        self.found += [f"{tag} {n}=" for n in names if n == "style" or n.startswith("on")]
        self.found += [
            f"{tag} javascript: URL" for _, v in attrs if (v or "").startswith("javascript:")
        ]


async def test_pages_carry_a_policy_they_satisfy_and_cookies_match_on_sign_out(
    control_plane: ControlPlane,
) -> None:
    """No CSP, no X-Frame-Options, and sign-out cleared the cookie with other attributes
    than sign-in set it with. Now every answer carries the headers; the engine's pages
    load nothing inline that the policy would block (their scripts build no inline
    styles or handlers either); and set and clear use one set of attributes, without
    Secure over plain http."""
    engine = control_plane
    await engine.add_user("dan", "pw-dan-123")
    async with engine.anonymous(headers=PAGE_HEADERS) as http:
        answers = {p: await http.get(p) for p in ("/", "/call", "/agent", "/calls/x", "/reports")}
        others = [await http.get(p) for p in ("/static/agent.js", "/api/v1/calls", "/healthz")]
        signed_in = await http.post(
            "/api/v1/auth/login", json={"username": "dan", "password": "pw-dan-123"}
        )
        signed_out = await http.post("/api/v1/auth/logout")
    for r in (*answers.values(), *others):
        csp = r.headers.get("content-security-policy", "")
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp, r.url
        assert "unsafe-inline" not in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
    for path, r in answers.items():
        parser = _Inline()
        parser.feed(r.text)
        assert parser.found == [], (path, parser.found)
    for script in (WEB / "static").glob("*.js"):
        markup = re.findall(r"""<[a-z][^<>]*\s(?:style|on[a-z]+)=""", script.read_text())
        assert markup == [], (script.name, markup)
    set_attrs = cookie_attributes(signed_in.headers["set-cookie"])
    assert set_attrs == {"httponly", "path=/", "samesite=strict"}
    assert cookie_attributes(signed_out.headers["set-cookie"]) == set_attrs


async def test_webhooks_reach_public_addresses_only(tmp_path: Path) -> None:
    """Webhook URLs on the loopback, private and link-local networks (in any spelling)
    were accepted, and the delivery log told whether anything answered there: a port
    scanner. Now they are refused when created, and a delivery to one, made while an
    allow-list admitted it, is refused when it connects once the list is gone."""
    receiver = Receiver().start()
    port = receiver.server.server_address[1]
    try:
        async with ControlPlane(
            tmp_path / "engine", webhook_allowed_networks=["127.0.0.1/32"]
        ) as engine:
            async with engine.http() as http:
                r = await http.post(
                    "/api/v1/webhooks",
                    json={"url": receiver.url, "events": ["agent.presence_changed"]},
                )
                assert r.status_code == 201, r.text
                hook = r.json()["id"]
            await engine.restart()  # without the allow-list
            refused: dict[str, Any] = {}
            async with engine.http() as http:
                for url in (
                    f"http://0x7f000001:{port}/hook", f"http://2130706433:{port}/", "http://127.1/",
                    "http://[::ffff:127.0.0.1]/", "http://169.254.169.254/latest/meta-data/",
                    "http://10.0.0.5/", "http://localhost/",
                ):  # fmt: skip
                    r = await http.post("/api/v1/webhooks", json={"url": url, "events": ["*"]})
                    refused[url] = (r.status_code, r.json()["detail"])
                named = await http.post(  # a name: judged by its addresses when delivering
                    "/api/v1/webhooks", json={"url": "https://crm.example.com/h", "events": ["*"]}
                )
                await http.delete(f"/api/v1/webhooks/{named.json()['id']}")
                await engine.add_user("ann", "pw-ann-123")
                ann = await engine.agent("ann", "pw-ann-123", "login")  # one event
                await ann.aclose()
                log: list[dict[str, Any]] = []
                for _ in range(100):
                    log = (await http.get(f"/api/v1/webhooks/{hook}/deliveries")).json()
                    if log and log[0]["status"] != "pending":
                        break
                    await asyncio.sleep(0.2)
    finally:
        receiver.stop()
    for url, (status, detail) in refused.items():
        assert status == 422 and "CCENGINE_WEBHOOK_ALLOWED_NETWORKS" in detail, url
    assert "loopback" in refused[f"http://0x7f000001:{port}/hook"][1]
    assert "link-local" in refused["http://169.254.169.254/latest/meta-data/"][1]
    assert named.status_code == 201
    assert len(log) == 1 and log[0]["status"] == "failed" and log[0]["attempts"] == 1
    assert log[0]["last_error"].startswith("refused: ") and "loopback" in log[0]["last_error"]
    assert receiver.got == []


# what each kind of asset the docs pages load must be served as: under
# X-Content-Type-Options: nosniff, Chromium runs no script and applies no style sheet
# served as anything else
DOCS_ASSET_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".json": ("application/json",),
}


async def test_api_docs_load_nothing_from_outside(control_plane: ControlPlane) -> None:
    """/docs and /redoc loaded Swagger UI and ReDoc from the jsdelivr CDN (and fonts from
    Google): no docs without the internet, and a request to outsiders from every
    reader's browser. Now the engine serves them, and the policy allows nothing else.
    Every URL the pages name (their scripts, style sheet, icon and the OpenAPI document
    they render) is a path on the engine (not ``//host/...``), served as what it is."""
    async with control_plane.anonymous() as http:
        for page in ("/docs", "/redoc"):
            r = await http.get(page)
            assert r.status_code == 200, page
            csp = r.headers["content-security-policy"]
            assert "http" not in csp and "script-src 'self' 'unsafe-inline';" in csp, csp
            assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text)
            assert len(assets) >= 2, (page, assets)  # a script, and an icon or style sheet
            # the document Swagger UI's script (url: '...') or ReDoc's tag (spec-url=) names
            documents = re.findall(r"""(?:\burl: |spec-url=)["']([^"']+)["']""", r.text)
            assert documents == ["/openapi.json"], (page, documents)
            for url in (*assets, *documents):
                assert url.startswith("/") and not url.startswith("//"), (page, url)
                asset = await http.get(url)
                # not empty, and its type (below) is no error's: our own scripts and
                # styles beside Swagger UI's and ReDoc's are under 1 kB
                assert asset.status_code == 200 and asset.content, url
                kind = asset.headers["content-type"].split(";")[0]
                assert kind in DOCS_ASSET_TYPES[Path(url).suffix], (url, kind)
            assert "://" not in r.text, page  # no address elsewhere, in a tag or a script
