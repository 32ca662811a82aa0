"""SQL databases through SQLAlchemy: a source that streams a table or a query, and a destination
that appends, replaces or merges in one transaction, and records the run's load in that same
transaction (in `_control_plane_loads`, next to the table), which makes loads exactly-once.

On PostgreSQL the rows themselves go through the psycopg connection under SQLAlchemy's, in the
same transaction: fetched from a server-side cursor, written with COPY. Through SQLAlchemy
(executemany, a Row object per row) the data path ran at 3 to 7% of COPY's speed
(bench/data_plane.py).
"""

import json
import os
import socket
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from decimal import Decimal
from itertools import chain, groupby, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal, Self, TypeVar
from uuid import UUID

import psycopg
from psycopg import Cursor, sql
from psycopg.types.json import Jsonb, JsonDumper
from pydantic import Field, model_validator
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Enum,
    Executable,
    Float,
    Integer,
    MetaData,
    Numeric,
    Select,
    Table,
    Text,
    Time,
    Uuid,
    bindparam,
    column,
    create_engine,
    event,
    inspect,
    literal_column,
    select,
    table,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import TableClause, TextClause
from sqlalchemy.types import NullType, TypeEngine

from control_plane.connectors import (
    DEFAULT_STREAM,
    MAX_STREAMS,
    WRITE_MODES,
    Batch,
    CheckStep,
    CopyOut,
    CopyRows,
    DatabaseUrl,
    Destination,
    Load,
    Record,
    SelectedStream,
    Source,
    Stream,
    TableConfig,
    TypeConfig,
    url_field,
)
from control_plane.connectors.discovery import (
    cursor_candidates,
    kind_of_type,
    property_schema,
    record_schema,
)
from control_plane.errors import InvalidInput
from control_plane.policy import POSTGRES_PORT, Scope

# The column type a value asks for. The first match wins: bool before int (a bool is an int),
# datetime before date (a datetime is a date).
_COLUMN_TYPES: list[tuple[type | tuple[type, ...], type[TypeEngine[Any]]]] = [
    (bool, Boolean),
    (int, BigInteger),
    (float, Float),
    (Decimal, Numeric),
    (datetime, DateTime),
    (date, Date),
    (time, Time),
    (UUID, Uuid),
    ((dict, list), JSON),
]
# Which values a column holds without losing part of them, by the column's Python type (by
# exact type: a bool is no BIGINT). Any column takes a string (the database parses it); a
# column of another type (text, JSON) takes anything.
_HOLDS: dict[type, tuple[type, ...]] = {
    bool: (bool,),
    int: (int,),
    float: (int, float, Decimal),
    Decimal: (int, float, Decimal),
    datetime: (datetime, date),
    date: (date,),
    time: (time,),
    UUID: (UUID,),
}

_UPSERTS: dict[str, Callable[[Table], postgresql.Insert | sqlite.Insert]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}

# The fields of a batch with the column type each asks for.
_Types = dict[str, TypeEngine[Any]]
# A batch with the table it goes to and its fields, and the columns to add before it is written.
_Checked = tuple[tuple[Table, list[str]], Batch, list[Column[Any]]]
B = TypeVar("B")  # a batch: records, an Arrow record batch, or none for COPY text

# What a merge on PostgreSQL COPYs into first, dropped once merged.
_STAGING = sql.Identifier("_control_plane_staging")
_ORDINAL = sql.Identifier("_control_plane_ordinal")

# Where a destination records its loads, in the schema of the table it writes.
_LOADS = "_control_plane_loads"
# What a destination's check creates, and rolls back, to learn whether a run may create tables.
_PROBE = "_control_plane_check"
# The privileges a write into an existing table needs, by mode.
_PRIVILEGES = {"append": ["INSERT"], "replace": ["INSERT", "DELETE"], "merge": ["INSERT", "UPDATE"]}
_CONNECT_SECONDS = 10
# The schemas of PostgreSQL's own catalog, which no stream comes from.
_SYSTEM_SCHEMAS = {"information_schema", "pg_catalog", "pg_toast"}


def _no_attach(action: int, *_: Any) -> int:
    # ATTACH would open any file the worker can read, outside the project's folder.
    return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_ATTACH else sqlite3.SQLITE_OK


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    dbapi_connection.set_authorizer(_no_attach)


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN")


@contextmanager
def _engine(scope: Scope, url: str) -> Iterator[Engine]:
    """A sync engine for the database `url` names, as the project's scope checked it (on
    PostgreSQL with psycopg 3, on the address checked), disposed on exit."""
    engine = create_engine(scope.database(url))
    if engine.dialect.name == "sqlite":
        # Python's sqlite3 only opens a transaction before INSERT/UPDATE/DELETE, so a CREATE TABLE
        # would commit on its own; SQLAlchemy's recipe: let SQLAlchemy emit BEGIN itself.
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    try:
        yield engine
    finally:
        engine.dispose()


