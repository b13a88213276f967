"""several engines on one database (PostgreSQL): webhook deliveries are claimed by the
engine sending them, event ids are 64-bit, and the event id sequence has its row from
the start, so engines reserving ids only ever update it

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
# (table, column) holding event ids; SQLite's INTEGER is 64-bit already
EVENT_IDS = [
    ("events", "id"),
    ("event_sequence", "reserved_to"),
    ("webhook_deliveries", "event_id"),
]


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(36), nullable=True))
        batch.add_column(sa.Column("claimed_until", TZ, nullable=True))
    if op.get_bind().dialect.name != "sqlite":
        for table, column in EVENT_IDS:
            op.alter_column(table, column, type_=sa.BigInteger, existing_type=sa.Integer)
    op.execute(
        "INSERT INTO event_sequence (name, reserved_to)"
        " SELECT 'events', COALESCE(MAX(id), 0) FROM events"
        " WHERE NOT EXISTS (SELECT 1 FROM event_sequence WHERE name = 'events')"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        for table, column in EVENT_IDS:
            op.alter_column(table, column, type_=sa.Integer, existing_type=sa.BigInteger)
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("claimed_until")
        batch.drop_column("claimed_by")
