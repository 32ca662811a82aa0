"""No secret of a tenant's config is stored in clear: configs and overrides are Fernet tokens
under the key file (control_plane/encryption.py), `control-plane rotate-key` changes the key
while the stack runs, and migration 0005 encrypts the rows stored before it."""

import json
import os
import secrets
import sqlite3
import stat
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.config import Config
from cryptography.fernet import Fernet, InvalidToken
from prefect.client.orchestration import SyncPrefectClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import control_plane
from bench._seed import POSTGRES_ADMIN_URL, created, unique
from control_plane.db import migrate
from control_plane.encryption import decrypt_json, encrypt_json, read_keys
from control_plane.processes import api_server, free_port, running, wait_for
from tests.conftest import PUBLIC_TEST_HOST, Stack, fresh_postgres
from tests.helpers import trigger_and_wait

MIGRATIONS = Path(control_plane.__file__).parent / "migrations"
ENCRYPTED = {
    "defined_source": ("config",),
    "defined_destination": ("config",),
    "connector": ("source_config_override", "destination_config_override"),
}


def _url_with(password: str) -> str:
    # PostgreSQL here trusts local connections, so any password works, and the run succeeds.
    return POSTGRES_ADMIN_URL.replace(
        "postgresql://postgres@", f"postgresql+psycopg://postgres:{password}@"
    )


def _key_file(stack: Stack) -> Path:
    return Path(stack.env["CONTROL_PLANE_SECRET_KEY_FILE"])


def _stored(database_url: str) -> dict[tuple[str, int, str], str]:
    """Every encrypted value of the database as stored, by (table, id, column)."""
    engine = create_engine(database_url)
    with engine.begin() as db:
        values = {
            (table, row.id, column): getattr(row, column)
            for table, columns in ENCRYPTED.items()
            for row in db.execute(text(f"SELECT id, {', '.join(columns)} FROM {table}"))
            for column in columns
        }
    engine.dispose()
    return values


def _everything_stored(database_url: str) -> bytes:
    """All that the database holds, as bytes: SQLite's files, or every row of PostgreSQL's."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        files = [Path(str(url.database)), Path(f"{url.database}-wal")]
        return b"".join(file.read_bytes() for file in files if file.exists())
    engine = create_engine(database_url)
    with engine.begin() as db:
        tables = db.scalars(
            text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        ).all()
        rows = [db.scalars(text(f'SELECT t::text FROM "{name}" t')).all() for name in tables]
    engine.dispose()
    return "\n".join(row for table in rows for row in table).encode()


def _rotate_key(stack: Stack) -> str:
    """Run `control-plane rotate-key` as an operator would, against the running stack."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "control-plane"), "rotate-key"],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@dataclass
class Secrets:
    """A project whose sources, destination and connector hold secrets in every place."""

    password: str  # in the sql source's URL
    header: str  # in the http source's Authorization header
    override: str  # in the connector's source override
    source_id: int
    http_source_id: int
    connector_id: int

    @property
    def all(self) -> tuple[str, str, str]:
        return self.password, self.header, self.override


def _with_secrets(api: httpx.Client, stack: Stack) -> Secrets:
    password, header, override = (secrets.token_hex(12) for _ in range(3))
    project = created(api.post("/projects", json={"name": unique("at-rest")}))["id"]

    def make(kind: str, type_: str, config: dict) -> int:
        body = {"name": unique(type_), "type": type_, "config": config, "projectId": project}
        return created(api.post(f"/defined-{kind}s", json=body))["id"]

    source = make("source", "sql", {"url": _url_with(password), "query": "SELECT 1 AS one"})
    http_source = make(
        "source",
        "http",
        {
            "url": f"http://{PUBLIC_TEST_HOST}:9/items",
            "headers": {"Authorization": f"Bearer {header}"},
        },
    )
    destination = make("destination", "jsonl", {"path": "at-rest.jsonl"})
    connector = created(
        api.post(
            "/connectors",
            json={
                "name": unique("at-rest"),
                "projectId": project,
                "definedSourceId": source,
                "definedDestinationId": destination,
                "sourceConfigOverride": {"url": _url_with(override)},
            },
        )
    )["id"]
    return Secrets(password, header, override, source, http_source, connector)


