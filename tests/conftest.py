"""Session fixtures: one real Prefect server, and per database (SQLite, PostgreSQL) the API and
a worker as real processes, talking over real HTTP."""

import asyncio
import json
import os
import secrets
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy.engine import make_url

from bench._seed import Catalog, PostgresMissing, make_catalog, postgres_database
from control_plane import bootstrap
from control_plane.api.auth import READ, WRITE, mint
from control_plane.cli import prefect_server_env
from control_plane.db import migrate
from control_plane.encryption import ensure_key_file
from control_plane.processes import (
    STOP_GRACE_SECONDS,
    api_server,
    free_port,
    prefect_server,
    running,
    worker,
)
from control_plane.settings import Settings
from control_plane.supervisor import STACK_MARK, start_watchdog
from tests.helpers import PUBLIC_TEST_HOST

_WATCHDOG = pytest.StashKey[subprocess.Popen[bytes]]()


def pytest_configure(config: pytest.Config) -> None:
    """Mark every process the session starts, as `up` marks its stack's, with a watchdog that
    stops them all when the session ends, however: a killed session (CI's timeout, a second
    Ctrl-C) would otherwise leave its Prefect servers, APIs, workers and flow runs running. The
    xdist workers inherit the mark from their controller, which holds the watchdog."""
    if hasattr(config, "workerinput"):
        return
    stack = uuid.uuid4().hex
    # On the session's own stderr, not pytest's capture of it, to be read after a kill.
    with config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        config.stash[_WATCHDOG] = start_watchdog(stack, STOP_GRACE_SECONDS)
    os.environ[STACK_MARK] = stack


def pytest_unconfigure(config: pytest.Config) -> None:
    """A clean end: the watchdog stops what the session's tests left, if anything, and says so."""
    if watchdog := config.stash.get(_WATCHDOG, None):
        watchdog.stdin.close()
        watchdog.wait()


# Prefect's scheduler looks every second here (60 s by default), so runs appear quickly.
TEST_PREFECT_ENV = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1"}


def start_prefect_server(home: Path, port: int, database_url: str | None = None):
    """A Prefect server on `database_url`, or on SQLite under `home`."""
    database = database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}"
    env = {**prefect_server_env(Settings(prefect_port=port), home, database), **TEST_PREFECT_ENV}
    return prefect_server(home, port, env)


@pytest.fixture(scope="session")
def prefect_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server (with its scheduler) for the whole session, on PostgreSQL.

    Prefect's SQLite backend serves one writer: under the suite's load it answered the workers'
    writes with 503, and Prefect's client waits 2 s, then 4 s, before it tries again.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    database = f"prefect_{uuid.uuid4().hex[:12]}"
    with fresh_postgres(database, "postgresql+asyncpg") as database_url:
        server = start_prefect_server(tmp_path_factory.mktemp("prefect"), port, database_url)
        with running(server, f"{url}/health"), temporary_settings({PREFECT_API_URL: url}):
            yield url


@pytest.fixture(scope="session")
def prefect(prefect_api_url: str) -> Iterator[SyncPrefectClient]:
    """A client of the session's Prefect server, to check what the control plane did."""
    with get_client(sync_client=True) as client:
        yield client


@contextmanager
def fresh_postgres(name: str, driver: str = "postgresql+psycopg") -> Iterator[str]:
    """A database of its own on the machine's PostgreSQL; fails the test saying how to start it."""
    try:
        with postgres_database(name, driver) as url:
            yield url
    except PostgresMissing as error:
        pytest.fail(str(error), pytrace=False)


# The tables whose ids name what the control runs in Prefect are about.
CONTROL_TABLES = ("connector", "project", "defined_source", "defined_destination")


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[str]:
    """A fresh, migrated database of the control plane: SQLite, then PostgreSQL.

    With a fresh key file of its own (made by `migrate`), which CONTROL_PLANE_SECRET_KEY_FILE
    names meanwhile: every process on the database must read the same one (`stack_env`).
    """
    key_file = tmp_path_factory.mktemp("keys") / "secret.key"
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("CONTROL_PLANE_SECRET_KEY_FILE", str(key_file))
        if request.param == "sqlite":
            path = tmp_path_factory.mktemp("sqlite") / "control-plane.db"
            url = f"sqlite:///{path}"
            migrate(url, secret_key_file=key_file)
            # Apart from PostgreSQL's (below) and from the stacks tests start on databases of
            # their own, whose ids start at 1: they share the session's Prefect server too.
            with closing(sqlite3.connect(path)) as db, db:
                for table in CONTROL_TABLES:
                    # A table its migrations rebuilt has a row already.
                    db.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
                    db.execute(
                        "INSERT INTO sqlite_sequence (name, seq) VALUES (?, 2000000)", (table,)
                    )
            yield url
            return
        with fresh_postgres(f"control_plane_test_{uuid.uuid4().hex[:12]}") as url:
            migrate(url, secret_key_file=key_file)
            # Both databases share the session's Prefect server: keep their ids (and so their
            # deployment names, run names and tags) apart.
            with psycopg.connect(url.replace("+psycopg", "")) as db:
                for table in CONTROL_TABLES:
                    db.execute(f"ALTER SEQUENCE {table}_id_seq RESTART WITH 1000000")
            yield url