def _psycopg(connection: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under a PostgreSQL `connection`, in its transaction."""
    driver_connection = connection.connection.driver_connection
    if not isinstance(driver_connection, psycopg.Connection):
        raise TypeError(f"not a psycopg connection: {driver_connection!r}")
    return driver_connection


def _table_stream(inspector: Any, schema: str | None, name: str) -> Stream:
    properties = {}
    for described in inspector.get_columns(name, schema=schema):
        try:
            kind = kind_of_type(described["type"].python_type)
        except NotImplementedError:
            kind = None
        nullable = {None} if described.get("nullable", True) else set()
        properties[described["name"]] = property_schema({kind} | nullable) if kind else {}
    key = inspector.get_pk_constraint(name, schema=schema).get("constrained_columns") or []
    return Stream(
        name=name,
        namespace=schema,
        json_schema=record_schema(properties),
        primary_key=list(key),
        cursor_candidates=cursor_candidates(properties),
    )


def database_steps(scope: Scope, url: str, *, creates: bool) -> list[CheckStep]:
    """A check's connect and authenticate steps for the database `url` names; a SQLite file
    that a run `creates` need not exist yet, and has no login."""
    checked = scope.database(url)
    if checked.get_backend_name() == "sqlite":
        return [("connect", lambda: _find_file(Path(str(checked.database)), creates=creates))]
    return [("connect", lambda: _reach(checked)), ("authenticate", lambda: _log_in(scope, url))]


def _find_file(path: Path, *, creates: bool) -> str:
    if path.is_file():
        return f"found the SQLite file {path.name}"
    if creates and path.parent.is_dir():
        return f"{path.name} does not exist yet: the first run creates it"
    raise FileNotFoundError(f"no SQLite file {path.name} in that folder of the project's")


def _reach(url: URL) -> str:
    """A TCP connection to the address checked, which is where the driver connects."""
    port = url.port or POSTGRES_PORT
    try:
        with socket.create_connection((str(url.query["hostaddr"]), port), _CONNECT_SECONDS):
            return f"{url.host}:{port} accepts connections"
    except OSError as error:
        raise ConnectionError(
            f"{url.host}:{port} cannot be reached ({error.strerror or error}): is the database "
            "up, and does it listen there?"
        ) from None


def _log_in(scope: Scope, url: str) -> str:
    with _engine(scope, url) as engine, engine.connect() as connection:
        user, database = connection.execute(text("SELECT current_user, current_database()")).one()
    return f"logged in as {user} to database {database}"


def _schema_and_name(qualified: str) -> tuple[str | None, str]:
    schema, _, name = qualified.rpartition(".")
    return schema or None, name


def _records(keys: list[str], rows: Iterable[Sequence[Any]]) -> Batch:
    """The rows as records, their values as the driver gives them: datetimes, decimals, UUIDs
    stay Python's, so a destination can keep their types. A row has a value per key (both come
    from one result); zip's strict check cost a third of the time."""
    return list(map(dict, map(zip, repeat(keys), rows)))


