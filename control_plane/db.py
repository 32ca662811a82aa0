"""The control plane's database: one async engine per URL, sessions, and migrations."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane.settings import get_settings

_MIGRATIONS = Path(__file__).parent / "migrations"


def _url(database_url: str, *, asynchronous: bool) -> URL:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        Path(url.database or ".").parent.mkdir(parents=True, exist_ok=True)
        return url.set(drivername="sqlite+aiosqlite" if asynchronous else "sqlite")
    if url.get_backend_name() == "postgresql":
        # psycopg 3 serves both the sync (Alembic) and the async (runtime) engine.
        return url.set(drivername="postgresql+psycopg")
    return url


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@lru_cache
def get_engine(database_url: str | None = None) -> AsyncEngine:
    """The async engine for a URL (default: the settings'), created once per process."""
    url = _url(database_url or get_settings().resolved_database_url, asynchronous=True)
    engine = create_async_engine(url, pool_pre_ping=True)
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


@asynccontextmanager
async def session_scope() -> AsyncIterator[AsyncSession]:
    """A session on the default engine; the caller commits, anything else rolls back."""
    sessions = async_sessionmaker(get_engine(), class_=AsyncSession, expire_on_commit=False)
    async with sessions() as session:
        yield session


def migrate(database_url: str | None = None) -> None:
    """Bring the database schema to the newest Alembic revision."""
    url = _url(database_url or get_settings().resolved_database_url, asynchronous=False)
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["url"] = url
    command.upgrade(config, "head")


__all__ = ["get_engine", "migrate", "session_scope"]
