"""A real PostgreSQL server for tests: started once per test process, one fresh
database per test.

The server runs from a temporary directory (data, log and its unix socket) on a free
port of 127.0.0.1, with fsync off: nothing in it has to survive the test run, and
commits then cost no disk flush. PostgreSQL refuses to run as root, which tests are in
CI: then initdb and the server run as the unprivileged ``postgres`` user (Debian's
package makes it), owning that directory. The server is a child of the test process
that the kernel stops when the test process dies, however it dies (a worker killed by
a timeout leaves no server behind). A database per test is a ``CREATE DATABASE``
from an empty template, a file copy of a few MB; it is dropped after the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import asyncpg

from tests.engine_proc import free_port

SERVER_USER = "postgres"  # the unprivileged account the server runs as under root
START_TIMEOUT = 60  # seconds for initdb, and for the server to take connections


def bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: Debian keeps them out of PATH, by major version."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def available() -> bool:
    return bin_dir() is not None


def sweep(older_than: float = 3600) -> None:
    """Remove the directories of servers that died with their test process (the kernel
    stopped them; nobody removed their files): no live server in them, an hour old."""
    for folder in Path(tempfile.gettempdir()).glob("ccengine-pg-*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if time.time() - folder.stat().st_mtime < older_than:
                continue
            pid_file = folder / "data" / "postmaster.pid"
            if pid_file.exists() and Path(f"/proc/{int(pid_file.read_text().split()[0])}").exists():
                continue
            shutil.rmtree(folder)


class PostgresServer:
    def __init__(self) -> None:
        found = bin_dir()
        if found is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.bin = found
        sweep()
        # not under pytest's tmp_path: its folders are private to the user running the
        # tests, so the server's user could not reach its own data directory
        self.root = Path(tempfile.mkdtemp(prefix="ccengine-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._names = itertools.count(1)
        self.server: subprocess.Popen[bytes] | None = None
        # the server dies with us (SIGQUIT: immediate shutdown, nothing to keep);
        # setpriv sets that after changing user, which would clear it otherwise
        self._as_user = ["setpriv", "--pdeathsig", "SIGQUIT"]
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_user += [f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
                              "--init-groups"]  # fmt: skip
        self._as_user.append("--")

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [*self._as_user, str(self.bin / tool), *args],
            capture_output=True, text=True, timeout=START_TIMEOUT,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr or result.stdout}")

    def start(self) -> PostgresServer:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
            "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        with self.log.open("ab") as log:
            self.server = subprocess.Popen(
                [*self._as_user, str(self.bin / "postgres"), "-D", str(self.data),
                 "-p", str(self.port), "-k", str(self.root),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready():
            if self.server.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        ready = subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            timeout=10,
        )
        return ready.returncode == 0

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; its SQLAlchemy URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        # FILE_COPY: a copy of the template's files, not all of it through the WAL
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        """One statement on the maintenance database. In a thread of its own: the
        caller may be a fixture running inside a test's event loop."""

        async def run() -> None:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=self.port, user="postgres", database="postgres"
            )
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        failed: list[BaseException] = []

        def target() -> None:
            try:
                asyncio.run(run())
            except BaseException as exc:  # handed to the caller's thread
                failed.append(exc)

        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
        if failed:
            raise failed[0]
