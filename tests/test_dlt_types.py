"""The dlt destination type against real DuckDB files, Parquet files and PostgreSQL, and
through a real sync run."""

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet
import pytest
from prefect.client.orchestration import SyncPrefectClient

from control_plane.connectors import Load, SelectedStream
from control_plane.connectors.dlt_types import DltDestination
from control_plane.policy import Allowed, Scope
from tests.conftest import fresh_postgres
from tests.helpers import POSTGRESQL_ONLY, created, execute, trigger_and_wait, unique


@pytest.fixture
def scope(tmp_path: Path) -> Scope:
    return Scope(folders=(tmp_path,), allowed=(Allowed.parse("127.0.0.1:5432"),))


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
