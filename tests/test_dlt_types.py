"""The dlt destination type against real DuckDB files, Parquet files and PostgreSQL, and
through a real sync run."""

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet
import pytest
from prefect.client.orchestration import SyncPrefectClient

from bench._seed import created, unique
from control_plane.connectors import Load, SelectedStream
from control_plane.connectors.dlt_types import DltDestination, RestApiSource
from control_plane.errors import InvalidInput
from control_plane.policy import Allowed, Scope
from tests.conftest import PUBLIC_TEST_HOST, fresh_postgres
from tests.helpers import POSTGRESQL_ONLY, execute, serving, trigger_and_wait


@pytest.fixture
def scope(tmp_path: Path) -> Scope:
    allowed = (Allowed.parse("127.0.0.1"), Allowed.parse(PUBLIC_TEST_HOST))
    return Scope(folders=(tmp_path,), allowed=allowed)


def _destination(scope: Scope, **config: Any) -> DltDestination:
    return DltDestination.configured({"dataset": "raw", "table": "orders", **config}, scope)  # type: ignore[return-value]


ROWS = [
    {"id": 1, "amount": Decimal("12.34"), "paid_at": datetime(2026, 3, 1, 9, tzinfo=UTC)},
    {"id": 2, "amount": Decimal("5.00"), "paid_at": datetime(2026, 3, 2, 9, tzinfo=UTC)},
]


class TestDuckdb:
    def test_loads_keep_their_types_and_their_state(self, tmp_path: Path, scope: Scope) -> None:
        destination = _destination(scope, destination="duckdb", path="warehouse.duckdb")
        assert destination.last_load("connector:1") is None

        first = Load("connector:1", str(uuid.uuid4()), cursor=2)
        assert destination.write([ROWS[:1], [], ROWS[1:]], first) == 2
        second = Load("connector:1", str(uuid.uuid4()), cursor=3)
        assert (
            destination.write([[{"id": 3, "amount": Decimal("1.50"), "paid_at": None}]], second)
            == 1
        )

        with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as db:
            assert db.execute(
                "SELECT id, amount, paid_at FROM raw.orders ORDER BY id"
            ).fetchall() == [
                (1, Decimal("12.34"), datetime(2026, 3, 1, 9, tzinfo=UTC)),
                (2, Decimal("5.00"), datetime(2026, 3, 2, 9, tzinfo=UTC)),
                (3, Decimal("1.50"), None),
            ]
        assert destination.last_load("connector:1") == second

    def test_a_failed_write_commits_neither_rows_nor_load(self, tmp_path: Path, scope: Scope):
        destination = _destination(scope, destination="duckdb", path="warehouse.duckdb")
        kept = Load("connector:1", str(uuid.uuid4()), cursor=1)
        destination.write([ROWS[:1]], kept)

        def failing() -> Iterator[list[dict[str, Any]]]:
            yield ROWS[1:]
            raise TimeoutError("the run took longer than its timeout")

        with pytest.raises(TimeoutError, match="longer than its timeout"):
            destination.write(failing(), Load("connector:1", str(uuid.uuid4()), cursor=2))
        with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as db:
            assert db.execute("SELECT count(*) FROM raw.orders").fetchall() == [(1,)]
        assert destination.last_load("connector:1") == kept

    def test_a_merge_stream_updates_by_key(self, tmp_path: Path, scope: Scope) -> None:
        configured = _destination(scope, destination="duckdb", path="warehouse.duckdb")
        selected = SelectedStream(name="public.customers", sync_mode="merge", primary_key=["id"])
        destination = configured.stream(selected)
        destination.write([[{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}]])
        destination.write([[{"id": 2, "name": "bobby"}]])
        with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as db:
            rows = db.execute("SELECT id, name FROM raw.customers ORDER BY id").fetchall()
        assert rows == [(1, "ann"), (2, "bobby")]

        escaping = SelectedStream(name="customers", destination_name="../elsewhere")
        with pytest.raises(InvalidInput, match=r"streams\.table: String should match pattern"):
            configured.stream(escaping)


class TestFiles:
    def test_parquet_files_hold_the_records(self, tmp_path: Path, scope: Scope) -> None:
        destination = _destination(scope, destination="filesystem", path="lake")
        load = Load("connector:1", str(uuid.uuid4()), cursor=2)
        destination.write([ROWS], load)

        [file] = (tmp_path / "lake" / "raw" / "orders").glob("*.parquet")
        table = pyarrow.parquet.read_table(file)
        assert table.column("id").to_pylist() == [1, 2]
        assert table.column("amount").to_pylist() == [Decimal("12.34"), Decimal("5.00")]
        assert destination.last_load("connector:1") == load

    def test_a_folder_outside_the_project_is_refused(self, scope: Scope) -> None:
        with pytest.raises(ValueError, match="path"):
            _destination(scope, destination="filesystem", path="../elsewhere")


