"""The engine's control plane in the test's own event loop: the real app
(``engine.app.create_app``) with its lifespan, a real SQLite store in a folder of the
test's, HTTP through ``httpx.ASGITransport`` (no socket, no process), and the
in-process call manager for calls whose media events a test queues by hand.

For logic: the API's answers, events, stored records, rules and content, auth and
scopes, webhook payloads (to a real receiver, tests/webhook_receiver.py). What only a
process or a socket proves (real audio, RTP, ICE, SIP, kill -9, limits, the CLI, the
log file) stays on ``tests/engine_proc.py:EngineProcess``.

    async with ControlPlane(tmp_path / "engine") as cp:
        async with cp.http() as http:  # holds an admin key
            ...
        cp.add_user("ann", "pw-ann-123", "--skills", "billing")
        ann = await cp.agent("ann", "pw-ann-123", "login")
        call, _peer = await phone_call(cp.calls, "+15550001234")
        await cp.restart()  # the same database and secret, a new app
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from fastapi import FastAPI

from engine.app import create_app
from engine.calls import CallManager
from engine.client import Client
from engine.config import Settings
from engine.events import EventBase, EventBus, Subscription, utcnow
from engine.keys import new_key
from engine.livecall import Call, Leg
from engine.store.db import Store
from engine.store.models import ApiKeyRow, LegRow, UserRow
from engine.users import hash_password
from media.rtp import RtpSession
from media.sip.peer import SipPeer
from media.sip.sdp import parse_offer
from tests.engine_proc import PAGE_HEADERS, ROOT, USERS_ADD, sign_in

# the address every request comes from (ASGITransport's client), as from a local peer
CLIENT = ("127.0.0.1", 50000)
BASE_URL = "http://127.0.0.1"
PHONE_SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def settings_for(workdir: Path, **overrides: Any) -> Settings:
    """The settings tests/engine_proc.py gives an engine process, for an app in this
    process: no models, the secret and recordings in ``workdir``, and the limits on one
    address raised (tests make many calls and sign-ins from one). No SIP (it would
    listen on a socket) and no recognizer loaded at start (no call here has audio)
    unless a test asks for them."""
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{workdir / 'engine.db'}",
        "model_dirs": [],
        "secret_key_file": str(workdir / "secret"),
        "recordings_dir": str(workdir / "recordings"),
        "sip_enabled": False,
        "preload_languages": [],
        "anonymous_rate_per_minute": 100000,
        "max_pending_offers_per_address": 1000,
        "max_pending_offers": 1000,
        "http_max_connections_per_address": 100000,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


_template: Path | None = None


async def _template_db() -> Path:
    """A migrated database, made once per test process: a copy spares each start the
    migrations (as tests/engine_proc.py does for engine processes)."""
    global _template
    if _template is None:
        folder = Path(tempfile.mkdtemp(prefix="ccengine-cp-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        store = Store(f"sqlite+aiosqlite:///{folder / 'engine.db'}")
        await store.open()
        await store.close()
        assert not (folder / "engine.db-wal").exists(), "the copy would miss the WAL"
        _template = folder / "engine.db"
    return _template


class ControlPlane:
    """One engine app, started with its lifespan in the running loop. ``settings``:
    Settings fields (lower-case names) over :func:`settings_for`'s."""

    def __init__(self, workdir: Path, **settings: Any) -> None:
        self.workdir = workdir
        self.db = workdir / "engine.db"
        self.overrides = settings
        self.settings = settings_for(workdir, **settings)
        self.app: FastAPI | None = None
        self._lifespan: contextlib.AbstractAsyncContextManager[None] | None = None
        self.api_key = ""  # an admin key, made at the first start
        self._clients: list[httpx.AsyncClient] = []

    # -- lifetime ---------------------------------------------------------------------

    async def start(self) -> ControlPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.api_key and "database_url" not in self.overrides and not self.db.exists():
            shutil.copyfile(await _template_db(), self.db)
        app = create_app(self.settings)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        self.app, self._lifespan = app, lifespan
        if not self.api_key:
            self.api_key = await self.new_key("tests", "admin")
        return self

    async def stop(self) -> None:
        """Shuts the app down as ``ccengine serve`` does on SIGINT (its lifespan ends)."""
        for client in self._clients:
            await client.aclose()
        self._clients.clear()
        if self._lifespan is not None:
            lifespan, self._lifespan = self._lifespan, None
            await lifespan.__aexit__(None, None, None)

    async def restart(self, **settings: Any) -> ControlPlane:
        """Stopped, then a new app on the same database and secret, with ``settings``
        over the defaults (like a new EngineProcess on the same folder: the settings
        given at first are not kept)."""
        await self.stop()
        self.overrides = settings
        self.settings = settings_for(self.workdir, **settings)
        return await self.start()

    async def __aenter__(self) -> ControlPlane:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- what runs inside -------------------------------------------------------------

    def _state(self, name: str) -> Any:
        assert self.app is not None, "the control plane is not started"
        return getattr(self.app.state, name)

    @property
    def calls(self) -> CallManager:
        manager: CallManager = self._state("calls")
        return manager

    @property
    def store(self) -> Store:
        store: Store = self._state("store")
        return store

    @property
    def bus(self) -> EventBus:
        bus: EventBus = self._state("bus")
        return bus

    # -- HTTP, without a socket ---------------------------------------------------------

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def transport(self) -> httpx.ASGITransport:
        assert self.app is not None, "the control plane is not started"
        return httpx.ASGITransport(app=self.app, client=CLIENT)

    def anonymous(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client with no credentials; closed with the control plane at the
        latest (an app restarted later gets new clients)."""
        kwargs.setdefault("timeout", 30)
        http = httpx.AsyncClient(transport=self.transport(), base_url=BASE_URL, **kwargs)
        self._clients.append(http)
        return http

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client holding the admin key."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.anonymous(headers=headers, **kwargs)

    def client(self, *, api_key: str | None = None, token: str | None = None) -> Client:
        """engine.client.Client (the typed client developers use) talking to this app."""
        client = Client(BASE_URL, api_key=api_key, token=token)
        # the same headers, through the app (the client's own never connected: no socket)
        client.http = self.anonymous(headers=dict(client.http.headers))
        return client

    async def agent(self, username: str, password: str, *events: str) -> httpx.AsyncClient:
        """Like EngineProcess.agent: signed in with the cookie, sending X-Requested-With
        as the desk's page does, after the presence ``events``."""
        return await sign_in(self.anonymous(headers=PAGE_HEADERS), username, password, *events)

    # -- people and keys, as the CLI makes them -------------------------------------------

    async def add_user(self, username: str, password: str, *extra: str) -> str:
        """What ``ccengine users add username *extra`` stores, in-process; its output."""
        args = USERS_ADD.parse_args([username, *extra])
        skills = sorted({s.strip() for s in (args.skills or "").split(",") if s.strip()})
        assert await self.store.user_by_name(username) is None, f"user {username} exists"
        await self.store.add_user(
            UserRow(
                id=str(uuid.uuid4()), username=username, display_name=args.name or username,
                role=args.role, skills=skills, password_hash=hash_password(password),
                created_at=utcnow(),
            )
        )  # fmt: skip
        return f"added {args.role} {username}" + (f" ({', '.join(skills)})" if skills else "")

    async def new_key(self, name: str, *scopes: str, rate: int | None = None) -> str:
        """What ``ccengine keys create name --scope ... [--rate N]`` stores; the key."""
        key = new_key()
        await self.store.add(
            ApiKeyRow(
                id=key.id, name=name, scopes=sorted(set(scopes or ["read"])),
                secret_hash=key.secret_hash,
                rate_per_minute=rate or self.settings.rate_per_minute, created_at=utcnow(),
            )
        )  # fmt: skip
        return key.token

    def ccengine(self, *args: str, stdin: str = "") -> str:
        """The real ``ccengine`` CLI (a process) on this database, for tests of the CLI
        itself; its output."""
        env = {**os.environ, "CCENGINE_MODEL_DIRS": "[]",
               "CCENGINE_SECRET_KEY_FILE": str(self.workdir / "secret")}  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "engine.cli", *args, "--db", self.settings.database_url],
            cwd=ROOT, input=stdin, capture_output=True, text=True, env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    # -- events, without a stream ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def events(self, call_id: str | None = None) -> AsyncIterator[Subscription]:
        """A subscription to the bus (every event, or one call's), as the streams take
        one: ``async for event in sub`` (each an engine.events model)."""
        subscription = self.bus.subscribe(call_id)
        try:
            yield subscription
        finally:
            subscription.close()

    async def next_event(self, sub: Subscription, kind: str, within: float = 10) -> EventBase:
        """The next event of type ``kind`` on ``sub``."""
        async with asyncio.timeout(within):
            while (event := await sub.queue.get()) is not None:
                if getattr(event, "type", None) == kind:
                    return event
        raise AssertionError(f"the subscription lagged before {kind}")


