"""whether the caller heard an utterance: false for what agents said while the caller
was held for a consult, which the caller's own reads of their call leave out

Revision ID: 0019_xprivate
Revises: 0018_analytics
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_xprivate"
down_revision = "0018_analytics"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # every utterance stored before was heard as far as anyone knows: the caller's own
    # reads kept showing them until now
    with op.batch_alter_table("utterances") as batch:
        batch.add_column(
            sa.Column("caller_heard", sa.Boolean, nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("utterances") as batch:
        batch.drop_column("caller_heard")