# What the test stacks' connectors may reach besides public hosts: the machine's PostgreSQL, and
# PUBLIC_TEST_HOST, where tests serve the HTTP APIs their sources read. The rest of loopback
# (the Prefect server and the API among them) stays out of reach.
ALLOWED_TEST_HOSTS = ["127.0.0.1:5432", PUBLIC_TEST_HOST]


# Where the stacks install Airbyte connectors: beside the test environment, so a connector is
# installed once (about a minute) and not again by each session.
AIRBYTE_DIR = Path(__file__).resolve().parents[1] / ".venv" / "airbyte"


@dataclass
class Stack:
    """The control plane's processes for one database."""

    api_url: str
    database_url: str
    work_pool: str
    env: dict[str, str]

    @property
    def files(self) -> Path:
        """The file root: each project's connectors reach `<files>/<project id>/` only."""
        return Path(self.env["CONTROL_PLANE_DATA_DIR"]) / "files"


def stack_env(prefect_api_url: str, database_url: str, work_pool: str, home: Path) -> dict:
    # The key file of `database_url` (every stack on one database shares it), else a fresh one.
    key_file = os.environ.get("CONTROL_PLANE_SECRET_KEY_FILE") or ensure_key_file(
        home / "secret.key"
    )
    return {
        "PREFECT_API_URL": prefect_api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "CONTROL_PLANE_DATABASE_URL": database_url,
        "CONTROL_PLANE_WORK_POOL": work_pool,
        "CONTROL_PLANE_DATA_DIR": str(home),
        "CONTROL_PLANE_SECRET_KEY_FILE": str(key_file),
        "CONTROL_PLANE_ALLOWED_HOSTS": json.dumps(ALLOWED_TEST_HOSTS),
        "CONTROL_PLANE_AIRBYTE_DIR": str(AIRBYTE_DIR),
    }


@pytest.fixture(scope="session")
def stack(prefect_api_url: str, database_url: str, tmp_path_factory) -> Iterator[Stack]:
    """The API and a worker on the session's Prefect server and this database."""
    home = tmp_path_factory.mktemp("stack")
    work_pool = f"connectors-{make_url(database_url).get_backend_name()}-{uuid.uuid4().hex[:6]}"
    asyncio.run(bootstrap.ensure_work_pool(work_pool, command=bootstrap.LOCAL_ENGINE))
    env = stack_env(prefect_api_url, database_url, work_pool, home)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    with (
        running(worker(env, work_pool, home / "worker.log")),
        running(api_server(env, port, home / "api.log"), f"{api_url}/health"),
    ):
        yield Stack(api_url=api_url, database_url=database_url, work_pool=work_pool, env=env)


@pytest.fixture(scope="session")
def control_deployments(stack: Stack, tmp_path_factory) -> Iterator[list[str]]:
    """prefect.yaml's control deployments and automations, and a worker of their pool."""
    # No scheduled reconcile here: tests make drift on purpose and check it themselves.
    settings = Settings(reconcile_interval_seconds=0, full_reconcile_interval_seconds=0)
    registered = asyncio.run(bootstrap.deploy_control_flows(settings=settings))
    [pool] = {entry["work_pool"]["name"] for entry in bootstrap.control_deployments()}
    # As `up` starts them: each run is Prefect's engine in this interpreter, imported once.
    asyncio.run(bootstrap.ensure_work_pool(pool, command=bootstrap.LOCAL_ENGINE))
    log = tmp_path_factory.mktemp("control-worker") / "worker.log"
    with running(worker(stack.env, pool, log)):
        yield registered


@dataclass
class AuthApi:
    """An API process of the stack with JWT auth on (HS256, issuer and audience checked)."""

    url: str
    settings: Settings

    def token(self, sub: str = "alice", scopes=(READ, WRITE), projects=()) -> str:
        return mint(
            settings=self.settings, sub=sub, scopes=list(scopes), projects=list(projects), hours=1
        )

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=60)


@pytest.fixture(scope="session")
def auth_api(stack: Stack, tmp_path_factory) -> Iterator[AuthApi]:
    secret = secrets.token_urlsafe(32)
    settings = Settings(
        auth_enabled=True,
        auth_jwt_secret=secret,
        auth_issuer="control-plane-tests",
        auth_audience="control-plane",
    )
    env = {
        **stack.env,
        "CONTROL_PLANE_AUTH_ENABLED": "true",
        "CONTROL_PLANE_AUTH_JWT_SECRET": secret,
        "CONTROL_PLANE_AUTH_ISSUER": settings.auth_issuer,
        "CONTROL_PLANE_AUTH_AUDIENCE": settings.auth_audience,
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("auth") / "api.log"
    with running(api_server(env, port, log), f"{url}/health"):
        yield AuthApi(url, settings)


@pytest.fixture(scope="session")
def api(stack: Stack) -> Iterator[httpx.Client]:
    """An HTTP client of the API's /api/v1."""
    with httpx.Client(base_url=f"{stack.api_url}/api/v1", timeout=60) as client:
        yield client


@pytest.fixture
def catalog(api: httpx.Client, stack: Stack) -> Catalog:
    """A new project with a CSV source and a JSONL destination."""
    return make_catalog(api, stack.files)
