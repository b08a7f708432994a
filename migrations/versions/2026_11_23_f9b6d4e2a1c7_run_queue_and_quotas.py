"""run queue, quotas and sweeps: priorities, queue order, dispatch and worker host on runs,
per-workspace quotas, the dispatcher's lock row, hyperparameter sweeps and their trials

Revision ID: f9b6d4e2a1c7
Revises: b1d5a7c0e3f1
Create Date: 2026-11-23 17:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'f9b6d4e2a1c7'
down_revision = 'c4b1d8e6a2f3'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sweeps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('workspace_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('base_model', sa.String(length=255), nullable=False),
    sa.Column('base_config', sa.JSON(), nullable=False),
    sa.Column('search_space', sa.JSON(), nullable=False),
    sa.Column('method', sa.String(length=16), nullable=False),
    sa.Column('metric', sa.String(length=64), nullable=False),
    sa.Column('direction', sa.String(length=8), nullable=False),
    sa.Column('max_trials', sa.Integer(), nullable=False),
    sa.Column('parallelism', sa.Integer(), nullable=False),
    sa.Column('prune', sa.Boolean(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('best_run_id', sa.Integer(), nullable=True),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_sweeps_created_by_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_sweeps_dataset_id_datasets'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_sweeps_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sweeps'))
    )
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sweeps_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_sweeps_workspace_id'), ['workspace_id'], unique=False)

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sweep_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('sweep_trial', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('sweep_params', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('sweep_pruned', sa.Boolean(), server_default='0', nullable=False))
        batch_op.create_index(batch_op.f('ix_runs_sweep_id'), ['sweep_id'], unique=False)
        batch_op.create_index('uq_runs_sweep_trial', ['sweep_id', 'sweep_trial'], unique=True)
        batch_op.create_foreign_key(batch_op.f('fk_runs_sweep_id_sweeps'), 'sweeps', ['sweep_id'], ['id'], ondelete='SET NULL')
        batch_op.add_column(sa.Column('priority', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('queue_rank', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('dispatched_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('worker_host', sa.String(length=255), nullable=True))
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.add_column(sa.Column('quota_concurrent_runs', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('quota_gpu_hours_per_month', sa.Float(), nullable=True))
    lock = op.create_table('run_dispatch_lock',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('taken_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_dispatch_lock'))
    )
    op.bulk_insert(lock, [{'id': 1, 'taken_at': None}])
    # Runs queued before the queue existed were already sent to the broker.
    op.execute("UPDATE runs SET dispatched_at = created_at WHERE status = 'queued'")


def downgrade() -> None:
    op.drop_table('run_dispatch_lock')
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.drop_column('quota_gpu_hours_per_month')
        batch_op.drop_column('quota_concurrent_runs')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('worker_host')
        batch_op.drop_column('dispatched_at')
        batch_op.drop_column('queue_rank')
        batch_op.drop_column('priority')
        batch_op.drop_constraint(batch_op.f('fk_runs_sweep_id_sweeps'), type_='foreignkey')
        batch_op.drop_index('uq_runs_sweep_trial')
        batch_op.drop_index(batch_op.f('ix_runs_sweep_id'))
        batch_op.drop_column('sweep_pruned')
        batch_op.drop_column('sweep_params')
        batch_op.drop_column('sweep_trial')
        batch_op.drop_column('sweep_id')
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sweeps_workspace_id'))
        batch_op.drop_index(batch_op.f('ix_sweeps_status'))
    op.drop_table('sweeps')
