"""rpa vault and schedules

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import controltower.core.db

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('rpa_vault_secrets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('ciphertext', sa.Text(), nullable=False),
    sa.Column('created_at', controltower.core.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', controltower.core.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rpa_vault_secrets')),
    sa.UniqueConstraint('name', name=op.f('uq_rpa_vault_secrets_name'))
    )
    op.create_table('rpa_schedules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('robot', sa.String(length=64), nullable=False),
    sa.Column('task', sa.String(length=255), nullable=True),
    sa.Column('version', sa.String(length=16), nullable=True),
    sa.Column('cron', sa.String(length=128), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('agent_id', sa.Integer(), nullable=True),
    sa.Column('variables', sa.JSON(), nullable=False),
    sa.Column('input', sa.JSON(), nullable=True),
    sa.Column('secrets', sa.JSON(), nullable=False),
    sa.Column('timeout_s', sa.Double(), nullable=True),
    sa.Column('retries', sa.Integer(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('next_fire_at', controltower.core.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('last_fire_at', controltower.core.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('last_run_id', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('fires', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', controltower.core.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', controltower.core.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rpa_schedules'))
    )
    with op.batch_alter_table('rpa_schedules', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rpa_schedules_robot'), ['robot'], unique=False)
        batch_op.create_index(batch_op.f('ix_rpa_schedules_next_fire_at'), ['next_fire_at'], unique=False)

    # Runs started before this revision declared no secrets and came from no schedule.
    with op.batch_alter_table('rpa_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('secrets', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('schedule_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_rpa_runs_schedule_id'), ['schedule_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('rpa_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rpa_runs_schedule_id'))
        batch_op.drop_column('schedule_id')
        batch_op.drop_column('secrets')
    with op.batch_alter_table('rpa_schedules', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rpa_schedules_next_fire_at'))
        batch_op.drop_index(batch_op.f('ix_rpa_schedules_robot'))
    op.drop_table('rpa_schedules')
    op.drop_table('rpa_vault_secrets')
