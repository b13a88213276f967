from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests import speech
from tests.bot_peers import OrderSystem
from tests.controlplane import ControlPlane
from tests.engine_proc import ROOT, EngineProcess
from tests.pg import PostgresServer
from tests.redisd import RedisServer
from tests.webhook_receiver import Receiver


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Screenshots and logs worth keeping after a run."""
    path = ROOT / "test-output"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The scripted callers, made once per session."""
    d = tmp_path_factory.mktemp("speech")
    return {
        "calm": speech.piper_script(speech.CALM_SCRIPT, d / "calm.wav"),
        "angry": speech.piper_script(speech.ANGRY_SCRIPT, d / "angry.wav", speech.ANGRY_EFFECTS),
    }


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[EngineProcess]:
    proc = EngineProcess(
        tmp_path / "engine",
        CCENGINE_MEDIA_TIMEOUT="6",
        CCENGINE_KNOWLEDGE_BASE=str(Path(__file__).parent / "fixtures" / "kb"),
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def control_plane(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[ControlPlane]:
    """The engine app in the test's event loop, no process nor socket
    (tests/controlplane.py): for tests of the control plane's logic. On SQLite, or on
    a fresh PostgreSQL database for a test parametrized indirectly with "postgresql"."""
    database = {}
    if getattr(request, "param", "sqlite") == "postgresql":
        database["database_url"] = request.getfixturevalue("pg_url")
    async with ControlPlane(tmp_path / "engine", **database) as cp:
        yield cp


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on the loopback answering 200 (a test module may script its
    own with a fixture of the same name)."""
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def orders() -> Iterator[OrderSystem]:
    """The business's order system the virtual agent's flows call (tests/bot_peers.py),
    a real HTTP server on 127.0.0.1, one per test file."""
    with OrderSystem() as system:
        yield system


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    """A webhook receiver on the loopback for a module's engine, kept for the module."""
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session (tests/redisd.py); tests keep apart by key
    prefix (``tests.redisd.prefix()``)."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (tests/pg.py), started once per test process."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test; dropped after it."""
    url = postgres.new_database()
    try:
        yield url
    finally:
        postgres.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's URL, once on each database the engine runs on: a SQLite file, and a
    fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    return str(request.getfixturevalue("pg_url"))
