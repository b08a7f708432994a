"""runs.paused: a fine-tuning job paused through the OpenAI route (a cancel meant to resume)

Revision ID: a7c3e9f1b5d2
Revises: a4d8e2f6c1b9
Create Date: 2026-12-04 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a7c3e9f1b5d2"
down_revision = "a4d8e2f6c1b9"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(
            sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("paused")
