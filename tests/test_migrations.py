"""The alembic migrations build exactly the tables the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from engine.store.db import alembic_config, head_revision, upgrade_schema
from engine.store.models import Base


def test_migrations_match_the_models(tmp_path: Path) -> None:
    db = tmp_path / "schema.db"
    upgrade_schema(f"sqlite+aiosqlite:///{db}")
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_queue_changes_move_to_the_overrides_and_back(tmp_path: Path) -> None:
    """0010 keeps a queue a supervisor changed before the upgrade, and gives it back on
    a downgrade."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'queues.db'}"
    command.upgrade(alembic_config(url), "0009")
    engine = create_engine(f"sqlite:///{tmp_path / 'queues.db'}")
    row = "'billing', '{\"name\": \"billing\", \"max_wait\": 30}', 'sue', '2026-11-20 10:00:00'"
    try:
        with engine.begin() as conn:
            conn.execute(text(f"INSERT INTO queue_configs VALUES ({row})"))
            conn.execute(
                text("INSERT INTO queue_configs VALUES ('old', NULL, 'sue', '2026-11-21')")
            )
        command.upgrade(alembic_config(url), "head")
        with engine.connect() as conn:
            moved = conn.execute(
                text("SELECT kind, name, config, updated_by FROM config_overrides ORDER BY name")
            ).all()
        command.downgrade(alembic_config(url), "0009")
        with engine.connect() as conn:
            back = conn.execute(text("SELECT name, config FROM queue_configs ORDER BY name")).all()
            left = conn.execute(text("SELECT count(*) FROM config_overrides")).scalar()
    finally:
        engine.dispose()
    assert [tuple(r) for r in moved] == [
        ("queue", "billing", '{"name": "billing", "max_wait": 30}', "sue"),
        ("queue", "old", None, "sue"),
    ]
    assert [tuple(r) for r in back] == [
        ("billing", '{"name": "billing", "max_wait": 30}'),
        ("old", None),
    ]
    assert left == 0


def test_a_database_at_the_newest_revision_is_opened_without_alembic(tmp_path: Path) -> None:
    """alembic (~10 MB) stayed in every engine's memory for a check that finds nothing
    to do on every start but the first. Now a database already at the newest revision
    is opened without importing it; an older one is still upgraded."""
    import subprocess
    import sys

    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    command.upgrade(alembic_config(url), "0011")
    probe = (
        "import asyncio, sys\n"
        "from engine.store.db import Store\n"
        "async def main():\n"
        f"    store = Store({url!r})\n"
        "    await store.open()\n"
        "    await store.close()\n"
        "    print('alembic' in sys.modules)\n"
        "asyncio.run(main())\n"
    )
    root = Path(__file__).resolve().parent.parent
    runs = [
        subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True)
        for _ in range(2)
    ]
    assert [r.stdout.strip() for r in runs] == ["True", "False"], [r.stderr for r in runs]
    engine = create_engine(f"sqlite:///{tmp_path / 'engine.db'}")
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    assert version == head_revision()
