"""A real engine process for integration tests: own port, own database, stopped after."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import concurrent.futures
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import websockets

from engine.events import utcnow
from engine.store.db import Store
from engine.store.models import UserRow
from engine.users import hash_password

ROOT = Path(__file__).resolve().parent.parent
# what the engine's own pages send with every request they make with a cookie
PAGE_HEADERS = {"X-Requested-With": "ccengine"}


# the options of ``ccengine users add``, for users written from the tests' process
USERS_ADD = argparse.ArgumentParser(prog="ccengine users add", exit_on_error=False)
USERS_ADD.add_argument("username")
USERS_ADD.add_argument("--role", choices=["agent", "supervisor", "admin"], default="agent")
USERS_ADD.add_argument("--skills")
USERS_ADD.add_argument("--name")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now for TCP and UDP, with the three after it (SIPp takes RTP and
    RTCP pairs from its media port), never handed out twice, and below the kernel's
    ephemeral range: a peer binds it a second or more later, and a port from that
    range may meanwhile become the source port of some outgoing connection (CI saw an
    engine fail to start on exactly that). Under pytest-xdist each worker process has
    its own share of the range, so two workers never hand out the same port.
    """
    low, high = 20000, max(20100, _ephemeral_low())
    worker, workers = _xdist_share()
    for _ in range(500):
        slot = random.randrange(0, (high - 4 - low) // (4 * workers))
        port = low + 4 * (slot * workers + worker)
        if port in _handed_out:
            continue
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                for offset in range(4):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


def _xdist_share() -> tuple[int, int]:
    """(this worker's number, how many workers): (0, 1) outside pytest-xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if name.startswith("gw") and name[2:].isdigit() and count.isdigit() and int(count) > 0:
        return int(name[2:]) % int(count), int(count)
    return 0, 1


def end_process(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, grace: float = 10
) -> None:
    """Ask a service the test started to stop (``sig``), and kill it if it has not
    within ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


_template: tuple[Path, str] | None = None


def _template_db() -> tuple[Path, str]:
    """A migrated database holding one admin key, made once per session: copying it
    spares each engine a CLI run and the migrations, a second apiece over ~65 starts."""
    global _template
    if _template is None:
        folder = Path(tempfile.mkdtemp(prefix="ccengine-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        db = folder / "engine.db"
        result = subprocess.run(
            [sys.executable, "-m", "engine.cli", "keys", "create", "tests", "--scope", "admin",
             "--quiet", "--db", f"sqlite+aiosqlite:///{db}"],
            cwd=ROOT, capture_output=True, text=True,
            env={**os.environ, "CCENGINE_MODEL_DIRS": "[]",
                 "CCENGINE_SECRET_KEY_FILE": str(folder / "secret")},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert not db.with_name("engine.db-wal").exists(), "the copy would miss the WAL"
        _template = (db, result.stdout.strip())
    return _template


async def sign_in(
    http: httpx.AsyncClient, username: str, password: str, *events: str
) -> httpx.AsyncClient:
    """``http`` signed in as ``username`` (the cookie), after the presence ``events``."""
    r = await http.post("/api/v1/auth/login", json={"username": username, "password": password})
    r.raise_for_status()
    for event in events:
        r = await http.post("/api/v1/agents/me/presence", json={"event": event})
        r.raise_for_status()
    return http


def hosts_of_their_own() -> bool:
    """Whether an engine can be run under a host name of its own (``EngineProcess(host=)``):
    unshare(1) may make a UTS namespace here (root, or a kernel that lets users)."""
    try:
        probe = subprocess.run(["unshare", "--uts", "--", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


# An admin's credentials for each engine the tests started, by its URL: test helpers
# that watch a call as the staff do (tests/rtc_client.py) read its stream with them,
# since a caller's own stream leaves out what is for staff only.
STAFF: dict[str, dict[str, str]] = {}


class EngineProcess:
    def __init__(
        self, workdir: Path, *, database_url: str | None = None, host: str | None = None,
        **env: str,
    ) -> None:  # fmt: skip
        """``database_url``: another database than the SQLite file in ``workdir`` (a
        PostgreSQL one: the engine is given it as ``CCENGINE_DATABASE_URL``). ``host``:
        the engine runs in a UTS namespace of its own under that host name, as if on
        another machine (see ``hosts_of_their_own``)."""
        self.workdir = workdir
        self._database_url = database_url
        self.host = host
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sip_port = free_port()
        self.sip = f"127.0.0.1:{self.sip_port}"
        self.db = workdir / "engine.db"
        self.log = workdir / "engine.log"
        self.env = {
            **os.environ,
            "CCENGINE_MODEL_DIRS": "[]",
            "CCENGINE_SECRET_KEY_FILE": str(workdir / "secret"),
            "CCENGINE_SIP_PORT": str(self.sip_port),
            "CCENGINE_RECORDINGS_DIR": str(workdir / "recordings"),
            # tests start many calls and sign-ins from one address, many at once, each
            # with its event stream (tests/test_resource_e2e.py checks the defaults)
            "CCENGINE_ANONYMOUS_RATE_PER_MINUTE": "100000",
            "CCENGINE_MAX_PENDING_OFFERS_PER_ADDRESS": "1000",
            "CCENGINE_MAX_PENDING_OFFERS": "1000",
            "CCENGINE_MAX_CHATS_PER_ADDRESS": "1000",
            "CCENGINE_HTTP_MAX_CONNECTIONS_PER_ADDRESS": "100000",
            **({"CCENGINE_DATABASE_URL": database_url} if database_url else {}),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: BinaryIO | None = None
        self.api_key = ""  # an admin key, made at the first start
        # on an engine shared by tests: where the calls of the running test begin
        self.calls_since: datetime | None = None

    @property
    def database_url(self) -> str:
        return self._database_url or f"sqlite+aiosqlite:///{self.db}"

    def ccengine(self, *args: str, stdin: str = "") -> str:
        """Run the ``ccengine`` CLI against this engine's database; its output."""
        result = subprocess.run(
            [sys.executable, "-m", "engine.cli", *args, "--db", self.database_url],
            cwd=ROOT, input=stdin, capture_output=True, text=True, env=self.env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client holding this engine's admin key."""
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, **kwargs)

    def start(self, timeout: float = 60) -> EngineProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.api_key and self._database_url is None and not self.db.exists():
            template, self.api_key = _template_db()
            shutil.copyfile(template, self.db)
        elif not self.api_key:  # a test prepared this database before the first start
            self.api_key = self.ccengine("keys", "create", "tests", "--scope", "admin", "--quiet")
            self.api_key = self.api_key.strip()
        cmd = [sys.executable, "-m", "engine.cli", "serve", "--port", str(self.port)]
        if self._database_url is None:  # else from the environment, as configured
            cmd += ["--db", self.database_url]
        if self.host is not None:  # the shell execs the engine: the same process
            cmd = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"',
                   self.host, *cmd]  # fmt: skip
        self._close_log()  # the last run's, if it exited by itself (a drained engine)
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_log()
                raise RuntimeError(f"engine exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    STAFF[self.url] = self.headers
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"engine did not start: {self.log.read_text()[-3000:]}")

    def add_user(self, username: str, password: str, *extra: str) -> str:
        """What ``ccengine users add username *extra`` stores in this engine's database,
        written from this process; its output. The command itself is run as a process by
        tests/test_agents_e2e.py: a process per user here cost ~1 s of CPU (Python, the
        engine's imports, the migrations check), about a hundred times a run."""
        args = USERS_ADD.parse_args([username, *extra])
        skills = sorted({s.strip() for s in (args.skills or "").split(",") if s.strip()})
        row = UserRow(
            id=str(uuid.uuid4()), username=username, display_name=args.name or username,
            role=args.role, skills=skills, password_hash=hash_password(password),
            created_at=utcnow(),
        )  # fmt: skip

        async def add() -> None:
            store = Store(self.database_url)
            try:
                await store.open()
                assert await store.user_by_name(username) is None, f"error: user {username} exists"
                await store.add_user(row)
            finally:
                await store.close()

        # a thread of its own: async tests call this with their loop running
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, add()).result()
        return f"added {args.role} {username}" + (f" ({', '.join(skills)})" if skills else "")

    async def watch_events(self, out: list[dict[str, Any]]) -> None:
        """Every event of this engine's stream (as an admin sees it), appended to ``out``
        until the task running this is cancelled."""
        ws_url = self.url.replace("http", "ws", 1) + "/api/v1/events"
        async with websockets.connect(ws_url, additional_headers=self.headers) as ws:
            async for message in ws:
                out.append(json.loads(message))

    async def agent(self, username: str, password: str, *events: str) -> httpx.AsyncClient:
        """An HTTP client signed in as ``username`` (its cookie, as the agent desk's page
        has) that has sent presence ``events``. It sends X-Requested-With, as the page
        does: the engine takes changes made with a cookie only with it."""
        http = httpx.AsyncClient(base_url=self.url, timeout=30, headers=PAGE_HEADERS)
        return await sign_in(http, username, password, *events)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to tidy up, like a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        end_process(self.proc, signal.SIGINT, 20)
        self._close_log()
