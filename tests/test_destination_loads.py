"""Destinations that keep load state commit a load's records and its state as one unit, so a
rerun after a crash between their commit and the control plane's can tell what committed."""

import hashlib
import json
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, ExceptionContext, MetaData, Table, create_engine, event, select
from sqlalchemy.engine import make_url

from control_plane.connectors import Batch, Destination, Load
from control_plane.connectors.builtin import JsonlDestination, SqlDestination
from control_plane.policy import Allowed, Scope
from tests.conftest import fresh_postgres

Mode = Literal["append", "replace", "merge"]
MODES: list[Mode] = ["append", "replace", "merge"]
STREAM = "connector:1"

# Run with `sys.executable -c`: builds the destination that argv names and writes one big batch
# with a load, then kills itself with SIGKILL while the destination waits for the next batch.
_KILLED_WRITE = """
import json, os, signal, sys
from pathlib import Path

from control_plane.connectors import Load, get_type
from control_plane.policy import Allowed, Scope

folder, type_name, config, load = json.loads(sys.argv[1])
scope = Scope(folders=(Path(folder),), allowed=(Allowed.parse("127.0.0.1:5432"),))
destination = get_type("destination", type_name).configured(config, scope)

def batches():
    yield [{"id": i} for i in range(1000, 21000)]
    os.kill(os.getpid(), signal.SIGKILL)

destination.write(batches(), Load(**load))
"""


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def scope(tmp_path: Path) -> Scope:
    """A project's scope: its folder is `tmp_path`, and it reaches the machine's PostgreSQL."""
    return Scope(folders=(tmp_path,), allowed=(Allowed.parse("127.0.0.1:5432"),))


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A database of this module's own on the local PostgreSQL, dropped at the end."""
    with fresh_postgres(f"destination_loads_{uuid.uuid4().hex[:12]}", "postgresql") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data.db'}"
    return request.getfixturevalue("postgres_url")


def _ids(start: int, stop: int) -> Batch:
    return [{"id": i} for i in range(start, stop)]


def _moving_cursor(load: Load, batches: list[Batch]) -> Iterator[Batch]:
    """The batches, with the load's cursor moved to the batch's last id after each, as a run
    moves it while the destination reads."""
    for batch in batches:
        yield batch
        load.cursor = {"id": batch[-1]["id"]}


def _failing(batch: Batch) -> Iterator[Batch]:
    """A source that fails after its first batch."""
    yield batch
    raise RuntimeError("the source broke")


def _killed_write(tmp_path: Path, destination: Destination, load: Load) -> None:
    """Write with `destination`'s type and config in a process that SIGKILLs itself mid-write."""
    argument = [str(tmp_path), destination.name, destination.config.model_dump(), vars(load)]
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITE, json.dumps(argument)],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()