class TestEncryptedAtRest:
    def test_the_database_holds_no_secret_and_everything_still_works(
        self, api: httpx.Client, prefect: SyncPrefectClient, stack: Stack
    ):
        made = _with_secrets(api, stack)
        run = trigger_and_wait(api, prefect, made.connector_id)
        assert run.state.is_completed(), run.state
        # The configs were stored whole: the run used them, and the answers mask them.
        shown = api.get(f"/defined-sources/{made.http_source_id}").json()["config"]
        assert shown["headers"] == {"Authorization": "********"}

        everything = _everything_stored(stack.database_url)
        for secret in made.all:
            assert secret.encode() not in everything
        stored = _stored(stack.database_url)
        key_file = _key_file(stack)
        source = decrypt_json(stored["defined_source", made.source_id, "config"], key_file=key_file)
        assert source["url"] == _url_with(made.password)
        http = stored["defined_source", made.http_source_id, "config"]
        http = decrypt_json(http, key_file=key_file)
        assert http["headers"] == {"Authorization": f"Bearer {made.header}"}

    def test_every_config_and_override_is_a_token_of_the_key_file(self, api, stack: Stack):
        _with_secrets(api, stack)
        fernet = Fernet(read_keys(_key_file(stack))[0])
        for where, raw in _stored(stack.database_url).items():
            assert isinstance(json.loads(fernet.decrypt(raw.encode())), dict), where

    def test_the_key_file_is_private(self, stack: Stack):
        assert stat.S_IMODE(_key_file(stack).stat().st_mode) == 0o600

    def test_a_config_written_by_sql_with_encrypt_json_is_read_by_the_api(self, api, stack):
        made = _with_secrets(api, stack)
        config = {"url": _url_with(secrets.token_hex(8)), "query": "SELECT 2 AS two"}
        engine = create_engine(stack.database_url)
        with engine.begin() as db:
            db.execute(
                text("UPDATE defined_source SET config = :config WHERE id = :id"),
                {"config": encrypt_json(config, key_file=_key_file(stack)), "id": made.source_id},
            )
        engine.dispose()
        shown = api.get(f"/defined-sources/{made.source_id}").json()["config"]
        assert shown == {"url": _url_with("********"), "query": "SELECT 2 AS two"}


class TestRotateKey:
    def test_rotation_while_the_stack_runs(
        self, api: httpx.Client, prefect: SyncPrefectClient, stack: Stack
    ):
        made = _with_secrets(api, stack)
        key_file = _key_file(stack)
        before = read_keys(key_file)
        rows = {(table, row_id) for table, row_id, _ in _stored(stack.database_url)}
        override = ("connector", made.connector_id, "source_config_override")
        assert decrypt_json(_stored(stack.database_url)[override], key_file=key_file) == {
            "url": _url_with(made.override)
        }

        output = _rotate_key(stack)

        assert f"{len(rows)} rows re-encrypted" in output
        new, previous = read_keys(key_file)
        assert previous == before[0] and new not in before
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        for raw in _stored(stack.database_url).values():
            Fernet(new).decrypt(raw.encode())
            with pytest.raises(InvalidToken):
                Fernet(previous).decrypt(raw.encode())
        # The API and the worker started before the rotation go on, without a restart.
        listed = api.get("/connectors", params={"limit": 1}).json()
        for offset in range(0, listed["count"], 100):
            page = api.get("/connectors", params={"limit": 100, "offset": offset}).json()
            for connector in page["data"]:
                assert api.get(f"/connectors/{connector['id']}").status_code == 200
        run = trigger_and_wait(api, prefect, made.connector_id)
        assert run.state.is_completed(), run.state
        another = _with_secrets(api, stack)
        created_after = _stored(stack.database_url)[
            "connector", another.connector_id, "source_config_override"
        ]
        Fernet(new).decrypt(created_after.encode())

        # A second rotation keeps the key of the first one, and drops the one before it.
        _rotate_key(stack)
        newest, kept = read_keys(key_file)
        assert kept == new and newest not in (new, previous)
        assert api.get(f"/connectors/{another.connector_id}").status_code == 200
        assert api.get(f"/defined-sources/{made.source_id}").status_code == 200


class TestApiWithoutKeyFile:
    def test_the_api_refuses_to_start(self, tmp_path: Path):
        missing = tmp_path / "nowhere" / "secret.key"
        env = {
            "PREFECT_API_URL": "http://127.0.0.1:9/api",
            "CONTROL_PLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'control-plane.db'}",
            "CONTROL_PLANE_SECRET_KEY_FILE": str(missing),
        }
        api = api_server(env, free_port(), tmp_path / "api.log").start()
        try:
            assert api.popen is not None
            wait_for(lambda: api.popen.poll() is not None, timeout=60, what="the API to exit")
        finally:
            api.stop()
        log = api.log.read_text()
        assert f"the key file {missing}" in log and "`control-plane migrate`" in log
        assert not missing.exists()


