"""The built-in source and destination types against real files, databases and an HTTP server."""

import csv
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import httpx
import psycopg
import pytest
from psycopg import sql
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    MetaData,
    Table,
    Text,
    create_engine,
    inspect,
    select,
)
from sqlalchemy.engine import make_url

from control_plane.connectors import (
    DEFAULT_STREAM,
    Batch,
    ColumnsUnreadable,
    Kind,
    Load,
    Route,
    Source,
    checks,
    json_value,
    keep_secrets,
    mask_url,
)
from control_plane.connectors.builtin import (
    CsvSource,
    HttpSource,
    JsonlDestination,
    JsonlSource,
    SqlDestination,
    SqlSource,
)
from control_plane.connectors.checks import Step
from control_plane.policy import Allowed, Scope
from control_plane.processes import free_port
from control_plane.sync import Moved, SyncPlan, move
from tests.conftest import PUBLIC_TEST_HOST, fresh_postgres
from tests.helpers import serving

Mode = Literal["append", "replace", "merge"]


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


def _read(source: Source, *, cursor: Any = None, batch_size: int = 1000) -> list[Batch]:
    return list(source.read(cursor=cursor, batch_size=batch_size))


def _records(batches: list[Batch]) -> list[dict[str, Any]]:
    return [record for batch in batches for record in batch]


@pytest.fixture
def scope(tmp_path: Path) -> Scope:
    """A project's scope: its folder is `tmp_path`, and it reaches the machine's PostgreSQL
    and the test HTTP server's host besides public hosts."""
    allowed = (Allowed.parse("127.0.0.1:5432"), Allowed.parse(PUBLIC_TEST_HOST))
    return Scope(folders=(tmp_path,), allowed=allowed)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A database of this module's own on the local PostgreSQL, dropped at the end."""
    # A plain postgresql:// URL, as users write it: the connectors pick psycopg themselves.
    with fresh_postgres(f"connector_types_{uuid.uuid4().hex[:12]}", "postgresql") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data.db'}"
    return request.getfixturevalue("postgres_url")