class SqlSource(Source):
    name = "sql"
    reads_windows = True

    class Config(TypeConfig):
        url: DatabaseUrl = url_field(
            description=(
                "SQLAlchemy URL of the database to read: postgresql on an allowed host, or "
                "sqlite with a file in the project's folder."
            )
        )
        query: str | None = Field(default=None, description="A SELECT to read; or give `table`.")
        table: str | None = Field(
            default=None, description="A table (or `schema.table`) to read; or give `query`."
        )
        cursor_field: str | None = Field(
            default=None, description="Column that only grows; runs resume after its last value."
        )

        @model_validator(mode="after")
        def _query_or_table(self) -> Self:
            if (self.query is None) == (self.table is None):
                raise ValueError("give exactly one of query and table")
            return self

    config: Config

    @property
    def cursor_field(self) -> str | None:
        return self.config.cursor_field

    def check_steps(self) -> list[CheckStep]:
        steps = database_steps(self.scope, self.config.url, creates=False)
        return [*steps, *super().check_steps()]

    def stream(self, selected: SelectedStream) -> Source:
        """The table or view `selected` names in this database (`default`: the configured
        table or query), read after its cursor field."""
        if selected.name == DEFAULT_STREAM:
            return self.with_config(cursor_field=selected.cursor_field)
        if self.config.query is not None:
            raise InvalidInput(
                "streams",
                f"a sql source of a query holds one stream, {DEFAULT_STREAM!r}: give it a table "
                "instead of the query to select the database's tables",
            )
        return self.with_config(table=selected.name, cursor_field=selected.cursor_field)

    def discover(self) -> list[Stream]:
        """The database's tables and views, each a stream with its columns' types, primary key
        and cursor candidates, from its catalog; a source of a `query` is one stream, as a
        sample shows it."""
        if self.config.query is not None:
            return super().discover()
        with _engine(self.scope, self.config.url) as engine, engine.connect() as connection:
            inspector = inspect(connection)
            schemas: list[str | None] = [None]
            if connection.dialect.name == "postgresql":
                schemas = [s for s in inspector.get_schema_names() if s not in _SYSTEM_SCHEMAS]
            names = [
                (schema, name)
                for schema in schemas
                for name in [
                    *inspector.get_table_names(schema=schema),
                    *inspector.get_view_names(schema=schema),
                ]
                if not name.startswith("_control_plane_")
            ]
            return [_table_stream(inspector, schema, name) for schema, name in names[:MAX_STREAMS]]

    def read(self, *, cursor: Any | None, batch_size: int) -> Iterator[Batch]:
        """The rows, streamed from a server-side cursor, with the driver's Python values."""
        return self._rows(self._select(after=cursor), batch_size)

    def read_window(self, *, start: Any, end: Any, batch_size: int) -> Iterator[Batch]:
        return self._rows(self._select(window=(start, end)), batch_size)

    def _rows(self, statement: Select[Any] | TextClause, batch_size: int) -> Iterator[Batch]:
        with _engine(self.scope, self.config.url) as engine, engine.connect() as connection:
            if self.config.table is not None:
                _require_table(connection, self.config.table)
            if connection.dialect.name == "postgresql":
                # Fetched straight from psycopg, a batch per FETCH: twice as fast as SQLAlchemy's
                # streaming, which buffers the rows one by one and wraps each in a Row.
                compiled = statement.compile(connection)
                with _psycopg(connection).cursor(name="control_plane_source") as server_cursor:
                    server_cursor.execute(str(compiled), compiled.params)
                    description = server_cursor.description
                    assert description is not None  # set by the execute, a query's columns
                    keys = [column.name for column in description]
                    while rows := server_cursor.fetchmany(batch_size):
                        yield _records(keys, rows)
                return
            # SQLite steps through the rows anyway; other drivers use a server-side cursor if
            # they have one. Not yield_per: SQLAlchemy ignores it for a text() query.
            streaming = connection.execution_options(stream_results=True, max_row_buffer=batch_size)
            result = streaming.execute(statement)
            keys = list(result.keys())
            for partition in result.partitions(batch_size):
                yield _records(keys, partition)

    def _select(
        self, *, after: Any | None = None, window: tuple[Any, Any] | None = None
    ) -> Select[Any] | TextClause:
        """The rows after the cursor `after`, or within the `window` of cursor values."""
        config = self.config
        if config.query is not None and config.cursor_field is None:
            return text(config.query)
        statement: Select[Any] = select(literal_column("*")).select_from(self._rows_read())
        if config.cursor_field is None:
            return statement
        return _bounded(statement, column(config.cursor_field), after, window).order_by(
            column(config.cursor_field)
        )

    def _rows_read(self) -> Any:
        """What the source reads from: its table, or its query as a subquery."""
        if self.config.table is not None:
            schema, name = _schema_and_name(self.config.table)
            return table(name, schema=schema)  # rendered quoted wherever the name needs it
        query = self.config.query
        assert query is not None  # the config's validator: a table or a query
        # A trailing semicolon is fine alone but not inside the subquery.
        return text(query.strip().rstrip(";")).columns().subquery("query")

    @property
    def copies_out(self) -> bool:
        """A table in PostgreSQL: COPY hands its rows over as text."""
        url = self.scope.database(self.config.url)
        return self.config.table is not None and url.get_backend_name() == "postgresql"

    @contextmanager
    def copy_out(
        self, *, cursor: Any | None, window: tuple[Any, Any] | None, columns: list[str] | None
    ) -> Iterator[CopyOut]:
        """The table's columns with their own types (`_portable`), the largest cursor value
        and the rows, in one REPEATABLE READ snapshot: the rows are exactly those up to it."""
        with (
            _engine(self.scope, self.config.url) as engine,
            engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection,
            connection.begin(),
        ):
            qualified = self.config.table
            assert qualified is not None  # `copies_out`: a table
            _require_table(connection, qualified)
            schema, name = _schema_and_name(qualified)
            types = {
                described["name"]: _portable(described["type"])
                for described in inspect(connection).get_columns(name, schema=schema)
                if columns is None or described["name"] in columns
            }
            driver_connection = _psycopg(connection)
            source = _identifier(table(name, schema=schema))
            bounds = _bounds(self.config.cursor_field, cursor, window)
            largest = None
            if self.config.cursor_field is not None:
                highest = sql.SQL("SELECT max({}) FROM {}{}").format(
                    sql.Identifier(self.config.cursor_field), source, bounds
                )
                row = driver_connection.execute(highest).fetchone()
                assert row is not None  # an aggregate answers one row
                largest = row[0]

            def rows(names: list[str], batch_size: int) -> Iterator[CopyRows]:
                copy_to = sql.SQL("COPY (SELECT {} FROM {}{}) TO STDOUT")
                lines, count = bytearray(), 0
                with driver_connection.cursor() as copy_cursor:
                    with copy_cursor.copy(copy_to.format(_names(names), source, bounds)) as copy:
                        for line in copy:  # a row each
                            lines += line
                            count += 1
                            if count == batch_size:
                                yield CopyRows(count, lines)
                                lines, count = bytearray(), 0
                if count:
                    yield CopyRows(count, lines)

            yield CopyOut(types=types, cursor=largest, rows=rows)


