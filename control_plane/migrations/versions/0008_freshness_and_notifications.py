"""freshness windows of connectors; owners and notification routes of projects and connectors

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 20:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("connector", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_staleness", sa.Interval(), nullable=True))
        batch_op.add_column(sa.Column("stale_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("notifications", sa.JSON(), nullable=True))
    with op.batch_alter_table("project", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owners", sa.JSON(), server_default="[]", nullable=False))
        batch_op.add_column(
            sa.Column("notifications", sa.JSON(), server_default="[]", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("project", schema=None) as batch_op:
        batch_op.drop_column("notifications")
        batch_op.drop_column("owners")
    with op.batch_alter_table("connector", schema=None) as batch_op:
        batch_op.drop_column("notifications")
        batch_op.drop_column("stale_since")
        batch_op.drop_column("max_staleness")
