"""The alembic migrations build exactly the tables the models describe, on SQLite and on
PostgreSQL (the ``db_url`` fixture), and go down and up again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from engine.store.db import alembic_config, head_revision, upgrade_schema
from engine.store.models import Base

T = TypeVar("T")


def on_database(url: str, work: Callable[[Connection], T]) -> T:
    """``work`` on a connection to ``url`` (through the app's async driver, which is
    the one installed for PostgreSQL), committed."""

    async def run() -> T:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def schema_diff(conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def test_migrations_match_the_models(db_url: str) -> None:
    """Column types included: on PostgreSQL times keep their zone and event ids are
    64-bit, where SQLite keeps whatever it is given."""
    upgrade_schema(db_url)
    assert on_database(db_url, schema_diff) == []


def test_migrations_go_down_and_up_again(db_url: str) -> None:
    """Every downgrade runs on both databases, and the upgrade after it rebuilds the
    same schema; the event id sequence has its row from 0013 on."""
    upgrade_schema(db_url)
    command.downgrade(alembic_config(db_url), "base")
    tables = on_database(db_url, lambda c: inspect(c).get_table_names())
    assert tables == ["alembic_version"]
    upgrade_schema(db_url)
    assert on_database(db_url, schema_diff) == []
    rows = on_database(
        db_url, lambda c: c.execute(text("SELECT name, reserved_to FROM event_sequence")).all()
    )
    assert [tuple(r) for r in rows] == [("events", 0)]


def test_queue_changes_move_to_the_overrides_and_back(db_url: str) -> None:
    """0010 keeps a queue a supervisor changed before the upgrade, and gives it back on
    a downgrade."""
    command.upgrade(alembic_config(db_url), "0009")
    row = "'billing', '{\"name\": \"billing\", \"max_wait\": 30}', 'sue', '2026-11-20 10:00:00'"

    def before(conn: Connection) -> None:
        conn.execute(text(f"INSERT INTO queue_configs VALUES ({row})"))
        conn.execute(text("INSERT INTO queue_configs VALUES ('old', NULL, 'sue', '2026-11-21')"))

    on_database(db_url, before)
    command.upgrade(alembic_config(db_url), "head")
    moved = on_database(
        db_url,
        lambda c: c.execute(
            text("SELECT kind, name, config, updated_by FROM config_overrides ORDER BY name")
        ).all(),
    )
    command.downgrade(alembic_config(db_url), "0009")
    back = on_database(
        db_url,
        lambda c: c.execute(text("SELECT name, config FROM queue_configs ORDER BY name")).all(),
    )
    left = on_database(
        db_url, lambda c: c.execute(text("SELECT count(*) FROM config_overrides")).scalar()
    )
    config = '{"name": "billing", "max_wait": 30}'
    # the driver hands JSON back parsed (PostgreSQL) or as the text kept (SQLite)
    assert [
        (k, n, c if c is None or isinstance(c, str) else json.dumps(c), by) for k, n, c, by in moved
    ] == [
        ("queue", "billing", config, "sue"),
        ("queue", "old", None, "sue"),
    ]
    assert [(n, c if c is None or isinstance(c, str) else json.dumps(c)) for n, c in back] == [
        ("billing", config),
        ("old", None),
    ]
    assert left == 0


def test_a_database_at_the_newest_revision_is_opened_without_alembic(db_url: str) -> None:
    """alembic (~10 MB) stayed in every engine's memory for a check that finds nothing
    to do on every start but the first. Now a database already at the newest revision
    is opened without importing it; an older one is still upgraded."""
    import subprocess
    import sys

    command.upgrade(alembic_config(db_url), "0011")
    probe = (
        "import asyncio, sys\n"
        "from engine.store.db import Store\n"
        "async def main():\n"
        f"    store = Store({db_url!r})\n"
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
    version = on_database(
        db_url, lambda c: c.execute(text("SELECT version_num FROM alembic_version")).scalar()
    )
    assert version == head_revision()