async def phone_call(
    m: CallManager, caller: str, dialled: str | None = None
) -> tuple[Call, SipPeer]:
    """A phone call past its first audio (active), as the SIP front sets one up, with no
    network media: a test queues the events its legs would make (``m._enqueue``).
    ``dialled``: the number called, which the virtual agent answers (the key menu if
    it does not); without it, neither."""
    peer = SipPeer(RtpSession(parse_offer(PHONE_SDP), lambda _d: None), hangup=lambda: None)
    call = await m.create_phone_call(
        peer, caller, "PCMU", menu=dialled is not None, dialled=dialled
    )
    await m._transition(call, "media")
    return call, peer


async def bridged_phone_call(m: CallManager, caller: str = "+15550001234") -> tuple[Call, Leg]:
    """A phone call put through to an agent leg (its media never starts: the events
    the leg would make are queued by hand)."""
    call, _peer = await phone_call(m, caller)
    leg = Leg(str(uuid.uuid4()), "agent", "sip", codec="PCMU")
    call.legs.append(leg)
    await m.store.add(LegRow(id=leg.id, call_id=call.id, role="agent", transport="sip",
                             codec="PCMU", user_id=None, created_at=utcnow()))  # fmt: skip
    await m._transition(call, "queue")
    await m._transition(call, "accept")
    return call, leg
