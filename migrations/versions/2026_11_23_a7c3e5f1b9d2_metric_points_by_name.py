"""metric points indexed by (run_id, name, id): each metric's newest value and one metric's
series without reading the whole run (the run page of a 100k-point run read every point)

Revision ID: a7c3e5f1b9d2
Revises: f9b6d4e2a1c7
Create Date: 2026-11-23 20:20:00
"""

from __future__ import annotations

from alembic import op


revision = 'a7c3e5f1b9d2'
down_revision = 'f9b6d4e2a1c7'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        'ix_metric_points_run_id_name_id', 'metric_points', ['run_id', 'name', 'id'], unique=False
    )


def downgrade() -> None:
    op.drop_index('ix_metric_points_run_id_name_id', table_name='metric_points')
