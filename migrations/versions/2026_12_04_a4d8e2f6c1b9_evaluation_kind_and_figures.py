"""evaluations: kind (standard / harness) and figures (curves and per-task tables)

Revision ID: a4d8e2f6c1b9
Revises: c2e8a4f6b1d3
Create Date: 2026-12-04 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'a4d8e2f6c1b9'
down_revision = 'c2e8a4f6b1d3'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('evaluations') as batch_op:
        batch_op.add_column(
            sa.Column('kind', sa.String(length=20), server_default='standard', nullable=False)
        )
        batch_op.add_column(sa.Column('figures', sa.JSON(), server_default='{}', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('evaluations') as batch_op:
        batch_op.drop_column('figures')
        batch_op.drop_column('kind')
