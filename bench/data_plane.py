"""Throughput and memory of the data plane into PostgreSQL, against COPY as the physical limit.

    .venv/bin/python -m bench.data_plane [--rows 1000000] [--batch-size 10000]

Writes a CSV of `rows` rows (id, name, amount, created_at) to a temp dir and creates a fresh
PostgreSQL database on 127.0.0.1:5432 (dropped at the end, also on failure). Then times:

- COPY of the CSV into a table, and of that table into another through the client (COPY TO
  STDOUT piped into COPY FROM STDIN in chunks of 1 MiB), plus INSERT ... SELECT, which never
  leaves the server;
- csv -> sql and sql -> sql through `control_plane.sync.move`, with the source and destination
  built as a sync run builds them (in a project's scope: the temp dir as its folder, the CSV
  named relative to it, and 127.0.0.1:5432 allowed), at `batch-size` and at ten times it;
- dlt side by side: csv -> the `dlt` destination (postgres) through `move`, records as dicts,
  and dlt on its own at its fastest here, the CSV read by pyarrow into one Arrow table and
  loaded with dlt's csv loader file format (the whole file in memory).

Each path runs in a fresh process, so its peak RSS (ru_maxrss) is its own; growth is that peak
less the RSS after the imports. Growth that follows the batch size and not the rows is memory
bounded by the batch. Prints a table and writes bench/results/data_plane.json.
"""

import argparse
import csv
import json
import os
import platform
import random
import resource
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from bench._seed import postgres_database
from control_plane.connectors import DEFAULT_STREAM, Route, get_type
from control_plane.policy import Allowed, Scope
from control_plane.sync import SyncPlan, move

RESULTS = Path(__file__).parent / "results"
# The csv source yields every field as a string, so the sql destination creates TEXT columns;
# COPY writes into a table of that same shape.
CSV_COLUMNS = "id text, name text, amount text, created_at text"
CHUNK = 1 << 20


def _write_csv(path: Path, rows: int) -> None:
    randomness = random.Random(0)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "name", "amount", "created_at"])
        for i in range(1, rows + 1):
            writer.writerow(
                [
                    i,
                    f"customer {i}",
                    f"{randomness.uniform(0, 10_000):.2f}",
                    (start + timedelta(seconds=i)).isoformat(),
                ]
            )


# The paths: each returns the rows it wrote and runs in a process of its own.


def _copy_csv(dsn: str, csv_path: str, target: str) -> int:
    with psycopg.connect(dsn) as db, db.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {target} ({CSV_COLUMNS})")
        with (
            open(csv_path, "rb") as file,
            cursor.copy(f"COPY {target} FROM STDIN WITH (FORMAT csv, HEADER true)") as copy,
        ):
            while chunk := file.read(CHUNK):
                copy.write(chunk)
        return cursor.rowcount


def _copy_table(dsn: str, source: str, target: str) -> int:
    with (
        psycopg.connect(dsn) as reader,
        psycopg.connect(dsn) as writer,
        writer.cursor() as cursor,
    ):
        cursor.execute(f"CREATE TABLE {target} (LIKE {source})")
        with (
            reader.cursor().copy(f"COPY {source} TO STDOUT") as out,
            cursor.copy(f"COPY {target} FROM STDIN") as into,
        ):
            # The rows come a line each; written in chunks of CHUNK bytes, they go through the
            # client at about twice the speed of a write per line.
            chunk = bytearray()
            for line in out:
                chunk += line
                if len(chunk) >= CHUNK:
                    into.write(chunk)
                    chunk = bytearray()
            into.write(chunk)
        return cursor.rowcount


def _insert_select(dsn: str, source: str, target: str) -> int:
    with psycopg.connect(dsn) as db, db.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {target} (LIKE {source})")
        cursor.execute(f"INSERT INTO {target} SELECT * FROM {source}")
        return cursor.rowcount


def _dlt_arrow(dsn: str, csv_path: str, table: str) -> int:
    import dlt
    import pyarrow.csv

    os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    rows = pyarrow.csv.read_csv(csv_path)
    # dlt asks for a password; the machine's PostgreSQL trusts local connections.
    credentials = make_url(dsn).set(password="").render_as_string(hide_password=False)
    with tempfile.TemporaryDirectory() as working:
        pipeline = dlt.pipeline(
            pipeline_name="bench",
            destination=dlt.destinations.postgres(credentials),
            dataset_name="bench_arrow",
            pipelines_dir=working,
        )
        pipeline.run(rows, table_name=table, loader_file_format="csv")
    return rows.num_rows


