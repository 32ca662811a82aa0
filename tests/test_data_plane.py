"""Connectors move real data: triggered through the API, run by the real worker, checked at
the destination, in the run history and in the connector's status."""

import csv
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.objects import StateType

from bench._seed import created, unique
from control_plane.processes import wait_for
from tests.conftest import Stack, fresh_postgres
from tests.helpers import POSTGRESQL_ONLY, execute, serving, trigger_and_wait, wait_final


def _write_csv(path: Path, rows: range) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "name"])
        writer.writerows([i, f"name-{i}"] for i in rows)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@dataclass
class Project:
    id: int
    folder: Path  # where its connectors' files are, named relative to it in their configs


@pytest.fixture
def project(api: httpx.Client, stack: Stack) -> Project:
    """A new project, and its folder under the stack's file root."""
    project_id = created(api.post("/projects", json={"name": unique("data")}))["id"]
    folder = stack.files / str(project_id)
    folder.mkdir(parents=True, exist_ok=True)
    return Project(project_id, folder)


def _connector(
    api: httpx.Client, project: Project, source: dict, destination: dict, **fields
) -> dict:
    """A manual-only connector in `project` between a new source and destination."""
    ids = [
        created(
            api.post(
                f"/defined-{kind}s",
                json={"name": unique(kind), **body, "projectId": project.id},
            )
        )["id"]
        for kind, body in (("source", source), ("destination", destination))
    ]
    body = {
        "name": unique("connector"),
        "projectId": project.id,
        "definedSourceId": ids[0],
        "definedDestinationId": ids[1],
        "schedule": None,
        **fields,
    }
    return created(api.post("/connectors", json=body))


@pytest.fixture(scope="module")
def postgres_warehouse() -> Iterator[str]:
    """A database of this module's own on the machine's PostgreSQL: connectors may never reach
    the control plane's own."""
    with fresh_postgres(f"data_plane_{uuid.uuid4().hex[:12]}") as url:
        yield url


@dataclass
class Warehouse:
    url: str  # as the connectors' configs name it
    local_url: str  # as the test opens it, behind the connectors' back


@pytest.fixture
def warehouse(request: pytest.FixtureRequest, stack: Stack, project: Project) -> Warehouse:
    """A database to read from and write to: a SQLite file in the project's folder, or a
    PostgreSQL database of its own, as the stack's database is."""
    if stack.database_url.startswith("sqlite"):
        return Warehouse("sqlite:///warehouse.db", f"sqlite:///{project.folder / 'warehouse.db'}")
    url = request.getfixturevalue("postgres_warehouse")
    return Warehouse(url, url)


def _query(warehouse: Warehouse, sql: str) -> list[tuple]:
    return execute(warehouse.local_url, sql)


class TestCsvToJsonl:
    def test_every_row_arrives_and_the_run_is_recorded(
        self, api, prefect: SyncPrefectClient, project: Project
    ):
        _write_csv(project.folder / "in.csv", range(2500))
        connector = _connector(
            api,
            project,
            {"type": "csv", "config": {"path": "*.csv"}},
            {"type": "jsonl", "config": {"path": "out/rows.jsonl"}},
        )
        run = trigger_and_wait(api, prefect, connector["id"])
        assert run.state.type == StateType.COMPLETED, run.state

        rows = _jsonl(project.folder / "out" / "rows.jsonl")
        assert len(rows) == 2500
        assert rows[0] == {"id": "0", "name": "name-0"}

        [listed] = api.get(f"/connectors/{connector['id']}/runs").json()["data"]
        assert listed["flowRunId"] == str(run.id)
        assert (listed["state"], listed["trigger"]) == ("COMPLETED", "manual")
        assert (listed["recordsRead"], listed["recordsWritten"]) == (2500, 2500)
        assert listed["durationSeconds"] > 0 and listed["error"] is None

        status = api.get(f"/connectors/{connector['id']}").json()
        assert status["lastRunState"] == "COMPLETED"
        assert status["lastSuccessAt"] and status["consecutiveFailures"] == 0

        [artifact] = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"connector-{connector['id']}-sync"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
            )
        )
        assert "| 2500 | 2500 |" in artifact.data


