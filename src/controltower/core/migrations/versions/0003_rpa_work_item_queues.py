"""rpa work-item queues

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import controltower.core.db

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rpa_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_files", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column("output", sa.JSON(), nullable=True))

    op.create_table(
        "rpa_queues",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("robot_id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=255), nullable=True),
        sa.Column("version", sa.String(length=16), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("agent_id", sa.Integer(), nullable=True),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("retry_backoff_s", sa.Double(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("timeout_s", sa.Double(), nullable=True),
        sa.Column("lease_s", sa.Double(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", controltower.core.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["robot_id"], ["rpa_robots.id"], name=op.f("fk_rpa_queues_robot_id_rpa_robots"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rpa_queues")),
        sa.UniqueConstraint("name", name=op.f("uq_rpa_queues_name")),
    )
    with op.batch_alter_table("rpa_queues", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rpa_queues_robot_id"), ["robot_id"], unique=False)

    op.create_table(
        "rpa_queue_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("queue_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("run_ids", sa.JSON(), nullable=False),
        sa.Column("not_before", controltower.core.db.UtcDateTime(timezone=True), nullable=True),
        sa.Column("enqueued_at", controltower.core.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("dispatched_at", controltower.core.db.UtcDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", controltower.core.db.UtcDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", controltower.core.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["queue_id"], ["rpa_queues.id"], name=op.f("fk_rpa_queue_items_queue_id_rpa_queues"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rpa_queue_items")),
    )
    with op.batch_alter_table("rpa_queue_items", schema=None) as batch_op:
        batch_op.create_index("ix_rpa_queue_items_queue_status", ["queue_id", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_rpa_queue_items_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rpa_queue_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rpa_queue_items_run_id"))
        batch_op.drop_index("ix_rpa_queue_items_queue_status")
    op.drop_table("rpa_queue_items")
    with op.batch_alter_table("rpa_queues", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rpa_queues_robot_id"))
    op.drop_table("rpa_queues")
    with op.batch_alter_table("rpa_runs", schema=None) as batch_op:
        batch_op.drop_column("output")
        batch_op.drop_column("input_files")
