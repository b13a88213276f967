"""The alembic migrations build exactly the tables the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from engine.store.db import alembic_config, upgrade_schema
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