class TestJsonlToSql:
    def test_rows_land_in_a_created_table(self, api, prefect, project, warehouse):
        (project.folder / "in.jsonl").write_text(
            "\n".join(json.dumps({"id": i, "city": f"c{i}"}) for i in range(50))
        )
        table = unique("cities").replace("-", "_")
        connector = _connector(
            api,
            project,
            {"type": "jsonl", "config": {"path": "in.jsonl"}},
            {"type": "sql", "config": {"url": warehouse.url, "table": table}},
        )
        assert trigger_and_wait(api, prefect, connector["id"]).state.type == StateType.COMPLETED
        assert _query(warehouse, f"SELECT count(*) FROM {table}") == [(50,)]


def _incremental(
    api: httpx.Client, project: Project, warehouse: Warehouse, **fields
) -> tuple[dict, str, str]:
    """A connector (with `fields`) that reads a new table of three rows after its `id` cursor
    into another table; with the two tables' names."""
    source_table = unique("events").replace("-", "_")
    target_table = unique("copies").replace("-", "_")
    _query(warehouse, f"CREATE TABLE {source_table} (id INTEGER PRIMARY KEY, v TEXT)")
    _query(warehouse, f"INSERT INTO {source_table} VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    connector = _connector(
        api,
        project,
        {
            "type": "sql",
            "config": {"url": warehouse.url, "table": source_table, "cursorField": "id"},
        },
        {"type": "sql", "config": {"url": warehouse.url, "table": target_table}},
        **fields,
    )
    return connector, source_table, target_table


class TestIncrementalSql:
    def test_the_second_run_moves_only_new_rows_and_reset_starts_over(
        self, api, prefect, project, warehouse
    ):
        connector, source_table, target_table = _incremental(api, project, warehouse)
        path = f"/connectors/{connector['id']}"
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        _query(warehouse, f"INSERT INTO {source_table} VALUES (4, 'd'), (5, 'e')")
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        second, first = api.get(f"{path}/runs").json()["data"]
        assert (first["recordsRead"], second["recordsRead"]) == (3, 2)
        assert _query(warehouse, f"SELECT count(*) FROM {target_table}") == [(5,)]

        assert api.post(f"{path}/reset").status_code == 204
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        assert api.get(f"{path}/runs", params={"limit": 1}).json()["data"][0]["recordsRead"] == 5

    def test_the_state_shows_the_cursor_and_a_put_with_its_etag_moves_it(
        self, api, prefect, project, warehouse
    ):
        connector, _, target_table = _incremental(api, project, warehouse)
        path = f"/connectors/{connector['id']}"
        fresh = api.get(f"{path}/state")
        assert fresh.json() == {
            "streams": [{"stream": "default", "cursor": None, "updatedAt": None}]
        }
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        synced = api.get(f"{path}/state")
        assert synced.json()["streams"][0]["cursor"] == 3
        assert synced.headers["ETag"] != fresh.headers["ETag"]

        to_one = {"streams": [{"stream": "default", "cursor": 1}]}
        stale = api.put(f"{path}/state", json=to_one, headers={"If-Match": fresh.headers["ETag"]})
        assert stale.status_code == 412, stale.text
        assert api.get(f"{path}/state").json() == synced.json()

        moved = api.put(f"{path}/state", json=to_one, headers={"If-Match": synced.headers["ETag"]})
        assert moved.status_code == 200, moved.text
        assert moved.json()["streams"][0]["cursor"] == 1
        assert moved.headers["ETag"] == api.get(f"{path}/state").headers["ETag"]
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        assert api.get(f"{path}/runs", params={"limit": 1}).json()["data"][0]["recordsRead"] == 2
        assert _query(warehouse, f"SELECT count(*) FROM {target_table}") == [(5,)]

        history = api.get(f"{path}/history").json()["data"]
        refused, done = [e for e in history if e["action"] == "set-connector-state"][::-1]
        assert "changed since" in refused["refused"]
        [change] = done["changes"]
        assert (change["field"], change["after"]) == ("cursor", 1)
        assert change["before"].startswith("saved ")

    def test_a_stream_it_does_not_have_is_a_422(self, api, catalog):
        connector = created(api.post("/connectors", json=catalog.connector()))

        response = api.put(
            f"/connectors/{connector['id']}/state",
            json={"streams": [{"stream": "orders", "cursor": 1}]},
        )

        assert response.status_code == 422
        [problem] = response.json()["detail"]
        assert problem["loc"] == ["body", "streams"]
        assert problem["msg"].endswith("moves no stream 'orders'; its streams: 'default'")


