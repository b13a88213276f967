"""Persistence: SQLAlchemy async, SQLite (WAL) by default, schema by alembic."""