class TestSqlDestinationLoads:
    def _destination(self, scope: Scope, url: str, table: str, mode: Mode) -> SqlDestination:
        config: dict[str, Any] = {"url": url, "table": table, "mode": mode}
        if mode == "merge":
            config["primaryKey"] = ["id"]
        return SqlDestination.configured(config, scope)

    @pytest.mark.parametrize("mode", MODES)
    def test_a_load_commits_with_the_cursor_it_had_after_the_last_batch(
        self, database_url: str, scope: Scope, mode: Mode
    ) -> None:
        table = f"orders_{_suffix()}"
        destination = self._destination(scope, database_url, table, mode)
        first = Load(STREAM, "load-1")

        assert destination.write(_moving_cursor(first, [_ids(0, 2), _ids(2, 3)]), first) == 3

        assert destination.last_load(STREAM) == Load(STREAM, "load-1", {"id": 2})
        second = Load(STREAM, "load-2", first.cursor)
        destination.write(_moving_cursor(second, [_ids(3, 5)]), second)
        assert destination.last_load(STREAM) == Load(STREAM, "load-2", {"id": 4})
        kept = {"append": range(5), "replace": range(3, 5), "merge": range(5)}[mode]
        assert _ids_in(database_url, table) == list(kept)
        assert destination.last_load("connector:2") is None
        assert destination.replaces == (mode == "replace")

    @pytest.mark.parametrize("mode", MODES)
    def test_a_failed_write_commits_neither_rows_nor_load(
        self, database_url: str, scope: Scope, mode: Mode
    ) -> None:
        table = f"orders_{_suffix()}"
        destination = self._destination(scope, database_url, table, mode)
        destination.write([_ids(0, 2)], Load(STREAM, "load-1", {"id": 1}))

        with pytest.raises(RuntimeError, match="the source broke"):
            destination.write(_failing(_ids(0, 5)), Load(STREAM, "load-2", {"id": 4}))

        assert _ids_in(database_url, table) == [0, 1]
        assert destination.last_load(STREAM) == Load(STREAM, "load-1", {"id": 1})

    @pytest.mark.parametrize("mode", MODES)
    def test_a_load_without_batches_commits_too(
        self, database_url: str, scope: Scope, mode: Mode
    ) -> None:
        table = f"orders_{_suffix()}"
        destination = self._destination(scope, database_url, table, mode)
        destination.write([_ids(0, 2)], Load(STREAM, "load-1", {"id": 1}))

        assert destination.write([], Load(STREAM, "load-2", {"id": 1})) == 0

        assert destination.last_load(STREAM) == Load(STREAM, "load-2", {"id": 1})
        # A full refresh of a source that is empty now leaves an empty table.
        assert _ids_in(database_url, table) == ([] if mode == "replace" else [0, 1])

    def test_each_table_keeps_its_own_state_and_no_load_records_none(
        self, database_url: str, scope: Scope
    ) -> None:
        orders = self._destination(scope, database_url, f"orders_{_suffix()}", "append")
        refunds = self._destination(scope, database_url, f"refunds_{_suffix()}", "append")

        refunds.write([_ids(0, 1)])
        assert refunds.last_load(STREAM) is None
        orders.write([_ids(0, 1)], Load(STREAM, "load-1", 7))

        assert orders.last_load(STREAM) == Load(STREAM, "load-1", 7)
        assert refunds.last_load(STREAM) is None

    def test_a_writer_killed_mid_copy_commits_nothing(
        self, postgres_url: str, scope: Scope, tmp_path: Path
    ) -> None:
        table = f"orders_{_suffix()}"
        destination = self._destination(scope, postgres_url, table, "append")
        destination.write([_ids(0, 2)], Load(STREAM, "load-1", {"id": 1}))

        _killed_write(tmp_path, destination, Load(STREAM, "load-2", {"id": 1}))

        assert _ids_in(postgres_url, table) == [0, 1]
        assert destination.last_load(STREAM) == Load(STREAM, "load-1", {"id": 1})
        destination.write([_ids(2, 4)], Load(STREAM, "load-3", {"id": 3}))
        assert _ids_in(postgres_url, table) == [0, 1, 2, 3]
        assert destination.last_load(STREAM) == Load(STREAM, "load-3", {"id": 3})

    def test_first_loads_into_a_new_schema_race_to_create_the_state_table(
        self, postgres_url: str, scope: Scope
    ) -> None:
        """Both writers miss the state table and create it: the second's CREATE fails once the
        first commits, and its write goes on. Repeated until the race is seen."""
        raised: list[str] = []

        def record(context: ExceptionContext) -> None:
            raised.append(type(context.original_exception).__name__)

        event.listen(Engine, "handle_error", record)
        try:
            for _ in range(5):
                schema = f"sales_{_suffix()}"
                with psycopg.connect(postgres_url, autocommit=True) as db:
                    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                destinations = [
                    self._destination(scope, postgres_url, f"{schema}.{name}", "append")
                    for name in ("orders", "refunds")
                ]
                _write_at_once(destinations)
                for number, destination in enumerate(destinations):
                    loaded = Load(f"connector:{number}", "load-1", number)
                    assert destination.last_load(f"connector:{number}") == loaded
                if "UniqueViolation" in raised:
                    break
        finally:
            event.remove(Engine, "handle_error", record)
        assert "UniqueViolation" in raised