@contextmanager
def _database(url: str) -> Iterator[Engine]:
    """An engine of the tests' own, to set up and check tables behind the connectors' back."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(parsed)
    try:
        yield engine
    finally:
        engine.dispose()


def _rows(url: str, table_name: str, order_by: str) -> list[dict[str, Any]]:
    with _database(url) as engine, engine.connect() as connection:
        table = Table(table_name, MetaData(), autoload_with=connection)
        result = connection.execute(select(table).order_by(table.c[order_by]))
        return [dict(row) for row in result.mappings()]


class TestCsvSource:
    def test_a_glob_reads_its_files_in_order_in_full_batches(
        self, tmp_path: Path, scope: Scope
    ) -> None:
        # Written out of order: the glob's files are read sorted by name.
        for part, ids in [("b", range(1000, 2500)), ("a", range(1000))]:
            with (tmp_path / f"orders-{part}.csv").open("w", newline="") as file:
                writer = csv.writer(file, delimiter=";")
                writer.writerow(["id", "amount"])
                writer.writerows([i, f"{i}.50"] for i in ids)
        (tmp_path / "other.csv").write_text("id;amount\nnot;matched\n")

        source = CsvSource.configured({"path": "orders-*.csv", "delimiter": ";"}, scope)
        batches = _read(source, batch_size=1000)

        assert [len(batch) for batch in batches] == [1000, 1000, 500]
        records = _records(batches)
        assert [record["id"] for record in records] == [str(i) for i in range(2500)]
        assert records[7] == {"id": "7", "amount": "7.50"}  # strings, no type guessing
        assert source.cursor_field is None

    def test_a_row_longer_than_the_header_names_file_and_line(
        self, tmp_path: Path, scope: Scope
    ) -> None:
        path = tmp_path / f"bad-{_suffix()}.csv"
        path.write_text("id,name\n1,a\n2,b,extra\n")

        with pytest.raises(ValueError, match=rf"{path.name}, line 3: more fields"):
            _read(CsvSource.configured({"path": path.name}, scope))

    def test_missing_trailing_fields_are_none_and_blank_lines_skipped(
        self, tmp_path: Path, scope: Scope
    ) -> None:
        path = tmp_path / f"short-{_suffix()}.csv"
        path.write_text('id,name,note\n1,a\n\n2,"b\nc",\n')

        records = _records(_read(CsvSource.configured({"path": path.name}, scope)))

        assert records == [
            {"id": "1", "name": "a", "note": None},
            {"id": "2", "name": "b\nc", "note": ""},
        ]

    def test_a_file_of_blank_lines_has_no_records(self, tmp_path: Path, scope: Scope) -> None:
        path = tmp_path / f"blank-{_suffix()}.csv"
        path.write_text("\n\n\n")

        assert _records(_read(CsvSource.configured({"path": path.name}, scope))) == []

    def test_a_path_matching_nothing_is_an_error(self, scope: Scope) -> None:
        with pytest.raises(FileNotFoundError, match="no file matches"):
            _read(CsvSource.configured({"path": "missing-*.csv"}, scope))


class TestJsonlSource:
    def test_objects_are_read_and_blank_lines_skipped(self, tmp_path: Path, scope: Scope) -> None:
        path = tmp_path / f"events-{_suffix()}.jsonl"
        path.write_text('{"id": 1, "tags": ["a"]}\n\n   \n{"id": 2, "tags": []}\n')

        batches = _read(JsonlSource.configured({"path": path.name}, scope), batch_size=1)

        assert batches == [[{"id": 1, "tags": ["a"]}], [{"id": 2, "tags": []}]]

    def test_a_bad_line_names_file_and_line(self, tmp_path: Path, scope: Scope) -> None:
        (tmp_path / "1.jsonl").write_text('{"id": 1}\n')
        (tmp_path / "2.jsonl").write_text('{"id": 2}\n\n{"id": 3,\n')

        source = JsonlSource.configured({"path": "*.jsonl"}, scope)
        with pytest.raises(ValueError, match=r"2\.jsonl, line 3: "):
            _read(source)

    def test_a_line_that_is_not_an_object_is_an_error(self, tmp_path: Path, scope: Scope) -> None:
        path = tmp_path / f"list-{_suffix()}.jsonl"
        path.write_text("[1, 2]\n")

        with pytest.raises(ValueError, match="line 1: not a JSON object"):
            _read(JsonlSource.configured({"path": path.name}, scope))


class TestJsonlDestination:
    def test_records_are_appended_one_object_a_line(self, tmp_path: Path, scope: Scope) -> None:
        path = tmp_path / "new" / "dir" / f"out-{_suffix()}.jsonl"
        destination = JsonlDestination.configured({"path": str(path.relative_to(tmp_path))}, scope)
        at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

        assert destination.write([[{"id": 1, "at": at}], [], [{"id": 2}, {"id": 3}]]) == 3
        assert destination.write([[{"id": 4}]]) == 1

        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert lines == [{"id": 1, "at": at.isoformat()}, {"id": 2}, {"id": 3}, {"id": 4}]


def _events_table(url: str, name: str, rows: list[dict[str, Any]]) -> None:
    """A table with an int id and a timestamp, created on first use, with `rows` added."""
    with _database(url) as engine, engine.begin() as connection:
        table = Table(
            name,
            MetaData(),
            Column("id", BigInteger, primary_key=True, autoincrement=False),
            Column("name", Text),
            Column("updated_at", DateTime),
        )
        table.create(connection, checkfirst=True)
        connection.execute(table.insert(), rows)


def _events(ids: range, start: datetime) -> list[dict[str, Any]]:
    return [
        {"id": i, "name": f"event {i}", "updated_at": start + timedelta(minutes=i)} for i in ids
    ]


class TestSqlSource:
    def test_a_cursor_reads_only_rows_added_since(self, database_url: str, scope: Scope) -> None:
        # Mixed case and a space: the name only works when the source quotes it.
        name = f"Events {_suffix()}"
        start = datetime(2026, 3, 1, 12, 0, 0)
        _events_table(database_url, name, _events(range(5), start))
        source = SqlSource.configured(
            {"url": database_url, "table": name, "cursorField": "updated_at"}, scope
        )

        first = _read(source, batch_size=2)
        assert [len(batch) for batch in first] == [2, 2, 1]
        assert [record["id"] for record in _records(first)] == [0, 1, 2, 3, 4]
        # Rows come in cursor order, so the last one holds the largest cursor value; a run
        # keeps it as JSON holds it.
        cursor = json_value(_records(first)[-1]["updated_at"])
        assert json.loads(json.dumps(cursor)) == cursor

        _events_table(database_url, name, _events(range(5, 8), start))
        again = _records(_read(source, cursor=cursor, batch_size=2))

        assert [record["id"] for record in again] == [5, 6, 7]
        assert again[0]["name"] == "event 5"

    def test_a_query_with_a_cursor_is_wrapped(self, database_url: str, scope: Scope) -> None:
        name = f"events_{_suffix()}"
        _events_table(database_url, name, _events(range(6), datetime(2026, 3, 1)))
        query = f"SELECT id, name FROM {name} WHERE name <> 'event 4';"
        source = SqlSource.configured(
            {"url": database_url, "query": query, "cursorField": "id"}, scope
        )

        records = _records(_read(source, cursor=1))

        assert records == [
            {"id": 2, "name": "event 2"},
            {"id": 3, "name": "event 3"},
            {"id": 5, "name": "event 5"},
        ]

    def test_a_query_without_cursor_reads_everything(self, database_url: str, scope: Scope) -> None:
        name = f"events_{_suffix()}"
        _events_table(database_url, name, _events(range(3), datetime(2026, 3, 1)))
        query = f"SELECT id FROM {name} ORDER BY id DESC"
        source = SqlSource.configured({"url": database_url, "query": query}, scope)

        assert _read(source, batch_size=2) == [[{"id": 2}, {"id": 1}], [{"id": 0}]]
        assert source.cursor_field is None

    def test_values_keep_their_python_types(self, postgres_url: str, scope: Scope) -> None:
        name = f"events_{_suffix()}"
        _events_table(postgres_url, name, _events(range(3), datetime(2026, 3, 1)))
        # A % in the query: SQLAlchemy doubles it for psycopg, which must take it back.
        query = f"""
            SELECT id, 1.50::numeric AS amount, DATE '2026-03-01' AS day, TIME '12:30' AS at,
                   '5c0ae7f5-55b4-4b6a-9cbf-6c4d3c36e1a3'::uuid AS ref,
                   '{{"a": [1]}}'::jsonb AS doc, updated_at
            FROM {name} WHERE name LIKE 'event %'
        """
        source = SqlSource.configured(
            {"url": postgres_url, "query": query, "cursorField": "id"}, scope
        )

        records = _records(_read(source, cursor=1))

        assert records == [
            {
                "id": 2,
                "amount": Decimal("1.50"),
                "day": date(2026, 3, 1),
                "at": dt_time(12, 30),
                "ref": UUID("5c0ae7f5-55b4-4b6a-9cbf-6c4d3c36e1a3"),
                "doc": {"a": [1]},
                "updated_at": datetime(2026, 3, 1, 0, 2),
            }
        ]


class TestSqlDestination:
    def _destination(
        self, scope: Scope, url: str, table: str, mode: Mode, **config: Any
    ) -> SqlDestination:
        body = {"url": url, "table": table, "mode": mode, **config}
        return SqlDestination.configured(body, scope)

    def test_append_creates_the_table_and_adds_rows(self, database_url: str, scope: Scope) -> None:
        name = f"Orders {_suffix()}"
        destination = self._destination(scope, database_url, name, "append")

        written = destination.write(
            [
                [{"id": 1, "price": 2.5, "paid": True, "note": None, "meta": {"a": 1}}],
                [{"id": 2, "note": "second"}],  # missing fields are NULL
            ]
        )
        assert written == 2
        # Records of one batch with different fields: each gets NULL where it has none.
        third = [{"id": 3, "price": 1.0, "paid": False}, {"id": 4, "note": "fourth"}]
        assert destination.write([third]) == 2

        assert _rows(database_url, name, "id") == [
            {"id": 1, "price": 2.5, "paid": True, "note": None, "meta": {"a": 1}},
            {"id": 2, "price": None, "paid": None, "note": "second", "meta": None},
            {"id": 3, "price": 1.0, "paid": False, "note": None, "meta": None},
            {"id": 4, "price": None, "paid": None, "note": "fourth", "meta": None},
        ]
        with _database(database_url) as engine, engine.connect() as connection:
            columns = {c["name"]: c["type"] for c in inspect(connection).get_columns(name)}
        assert {n: type(t).__name__ for n, t in columns.items() if n != "meta"} == {
            "id": "BIGINT",
            "price": {"sqlite": "FLOAT", "postgresql": "DOUBLE_PRECISION"}[engine.dialect.name],
            "paid": "BOOLEAN",
            "note": "TEXT",
        }

    def test_replace_leaves_only_the_new_rows(self, database_url: str, scope: Scope) -> None:
        name = f"orders_{_suffix()}"
        self._destination(scope, database_url, name, "append").write([[{"id": 1}, {"id": 2}]])

        written = self._destination(scope, database_url, name, "replace").write([[{"id": 3}]])

        assert written == 1
        assert _rows(database_url, name, "id") == [{"id": 3}]

    def test_merge_updates_existing_keys_and_inserts_new_ones(
        self, database_url: str, scope: Scope
    ) -> None:
        name = f"customers_{_suffix()}"
        destination = self._destination(
            scope, database_url, name, "merge", primaryKey=["region", "id"]
        )
        destination.write([[{"region": "eu", "id": 1, "name": "Ann", "vip": False}]])
        destination.write([[{"region": "us", "id": 1, "name": "Bob", "vip": True}]])

        written = destination.write(
            [
                [{"region": "eu", "id": 1, "name": "Ann B."}],  # vip left as it was
                [{"region": "eu", "id": 2, "name": "Cy", "vip": True}],
            ]
        )

        assert written == 2
        assert _rows(database_url, name, "name") == [
            {"region": "eu", "id": 1, "name": "Ann B.", "vip": False},
            {"region": "us", "id": 1, "name": "Bob", "vip": True},
            {"region": "eu", "id": 2, "name": "Cy", "vip": True},
        ]

    def test_a_failed_replace_leaves_the_old_rows(self, database_url: str, scope: Scope) -> None:
        name = f"orders_{_suffix()}"
        self._destination(scope, database_url, name, "append").write([[{"id": 1}, {"id": 2}]])

        batches = [[{"id": 3}], [{"id": 4, "surprise": "x"}]]
        frozen = self._destination(
            scope, database_url, name, "replace", schemaChangePolicy="freeze"
        )
        with pytest.raises(ValueError, match="has no column surprise"):
            frozen.write(batches)

        assert _rows(database_url, name, "id") == [{"id": 1}, {"id": 2}]

    def test_a_failed_first_write_creates_no_table(self, database_url: str, scope: Scope) -> None:
        name = f"orders_{_suffix()}"

        batches = [[{"id": 1}], [{"id": 2, "surprise": "x"}]]
        frozen = self._destination(scope, database_url, name, "append", schemaChangePolicy="freeze")
        with pytest.raises(ValueError, match="has no column surprise"):
            frozen.write(batches)

        with _database(database_url) as engine, engine.connect() as connection:
            assert not inspect(connection).has_table(name)

    def test_merge_keeps_the_last_record_of_a_key_within_a_run(
        self, database_url: str, scope: Scope
    ) -> None:
        name = f"customers_{_suffix()}"
        destination = self._destination(scope, database_url, name, "merge", primaryKey=["id"])

        written = destination.write(
            [
                [
                    {"id": 1, "name": "Ann"},
                    {"id": 2, "name": "Bob"},
                    {"id": 1, "name": "Ann B."},
                    {"id": 3, "name": "Cy"},
                ],
                [{"id": 2, "name": "Bob C."}, {"id": 3, "name": "Cy D."}],
            ]
        )

        assert written == 6
        assert _rows(database_url, name, "id") == [
            {"id": 1, "name": "Ann B."},
            {"id": 2, "name": "Bob C."},
            {"id": 3, "name": "Cy D."},
        ]


class TestTypedTables:
    """Tables keep the source's types, take the columns new fields bring as their
    schemaChangePolicy says, and refuse a value a column cannot hold."""

    def test_types_are_kept_end_to_end(self, postgres_url: str, scope: Scope) -> None:
        source_table, target_table = f"typed_{_suffix()}", f"copied_{_suffix()}"
        execute_sql = f"""
            CREATE TABLE {source_table} (
                id integer, at timestamptz, amount numeric(12, 2), ref uuid, doc jsonb,
                day date, ok boolean, name text
            );
            INSERT INTO {source_table} VALUES
                (1, '2026-03-01 10:00+01', 12.34, '5c0ae7f5-55b4-4b6a-9cbf-6c4d3c36e1a3',
                 '{{"a": [1, 2]}}', '2026-03-01', true, 'x'),
                (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
        """
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(execute_sql)
        source = SqlSource.configured({"url": postgres_url, "table": source_table}, scope)
        destination = SqlDestination.configured({"url": postgres_url, "table": target_table}, scope)

        assert destination.write(source.read(cursor=None, batch_size=1)) == 2

        with _database(postgres_url) as engine, engine.connect() as connection:
            columns = {
                c["name"]: str(c["type"]) for c in inspect(connection).get_columns(target_table)
            }
        assert columns == {
            "id": "BIGINT",
            "at": "TIMESTAMP",
            "amount": "NUMERIC",
            "ref": "UUID",
            "doc": "JSON",
            "day": "DATE",
            "ok": "BOOLEAN",
            "name": "TEXT",
        }
        with psycopg.connect(postgres_url) as db:
            [(kind,)] = db.execute(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_name = %s AND column_name = 'at'",
                (target_table,),
            )
        assert kind == "timestamp with time zone"
        [first, second] = _rows(postgres_url, target_table, "id")
        assert first == {
            "id": 1,
            "at": datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
            "amount": Decimal("12.34"),
            "ref": UUID("5c0ae7f5-55b4-4b6a-9cbf-6c4d3c36e1a3"),
            "doc": {"a": [1, 2]},
            "day": date(2026, 3, 1),
            "ok": True,
            "name": "x",
        }
        assert set(second.values()) == {2, None}

    def test_a_new_field_adds_its_column_mid_run(self, database_url: str, scope: Scope) -> None:
        name = f"evolving_{_suffix()}"
        destination = SqlDestination.configured({"url": database_url, "table": name}, scope)
        destination.write([[{"id": 1}]])

        batches = [[{"id": 2}], [{"id": 3, "note": "new", "score": 7}], [{"id": 4}]]
        assert destination.write(batches) == 3

        assert _rows(database_url, name, "id") == [
            {"id": 1, "note": None, "score": None},
            {"id": 2, "note": None, "score": None},
            {"id": 3, "note": "new", "score": 7},
            {"id": 4, "note": None, "score": None},
        ]

    def test_discard_leaves_a_new_field_out(self, database_url: str, scope: Scope) -> None:
        name = f"fixed_{_suffix()}"
        config = {"url": database_url, "table": name, "schemaChangePolicy": "discard"}
        destination = SqlDestination.configured(config, scope)
        destination.write([[{"id": 1}]])

        assert destination.write([[{"id": 2, "note": "dropped"}]]) == 1

        assert _rows(database_url, name, "id") == [{"id": 1}, {"id": 2}]

    def test_a_narrowing_change_fails_naming_the_column(
        self, database_url: str, scope: Scope
    ) -> None:
        name = f"narrow_{_suffix()}"
        destination = SqlDestination.configured({"url": database_url, "table": name}, scope)
        destination.write([[{"id": 1, "amount": 5}]])

        with pytest.raises(
            ValueError, match="column 'amount' of table .* is BIGINT and cannot hold the float"
        ):
            destination.write([[{"id": 2, "amount": 5}], [{"id": 3, "amount": 2.5}]])

        assert _rows(database_url, name, "id") == [{"id": 1, "amount": 5}]


class TestSqlDestinationCopy:
    """PostgreSQL takes the batches by COPY, values as executemany would have sent them."""

    def test_json_columns_take_any_value_and_text_columns_a_dict(
        self, postgres_url: str, scope: Scope
    ) -> None:
        name = f"docs_{_suffix()}"
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(
                sql.SQL("CREATE TABLE {} (id bigint, doc jsonb, raw json, note text)").format(
                    sql.Identifier(name)
                )
            )
        destination = SqlDestination.configured({"url": postgres_url, "table": name}, scope)

        written = destination.write(
            [
                [
                    {"id": 1, "doc": {"a": [1, "x"]}, "raw": [{"b": None}], "note": {"c": 1}},
                    {"id": 2, "doc": "plain", "raw": True, "note": ["not", "json"]},
                ]
            ]
        )

        assert written == 2
        with psycopg.connect(postgres_url) as db:
            rows = db.execute(
                sql.SQL("SELECT id, doc, raw, note FROM {} ORDER BY id").format(
                    sql.Identifier(name)
                )
            ).fetchall()
        assert rows == [
            (1, {"a": [1, "x"]}, [{"b": None}], '{"c": 1}'),
            (2, "plain", True, "{not,json}"),  # a list into TEXT: an array, as executemany did
        ]

    def test_a_quoted_schema_and_table_take_append_and_merge(
        self, postgres_url: str, scope: Scope
    ) -> None:
        schema, name = f"Sales {_suffix()}", f"Orders {_suffix()}"
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            # A default under NOT NULL that the records leave out: the merge must not trip on it.
            db.execute(
                sql.SQL(
                    'CREATE TABLE {} (id bigint PRIMARY KEY, "Name" text,'
                    " loaded_at timestamptz NOT NULL DEFAULT now())"
                ).format(sql.Identifier(schema, name))
            )
        config = {"url": postgres_url, "table": f"{schema}.{name}"}
        append = SqlDestination.configured({**config, "mode": "append"}, scope)
        merge = SqlDestination.configured({**config, "mode": "merge", "primaryKey": ["id"]}, scope)

        assert append.write([[{"id": 1, "Name": "Ann"}]]) == 1
        assert merge.write([[{"id": 1, "Name": "Ann B."}, {"id": 2, "Name": "Bob"}]]) == 2

        with psycopg.connect(postgres_url) as db:
            rows = db.execute(
                sql.SQL('SELECT id, "Name", loaded_at IS NOT NULL FROM {} ORDER BY id').format(
                    sql.Identifier(schema, name)
                )
            ).fetchall()
        assert rows == [(1, "Ann B.", True), (2, "Bob", True)]

    def test_a_value_the_column_refuses_undoes_the_whole_run(
        self, postgres_url: str, scope: Scope
    ) -> None:
        name = f"orders_{_suffix()}"
        config = {"url": postgres_url, "table": name, "mode": "merge", "primaryKey": ["id"]}
        destination = SqlDestination.configured(config, scope)
        destination.write([[{"id": 1, "count": 1}]])

        batches = [[{"id": 1, "count": 2}], [{"id": 2, "count": "many"}]]
        with pytest.raises(psycopg.DataError, match="many"):
            destination.write(batches)

        assert _rows(postgres_url, name, "id") == [{"id": 1, "count": 1}]


def _csv_to_sql(
    scope: Scope,
    source: dict[str, Any],
    destination: dict[str, Any],
    source_type: type[Source] = CsvSource,
    cursor: Any = None,
) -> Moved:
    """Move the source's records (by default CSV files') into the sql destination as a sync
    run moves them, after `cursor`."""
    plan = SyncPlan(
        connector_id=1,
        connector_name=source_type.name,
        source_label=source_type.name,
        destination_label="sql",
        routes=[
            Route(
                DEFAULT_STREAM,
                source_type.configured(source, scope),  # type: ignore[arg-type]
                SqlDestination.configured(destination, scope),  # type: ignore[arg-type]
            )
        ],
        cursors={DEFAULT_STREAM: cursor},
        resets=0,
        retries=0,
        retry_delay_seconds=0,
        timeout_seconds=0,
    )
    moved = move(plan, load_id=uuid.uuid4(), batch_size=2)
    assert moved.failure is None, moved.failure
    return moved


class TestCsvColumns:
    """csv -> PostgreSQL goes as Arrow batches, COPYed without a record per row: the same
    rows, columns and policies as the records' path (which SQLite takes)."""

    def test_columns_keep_what_records_keep(
        self, tmp_path: Path, scope: Scope, database_url: str
    ) -> None:
        (tmp_path / "a.csv").write_bytes(
            '\ufeffid;name;note\n1;"x;y";\n\n2;a"b;""\n3;;z\n'.encode()
        )
        (tmp_path / "b.csv").write_text("id;name;note;extra\n4;d;e;new\n")
        destination = {"url": database_url, "table": "people"}
        source = {"path": "*.csv", "delimiter": ";"}
        assert CsvSource.configured(source, scope).reads_columns
        assert SqlDestination.configured(destination, scope).takes_columns == (
            database_url.startswith("postgresql")
        )

        moved = _csv_to_sql(scope, source, destination)

        assert (moved.records_read, moved.records_written) == (4, 4)
        assert _rows(database_url, "people", "id") == [
            {"id": "1", "name": "x;y", "note": "", "extra": None},
            {"id": "2", "name": 'a"b', "note": "", "extra": None},
            {"id": "3", "name": "", "note": "z", "extra": None},
            {"id": "4", "name": "d", "note": "e", "extra": "new"},
        ]
        with _database(database_url) as engine, engine.connect() as connection:
            types = {c["name"]: str(c["type"]) for c in inspect(connection).get_columns("people")}
        assert set(types.values()) == {"TEXT"}

    def test_a_frozen_table_refuses_a_new_column_and_discard_leaves_it_out(
        self, tmp_path: Path, scope: Scope, postgres_url: str
    ) -> None:
        table = f"frozen_{_suffix()}"
        (tmp_path / "old.csv").write_text("id,name\n1,a\n")
        _csv_to_sql(scope, {"path": "old.csv"}, {"url": postgres_url, "table": table})
        (tmp_path / "new.csv").write_text("id,name,extra\n2,b,x\n")
        frozen = {"url": postgres_url, "table": table, "schemaChangePolicy": "freeze"}
        with pytest.raises(AssertionError, match="has no column extra, and schemaChangePolicy"):
            _csv_to_sql(scope, {"path": "new.csv"}, frozen)
        _csv_to_sql(scope, {"path": "new.csv"}, {**frozen, "schemaChangePolicy": "discard"})
        assert _rows(postgres_url, table, "id") == [
            {"id": "1", "name": "a"},
            {"id": "2", "name": "b"},
        ]

    def test_rows_shorter_than_the_header_are_read_as_records(
        self, tmp_path: Path, scope: Scope, postgres_url: str
    ) -> None:
        table = f"short_{_suffix()}"
        (tmp_path / "short.csv").write_text("id,name\n1,a\n2\n")
        with pytest.raises(ColumnsUnreadable, match="Expected 2 columns, got 1"):
            list(CsvSource.configured({"path": "short.csv"}, scope).read_columns(batch_size=10))

        moved = _csv_to_sql(scope, {"path": "short.csv"}, {"url": postgres_url, "table": table})

        assert (moved.records_read, moved.records_written) == (2, 2)
        assert _rows(postgres_url, table, "id") == [
            {"id": "1", "name": "a"},
            {"id": "2", "name": None},
        ]