def _bounded(statement: Any, field: Any, after: Any | None, window: tuple[Any, Any] | None) -> Any:
    """`statement` limited to the cursor values after `after`, or within `window` (both ends
    included). Untyped on purpose: SQLAlchemy would cast a str to VARCHAR, while psycopg sends
    it as "unknown" and PostgreSQL reads it as the column's type (an ISO timestamp, say)."""
    if after is not None:
        statement = statement.where(field > bindparam("cursor", after, type_=NullType()))
    if window is not None:
        start, end = window
        statement = statement.where(
            field >= bindparam("start", start, type_=NullType()),
            field <= bindparam("end", end, type_=NullType()),
        )
    return statement


def _bounds(field: str | None, after: Any | None, window: tuple[Any, Any] | None) -> sql.Composable:
    """`_bounded` for a statement psycopg composes: the values as literals, since COPY takes no
    parameters."""
    if field is None or (after is None and window is None):
        return sql.SQL("")
    name = sql.Identifier(field)
    if window is None:
        return sql.SQL(" WHERE {} > {}").format(name, sql.Literal(after))
    start, end = map(sql.Literal, window)
    return sql.SQL(" WHERE {0} >= {1} AND {0} <= {2}").format(name, start, end)


def _portable(reflected: TypeEngine[Any]) -> TypeEngine[Any]:
    """A source column's type for a table in another database: its own, but TEXT for a type
    only the source's database may have (an enum, a domain, an extension's), which takes its
    values' text."""
    item = reflected.item_type if isinstance(reflected, postgresql.ARRAY) else reflected
    if isinstance(item, NullType | Enum | postgresql.DOMAIN):
        return Text()
    return reflected


def _require_table(connection: Connection, qualified: str) -> None:
    """A table or view that is gone is named as such, rather than by the driver's error."""
    schema, name = _schema_and_name(qualified)
    if not inspect(connection).has_table(name, schema=schema):  # views count too
        raise LookupError(
            f"the source database has no table or view {qualified!r}: it was dropped or "
            "renamed; see what it holds now with GET /defined-sources/{id}/streams"
        )