class TestStreams:
    def test_two_tables_keep_their_own_cursors_and_a_dropped_one_is_reported(
        self, api, prefect, project, warehouse
    ):
        orders, customers = (
            unique("orders").replace("-", "_"),
            unique("customers").replace("-", "_"),
        )
        _query(warehouse, f"CREATE TABLE {orders} (id INTEGER PRIMARY KEY, v TEXT, secret TEXT)")
        _query(
            warehouse, f"INSERT INTO {orders} VALUES (1, 'a', 's'), (2, 'b', 's'), (3, 'c', 's')"
        )
        _query(warehouse, f"CREATE TABLE {customers} (id INTEGER PRIMARY KEY, name TEXT)")
        _query(warehouse, f"INSERT INTO {customers} VALUES (1, 'ann'), (2, 'bob')")
        streams = [
            {
                "name": orders,
                "syncMode": "incremental",
                "cursorField": "id",
                "columns": ["id", "v"],
                "destinationName": f"{orders}_copy",
            },
            {"name": customers, "syncMode": "full_refresh", "destinationName": f"{customers}_copy"},
        ]
        connector = _connector(
            api,
            project,
            {"type": "sql", "config": {"url": warehouse.url, "table": orders}},
            {"type": "sql", "config": {"url": warehouse.url, "table": "unused"}},
            streams=streams,
        )
        assert connector["streams"][1]["syncMode"] == "full_refresh"
        path = f"/connectors/{connector['id']}"
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        _query(warehouse, f"INSERT INTO {orders} VALUES (4, 'd', 's'), (5, 'e', 's')")
        _query(warehouse, f"INSERT INTO {customers} VALUES (3, 'cy')")
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()

        assert api.get(f"{path}/runs", params={"limit": 1}).json()["data"][0]["recordsRead"] == 5
        assert _query(warehouse, f"SELECT * FROM {orders}_copy ORDER BY id") == [
            (1, "a"),
            (2, "b"),
            (3, "c"),
            (4, "d"),
            (5, "e"),
        ]
        assert _query(warehouse, f"SELECT count(*) FROM {customers}_copy") == [(3,)]
        state = api.get(f"{path}/state").json()["streams"]
        assert [(s["stream"], s["cursor"]) for s in state] == [(orders, 5), (customers, None)]

        _query(warehouse, f"DROP TABLE {customers}")
        _query(warehouse, f"INSERT INTO {orders} VALUES (6, 'f', 's')")
        failed = trigger_and_wait(api, prefect, connector["id"])
        assert failed.state.is_failed()
        assert f"1 of 2 streams failed, the others were loaded: stream '{customers}'" in (
            failed.state.message
        )
        assert "dropped or renamed" in failed.state.message
        assert _query(warehouse, f"SELECT max(id) FROM {orders}_copy") == [(6,)]
        assert api.get(f"{path}/state").json()["streams"][0]["cursor"] == 6

    def test_a_selection_its_types_cannot_move_is_a_422_naming_the_stream(
        self, api, project, warehouse
    ):
        query = {"url": warehouse.url, "query": "SELECT 1 AS id"}
        connector = _connector(
            api,
            project,
            {"type": "sql", "config": query},
            {"type": "jsonl", "config": {"path": "out.jsonl"}},
        )
        incremental = {"syncMode": "incremental", "cursorField": "id"}
        refused = {
            "a sql source of a query holds one stream": [{"name": "orders", **incremental}],
            "a jsonl destination appends": [{"name": "default"}],
            "syncMode incremental needs cursorField": [
                {"name": "default", "syncMode": "incremental"}
            ],
            "destinationName must differ: x twice": [
                {"name": "a", "destinationName": "x", **incremental},
                {"name": "b", "destinationName": "x", **incremental},
            ],
        }
        path = f"/connectors/{connector['id']}"
        for message, streams in refused.items():
            response = api.patch(path, json={"streams": streams})
            assert response.status_code == 422, response.text
            assert message in response.text
            assert "streams" in response.json()["detail"][0]["loc"]
        assert api.get(path).json() == connector

        chosen = [{"name": "default", **incremental}]
        assert api.patch(path, json={"streams": chosen}).json()["streams"] == [
            {**chosen[0], "primaryKey": [], "columns": None, "destinationName": None}
        ]