class TestSqlToSqlCopy:
    """A PostgreSQL table into PostgreSQL goes as COPY text, no value parsed on the way: the
    source's own column types, its cursor, and the destination's policies as for records."""

    def test_rows_types_cursor_and_policy(self, scope: Scope, postgres_url: str) -> None:
        source_table, target = f"src_{_suffix()}", f"dst_{_suffix()}"
        mood = f"mood_{_suffix()}"
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(f"CREATE TYPE {mood} AS ENUM ('ok', 'meh')")
            db.execute(f"CREATE TABLE {source_table} (id integer, note varchar(20), feel {mood})")
            db.execute(
                f"INSERT INTO {source_table} VALUES (1, e'tab\\there\\nline \\\\', 'ok'),"
                " (2, NULL, 'meh')"
            )
        source = {"url": postgres_url, "table": source_table, "cursorField": "id"}
        destination = {"url": postgres_url, "table": target, "schemaChangePolicy": "discard"}
        assert SqlSource.configured(source, scope).copies_out
        assert SqlDestination.configured(destination, scope).takes_copy

        first = _csv_to_sql(scope, source, destination, SqlSource)

        assert (first.records_read, first.records_written, first.cursors) == (2, 2, {"default": 2})
        assert _rows(postgres_url, target, "id") == [
            {"id": 1, "note": "tab\there\nline \\", "feel": "ok"},
            {"id": 2, "note": None, "feel": "meh"},
        ]
        with _database(postgres_url) as engine, engine.connect() as connection:
            types = {c["name"]: str(c["type"]) for c in inspect(connection).get_columns(target)}
        assert types == {"id": "INTEGER", "note": "VARCHAR(20)", "feel": "TEXT"}

        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(f"ALTER TABLE {source_table} ADD COLUMN extra text")
            db.execute(f"INSERT INTO {source_table} VALUES (3, 'c', 'ok', 'left out')")
        second = _csv_to_sql(scope, source, destination, SqlSource, cursor=first.cursors["default"])

        assert (second.records_read, second.cursors) == (1, {"default": 3})
        assert [row["id"] for row in _rows(postgres_url, target, "id")] == [1, 2, 3]
        with _database(postgres_url) as engine, engine.connect() as connection:
            assert "extra" not in {c["name"] for c in inspect(connection).get_columns(target)}