class SqlDestination(Destination):
    name = "sql"
    keeps_loads = True

    class Config(TableConfig):
        url: DatabaseUrl = url_field(
            description=(
                "SQLAlchemy URL of the database to write: postgresql on an allowed host, or "
                "sqlite with a file in the project's folder."
            )
        )
        table: str = Field(description="Table (or `schema.table`) to write; created when missing.")
        schema_change_policy: Literal["evolve", "freeze", "discard"] = Field(
            default="evolve",
            description=(
                "What a field the table has no column for does: evolve adds the column, freeze "
                "fails the run naming it, discard leaves it out."
            ),
        )

    config: Config

    @property
    def replaces(self) -> bool:
        return self.config.mode == "replace"

    def check_steps(self) -> list[CheckStep]:
        steps = database_steps(self.scope, self.config.url, creates=True)
        return [*steps, ("write", self._writable)]

    def stream(self, selected: SelectedStream) -> Destination:
        """Into a table of its own, `destinationName` (by default the stream's name), in the
        configured table's schema unless it names its own; `default` into the configured table.
        Its sync mode decides how: replace, append or merge."""
        table = self.config.table
        if selected.target is not None:
            schema, _ = _schema_and_name(table)
            qualified = "." in selected.target or schema is None
            table = selected.target if qualified else f"{schema}.{selected.target}"
        return self.with_config(
            table=table, mode=WRITE_MODES[selected.sync_mode], primary_key=selected.primary_key
        )

    def _writable(self) -> str:
        """Whether a run may write: in a transaction rolled back, create a table where the
        run creates one (the target, its load state), and ask PostgreSQL for the privileges
        that the mode needs on a target that exists. Nothing stays behind."""
        url = self.scope.database(self.config.url)
        if url.get_backend_name() == "sqlite" and not Path(str(url.database)).exists():
            if not os.access(Path(str(url.database)).parent, os.W_OK):
                raise PermissionError("the SQLite file's folder is not writable for this worker")
            return "may create the SQLite file: the first run does"
        schema, name = _schema_and_name(self.config.table)
        loads, _ = self._loads()
        with _engine(self.scope, self.config.url) as engine, engine.connect() as connection:
            with connection.begin() as transaction:
                inspector = inspect(connection)
                exists = inspector.has_table(name, schema=schema)
                if not exists or not inspector.has_table(loads.name, schema=schema):
                    Table(_PROBE, MetaData(), Column("probe", Integer), schema=schema).create(
                        connection
                    )
                if exists and connection.dialect.name == "postgresql":
                    _check_privileges(connection, schema, name, _PRIVILEGES[self.config.mode])
                transaction.rollback()
        if not exists:
            return f"may create the table {self.config.table}: the first run does"
        return f"may write into the table {self.config.table} ({self.config.mode})"

    def write(self, batches: Iterable[Batch], load: Load | None = None) -> int:
        """Write every batch in one transaction: nothing is changed unless all of it is written.

        A missing table is created from the first batch, each column typed by its first
        non-null value (`_COLUMN_TYPES`: BIGINT, FLOAT, NUMERIC, BOOLEAN, TIMESTAMP WITH TIME
        ZONE, DATE, TIME, UUID, JSON; TEXT for a string). A field the table has no column for
        follows `schemaChangePolicy`; a value its column cannot hold (a narrowing change, such
        as decimals into a BIGINT column) fails the run naming both. PostgreSQL gets the
        batches by COPY (a merge through a temp table), other databases by executemany.

        With `load`, its row in the state table (`_control_plane_loads` in the table's schema,
        created when missing) is upserted after the last batch, in the same transaction, in
        every mode and also when no batch came: the rows and the load commit together or not at
        all, so `last_load` tells exactly what committed.
        """
        with _engine(self.scope, self.config.url) as engine, engine.begin() as connection:
            dialect = connection.dialect.name
            checked = self._checked(
                connection, ((_field_types(batch, dialect), batch) for batch in batches if batch)
            )
            if dialect == "postgresql":
                written = self._copy(connection, checked)
            else:
                written = 0
                for (target, columns), batch, added in checked:
                    _add_columns(connection, target, added)
                    # executemany needs the same keys in every record: a missing one is NULL.
                    rows = [
                        {name: _bindable(record.get(name)) for name in columns} for record in batch
                    ]
                    connection.execute(self._insert(connection, target, columns), rows)
                    written += len(batch)
            self._record(connection, load)
            return written

    @property
    def takes_columns(self) -> bool:
        """PostgreSQL takes Arrow batches by COPY, but for a merge (records only)."""
        return self._on_postgresql and self.config.mode != "merge"

    @property
    def takes_copy(self) -> bool:
        return self._on_postgresql

    @property
    def _on_postgresql(self) -> bool:
        return self.scope.database(self.config.url).get_backend_name() == "postgresql"

    def write_columns(self, batches: Iterable[Any], load: Load | None = None) -> int:
        """Write Arrow record batches of strings (a CSV's) as `write` writes records: into the
        same table, its columns following the fields by the same policy, in one transaction
        with the load. Arrow writes each batch as CSV for COPY, so no record is made in Python:
        at about COPY's own speed."""
        with _engine(self.scope, self.config.url) as engine, engine.begin() as connection:
            checked = self._checked(
                connection,
                (
                    (dict.fromkeys(batch.schema.names, Text()), batch)
                    for batch in batches
                    if batch.num_rows
                ),
            )
            written = 0
            with _psycopg(connection).cursor() as cursor:
                # Batches in a row with the same fields go in one COPY, as in `_copy`.
                for (target, columns), run in groupby(checked, key=itemgetter(0)):
                    first = next(run)
                    _add_columns(connection, target, first[2])
                    copy_in = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)")
                    with cursor.copy(copy_in.format(_identifier(target), _names(columns))) as copy:
                        for _, batch, _ in chain([first], run):
                            copy.write(_csv_of(batch.select(columns)))
                            written += batch.num_rows
            self._record(connection, load)
            return written

    def write_copy(
        self,
        types: dict[str, TypeEngine[Any]],
        rows: Callable[[list[str]], Iterable[CopyRows]],
        load: Load | None = None,
    ) -> int:
        """Write a PostgreSQL source's COPY text as `write` writes records, into a table with
        the source's column types, the lines passed on as they come: no value is parsed here."""
        with _engine(self.scope, self.config.url) as engine, engine.begin() as connection:
            [((target, columns), _, added)] = self._checked(connection, [(types, None)])
            _add_columns(connection, target, added)
            with _psycopg(connection).cursor() as cursor:

                def copy_into(into: sql.Identifier) -> int:
                    return _copy_text(cursor, into, columns, rows(columns))

                if self.config.mode == "merge":
                    written = _merge(cursor, target, columns, self.config.primary_key, copy_into)
                else:
                    written = copy_into(_identifier(target))
            self._record(connection, load)
            return written

    def _record(self, connection: Connection, load: Load | None) -> None:
        if load is not None:
            loads, table_name = self._loads()
            _record_load(connection, loads, table_name, load)

    def last_load(self, stream: str) -> Load | None:
        """The load last committed for `stream` into the configured table."""
        loads, table_name = self._loads()
        with _engine(self.scope, self.config.url) as engine, engine.connect() as connection:
            if not inspect(connection).has_table(loads.name, schema=loads.schema):
                return None
            row = connection.execute(
                select(loads.c.load_id, loads.c.cursor).where(
                    loads.c.stream == stream, loads.c.table_name == table_name
                )
            ).one_or_none()
        if row is None:
            return None
        load_id, cursor = row
        return Load(stream=stream, load_id=load_id, cursor=json.loads(cursor))

    def _loads(self) -> tuple[Table, str]:
        """The state table, in the target's schema, and the target's name that keys its rows
        there: a connector that moves to another table starts that table's state afresh."""
        schema, name = _schema_and_name(self.config.table)
        return _loads_table(schema), name

    def _checked(
        self, connection: Connection, batches: Iterable[tuple[_Types, B]]
    ) -> Iterator[tuple[tuple[Table, list[str]], B, list[Column[Any]]]]:
        """The batches, each given with its fields' types, with the table and the fields that
        go into it, checked against it, and the columns to add to it first.

        Replace deletes the old rows first; a missing table is created from the first batch.
        The columns a batch brings are added to the table's object here, and to the database
        by the caller, which may still be writing the batches before (a COPY).
        """
        target = self._existing_table(connection)
        if target is not None and self.config.mode == "replace":
            connection.execute(target.delete())
        for types, batch in batches:
            if target is None:
                target = self._create_table(connection, types)
            columns, added = self._columns(target, types)
            yield (target, columns), batch, added

    def _copy(self, connection: Connection, checked: Iterator[_Checked]) -> int:
        """COPY the batches in on the psycopg connection under `connection`, in its transaction.

        Batches in a row with the same fields go in one COPY: the server takes the rows as they
        come, but at the end of a COPY the client waits for it to catch up. A merge goes through
        a temp table.
        """
        written = 0
        with _psycopg(connection).cursor() as cursor:
            # psycopg has no type for a dict: into a TEXT column it goes as its JSON text.
            cursor.adapters.register_dumper(dict, JsonDumper)
            # The table is one object throughout: this groups the batches by their fields. A
            # batch that adds columns starts a group, and they are added before its COPY.
            for (target, columns), run in groupby(checked, key=itemgetter(0)):
                group = (item[1:] for item in run)
                first, added = next(group)
                _add_columns(connection, target, added)
                same_fields = chain([first], (batch for batch, _ in group))

                def copy_into(into: sql.Identifier) -> int:
                    return _copy_batches(cursor, into, target, columns, same_fields)  # noqa: B023

                if self.config.mode == "merge":
                    key = self.config.primary_key
                    written += _merge(cursor, target, columns, key, copy_into)
                else:
                    written += copy_into(_identifier(target))
        return written

    def _existing_table(self, connection: Connection) -> Table | None:
        schema, name = _schema_and_name(self.config.table)
        if not inspect(connection).has_table(name, schema=schema):
            return None
        return Table(name, MetaData(), schema=schema, autoload_with=connection)

    def _create_table(self, connection: Connection, types: _Types) -> Table:
        key = self.config.primary_key if self.config.mode == "merge" else []
        if missing := [name for name in key if name not in types]:
            raise ValueError(f"primaryKey {', '.join(missing)} is not a field of the records")
        schema, name = _schema_and_name(self.config.table)
        created = Table(
            name,
            MetaData(),
            *(
                Column(
                    column_name,
                    column_type,
                    primary_key=column_name in key,
                    autoincrement=False,
                )
                for column_name, column_type in types.items()
            ),
            schema=schema,
        )
        created.create(connection)
        return created

    def _columns(self, target: Table, types: _Types) -> tuple[list[str], list[Column[Any]]]:
        """The fields that go into the table, and the columns to add for them; a field without
        a column follows `schemaChangePolicy`."""
        unknown = [name for name in types if name not in target.c]
        policy = self.config.schema_change_policy
        if unknown and policy == "freeze":
            raise ValueError(
                f"table {self.config.table!r} has no column {', '.join(unknown)}, and "
                "schemaChangePolicy is freeze: add the columns to the table, or set "
                "schemaChangePolicy to evolve (add them) or discard (leave them out)"
            )
        added: list[Column[Any]] = []
        if policy == "evolve":
            for name in unknown:
                added.append(Column(name, types[name]))
                target.append_column(added[-1])
        known = [name for name in types if name in target.c]
        self._check_narrowing(target, {name: types[name] for name in known if name not in unknown})
        return known, added

    def _check_narrowing(self, target: Table, types: _Types) -> None:
        """Fail when a column cannot hold what the source now sends: a narrowing change."""
        for name, sent_type in types.items():
            try:
                held, sent = target.c[name].type.python_type, sent_type.python_type
            except NotImplementedError:
                continue
            if sent is not str and sent not in _HOLDS.get(held, (sent,)):
                raise ValueError(
                    f"column {name!r} of table {self.config.table!r} is "
                    f"{target.c[name].type} and cannot hold the {sent.__name__} values the "
                    "source now sends (a narrowing change): widen the column, or write to "
                    "another table"
                )

    def _insert(self, connection: Connection, target: Table, columns: list[str]) -> Executable:
        if self.config.mode != "merge":
            return target.insert()
        dialect = connection.dialect.name
        if dialect not in _UPSERTS:
            raise ValueError(f"mode merge needs PostgreSQL or SQLite, not {dialect}")
        key = self.config.primary_key
        statement = _UPSERTS[dialect](target)
        updates = {name: statement.excluded[name] for name in columns if name not in key}
        if not updates:
            return statement.on_conflict_do_nothing(index_elements=key)
        return statement.on_conflict_do_update(index_elements=key, set_=updates)


