"""run lifecycle: stop-and-keep flag, error detail (traceback tail), deleted checkpoints

Revision ID: c4b1d8e6a2f3
Revises: a01b5cde6905
Create Date: 2026-11-23 16:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'c4b1d8e6a2f3'
down_revision = 'd6e3a1b8c5f9'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        'runs',
        sa.Column('stop_requested', sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column('runs', sa.Column('error_detail', sa.Text(), nullable=True))
    op.add_column('checkpoints', sa.Column('deleted_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('checkpoints') as batch:
        batch.drop_column('deleted_at')
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('error_detail')
        batch.drop_column('stop_requested')