class TestBackfill:
    def test_a_window_is_read_again_and_the_cursor_stays(self, api, prefect, project, warehouse):
        merge = {"mode": "merge", "primaryKey": ["id"]}
        connector, source_table, target_table = _incremental(
            api, project, warehouse, destinationConfigOverride=merge
        )
        path = f"/connectors/{connector['id']}"
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        # A late correction the cursor cannot see, and a new row for the next run.
        _query(warehouse, f"UPDATE {source_table} SET v = 'B' WHERE id = 2")
        _query(warehouse, f"INSERT INTO {source_table} VALUES (4, 'd')")

        for body, message in [
            ({"from": 3, "to": 1}, "from (3) comes after to (1): swap them"),
            ({"stream": "nope", "from": 1, "to": 2}, "the connector moves no stream 'nope'"),
        ]:
            refused = api.post(f"{path}/backfill", json=body)
            assert refused.status_code == 422, refused.text
            assert message in refused.text
        started = api.post(f"{path}/backfill", json={"from": 1, "to": 2})
        assert started.status_code == 200, started.text
        assert wait_final(prefect, started.json()["flowRunId"]).state.is_completed()

        assert _query(warehouse, f"SELECT id, v FROM {target_table} ORDER BY id") == [
            (1, "a"),
            (2, "B"),
            (3, "c"),
        ]
        assert api.get(f"{path}/state").json()["streams"][0]["cursor"] == 3
        [run] = [r for r in api.get(f"{path}/runs").json()["data"] if r["trigger"] == "backfill"]
        assert (run["flowRunId"], run["recordsRead"]) == (started.json()["flowRunId"], 2)
        history = api.get(f"{path}/history").json()["data"]
        assert [e["action"] for e in history].count("backfill-connector") == 2

        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        assert api.get(f"{path}/runs", params={"limit": 1}).json()["data"][0]["recordsRead"] == 1
        assert api.get(f"{path}/state").json()["streams"][0]["cursor"] == 4


@POSTGRESQL_ONLY
class TestTypedSync:
    def test_types_arrive_and_a_new_source_column_follows_by_the_policy(
        self, api, prefect, project, warehouse
    ):
        source_table = unique("typed").replace("-", "_")
        target_table = unique("typed_copy").replace("-", "_")
        _query(
            warehouse,
            f"CREATE TABLE {source_table} (id integer PRIMARY KEY, at timestamptz,"
            " amount numeric(12, 2), ref uuid, doc jsonb)",
        )
        _query(
            warehouse,
            f"INSERT INTO {source_table} VALUES (1, '2026-03-01 10:00+01', 12.34,"
            " '5c0ae7f5-55b4-4b6a-9cbf-6c4d3c36e1a3', '{\"a\": [1]}')",
        )
        source = {"url": warehouse.url, "table": source_table, "cursorField": "id"}
        destination = {"url": warehouse.url, "table": target_table}
        connector = _connector(
            api,
            project,
            {"type": "sql", "config": source},
            {"type": "sql", "config": {**destination, "schemaChangePolicy": "freeze"}},
        )
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        assert _query(
            warehouse,
            "SELECT column_name, data_type FROM information_schema.columns"
            f" WHERE table_name = '{target_table}' ORDER BY ordinal_position",
        ) == [
            ("id", "integer"),
            ("at", "timestamp with time zone"),
            ("amount", "numeric"),
            ("ref", "uuid"),
            ("doc", "jsonb"),
        ]
        assert _query(warehouse, f"SELECT at, amount::text, ref::text FROM {target_table}") == [
            (
                datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
                "12.34",
                "5c0ae7f5-55b4-4b6a-9cbf-6c4d3c36e1a3",
            )
        ]

        _query(warehouse, f"ALTER TABLE {source_table} ADD COLUMN note text")
        _query(warehouse, f"INSERT INTO {source_table} (id, note) VALUES (2, 'new')")
        frozen = trigger_and_wait(api, prefect, connector["id"])
        assert frozen.state.is_failed()
        assert "has no column note, and schemaChangePolicy is freeze" in frozen.state.message

        path = f"/connectors/{connector['id']}"
        evolve = {"destinationConfigOverride": {"schemaChangePolicy": "evolve"}}
        assert api.patch(path, json=evolve).status_code == 200
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        assert _query(warehouse, f"SELECT id, note FROM {target_table} ORDER BY id") == [
            (1, None),
            (2, "new"),
        ]


