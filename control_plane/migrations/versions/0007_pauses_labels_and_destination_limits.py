"""timed pauses, labels and owners of connectors; project freezes; destination run limits

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 11:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("connector", schema=None) as batch_op:
        batch_op.add_column(sa.Column("labels", sa.JSON(), server_default="[]", nullable=False))
        batch_op.add_column(sa.Column("owners", sa.JSON(), server_default="[]", nullable=False))
        batch_op.add_column(sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("pause_reason", sa.String(), nullable=True))
    with op.batch_alter_table("project", schema=None) as batch_op:
        batch_op.add_column(sa.Column("freeze_reason", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("frozen_until", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("defined_destination", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_concurrent_runs", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("defined_destination", schema=None) as batch_op:
        batch_op.drop_column("max_concurrent_runs")
    with op.batch_alter_table("project", schema=None) as batch_op:
        batch_op.drop_column("frozen_until")
        batch_op.drop_column("freeze_reason")
    with op.batch_alter_table("connector", schema=None) as batch_op:
        batch_op.drop_column("pause_reason")
        batch_op.drop_column("paused_until")
        batch_op.drop_column("owners")
        batch_op.drop_column("labels")