class TestPostgres:
    def test_loads_into_a_schema_of_the_database(self, scope: Scope) -> None:
        with fresh_postgres(f"dlt_{uuid.uuid4().hex[:12]}") as url:
            destination = _destination(scope, destination="postgres", url=url)
            load = Load("connector:1", str(uuid.uuid4()), cursor=2)
            assert destination.write([ROWS], load) == 2
            assert execute(url, "SELECT id, amount FROM raw.orders ORDER BY id") == [
                (1, Decimal("12.34")),
                (2, Decimal("5.00")),
            ]
            assert destination.last_load("connector:1") == load


class _Api(BaseHTTPRequestHandler):
    """Pages of `/orders` (the first names its next page on the other address, 127.0.0.1)
    and one page of `/customers`; records who sent which Authorization where."""

    seen: list[tuple[str, str, str | None]] = []

    def do_GET(self) -> None:
        host = self.headers["Host"].split(":")[0]
        self.seen.append((host, self.path, self.headers.get("Authorization")))
        port = self.server.server_address[1]
        if self.path.startswith("/orders") and "page=2" not in self.path:
            body = {
                "data": [{"id": 2, "at": "b"}, {"id": 1, "at": "a"}],
                "next": f"http://127.0.0.1:{port}/orders?page=2",
            }
        elif self.path.startswith("/orders"):
            body = {"data": [{"id": 3, "at": "c"}], "next": None}
        else:
            body = {"data": [{"name": "ann"}], "next": None}
        content = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture(scope="module")
def api_server() -> Iterator[str]:
    """The API above on both 127.0.0.1 and the test's public host, one port."""
    with serving(_Api, "0.0.0.0") as url:
        yield url


def _rest_api(scope: Scope, base_url: str) -> RestApiSource:
    resource = {"dataSelector": "data", "paginator": "json_link", "nextUrlPath": "next"}
    config = {
        "baseUrl": base_url,
        "headers": {"Authorization": "Bearer secret-token"},
        "resources": [
            {
                "name": "orders",
                "path": "orders",
                "cursorField": "id",
                "cursorParam": "since",
                **resource,
            },
            {"name": "customers", "path": "customers", **resource},
        ],
    }
    return RestApiSource.configured(config, scope)  # type: ignore[return-value]


class TestRestApi:
    def test_pages_are_read_and_credentials_stay_with_their_origin(
        self, api_server: str, scope: Scope
    ) -> None:
        _Api.seen.clear()
        source = _rest_api(scope, api_server)

        records = [r for batch in source.read(cursor=None, batch_size=2) for r in batch]
        assert records == [{"id": 2, "at": "b"}, {"id": 1, "at": "a"}, {"id": 3, "at": "c"}]
        assert _Api.seen == [
            (PUBLIC_TEST_HOST, "/orders", "Bearer secret-token"),
            ("127.0.0.1", "/orders?page=2", None),
        ]

        _Api.seen.clear()
        after = [r for batch in source.read(cursor=1, batch_size=10) for r in batch]
        assert after == [{"id": 2, "at": "b"}, {"id": 3, "at": "c"}]
        assert _Api.seen[0][1] == "/orders?since=1"

    def test_each_resource_is_a_stream(self, api_server: str, scope: Scope) -> None:
        source = _rest_api(scope, api_server)
        customers = source.stream(SelectedStream(name="customers"))
        assert [r for batch in customers.read(cursor=None, batch_size=10) for r in batch] == [
            {"name": "ann"}
        ]
        streams = source.discover()
        assert [(s.name, s.cursor_candidates) for s in streams] == [
            ("orders", ["id"]),
            ("customers", []),
        ]
        with pytest.raises(InvalidInput, match="no resource 'nope'"):
            source.stream(SelectedStream(name="nope"))

    def test_a_page_on_a_host_outside_the_scope_is_refused(
        self, api_server: str, tmp_path: Path
    ) -> None:
        only_public = Scope(folders=(tmp_path,), allowed=(Allowed.parse(PUBLIC_TEST_HOST),))
        source = _rest_api(only_public, api_server)
        with pytest.raises(ValueError, match="127.0.0.1 is a loopback address"):
            list(source.read(cursor=None, batch_size=10))


@POSTGRESQL_ONLY
def test_a_sync_run_loads_a_csv_into_duckdb(api, prefect: SyncPrefectClient, catalog) -> None:
    config = {"destination": "duckdb", "path": "lake.duckdb", "dataset": "raw", "table": "people"}
    destination = {"name": unique("lake"), "type": "dlt", "config": config}
    destination_id = created(
        api.post("/defined-destinations", json={**destination, "projectId": catalog.project_id})
    )["id"]
    connector = created(
        api.post(
            "/connectors",
            json={
                "name": unique("dlt"),
                "projectId": catalog.project_id,
                "definedSourceId": catalog.source_id,
                "definedDestinationId": destination_id,
                "schedule": None,
            },
        )
    )
    assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
    with duckdb.connect(str(catalog.folder / "lake.duckdb"), read_only=True) as db:
        rows = db.execute("SELECT id, name FROM raw.people ORDER BY id").fetchall()
    assert rows == [("1", "a"), ("2", "b")]
