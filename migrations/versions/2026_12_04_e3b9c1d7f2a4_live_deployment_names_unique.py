"""live deployment names are unique per workspace (a partial unique index)

Two concurrent deploys both passed the name check and made two live deployments with one name.
Existing duplicates (from that race) keep the newest deployment's name, which is the one
requests were already routed to; older ones get their id appended.

Revision ID: e3b9c1d7f2a4
Revises: b8d4f6a2c0e3
Create Date: 2026-12-04 14:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'e3b9c1d7f2a4'
down_revision = 'b8d4f6a2c0e3'
branch_labels = None
depends_on = None

LIVE = "status != 'stopped'"


def upgrade() -> None:
    op.execute(
        "UPDATE deployments SET name = name || '-' || CAST(id AS VARCHAR(20)) "
        f"WHERE {LIVE} AND name IS NOT NULL AND EXISTS ("
        "SELECT 1 FROM deployments AS newer WHERE newer.workspace_id = deployments.workspace_id "
        "AND newer.name = deployments.name AND newer.status != 'stopped' "
        "AND newer.id > deployments.id)"
    )
    op.create_index(
        'uq_deployments_live_name',
        'deployments',
        ['workspace_id', 'name'],
        unique=True,
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )


def downgrade() -> None:
    op.drop_index('uq_deployments_live_name', table_name='deployments')
