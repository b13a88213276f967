"""The alembic migrations build exactly the tables the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from engine.store.db import upgrade_schema
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
