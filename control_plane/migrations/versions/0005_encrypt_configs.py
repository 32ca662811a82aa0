"""encrypt configs at rest

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:12:40.118274

The configs of defined sources and destinations and the connectors' overrides become Fernet
tokens (TEXT) under the key file (`control_plane/encryption.py`), created here when missing.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from control_plane.encryption import decrypt_json, encrypt_json, ensure_key_file
from control_plane.settings import get_settings

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = {
    "defined_source": ("config",),
    "defined_destination": ("config",),
    "connector": ("source_config_override", "destination_config_override"),
}
BATCH_SIZE = 1000


def _key_file() -> Path:
    # `control_plane.db.migrate` names the file it ensured; a bare `alembic upgrade`, the settings'.
    named = context.config.attributes.get("secret_key_file")
    return ensure_key_file(Path(named) if named else get_settings().resolved_secret_key_file)


def _retype(
    name: str, columns: tuple[str, ...], old: sa.types.TypeEngine, new: sa.types.TypeEngine
) -> None:
    connection = op.get_bind()
    sqlite = connection.dialect.name == "sqlite"
    # SQLite's batch mode copies the table into a new one, and dropping the old one forgets its
    # AUTOINCREMENT counter: keep it, so that ids of deleted rows are never given out again.
    counter = (
        connection.scalar(sa.text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": name})
        if sqlite
        else None
    )
    with op.batch_alter_table(name, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        for column in columns:
            batch_op.alter_column(
                column,
                existing_type=old,
                type_=new,
                existing_nullable=False,
                postgresql_using=f"{column}::{new.compile(dialect=connection.dialect)}",
            )
    if counter is not None:
        connection.execute(
            sa.text("UPDATE sqlite_sequence SET seq = max(seq, :seq) WHERE name = :t"),
            {"seq": counter, "t": name},
        )


def _rewrite(name: str, columns: tuple[str, ...], convert: Callable[[str], str]) -> None:
    """Every value of `columns`, as text, replaced by `convert(value)`; in batches by id."""
    connection = op.get_bind()
    rows = sa.table(name, sa.column("id", sa.Integer), *(sa.column(c, sa.Text) for c in columns))
    last = 0
    while batch := connection.execute(
        sa.select(rows).where(rows.c.id > last).order_by(rows.c.id).limit(BATCH_SIZE)
    ).all():
        for row in batch:
            values = {c: convert(getattr(row, c)) for c in columns if getattr(row, c) is not None}
            connection.execute(sa.update(rows).where(rows.c.id == row.id).values(values))
        last = batch[-1].id


def upgrade() -> None:
    key_file = _key_file()
    if op.get_bind().dialect.name == "sqlite":
        # Zero what is deleted from now on (the old tables, the replaced values): no clear config
        # is left behind in the file's free pages.
        op.execute("PRAGMA secure_delete = ON")

    def encrypt(raw: str) -> str:
        value: Any = json.loads(raw)
        return encrypt_json(value, key_file=key_file)

    for name, columns in COLUMNS.items():
        _retype(name, columns, sa.JSON(), sa.Text())
        _rewrite(name, columns, encrypt)


def downgrade() -> None:
    key_file = _key_file()

    def decrypt(token: str) -> str:
        return json.dumps(decrypt_json(token, key_file=key_file))

    for name, columns in COLUMNS.items():
        _rewrite(name, columns, decrypt)
        _retype(name, columns, sa.Text(), sa.JSON())
