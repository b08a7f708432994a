"""cross-validations (k fold runs) and arena votes (blind side-by-side preferences)

Revision ID: b5e1c7d3f9a2
Revises: b5e1d9c3a7f4
Create Date: 2026-12-04 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'b5e1c7d3f9a2'
down_revision = 'b5e1d9c3a7f4'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'cross_validations',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('workspace_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('dataset_id', sa.Integer(), nullable=False),
        sa.Column('source_version_id', sa.Integer(), nullable=False),
        sa.Column('base_model', sa.String(length=255), nullable=False),
        sa.Column('config', sa.JSON(), nullable=False),
        sa.Column('k', sa.Integer(), nullable=False),
        sa.Column('stratified', sa.Boolean(), nullable=False),
        sa.Column('seed', sa.Integer(), nullable=False),
        sa.Column('fold_version_ids', sa.JSON(), nullable=False),
        sa.Column('final_fit_run_id', sa.Integer(), nullable=True),
        sa.Column('registered_version_id', sa.Integer(), nullable=True),
        sa.Column('created_by_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ['created_by_id'], ['users.id'],
            name=op.f('fk_cross_validations_created_by_id_users'), ondelete='SET NULL',
        ),
        sa.ForeignKeyConstraint(
            ['dataset_id'], ['datasets.id'],
            name=op.f('fk_cross_validations_dataset_id_datasets'), ondelete='RESTRICT',
        ),
        sa.ForeignKeyConstraint(
            ['workspace_id'], ['workspaces.id'],
            name=op.f('fk_cross_validations_workspace_id_workspaces'), ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_cross_validations')),
    )
    op.create_index(
        op.f('ix_cross_validations_workspace_id'), 'cross_validations', ['workspace_id']
    )
    with op.batch_alter_table('runs') as batch_op:
        batch_op.add_column(sa.Column('cross_validation_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('cross_validation_fold', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_runs_cross_validation_id'), ['cross_validation_id'])
        batch_op.create_foreign_key(
            batch_op.f('fk_runs_cross_validation_id_cross_validations'),
            'cross_validations', ['cross_validation_id'], ['id'], ondelete='SET NULL',
        )
    op.create_table(
        'arena_votes',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('workspace_id', sa.Integer(), nullable=False),
        sa.Column('messages', sa.JSON(), nullable=False),
        sa.Column('answer_a', sa.Text(), nullable=False),
        sa.Column('answer_b', sa.Text(), nullable=False),
        sa.Column('version_a_id', sa.Integer(), nullable=True),
        sa.Column('version_b_id', sa.Integer(), nullable=True),
        sa.Column('model_a', sa.String(length=255), nullable=False),
        sa.Column('model_b', sa.String(length=255), nullable=False),
        sa.Column('winner', sa.String(length=10), nullable=False),
        sa.Column('created_by_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ['created_by_id'], ['users.id'],
            name=op.f('fk_arena_votes_created_by_id_users'), ondelete='SET NULL',
        ),
        sa.ForeignKeyConstraint(
            ['version_a_id'], ['model_versions.id'],
            name=op.f('fk_arena_votes_version_a_id_model_versions'), ondelete='SET NULL',
        ),
        sa.ForeignKeyConstraint(
            ['version_b_id'], ['model_versions.id'],
            name=op.f('fk_arena_votes_version_b_id_model_versions'), ondelete='SET NULL',
        ),
        sa.ForeignKeyConstraint(
            ['workspace_id'], ['workspaces.id'],
            name=op.f('fk_arena_votes_workspace_id_workspaces'), ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_arena_votes')),
    )
    op.create_index(op.f('ix_arena_votes_workspace_id'), 'arena_votes', ['workspace_id'])
    op.create_index(op.f('ix_arena_votes_created_at'), 'arena_votes', ['created_at'])
    op.create_index(op.f('ix_arena_votes_version_a_id'), 'arena_votes', ['version_a_id'])
    op.create_index(op.f('ix_arena_votes_version_b_id'), 'arena_votes', ['version_b_id'])


def downgrade() -> None:
    op.drop_table('arena_votes')
    with op.batch_alter_table('runs') as batch_op:
        batch_op.drop_constraint(
            batch_op.f('fk_runs_cross_validation_id_cross_validations'), type_='foreignkey'
        )
        batch_op.drop_index(batch_op.f('ix_runs_cross_validation_id'))
        batch_op.drop_column('cross_validation_fold')
        batch_op.drop_column('cross_validation_id')
    op.drop_table('cross_validations')