def _check_privileges(
    connection: Connection, schema: str | None, name: str, privileges: list[str]
) -> None:
    table_name = connection.dialect.identifier_preparer.format_table(
        Table(name, MetaData(), schema=schema)
    )
    lacking = [
        privilege
        for privilege in privileges
        if not connection.execute(
            text("SELECT has_table_privilege(:table, :privilege)"),
            {"table": table_name, "privilege": privilege},
        ).scalar()
    ]
    if lacking:
        raise PermissionError(
            f"the user may not {' or '.join(lacking)} on {table_name}: grant it, or write as "
            "a user who may"
        )


def _loads_table(schema: str | None) -> Table:
    """The state table: per stream and target table, the last load committed into it."""
    return Table(
        _LOADS,
        MetaData(),
        Column("stream", Text, primary_key=True),
        Column("table_name", Text, primary_key=True),
        Column("load_id", Text, nullable=False),
        # JSON as text: SQLite gives a column declared JSON numeric affinity, which would turn
        # the JSON text `5` into the integer 5.
        Column("cursor", Text, nullable=False),
        Column("committed_at", DateTime(timezone=True), nullable=False),
        schema=schema,
    )


def _record_load(connection: Connection, loads: Table, table_name: str, load: Load) -> None:
    """Upsert the load's row into the state table, created first when it is missing."""
    if not inspect(connection).has_table(loads.name, schema=loads.schema):
        _create_loads_table(connection, loads)
    values = {
        "load_id": load.load_id,
        "cursor": json.dumps(load.cursor),
        "committed_at": datetime.now(UTC),
    }
    statement = _UPSERTS[connection.dialect.name](loads).values(
        stream=load.stream, table_name=table_name, **values
    )
    connection.execute(
        statement.on_conflict_do_update(index_elements=["stream", "table_name"], set_=values)
    )