class TestWrongKeyFile:
    def test_reads_answer_503_naming_the_key_file(self, api, stack: Stack, tmp_path: Path):
        made = _with_secrets(api, stack)
        other = tmp_path / "other.key"
        other.write_bytes(Fernet.generate_key() + b"\n")
        env = {**stack.env, "CONTROL_PLANE_SECRET_KEY_FILE": str(other)}
        port = free_port()
        with running(
            api_server(env, port, tmp_path / "api.log"), f"http://127.0.0.1:{port}/health"
        ):
            response = httpx.get(f"http://127.0.0.1:{port}/api/v1/defined-sources/{made.source_id}")
        assert response.status_code == 503, response.text
        assert str(other) in response.json()["detail"]


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database(request: pytest.FixtureRequest, tmp_path: Path):
    """An empty database of its own (not migrated), SQLite or PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'control-plane.db'}"
        return
    with fresh_postgres(f"control_plane_0005_{secrets.token_hex(6)}") as url:
        yield url


class TestMigration0005:
    def test_existing_rows_are_encrypted(self, fresh_database: str, tmp_path: Path):
        url, key_file = fresh_database, tmp_path / "keys" / "secret.key"
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["url"] = make_url(url)
        command.upgrade(config, "0004")
        password, override = secrets.token_hex(12), secrets.token_hex(12)
        source = {"url": _url_with(password), "query": "SELECT 1 AS one"}
        engine = create_engine(url)
        with engine.begin() as db:
            now = {"now": "2026-01-01 00:00:00"}
            db.execute(
                text(
                    "INSERT INTO project (id, name, created_at, updated_at) "
                    "VALUES (1, 'p', :now, :now)"
                ),
                now,
            )
            for source_id in (1, 2):
                db.execute(
                    text(
                        "INSERT INTO defined_source (id, name, type, config, project_id, "
                        "created_at, updated_at) VALUES (:id, :name, 'sql', :config, 1, :now, :now)"
                    ),
                    {"id": source_id, "name": f"s{source_id}", "config": json.dumps(source), **now},
                )
            db.execute(
                text(
                    "INSERT INTO defined_destination (id, name, type, config, project_id, "
                    "created_at, updated_at) VALUES (1, 'd', 'jsonl', :config, 1, :now, :now)"
                ),
                {"config": json.dumps({"path": "out.jsonl"}), **now},
            )
            db.execute(
                text(
                    "INSERT INTO connector (id, name, project_id, defined_source_id, "
                    "defined_destination_id, timezone, is_active, source_config_override, "
                    "destination_config_override, created_at, updated_at) VALUES (1, 'c', 1, 1, "
                    "1, 'UTC', true, :override, '{}', :now, :now)"
                ),
                {"override": json.dumps({"url": _url_with(override)}), **now},
            )
            db.execute(text("DELETE FROM defined_source WHERE id = 2"))
        engine.dispose()

        migrate(url, secret_key_file=key_file)

        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        [key] = read_keys(key_file)
        opened = {
            where: json.loads(Fernet(key).decrypt(raw.encode()))
            for where, raw in _stored(url).items()
        }
        assert opened == {
            ("defined_source", 1, "config"): source,
            ("defined_destination", 1, "config"): {"path": "out.jsonl"},
            ("connector", 1, "source_config_override"): {"url": _url_with(override)},
            ("connector", 1, "destination_config_override"): {},
        }
        for secret in (password, override):
            assert secret.encode() not in _everything_stored(url)
        if make_url(url).get_backend_name() == "sqlite":
            # The tables were copied: AUTOINCREMENT still never gives out a deleted row's id.
            with closing(sqlite3.connect(str(make_url(url).database))) as db:
                [[seq]] = db.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = ?", ["defined_source"]
                )
            assert seq == 2

        # And back: 0004 holds the plain JSON again.
        config.attributes["secret_key_file"] = key_file
        command.downgrade(config, "0004")
        engine = create_engine(url)
        with engine.begin() as db:
            [raw] = db.execute(text("SELECT config FROM defined_source")).one()
        engine.dispose()
        assert (json.loads(raw) if isinstance(raw, str) else raw) == source
