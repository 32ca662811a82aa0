"""run policies, reset counts and load ids

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 22:20:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("connector", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retries", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("retry_delay_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("timeout_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("resets", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("load_id", sa.Uuid(), nullable=True))
    with op.batch_alter_table("sync_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resets", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("sync_run", schema=None) as batch_op:
        batch_op.drop_column("resets")
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.drop_column("load_id")
    with op.batch_alter_table("connector", schema=None) as batch_op:
        batch_op.drop_column("resets")
        batch_op.drop_column("timeout_seconds")
        batch_op.drop_column("retry_delay_seconds")
        batch_op.drop_column("retries")