def _create_loads_table(connection: Connection, loads: Table) -> None:
    """Create the state table, in a savepoint: two first loads into one schema of PostgreSQL
    race to create it, and the loser's CREATE fails once the winner commits (a duplicate in
    pg_type, or the table exists). Back at the savepoint, the loser finds the winner's table."""
    try:
        with connection.begin_nested():
            loads.create(connection)
    except DBAPIError:
        if not inspect(connection).has_table(loads.name, schema=loads.schema):
            raise


def _identifier(target: TableClause) -> sql.Identifier:
    """The table's name for psycopg, quoted, with its schema when it has one."""
    if target.schema is None:
        return sql.Identifier(target.name)
    return sql.Identifier(target.schema, target.name)


def _names(columns: list[str]) -> sql.Composed:
    return sql.SQL(", ").join(map(sql.Identifier, columns))


def _copy_batches(
    cursor: Cursor[Any],
    into: sql.Identifier,
    target: Table,
    columns: list[str],
    batches: Iterable[Batch],
) -> int:
    """COPY the batches into `into`."""
    json_columns = [i for i, name in enumerate(columns) if isinstance(target.c[name].type, JSON)]
    written = 0
    with cursor.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(into, _names(columns))) as copy:
        for batch in batches:
            for row in _rows(batch, columns, json_columns):
                copy.write_row(row)
            written += len(batch)
    return written


def _rows(batch: Batch, columns: list[str], json_columns: list[int]) -> Iterable[Sequence[Any]]:
    """The records' values in column order; a missing field is NULL, JSON columns get JSON."""
    if not json_columns and len(columns) > 1 and set(map(len, batch)) == {len(columns)}:
        # Every record has every field (its keys are among the batch's): itemgetter picks them
        # in C, 0.4 s less per million rows than building each row as a list.
        return map(itemgetter(*columns), batch)
    return (_row(record, columns, json_columns) for record in batch)


