"""streams: a connector's selected streams, a cursor per stream, cursors per run, backfills

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 05:30:00.000000
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# A run's cursor, and a connector's, belonged to its one stream.
_AS_OBJECT = {
    "postgresql": "json_build_object('default', cursor)",
    "sqlite": "json_object('default', json(cursor))",
}


def _state_table(name: str, *key: str) -> None:
    op.create_table(
        name,
        sa.Column("connector_id", sa.Integer(), nullable=False),
        *(
            [sa.Column("stream", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False)]
            if "stream" in key
            else []
        ),
        sa.Column("cursor", sa.JSON(), nullable=True),
        sa.Column("load_id", sa.Uuid(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["connector_id"], ["connector.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint(*key),
    )


def upgrade() -> None:
    with op.batch_alter_table("connector", schema=None) as batch_op:
        batch_op.add_column(sa.Column("streams", sa.JSON(), nullable=True))
    _state_table("sync_state_by_stream", "connector_id", "stream")
    op.execute(
        "INSERT INTO sync_state_by_stream (connector_id, stream, cursor, load_id, updated_at) "
        "SELECT connector_id, 'default', cursor, load_id, updated_at FROM sync_state"
    )
    op.drop_table("sync_state")
    op.rename_table("sync_state_by_stream", "sync_state")
    with op.batch_alter_table("sync_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cursors", sa.JSON(), nullable=True))
    dialect = op.get_bind().dialect.name
    op.execute(f"UPDATE sync_run SET cursors = {_AS_OBJECT[dialect]} WHERE cursor IS NOT NULL")
    with op.batch_alter_table("sync_run", schema=None) as batch_op:
        batch_op.drop_column("cursor")
    op.create_table(
        "backfill",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("connector_id", sa.Integer(), nullable=False),
        sa.Column("stream", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("start", sa.JSON(), nullable=True),
        sa.Column("end", sa.JSON(), nullable=True),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["connector_id"], ["connector.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_backfill_connector_id", "backfill", ["connector_id"])


def downgrade() -> None:
    op.drop_index("ix_backfill_connector_id", table_name="backfill")
    op.drop_table("backfill")
    with op.batch_alter_table("sync_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cursor", sa.JSON(), nullable=True))
    dialect = op.get_bind().dialect.name
    default = {"postgresql": "cursors -> 'default'", "sqlite": "cursors -> '$.default'"}
    op.execute(f"UPDATE sync_run SET cursor = {default[dialect]}")
    with op.batch_alter_table("sync_run", schema=None) as batch_op:
        batch_op.drop_column("cursors")
    _state_table("sync_state_of_connector", "connector_id")
    op.execute(
        "INSERT INTO sync_state_of_connector (connector_id, cursor, load_id, updated_at) "
        "SELECT connector_id, cursor, load_id, updated_at FROM sync_state WHERE stream = 'default'"
    )
    op.drop_table("sync_state")
    op.rename_table("sync_state_of_connector", "sync_state")
    with op.batch_alter_table("connector", schema=None) as batch_op:
        batch_op.drop_column("streams")
