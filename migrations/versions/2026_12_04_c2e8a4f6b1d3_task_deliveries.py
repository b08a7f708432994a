"""task deliveries: a poison-message limit (a task whose worker keeps dying is given up)

Revision ID: c2e8a4f6b1d3
Revises: e3b9c1d7f2a4
Create Date: 2026-12-04 14:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'c2e8a4f6b1d3'
down_revision = 'e3b9c1d7f2a4'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'task_deliveries',
        sa.Column('task_id', sa.String(length=155), nullable=False),
        sa.Column('task_name', sa.String(length=100), nullable=False),
        sa.Column('deliveries', sa.Integer(), nullable=False),
        sa.Column('first_at', sa.DateTime(), nullable=False),
        sa.Column('last_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('task_id', name=op.f('pk_task_deliveries')),
    )


def downgrade() -> None:
    op.drop_table('task_deliveries')
