"""A real PostgreSQL server for tests: started once per test process, one fresh
database per test.

The server runs from a temporary directory (data, log and its unix socket) on a free
port of 127.0.0.1, with fsync off: nothing in it has to survive the test run, and
commits then cost no disk flush. PostgreSQL refuses to run as root, which tests are in
CI: then initdb and the server run as the unprivileged ``postgres`` user (Debian's
package makes it), owning that directory. A database per test is a ``CREATE DATABASE``
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
import subprocess
import tempfile
import threading
from pathlib import Path

import asyncpg

from tests.engine_proc import free_port

SERVER_USER = "postgres"  # the unprivileged account the server runs as under root
START_TIMEOUT = 60  # seconds: pg_ctl -w waits for the server to take connections


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


class PostgresServer:
    def __init__(self) -> None:
        found = bin_dir()
        if found is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.bin = found
        # not under pytest's tmp_path: its folders are private to the user running the
        # tests, so the server's user could not reach its own data directory
        self.root = Path(tempfile.mkdtemp(prefix="ccengine-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._names = itertools.count(1)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [*self._as_user, str(self.bin / tool), *args],
            capture_output=True, text=True, timeout=START_TIMEOUT + 30,
        )  # fmt: skip
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed: {result.stderr or result.stdout}\n{log}")

    def start(self) -> PostgresServer:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
            "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", str(START_TIMEOUT), "start")  # fmt: skip
        return self

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
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
