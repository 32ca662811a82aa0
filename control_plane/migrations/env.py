"""Alembic environment: the URL comes from `control_plane.db.migrate`, the schema from `models`."""

from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import models  # noqa: F401  (registers every table on SQLModel.metadata)

url = context.config.attributes["url"]
engine = create_engine(url)
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