def _write_at_once(destinations: list[SqlDestination]) -> None:
    """Write with every destination in a thread of its own, all finishing their batches at once."""
    finished = threading.Barrier(len(destinations))
    failures: list[BaseException] = []

    def write(number: int, destination: SqlDestination) -> None:
        def batches() -> Iterator[Batch]:
            yield _ids(0, 1)
            finished.wait(timeout=30)

        try:
            destination.write(batches(), Load(f"connector:{number}", "load-1", number))
        except BaseException as error:  # shown by the test's thread
            failures.append(error)

    threads = [threading.Thread(target=write, args=pair) for pair in enumerate(destinations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def _ids_in(url: str, qualified: str) -> list[int]:
    """The ids in the table, read behind the destination's back."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(parsed)
    schema, _, name = qualified.rpartition(".")
    try:
        with engine.connect() as connection:
            table = Table(name, MetaData(), schema=schema or None, autoload_with=connection)
            return list(connection.scalars(select(table.c.id).order_by(table.c.id)))
    finally:
        engine.dispose()


class TestJsonlDestinationLoads:
    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "out" / f"orders-{_suffix()}.jsonl"

    @pytest.fixture
    def destination(self, path: Path, scope: Scope, tmp_path: Path) -> JsonlDestination:
        config = {"path": str(path.relative_to(tmp_path))}
        return JsonlDestination.configured(config, scope)

    def test_a_load_commits_with_the_cursor_it_had_after_the_last_batch(
        self, destination: JsonlDestination, path: Path
    ) -> None:
        first = Load(STREAM, "load-1")

        assert destination.write(_moving_cursor(first, [_ids(0, 2), _ids(2, 3)]), first) == 3
        destination.write([_ids(3, 4)], Load("connector:2", "load-9", None))

        assert destination.last_load(STREAM) == Load(STREAM, "load-1", {"id": 2})
        assert destination.last_load("connector:2") == Load("connector:2", "load-9", None)
        assert destination.last_load("connector:3") is None
        assert _lines(path) == _ids(0, 4)
        manifest = _manifest(path)
        assert manifest["size"] == path.stat().st_size
        assert manifest["tail_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert manifest["loads"][STREAM]["load_id"] == "load-1"
        assert not destination.replaces

    def test_a_failed_write_takes_back_what_it_appended(
        self, destination: JsonlDestination, path: Path
    ) -> None:
        destination.write([_ids(0, 2)], Load(STREAM, "load-1", {"id": 1}))

        with pytest.raises(RuntimeError, match="the source broke"):
            destination.write(_failing(_ids(2, 5)), Load(STREAM, "load-2", {"id": 4}))

        assert _lines(path) == _ids(0, 2)
        assert destination.last_load(STREAM) == Load(STREAM, "load-1", {"id": 1})
        destination.write([_ids(5, 6)], Load(STREAM, "load-3", {"id": 5}))
        assert _lines(path) == _ids(0, 2) + _ids(5, 6)
        assert destination.last_load(STREAM) == Load(STREAM, "load-3", {"id": 5})

    def test_a_failed_first_write_leaves_an_empty_file(
        self, destination: JsonlDestination, path: Path
    ) -> None:
        with pytest.raises(RuntimeError, match="the source broke"):
            destination.write(_failing(_ids(0, 2)), Load(STREAM, "load-1", {"id": 1}))

        assert path.read_text() == ""
        assert destination.last_load(STREAM) is None
        destination.write([_ids(2, 3)], Load(STREAM, "load-2", {"id": 2}))
        assert _lines(path) == _ids(2, 3)

    def test_a_crashed_write_s_tail_is_cut_off_by_the_next(
        self, destination: JsonlDestination, path: Path
    ) -> None:
        destination.write([_ids(0, 2)], Load(STREAM, "load-1", {"id": 1}))
        with path.open("a") as file:
            file.write('{"id": 2}\n{"id": 3}\n{"id": 4, "na')  # as a killed write leaves it

        destination.write([_ids(5, 6)], Load(STREAM, "load-2", {"id": 5}))

        assert _lines(path) == _ids(0, 2) + _ids(5, 6)
        assert _manifest(path)["size"] == path.stat().st_size

    def test_a_killed_writer_is_cut_off_by_the_next(
        self, destination: JsonlDestination, path: Path, tmp_path: Path
    ) -> None:
        destination.write([_ids(0, 2)], Load(STREAM, "load-1", {"id": 1}))
        committed = path.stat().st_size

        _killed_write(tmp_path, destination, Load(STREAM, "load-2", {"id": 20999}))

        assert path.stat().st_size > committed  # what the killed write got on disk
        assert destination.last_load(STREAM) == Load(STREAM, "load-1", {"id": 1})
        destination.write([_ids(2, 4)], Load(STREAM, "load-3", {"id": 3}))
        assert _lines(path) == _ids(0, 4)
        assert _manifest(path)["size"] == path.stat().st_size
        assert destination.last_load(STREAM) == Load(STREAM, "load-3", {"id": 3})

    def test_a_load_without_records_commits_and_creates_the_file(
        self, destination: JsonlDestination, path: Path
    ) -> None:
        assert destination.write([], Load(STREAM, "load-1", None)) == 0

        assert path.read_text() == ""
        assert destination.last_load(STREAM) == Load(STREAM, "load-1", None)

    def test_writes_without_a_load_keep_the_committed_size(
        self, destination: JsonlDestination, path: Path
    ) -> None:
        assert destination.write([]) == 0
        assert not path.parent.exists()  # nothing to write, nothing created

        destination.write([_ids(0, 2)])
        with path.open("a") as file:
            file.write('{"id": 2}\n')
        destination.write([_ids(3, 4)], Load(STREAM, "load-1", {"id": 3}))

        assert _lines(path) == [{"id": 0}, {"id": 1}, {"id": 3}]

    @pytest.mark.parametrize("change", ["made anew", "cut shorter"])
    def test_a_file_changed_from_outside_counts_as_committed_as_it_is(
        self, destination: JsonlDestination, path: Path, change: str
    ) -> None:
        destination.write([_ids(0, 2)], Load(STREAM, "load-1", {"id": 1}))
        path.unlink()
        # Made anew after a delete, it is longer than the committed size, and on most file
        # systems has the old inode number.
        kept = _ids(5, 9) if change == "made anew" else []
        path.write_text("".join(json.dumps(record) + "\n" for record in kept))

        destination.write([_ids(9, 10)], Load(STREAM, "load-2", {"id": 9}))

        assert _lines(path) == kept + _ids(9, 10)
        assert destination.last_load(STREAM) == Load(STREAM, "load-2", {"id": 9})

    def test_a_file_from_before_manifests_counts_as_committed(
        self, destination: JsonlDestination, path: Path
    ) -> None:
        path.parent.mkdir(parents=True)
        path.write_text('{"id": 0}\n')
        assert destination.last_load(STREAM) is None

        destination.write([_ids(1, 2)], Load(STREAM, "load-1", {"id": 1}))

        assert _lines(path) == _ids(0, 2)
        assert destination.last_load(STREAM) == Load(STREAM, "load-1", {"id": 1})


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _manifest(path: Path) -> dict[str, Any]:
    return json.loads(path.with_name(f".{path.name}.loads.json").read_text())