class _Api(BaseHTTPRequestHandler):
    """Pages of records: /next/N links by a JSON field, /link/N by the Link header;
    /slow answers once the test sets `release`."""

    release = threading.Event()

    def do_GET(self) -> None:
        kind, _, page = self.path.strip("/").partition("/")
        if kind == "slow":
            self.release.wait(timeout=60)
        number = int(page or 1)
        body: dict = {"result": {"items": [{"page": number, "i": i} for i in range(10)]}}
        headers = {"Content-Type": "application/json"}
        if number < 3 and kind == "next":
            body["next"] = f"/next/{number + 1}"
        if number < 3 and kind == "link":
            headers["Link"] = f'</link/{number + 1}>; rel="next"'
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_source() -> Iterator[str]:
    with serving(_Api) as url:
        yield url
        _Api.release.set()


class TestHttpPagination:
    @pytest.mark.parametrize("kind", ["next", "link"])
    def test_every_page_is_read(self, api, prefect, project, http_source, kind):
        config = {"url": f"{http_source}/{kind}/1", "recordsPath": "result.items"}
        if kind == "next":
            config["nextPagePath"] = "next"
        connector = _connector(
            api,
            project,
            {"type": "http", "config": config},
            {"type": "jsonl", "config": {"path": "pages.jsonl"}},
        )
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        assert {row["page"] for row in _jsonl(project.folder / "pages.jsonl")} == {1, 2, 3}


class TestFailures:
    def test_failures_count_up_and_a_success_resets_them(self, api, prefect, project):
        connector = _connector(
            api,
            project,
            {"type": "csv", "config": {"path": "missing.csv"}},
            {"type": "jsonl", "config": {"path": "out.jsonl"}},
        )
        path = f"/connectors/{connector['id']}"
        for count in (1, 2):
            run = trigger_and_wait(api, prefect, connector["id"])
            assert run.state.type == StateType.FAILED
            status = api.get(path).json()
            assert (status["lastRunState"], status["consecutiveFailures"]) == ("FAILED", count)
        [latest] = api.get(f"{path}/runs", params={"limit": 1, "state": "FAILED"}).json()["data"]
        assert "missing.csv" in latest["error"]

        _write_csv(project.folder / "here.csv", range(3))
        override = {"sourceConfigOverride": {"path": "here.csv"}}
        assert api.patch(path, json=override).status_code == 200
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        status = api.get(path).json()
        assert (status["lastRunState"], status["consecutiveFailures"]) == ("COMPLETED", 0)
        assert len(_jsonl(project.folder / "out.jsonl")) == 3


class TestOneRunAtATime:
    def test_reject_refuses_queue_waits_and_cancel_stops(self, api, prefect, project, http_source):
        _Api.release.clear()
        connector = _connector(
            api,
            project,
            {
                "type": "http",
                "config": {"url": f"{http_source}/slow/3", "recordsPath": "result.items"},
            },
            {"type": "jsonl", "config": {"path": "slow.jsonl"}},
        )
        path = f"/connectors/{connector['id']}"
        first = api.post(f"{path}/trigger").json()["flowRunId"]
        wait_for(
            lambda: prefect.read_flow_run(UUID(first)).state.is_running(),
            timeout=60,
            what="the first run to start",
        )
        refused = api.post(f"{path}/trigger", json={"onConflict": "reject"})
        assert refused.status_code == 409 and first in refused.json()["detail"]

        queued = api.post(f"{path}/trigger").json()["flowRunId"]
        cancelled = api.post(f"{path}/runs/{queued}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert wait_final(prefect, queued).state.type == StateType.CANCELLED

        _Api.release.set()
        assert wait_final(prefect, first).state.is_completed()
        assert api.post(f"{path}/runs/{first}/cancel").status_code == 409
        assert api.post(f"{path}/runs/{UUID(int=0)}/cancel").status_code == 404
