"""deployment settings: a serving name of its own, replicas, batch size, default sampling,
and the version a zero-downtime redeploy is loading

Revision ID: d6e3a1b8c5f9
Revises: a01b5cde6905
Create Date: 2026-11-23 16:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'd6e3a1b8c5f9'
down_revision = 'b1d5a7c0e3f1'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('name', sa.String(length=255), nullable=True))
        batch_op.add_column(
            sa.Column('replicas', sa.Integer(), nullable=False, server_default='1')
        )
        batch_op.add_column(
            sa.Column('max_batch_size', sa.Integer(), nullable=False, server_default='8')
        )
        batch_op.add_column(
            sa.Column('max_new_tokens', sa.Integer(), nullable=False, server_default='256')
        )
        batch_op.add_column(
            sa.Column('temperature', sa.Float(), nullable=False, server_default='0.7')
        )
        batch_op.add_column(sa.Column('top_p', sa.Float(), nullable=False, server_default='1.0'))
        batch_op.add_column(sa.Column('pending_model_version_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f('fk_deployments_pending_model_version_id_model_versions'),
            'model_versions',
            ['pending_model_version_id'],
            ['id'],
            ondelete='SET NULL',
        )
        batch_op.create_index(batch_op.f('ix_deployments_name'), ['name'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deployments_name'))
        batch_op.drop_constraint(
            batch_op.f('fk_deployments_pending_model_version_id_model_versions'),
            type_='foreignkey',
        )
        for column in (
            'pending_model_version_id', 'top_p', 'temperature', 'max_new_tokens',
            'max_batch_size', 'replicas', 'name',
        ):
            batch_op.drop_column(column)
