"""The control plane's database: one async engine per URL, sessions, and migrations."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from weakref import WeakValueDictionary

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane.encryption import ensure_key_file
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
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url, pool_pre_ping=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # SQLAlchemy keeps 5 connections and opens and closes the rest: keep what concurrent
    # requests use, rather than pay PostgreSQL a new connection each.
    return create_async_engine(url, pool_pre_ping=True, pool_size=20)


@asynccontextmanager
async def session_scope() -> AsyncIterator[AsyncSession]:
    """A session on the default engine; the caller commits, anything else rolls back."""
    sessions = async_sessionmaker(get_engine(), class_=AsyncSession, expire_on_commit=False)
    async with sessions() as session:
        yield session


_locks: WeakValueDictionary[tuple[int, str], asyncio.Lock] = WeakValueDictionary()


@asynccontextmanager
async def write_lock(key: str) -> AsyncIterator[None]:
    """Run one write unit at a time per key in this process (per database on SQLite, which has
    one writer), so requests queued behind a row lock hold no database connection meanwhile.

    Row locks in the database still order writers across processes.
    """
    if make_url(get_settings().resolved_database_url).get_backend_name() == "sqlite":
        key = "sqlite"
    loop_key = (id(asyncio.get_running_loop()), key)
    lock = _locks.get(loop_key)
    if lock is None:
        lock = _locks[loop_key] = asyncio.Lock()
    async with lock:
        yield


def migrate(database_url: str | None = None, *, secret_key_file: Path | None = None) -> None:
    """Bring the database schema to the newest Alembic revision.

    Creates the key file that encrypts stored configs (default: the settings') when missing:
    revision 0005 encrypts the existing rows with it, and every process reads it.
    """
    # Imported here: every sync run's process imports this module, and Alembic adds 0.2 s to it.
    from alembic import command
    from alembic.config import Config

    url = _url(database_url or get_settings().resolved_database_url, asynchronous=False)
    key_file = ensure_key_file(secret_key_file or get_settings().resolved_secret_key_file)
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["url"] = url
    config.attributes["secret_key_file"] = key_file
    command.upgrade(config, "head")


__all__ = ["get_engine", "migrate", "session_scope", "write_lock"]