class _Pages(BaseHTTPRequestHandler):
    """Answers GETs from `routes`: path and query -> (status, extra headers, JSON body)."""

    routes: dict[str, tuple[int, dict[str, str], Any]] = {}
    requests: list[httpx.Headers] = []

    def do_GET(self) -> None:
        self.requests.append(httpx.Headers(dict(self.headers)))
        status, headers, body = self.routes.get(self.path, (404, {}, {"error": "no route"}))
        content = json.dumps(body).encode()
        self.send_response(status)
        for header, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(header, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows failures, not access logs."""


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    """A real HTTP server on a free local port, serving `_Pages.routes`; its base URL."""
    with serving(_Pages) as url:
        yield url


class TestHttpSource:
    def test_pages_follow_the_next_page_path(self, http_server: str, scope: Scope) -> None:
        base = f"/api-{_suffix()}/items"
        _Pages.routes |= {
            base: (200, {}, {"data": {"items": [{"id": 1}, {"id": 2}]}, "next": "items?page=2"}),
            f"{base}?page=2": (200, {}, {"data": {"items": [{"id": 3}]}, "next": None}),
        }
        source = HttpSource.configured(
            {
                "url": http_server + base,
                "headers": {"Authorization": f"Bearer {_suffix()}"},
                "recordsPath": "data.items",
                "nextPagePath": "next",
            },
            scope,
        )

        batches = _read(source, batch_size=2)

        assert batches == [[{"id": 1}, {"id": 2}], [{"id": 3}]]
        assert _Pages.requests[-1]["authorization"] == source.config.headers["Authorization"]

    def test_pages_follow_the_link_header(self, http_server: str, scope: Scope) -> None:
        base = f"/api-{_suffix()}/items"
        second = f"{http_server}{base}?page=2"
        _Pages.routes |= {
            base: (200, {"Link": f'<{second}>; rel="next"'}, [{"id": 1}]),
            f"{base}?page=2": (200, {"Link": f'<{base}>; rel="first"'}, [{"id": 2}]),
        }

        records = _records(_read(HttpSource.configured({"url": http_server + base}, scope)))

        assert records == [{"id": 1}, {"id": 2}]

    def test_a_server_error_names_status_and_url_not_headers(
        self, http_server: str, scope: Scope
    ) -> None:
        path = f"/api-{_suffix()}/broken"
        _Pages.routes[path] = (500, {}, {"error": "boom"})
        token = f"secret-{_suffix()}"
        source = HttpSource.configured(
            {"url": http_server + path, "headers": {"Authorization": token}}, scope
        )

        with pytest.raises(ValueError) as error:
            _read(source)

        assert "500" in str(error.value)
        assert http_server + path in str(error.value)
        assert token not in str(error.value)

    def test_a_page_seen_twice_stops_the_loop(self, http_server: str, scope: Scope) -> None:
        path = f"/api-{_suffix()}/loop"
        _Pages.routes |= {
            path: (200, {}, {"items": [{"id": 1}], "next": f"{path}?page=2"}),
            f"{path}?page=2": (200, {}, {"items": [{"id": 2}], "next": path}),
        }
        source = HttpSource.configured(
            {"url": http_server + path, "recordsPath": "items", "nextPagePath": "next"}, scope
        )

        with pytest.raises(ValueError, match="the pagination loops"):
            _read(source)


class TestSecretsInUrls:
    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            (
                "https://u:pw@api.example.com/x?api_key=K&page=2&X-Amz-Signature=S&q=%FF&flag",
                "https://u:********@api.example.com/x?api_key=********&page=2"
                "&X-Amz-Signature=********&q=%FF&flag",
            ),
            ("https://ghp_token@api.github.com/repos", "https://********@api.github.com/repos"),
            (
                "https://h/x?private_token=T&access_token=A",
                "https://h/x?private_token=********&access_token=********",
            ),
            ("postgresql://app:pw@db/x", "postgresql://app:********@db/x"),
            ("postgresql://app@db/x", "postgresql://app@db/x"),
        ],
    )
    def test_masking_changes_only_the_secrets(self, url: str, shown: str) -> None:
        assert mask_url(url) == shown
        config = {"url": url}
        assert keep_secrets("source", {"url": shown}, config, field="config") == config


def _check(kind: Kind, type_name: str, config: dict[str, Any], scope: Scope) -> dict[str, Step]:
    """Each step of the connection check of `config`, by name."""
    steps, _ = checks.run(kind, type_name, config, scope, deadline=time.monotonic() + 30)
    return {step.name: step for step in steps}


def _statuses(steps: dict[str, Step]) -> dict[str, str]:
    return {name: step.status for name, step in steps.items()}


@contextmanager
def _role(postgres_url: str) -> Iterator[str]:
    """A login role of its own, which may use the database but create nothing in it."""
    name = f"checker_{_suffix()}"
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


class TestChecks:
    """Each type's connection check passes where a run would work, and fails at the step that
    says why otherwise, with the steps after it skipped."""

    def test_a_csv_file_passes_naming_its_fields_never_values(
        self, tmp_path: Path, scope: Scope
    ) -> None:
        secret = f"value-{_suffix()}"
        (tmp_path / "in.csv").write_text(f"id,diagnosis\n1,{secret}\n")

        steps = _check("source", "csv", {"path": "in.csv"}, scope)

        assert _statuses(steps) == {"resolve": "passed", "connect": "passed", "read": "passed"}
        assert steps["read"].message == "read a record with the fields id, diagnosis"
        assert all(secret not in step.message for step in steps.values())

    def test_a_missing_file_fails_to_connect_and_skips_the_read(self, scope: Scope) -> None:
        steps = _check("source", "jsonl", {"path": "nowhere.jsonl"}, scope)

        assert _statuses(steps) == {"resolve": "passed", "connect": "failed", "read": "skipped"}
        assert "'nowhere.jsonl' is no file" in steps["connect"].message

    def test_a_path_outside_the_folder_fails_to_resolve(self, scope: Scope) -> None:
        steps = _check("source", "csv", {"path": "../other/in.csv"}, scope)

        assert _statuses(steps) == {"resolve": "failed"}
        assert "outside the project's folder" in steps["resolve"].message

    def test_a_bad_line_fails_the_read(self, tmp_path: Path, scope: Scope) -> None:
        (tmp_path / "in.jsonl").write_text("{not json\n")

        steps = _check("source", "jsonl", {"path": "in.jsonl"}, scope)

        assert steps["read"].status == "failed"
        assert "line 1" in steps["read"].message

    def test_a_jsonl_destination_passes_and_creates_nothing(
        self, tmp_path: Path, scope: Scope
    ) -> None:
        steps = _check("destination", "jsonl", {"path": "out/loads.jsonl"}, scope)

        assert _statuses(steps) == {"resolve": "passed", "write": "passed"}
        assert list(tmp_path.iterdir()) == []

    def test_a_jsonl_destination_under_a_file_fails_to_write(
        self, tmp_path: Path, scope: Scope
    ) -> None:
        (tmp_path / "in.csv").write_text("id\n")

        steps = _check("destination", "jsonl", {"path": "in.csv/out.jsonl"}, scope)

        assert steps["write"].status == "failed"
        assert "'in.csv' is no folder" in steps["write"].message

    def test_a_postgresql_table_passes(self, postgres_url: str, scope: Scope) -> None:
        name = f"checked_{_suffix()}"
        _events_table(postgres_url, name, _events(range(1, 3), datetime.now(UTC)))

        steps = _check("source", "sql", {"url": postgres_url, "table": name}, scope)

        assert _statuses(steps) == {
            "resolve": "passed",
            "connect": "passed",
            "authenticate": "passed",
            "read": "passed",
        }
        assert steps["authenticate"].message.startswith("logged in as ")

    def test_a_missing_table_fails_the_read(self, postgres_url: str, scope: Scope) -> None:
        steps = _check("source", "sql", {"url": postgres_url, "table": "no_such_table"}, scope)

        assert steps["authenticate"].status == "passed"
        assert steps["read"].status == "failed"
        assert "has no table or view 'no_such_table'" in steps["read"].message

    def test_an_unknown_user_fails_to_authenticate(self, postgres_url: str, scope: Scope) -> None:
        url = make_url(postgres_url).set(username=f"nobody_{_suffix()}", password="pw")

        steps = _check(
            "source", "sql", {"url": url.render_as_string(False), "query": "SELECT 1"}, scope
        )

        assert _statuses(steps)["connect"] == "passed"
        assert steps["authenticate"].status == "failed"
        assert "does not exist" in steps["authenticate"].message
        assert steps["read"].status == "skipped"

    def test_a_port_nobody_listens_on_fails_to_connect(self, scope: Scope) -> None:
        url = f"postgresql://app@{PUBLIC_TEST_HOST}:{free_port()}/db"

        steps = _check("destination", "sql", {"url": url, "table": "t"}, scope)

        assert steps["connect"].status == "failed"
        assert "cannot be reached (Connection refused)" in steps["connect"].message
        assert _statuses(steps)["write"] == "skipped"

    def test_a_postgresql_destination_passes_and_leaves_no_table(
        self, postgres_url: str, scope: Scope
    ) -> None:
        name = f"target_{_suffix()}"

        steps = _check("destination", "sql", {"url": postgres_url, "table": name}, scope)

        assert steps["write"].status == "passed"
        assert steps["write"].message == f"may create the table {name}: the first run does"
        with _database(postgres_url) as engine, engine.connect() as connection:
            tables = inspect(connection).get_table_names()
        assert name not in tables and "_control_plane_check" not in tables

    def test_a_user_who_may_create_no_table_fails_to_write(
        self, postgres_url: str, scope: Scope
    ) -> None:
        with _role(postgres_url) as role:
            url = make_url(postgres_url).set(username=role).render_as_string(False)

            steps = _check("destination", "sql", {"url": url, "table": "t"}, scope)

        assert steps["authenticate"].status == "passed"
        assert steps["write"].status == "failed"
        assert "permission denied for schema public" in steps["write"].message

    def test_a_user_who_may_not_insert_into_the_table_fails_to_write(
        self, postgres_url: str, scope: Scope
    ) -> None:
        name = f"target_{_suffix()}"
        destination = SqlDestination.configured({"url": postgres_url, "table": name}, scope)
        destination.write([[{"id": 1}]], Load(stream="connector:1", load_id=_suffix()))
        with _role(postgres_url) as role:
            url = make_url(postgres_url).set(username=role).render_as_string(False)

            steps = _check(
                "destination",
                "sql",
                {"url": url, "table": name, "mode": "merge", "primaryKey": ["id"]},
                scope,
            )

        assert steps["write"].status == "failed"
        assert f"may not INSERT or UPDATE on {name}" in steps["write"].message

    def test_a_sqlite_destination_passes_without_creating_its_file(
        self, tmp_path: Path, scope: Scope
    ) -> None:
        steps = _check("destination", "sql", {"url": "sqlite:///w.db", "table": "t"}, scope)

        assert _statuses(steps) == {"resolve": "passed", "connect": "passed", "write": "passed"}
        assert not (tmp_path / "w.db").exists()

    def test_a_sqlite_source_without_its_file_fails_to_connect(self, scope: Scope) -> None:
        steps = _check("source", "sql", {"url": "sqlite:///w.db", "table": "t"}, scope)

        assert _statuses(steps) == {"resolve": "passed", "connect": "failed", "read": "skipped"}

    def test_an_http_api_passes(self, http_server: str, scope: Scope) -> None:
        path = f"/api-{_suffix()}/items"
        _Pages.routes[path] = (200, {}, [{"id": 1, "name": "a"}])

        steps = _check("source", "http", {"url": http_server + path}, scope)

        assert _statuses(steps) == {
            "resolve": "passed",
            "connect": "passed",
            "authenticate": "passed",
            "read": "passed",
        }
        assert steps["read"].message == "read a record with the fields id, name"

    def test_refused_credentials_fail_to_authenticate(self, http_server: str, scope: Scope) -> None:
        path = f"/api-{_suffix()}/private"
        _Pages.routes[path] = (401, {}, {"error": "who are you"})
        token = f"secret-{_suffix()}"

        steps = _check(
            "source",
            "http",
            {"url": http_server + path, "headers": {"Authorization": token}},
            scope,
        )

        assert steps["authenticate"].status == "failed"
        assert "answered 401 Unauthorized: check the credentials" in steps["authenticate"].message
        assert all(token not in step.message for step in steps.values())

    def test_an_answer_without_records_fails_the_read(self, http_server: str, scope: Scope) -> None:
        path = f"/api-{_suffix()}/odd"
        _Pages.routes[path] = (200, {}, {"items": "none"})

        steps = _check("source", "http", {"url": http_server + path}, scope)

        assert steps["authenticate"].status == "passed"
        assert steps["read"].status == "failed"
        assert "expected a list of objects" in steps["read"].message

    def test_a_closed_port_fails_to_connect(self, scope: Scope) -> None:
        url = f"http://{PUBLIC_TEST_HOST}:{free_port()}/items"

        steps = _check("source", "http", {"url": url}, scope)

        assert _statuses(steps)["connect"] == "failed"
        assert _statuses(steps)["authenticate"] == "skipped"


class TestDiscovery:
    def test_a_postgresql_schema_lists_its_tables_with_types_keys_and_cursors(
        self, postgres_url: str, scope: Scope
    ) -> None:
        schema = f"shop_{_suffix()}"
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(
                f"""
                CREATE SCHEMA {schema};
                CREATE TABLE {schema}.orders (
                    id serial PRIMARY KEY, at timestamptz NOT NULL, amount numeric(12, 2),
                    ref uuid, doc jsonb, ok boolean, note text
                );
                CREATE VIEW {schema}.big_orders AS SELECT id, amount FROM {schema}.orders;
                """
            )
        config = {"url": postgres_url, "table": f"{schema}.orders"}

        steps, streams = checks.run(
            "source", "sql", config, scope, deadline=time.monotonic() + 30, discover=True
        )

        assert [(step.name, step.status) for step in steps][-1] == ("discover", "passed")
        found = {(s.namespace, s.name): s for s in streams if s.namespace == schema}
        assert set(found) == {(schema, "orders"), (schema, "big_orders")}
        orders = found[(schema, "orders")]
        assert orders.json_schema["properties"] == {
            "id": {"type": "integer"},
            "at": {"type": "string", "format": "date-time"},
            "amount": {"type": ["number", "null"]},
            "ref": {"type": ["string", "null"], "format": "uuid"},
            "doc": {},
            "ok": {"type": ["boolean", "null"]},
            "note": {"type": ["string", "null"]},
        }
        assert orders.primary_key == ["id"]
        assert orders.cursor_candidates == ["id", "at", "amount"]
        assert found[(schema, "big_orders")].primary_key == []

    def test_a_csv_sample_tells_each_columns_type(self, tmp_path: Path, scope: Scope) -> None:
        (tmp_path / "in.csv").write_text(
            "id,price,ok,day,at,note\n"
            "1,2.5,true,2026-01-01,2026-01-01T10:00:00Z,x\n"
            "2,,false,2026-01-02,2026-01-02T10:00:00Z,7\n"
        )
        source = CsvSource.configured({"path": "in.csv"}, scope)

        [stream] = source.discover()

        assert stream.name == "default"
        assert stream.json_schema["properties"] == {
            "id": {"type": "integer"},
            "price": {"type": ["number", "null"]},
            "ok": {"type": "boolean"},
            "day": {"type": "string", "format": "date"},
            "at": {"type": "string", "format": "date-time"},
            "note": {},
        }
        assert stream.cursor_candidates == ["id", "price", "day", "at"]

    def test_json_records_show_their_shape(self, tmp_path: Path, scope: Scope) -> None:
        (tmp_path / "in.jsonl").write_text(
            '{"id": 1, "tags": ["a"], "meta": {"k": 1}, "score": 1}\n'
            '{"id": 2, "tags": [], "meta": null, "score": 2.5}\n'
        )

        [stream] = JsonlSource.configured({"path": "in.jsonl"}, scope).discover()

        assert stream.json_schema["properties"] == {
            "id": {"type": "integer"},
            "tags": {"type": "array"},
            "meta": {"type": ["object", "null"]},
            "score": {"type": "number"},
        }