def _sync(
    folder: str,
    source_type: str,
    source: dict,
    destination_type: str,
    destination: dict,
    batch_size: int,
) -> int:
    """`move` as a sync run calls it, with a plan built by hand instead of from the database,
    its types in the scope of a project whose folder is `folder`."""
    # The target is a fresh database of the bench's own on the machine's PostgreSQL.
    scope = Scope(folders=(Path(folder).resolve(),), allowed=(Allowed.parse("127.0.0.1:5432"),))
    plan = SyncPlan(
        connector_id=0,
        connector_name="bench",
        source_label=f"bench ({source_type})",
        destination_label=f"bench ({destination_type})",
        routes=[
            Route(
                DEFAULT_STREAM,
                get_type("source", source_type).configured(source, scope),  # type: ignore[arg-type]
                get_type("destination", destination_type).configured(destination, scope),  # type: ignore[arg-type]
            )
        ],
        cursors={},
        resets=0,
        retries=0,
        retry_delay_seconds=0,
        timeout_seconds=0,
    )
    moved = move(plan, load_id=uuid.uuid4(), batch_size=batch_size)
    assert moved.failure is None and moved.records_read == moved.records_written, moved
    return moved.records_written


def _mb(kilobytes: int) -> float:
    return round(kilobytes / 1024, 1)  # ru_maxrss is in KiB on Linux


def _timed(path: Callable[..., int], *args: Any) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    rows = path(*args)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds),
        "rss_before_mb": _mb(before),
        "peak_rss_mb": _mb(peak),
        "rss_growth_mb": _mb(peak - before),
    }


def _in_own_process(path: Callable[..., int], *args: Any) -> dict[str, Any]:
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_timed, path, *args).result()


def _measure(dsn: str, url: str, csv_path: Path, rows: int, batch: int) -> dict[str, dict]:
    def sync(source_type: str, source: dict, table: str, batch_size: int) -> tuple:
        destination = {"url": url, "table": table, "mode": "append"}
        return _sync, str(csv_path.parent), source_type, source, "sql", destination, batch_size

    dlt_destination = {"destination": "postgres", "url": url, "dataset": "bench_dlt", "table": "t"}

    csv_file = {"path": csv_path.name}
    sql_table = {"url": url, "table": "sync_csv"}
    large = 10 * batch
    file_copy, table_copy = "COPY csv -> table", "COPY table -> table"
    # (path, the COPY that moves the same data the same way, what runs it)
    paths = [
        (file_copy, file_copy, (_copy_csv, dsn, str(csv_path), "copy_csv")),
        (f"csv -> sql, batch {batch:,}", file_copy, sync("csv", csv_file, "sync_csv", batch)),
        (f"csv -> sql, batch {large:,}", file_copy, sync("csv", csv_file, "sync_csv_l", large)),
        (table_copy, table_copy, (_copy_table, dsn, "sync_csv", "copy_table")),
        ("INSERT ... SELECT", table_copy, (_insert_select, dsn, "sync_csv", "insert_select")),
        (f"sql -> sql, batch {batch:,}", table_copy, sync("sql", sql_table, "sync_sql", batch)),
        (f"sql -> sql, batch {large:,}", table_copy, sync("sql", sql_table, "sync_sql_l", large)),
        (
            f"csv -> dlt, batch {batch:,}",
            file_copy,
            (_sync, str(csv_path.parent), "csv", csv_file, "dlt", dlt_destination, batch),
        ),
        ("dlt, Arrow + csv loader", file_copy, (_dlt_arrow, dsn, str(csv_path), "dlt_arrow")),
    ]
    results = {}
    for name, baseline, (path, *arguments) in paths:
        results[name] = result = _in_own_process(path, *arguments)
        assert result["rows"] == rows, (name, result)
        copy_speed = results[baseline]["rows_per_second"]
        result["percent_of_copy"] = round(100 * result["rows_per_second"] / copy_speed)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        postgres_database(f"bench_data_plane_{uuid.uuid4().hex[:12]}", "postgresql") as dsn,
    ):
        csv_path = Path(tmp) / "rows.csv"
        _write_csv(csv_path, args.rows)
        csv_bytes = csv_path.stat().st_size
        url = dsn.replace("postgresql://", "postgresql+psycopg://")
        with psycopg.connect(dsn) as db:
            server_version = db.info.server_version
        results = _measure(dsn, url, csv_path, args.rows, args.batch_size)
    print(f"{args.rows:,} rows, CSV of {csv_bytes / 1e6:.1f} MB")
    header = f"{'path':<28}{'rows':>11}{'seconds':>9}{'rows/s':>10}{'% of COPY':>11}"
    print(f"{header}{'peak RSS MB':>13}{'growth MB':>11}")
    for name, r in results.items():
        print(
            f"{name:<28}{r['rows']:>11,}{r['seconds']:>9.2f}{r['rows_per_second']:>10,}"
            f"{r['percent_of_copy']:>10}%{r['peak_rss_mb']:>13}{r['rss_growth_mb']:>11}"
        )
    RESULTS.mkdir(exist_ok=True)
    result = {
        "benchmark": "data_plane",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "postgresql": server_version,
        },
        "parameters": {"rows": args.rows, "batch_size": args.batch_size, "csv_bytes": csv_bytes},
        "target": "csv -> sql >= 60%, sql -> sql >= 75% of COPY; memory bounded by the batch",
        "paths": results,
    }
    (RESULTS / "data_plane.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
