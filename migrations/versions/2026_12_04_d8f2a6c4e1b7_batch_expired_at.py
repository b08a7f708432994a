"""batches.expired_at: when a batch that had not completed by its expires_at became `expired`

Revision ID: d8f2a6c4e1b7
Revises: b5e1c7d3f9a2
Create Date: 2026-12-04 23:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "d8f2a6c4e1b7"
down_revision = "b5e1c7d3f9a2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("expired_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("expired_at")