def _row(record: Record, columns: list[str], json_columns: list[int]) -> list[Any]:
    row = list(map(record.get, columns))  # faster than the list comprehension
    for index in json_columns:
        # As executemany through SQLAlchemy's JSON type: a str or None is JSON too.
        row[index] = Jsonb(row[index])
    return row


def _merge(
    cursor: Cursor[Any],
    target: Table,
    columns: list[str],
    key: list[str],
    copy_into: Callable[[sql.Identifier], int],
) -> int:
    """COPY the rows into a temp table (`copy_into` it), then insert them into the target with
    ON CONFLICT.

    Of records with the same key the last one wins, as if they were inserted one by one (and
    ON CONFLICT cannot update a row twice in one statement).
    """
    table = _identifier(target)
    # Only the batches' columns, without constraints or defaults: those are the target's.
    cursor.execute(
        sql.SQL("CREATE TEMP TABLE {} AS SELECT {} FROM {} WITH NO DATA").format(
            _STAGING, _names(columns), table
        )
    )
    cursor.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} bigserial").format(_STAGING, _ORDINAL))
    written = copy_into(_STAGING)
    updates = [name for name in columns if name not in key]
    if updates:
        action: sql.Composable = sql.SQL("DO UPDATE SET {}").format(
            sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(name)) for name in updates
            )
        )
    else:
        action = sql.SQL("DO NOTHING")
    cursor.execute(
        sql.SQL(
            "INSERT INTO {table} ({columns}) SELECT DISTINCT ON ({key}) {columns} FROM {staging}"
            " ORDER BY {key}, {ordinal} DESC ON CONFLICT ({key}) {action}"
        ).format(
            table=table,
            columns=_names(columns),
            key=_names(key),
            staging=_STAGING,
            ordinal=_ORDINAL,
            action=action,
        )
    )
    cursor.execute(sql.SQL("DROP TABLE {}").format(_STAGING))
    return written


def _copy_text(
    cursor: Cursor[Any], into: sql.Identifier, columns: list[str], rows: Iterable[CopyRows]
) -> int:
    """COPY lines of COPY text into `into`."""
    written = 0
    with cursor.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(into, _names(columns))) as copy:
        for row_count, data in rows:
            copy.write(data)
            written += row_count
    return written


def _csv_of(batch: Any) -> memoryview:
    """An Arrow record batch as CSV without a header: strings quoted, nulls empty, which COPY
    reads as NULL."""
    import pyarrow
    import pyarrow.csv

    out = pyarrow.BufferOutputStream()
    pyarrow.csv.write_csv(batch, out, pyarrow.csv.WriteOptions(include_header=False))
    return memoryview(out.getvalue())


def _field_types(batch: Batch, dialect: str) -> _Types:
    """The batch's fields, each with the column type its first non-null value asks for."""
    return {name: _column_type(_first_value(batch, name), dialect) for name in _fields(batch)}


def _fields(batch: Batch) -> list[str]:
    """Every key of the batch's records, in the order they first appear."""
    return list(dict.fromkeys(chain.from_iterable(batch)))


def _first_value(batch: Batch, name: str) -> Any:
    """The first non-null value of the field `name` in the batch; None when it has none."""
    return next((record[name] for record in batch if record.get(name) is not None), None)


def _column_type(value: Any, dialect: str) -> TypeEngine[Any]:
    """The column type for a value: its type's (`_COLUMN_TYPES`), TEXT otherwise; a datetime
    with a zone gets a TIMESTAMP WITH TIME ZONE. SQLite has no UUIDs: TEXT, as `_bindable`
    writes them."""
    if isinstance(value, UUID) and dialect != "postgresql":
        return Text()
    for python_type, sql_type in _COLUMN_TYPES:
        if isinstance(value, python_type):
            if sql_type is DateTime and isinstance(value, datetime):
                return DateTime(timezone=value.tzinfo is not None)
            return sql_type()
    return Text()


def _bindable(value: Any) -> Any:
    """A value as sqlite3 binds it: a UUID as its text, anything else as it is."""
    return str(value) if isinstance(value, UUID) else value


def _add_columns(connection: Connection, target: Table, added: list[Column[Any]]) -> None:
    """ALTER TABLE ... ADD COLUMN for each column the records brought, in the write's
    transaction: a run that fails adds none."""
    preparer = connection.dialect.identifier_preparer
    for new in added:
        connection.exec_driver_sql(
            f"ALTER TABLE {preparer.format_table(target)} ADD COLUMN "
            f"{preparer.format_column(new)} {new.type.compile(dialect=connection.dialect)}"
        )
