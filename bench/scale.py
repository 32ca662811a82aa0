"""Scale: 10,000 connectors on one Prefect server, both databases on PostgreSQL.

    .venv/bin/python -m bench.scale [--connectors 10000] [--create-all]

Seeds the connector rows straight into the control plane's database. A fortieth of them get
their deployments from a reconcile pass (full drift); the others' are cloned from one of those
in Prefect's database, as Prefect's server spends about 50 ms of CPU on each deployment it
creates (`--create-all`: reconcile creates them all, about 10 minutes at 10,000). Prefect then
schedules their runs under `make up`'s scheduler settings (minutes of its CPU at 10,000), while
`GET /connectors?limit=100` is timed at random offsets and filters and the API's memory read.
Then a full reconcile pass with 10% drift (a twentieth of the deployments deleted in Prefect, a
twentieth of the rows rescheduled in the database) and one with none a minute later, the lists
again with Prefect quiet, and then the passes over what changed: one with nothing changed, one
with 10% drift made again. Counts each pass's Prefect API calls and Prefect's server CPU, and the
scheduled runs per connector. Prints a table and writes bench/results/scale.json.

    .venv/bin/python -m bench.scale --curve 1000,10000,30000

The cost curve: one stack grown to each size in turn (deployments cloned), with Prefect's
scheduler off, which would take about 20 minutes to schedule 30,000 deployments; so Prefect's
CPU at rest is that of its other services. At each size: the lists, Prefect's CPU over the
minute a pass over changes must wait before it skips the rows just seeded, passes with no
drift (full, changes) and with 10% drift (changes, full), and the API's memory. Writes
bench/results/scale_curve.json.
"""

import argparse
import asyncio
import json
import logging
import os
import re
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import copy_context
from dataclasses import dataclass
from math import ceil
from pathlib import Path
from random import Random
from typing import Any, NamedTuple
from uuid import UUID

import httpx
import psycopg
from prefect.client.base import PrefectHttpxAsyncClient
from prefect.client.orchestration import get_client
from prefect.logging.handlers import APILogWorker, PrefectConsoleHandler
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from bench._seed import Catalog, make_catalog
from bench._stack import (
    LocalStack,
    cpu_seconds,
    local_stack,
    percentile,
    process_tree,
    write_results,
)
from control_plane import deployments
from control_plane.cli import prefect_server_env
from control_plane.db import get_engine
from control_plane.processes import wait_for
from control_plane.reconcile import changed_deployments
from control_plane.settings import Settings, get_settings
from flows.reconcile import EVENT_LAG, reconcile_connectors
from models import Connector, ConnectorContext
from models.base import utcnow

PROJECTS = 10
# Row i is inactive when i % 20 == 0. The rows cycle through 21 schedules (so inactive ones
# have all kinds): every minute and every five minutes (where the scheduler's bound matters),
# hourly, every four hours, and manual only.
SCHEDULES = ["* * * * *", "*/5 * * * *", "*/5 * * * *", *["0 * * * *"] * 12]
SCHEDULES += ["0 */4 * * *"] * 4 + [None] * 2
DRIFT_SCHEDULE = "30 2 * * *"
SECOND_DRIFT_SCHEDULE = "45 2 * * *"
PAGE = 200  # deployments per page of reconcile's listing (Prefect's most)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_BY_NAME = re.compile(r"/deployments/name/[^/]+/[^/]+")


def _schedule(index: int) -> str | None:
    return SCHEDULES[index % len(SCHEDULES)]


def _active_count(connectors: int) -> int:
    """How many of the first `connectors` are active."""
    return sum(1 for index in range(connectors) if _active(index))


def _name(index: int) -> str:
    return f"scale-{index:06d}"


def _active(index: int) -> bool:
    return index % 20 != 0


class _CallCounter:
    """Counts the Prefect API calls of this process (any thread), by method and path."""

    def __init__(self) -> None:
        self._calls: Counter[str] = Counter()
        self._seconds: Counter[str] = Counter()
        self._lock = threading.Lock()
        original = PrefectHttpxAsyncClient.send
        counter = self

        async def send(client, request, *args, **kwargs):
            path = _UUID.sub("{id}", request.url.path.removeprefix("/api"))
            key = f"{request.method} {_BY_NAME.sub('/deployments/name/{flow}/{name}', path)}"
            start = time.perf_counter()
            try:
                return await original(client, request, *args, **kwargs)
            finally:
                with counter._lock:
                    counter._calls[key] += 1
                    counter._seconds[key] += time.perf_counter() - start

        PrefectHttpxAsyncClient.send = send  # type: ignore[method-assign]

    @contextmanager
    def counting(self) -> Iterator[dict[str, dict[str, float]]]:
        """Yields a dict that holds, once the block ends, each call's count and mean ms."""
        with self._lock:
            self._calls, self._seconds = Counter(), Counter()
        found: dict[str, dict[str, float]] = {}
        try:
            yield found
        finally:
            # Flow run logs leave in the background; send them now so they count here.
            APILogWorker.drain_all(timeout=30)
            with self._lock:
                for key, count in self._calls.most_common():
                    mean = self._seconds[key] / count * 1000
                    found[key] = {"n": count, "mean_ms": round(mean, 1)}


@dataclass
class Pass:
    label: str
    connectors: int
    deployments: int  # managed deployments in Prefect when the pass started
    seconds: float
    repaired: Counter[str]
    calls: dict[str, dict[str, float]]
    server_cpu_s: float  # CPU time of Prefect's server during the pass

    def as_row(self) -> dict[str, Any]:
        return {
            "pass": self.label,
            "connectors": self.connectors,
            "deployments": self.deployments,
            "seconds": round(self.seconds, 1),
            "prefect_server_cpu_s": round(self.server_cpu_s, 1),
            "repaired": dict(self.repaired),
            "prefect_calls": sum(int(c["n"]) for c in self.calls.values()),
            "list_pages": int(self.calls.get("POST /deployments/filter", {}).get("n", 0)),
            "pages_expected": ceil((self.deployments + 1) / PAGE),
            "calls": self.calls,
        }


def _use_stack(stack: LocalStack) -> None:
    """Point this process's control plane at the stack, as the `control-plane` CLI would be."""
    os.environ["CONTROL_PLANE_DATABASE_URL"] = stack.database_url
    # Its data dir and key file too: the rows it seeds are encrypted with the stack's key.
    for name in (
        "CONTROL_PLANE_WORK_POOL",
        "CONTROL_PLANE_DATA_DIR",
        "CONTROL_PLANE_SECRET_KEY_FILE",
    ):
        os.environ[name] = stack.env[name]
    get_settings.cache_clear()
    get_engine.cache_clear()


class _Measuring(NamedTuple):
    counter: _CallCounter
    prefect_database: str
    server: list[int]  # the processes of Prefect's server
    api: int  # the API's process
    catalogs: list[Catalog]  # a catalog per project


def _measuring(stack: LocalStack) -> _Measuring:
    """This process pointed at the stack, with what both runs measure by."""
    _use_stack(stack)
    return _Measuring(
        _CallCounter(),
        _prefect_database(stack),
        process_tree(stack.prefect_process.popen.pid),  # type: ignore[union-attr]
        stack.api_process.popen.pid,  # type: ignore[union-attr]
        [make_catalog(stack.api, stack.files) for _ in range(PROJECTS)],
    )


def _prefect_database(stack: LocalStack) -> str:
    url = make_url(stack.prefect_process.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _seed(
    database_url: str,
    catalogs: list[Catalog],
    indexes: range,
    deployment_ids: dict[int, UUID] | None = None,
) -> None:
    """Insert the connector rows of `indexes` (row i gets id i + 1 in a fresh database)."""
    now = utcnow()
    rows = [
        {
            "name": _name(index),
            "project_id": catalogs[index % len(catalogs)].project_id,
            "defined_source_id": catalogs[index % len(catalogs)].source_id,
            "defined_destination_id": catalogs[index % len(catalogs)].destination_id,
            "schedule": _schedule(index),
            "timezone": "UTC",
            "is_active": _active(index),
            "source_config_override": {},
            "destination_config_override": {},
            "consecutive_failures": 0,
            "version": 1,
            "prefect_deployment_id": (deployment_ids or {}).get(index),
            "created_at": now,
            "updated_at": now,
        }
        for index in indexes
    ]
    engine = create_engine(database_url)
    with engine.begin() as db:
        for start in range(0, len(rows), 5000):
            db.execute(insert(Connector), rows[start : start + 5000])
        first = db.scalar(
            text("SELECT min(id) FROM connector WHERE name = :n"), {"n": rows[0]["name"]}
        )
    with engine.begin() as db:
        # As autovacuum would soon: the planner's statistics of the table as it is now, not as
        # it was before thousands of rows came at once.
        db.execute(text("ANALYZE connector"))
    engine.dispose()
    assert first == indexes[0] + 1, "the bench needs a fresh database: row i has id i + 1"


# Clones a template row with some columns replaced, without naming the others: what Prefect's
# server itself writes for a deployment, its concurrency limit and its schedule.
_CLONE = """
INSERT INTO {table}
SELECT (jsonb_populate_record(NULL::{table}, to_jsonb(t) || n.value || jsonb_build_object(
    'created', now(), 'updated', now()))).*
FROM {table} t, jsonb_array_elements(%(rows)s::jsonb) n
WHERE t.id = %(template)s
"""


def _clone_deployments(
    prefect_database: str, database_url: str, catalogs: list[Catalog], indexes: range
) -> dict[int, UUID]:
    """Give the active connectors of `indexes` deployments cloned from one reconcile created,
    each with what reconcile wants of it: its description and its destination's work queue
    (which reconcile created for each catalog before)."""
    engine = create_engine(database_url)
    with engine.connect() as control_plane:
        names: dict[str, dict[int, str]] = {
            table: dict(control_plane.execute(text(f"SELECT id, {column} FROM {table}")).all())
            for table, column in (
                ("project", "name"),
                ("defined_source", "type"),
                ("defined_destination", "type"),
            )
        }
    engine.dispose()
    contexts = {
        c.project_id: ConnectorContext(
            names["project"][c.project_id],
            names["defined_source"][c.source_id],
            names["defined_destination"][c.destination_id],
            False,
        )
        for c in catalogs
    }
    with psycopg.connect(prefect_database) as db:
        queues: dict[str, UUID] = dict(db.execute("SELECT name, id FROM work_queue").fetchall())
        template = db.execute(
            "SELECT d.id, d.concurrency_limit_id, s.id, s.schedule FROM deployment d "
            "JOIN deployment_schedule s ON s.deployment_id = d.id "
            "WHERE d.name LIKE 'connector-%' ORDER BY d.created LIMIT 1"
        ).fetchone()
        assert template, "no reconcile-created deployment to clone"
        deployment, limit, schedule, cron = template
        ids = {index: uuid.uuid4() for index in indexes if _active(index)}
        limits, clones, schedules = [], [], []
        for index, deployment_id in ids.items():
            connector_id, catalog = index + 1, catalogs[index % len(catalogs)]
            queue = deployments.destination_queue(catalog.destination_id)
            row = Connector(
                id=connector_id,
                name=_name(index),
                project_id=catalog.project_id,
                defined_source_id=catalog.source_id,
                defined_destination_id=catalog.destination_id,
                schedule=_schedule(index),
                timezone="UTC",
            )
            limits.append({"id": str(uuid.uuid4()), "name": f"deployment:{deployment_id}"})
            clones.append(
                {
                    "id": str(deployment_id),
                    "name": deployments.deployment_name(connector_id),
                    "tags": sorted(
                        [
                            deployments.MANAGED_TAG,
                            f"connector:{connector_id}",
                            f"project:{catalog.project_id}",
                        ]
                    ),
                    "parameters": {"connector_id": connector_id},
                    "concurrency_limit_id": limits[-1]["id"],
                    "description": deployments.describe(row, contexts[catalog.project_id]),
                    "work_queue_name": queue,
                    "work_queue_id": str(queues[queue]),
                }
            )
            if _schedule(index):
                schedules.append(
                    {
                        "id": str(uuid.uuid4()),
                        "deployment_id": str(deployment_id),
                        "schedule": {**cron, "cron": _schedule(index)},
                    }
                )
        for table, rows, source in (
            ("concurrency_limit_v2", limits, limit),
            ("deployment", clones, deployment),
            ("deployment_schedule", schedules, schedule),
        ):
            db.execute(_CLONE.format(table=table), {"rows": json.dumps(rows), "template": source})
        db.commit()
        db.execute("ANALYZE concurrency_limit_v2, deployment, deployment_schedule")
    return ids


async def _schedule_runs(prefect_database: str) -> None:
    """Have Prefect schedule every connector deployment's runs now, 8 at a time: its scheduler's
    own code with the server's settings (POST /deployments/{id}/schedule). Its scheduler visits
    deployments in the order of their ids, so these go the other way round to meet it."""
    with psycopg.connect(prefect_database) as db:
        ids = db.execute(
            "SELECT DISTINCT d.id FROM deployment d JOIN deployment_schedule s "
            "ON s.deployment_id = d.id AND s.active WHERE d.name LIKE 'connector-%' "
            "ORDER BY d.id DESC"
        ).fetchall()
    limit = asyncio.Semaphore(8)
    async with get_client() as client:

        async def schedule(deployment_id: UUID) -> None:
            async with limit:
                response = await client.request(
                    "POST", "/deployments/{id}/schedule", path_params={"id": deployment_id}, json={}
                )
                response.raise_for_status()

        await asyncio.gather(*(schedule(deployment_id) for (deployment_id,) in ids))


async def _reconcile_once(full: bool) -> list[dict[str, str]]:
    try:
        return await reconcile_connectors(full=full, actor="bench")
    finally:
        # The engine's pooled connections belong to this event loop; the next pass has another.
        await get_engine().dispose()


def _reconcile(
    counter: _CallCounter,
    server: list[int],
    label: str,
    connectors: int,
    deployments: int,
    *,
    expect_drift: bool,
    full: bool,
) -> Pass:
    """A pass, with its Prefect calls and the CPU of Prefect's server (`server`'s processes)."""
    cpu = cpu_seconds(server)
    with counter.counting() as calls:
        start = time.perf_counter()
        rows = asyncio.run(_reconcile_once(full))
        seconds = time.perf_counter() - start
    repaired = Counter(row["action"] for row in rows)
    assert expect_drift or not rows, f"{label}: unexpected drift {rows[:5]}"
    print(f"  {label}: {seconds:.1f} s, repaired {dict(repaired)}", flush=True)
    server_cpu_s = cpu_seconds(server) - cpu
    return Pass(label, connectors, deployments, seconds, repaired, calls, server_cpu_s)


def _drift_pass(
    counter: _CallCounter,
    server: list[int],
    database_url: str,
    label: str,
    total: int,
    *,
    cron: str,
    full: bool,
) -> tuple[Pass, dict[str, int]]:
    """10% drift made (`_make_drift`), then a pass that must repair exactly that: so the cloned
    deployments were in sync with their rows."""
    made = _make_drift(database_url, cron)
    deployments = _active_count(total) - made["deleted"]
    found = _reconcile(counter, server, label, total, deployments, expect_drift=True, full=full)
    expected = {"create": made["deleted"], "update": made["rescheduled"]}
    assert found.repaired == expected, (label, found.repaired, expected)
    return found, made


async def _delete_deployments(deployment_ids: list[UUID]) -> None:
    limit = asyncio.Semaphore(8)
    async with get_client() as client:

        async def delete(deployment_id: UUID) -> None:
            async with limit:
                await client.delete_deployment(deployment_id)

        await asyncio.gather(*(delete(deployment_id) for deployment_id in deployment_ids))


def _make_drift(database_url: str, cron: str) -> dict[str, int]:
    """Delete every twentieth connector's deployment in Prefect, reschedule every twentieth row
    to `cron` (with its `updated_at`, as the control plane's own writes do); then wait until
    Prefect's events of the deletes are written, which a pass over changes reads."""
    since = utcnow()
    engine = create_engine(database_url)
    with engine.begin() as db:
        doomed = db.scalars(
            text("SELECT prefect_deployment_id FROM connector WHERE id % 20 = 2 AND is_active")
        ).all()
        rescheduled = db.execute(
            text(
                "UPDATE connector SET schedule = :cron, updated_at = :now "
                "WHERE id % 20 = 3 AND is_active"
            ),
            {"cron": cron, "now": since},
        ).rowcount
    engine.dispose()
    asyncio.run(_delete_deployments(list(doomed)))
    wait_for(
        lambda: len(asyncio.run(changed_deployments(since))) >= len(doomed),
        timeout=120,
        interval=1,
        what="Prefect's events of the deleted deployments",
    )
    return {"deleted": len(doomed), "rescheduled": rescheduled}


_RUNS_PER_DEPLOYMENT = """
SELECT d.name,
       count(r.id) FILTER (WHERE r.next_scheduled_start_time >= now()) AS ahead,
       count(r.id) AS scheduled
FROM deployment d
JOIN deployment_schedule s ON s.deployment_id = d.id AND s.active
LEFT JOIN flow_run r ON r.deployment_id = d.id AND r.state_type = 'SCHEDULED'
WHERE d.name LIKE 'connector-%'
GROUP BY d.name
"""


def _scheduled_runs(prefect_database: str, expected: int, min_runs: int) -> dict[str, Any]:
    """Scheduled runs per connector deployment, once the scheduler has visited every one."""

    def counts() -> list[tuple[str, int, int]] | None:
        with psycopg.connect(prefect_database) as db:
            rows = db.execute(_RUNS_PER_DEPLOYMENT).fetchall()
        done = len(rows) >= expected and all(ahead >= min_runs for _, ahead, _ in rows)
        return rows if done else None

    start = time.perf_counter()
    rows = wait_for(counts, timeout=600, interval=2, what="the scheduler to visit every deployment")
    ahead = Counter(ahead for _, ahead, _ in rows)
    return {
        "deployments": len(rows),
        "waited_s": round(time.perf_counter() - start, 1),
        "max": max(ahead),
        "mean": round(sum(n * c for n, c in ahead.items()) / len(rows), 2),
        "total": sum(n * c for n, c in ahead.items()),
        "late": sum(late - ahead for _, ahead, late in rows),
        "deployments_by_runs": dict(sorted(ahead.items())),
    }


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for process {pid}")


def _time_lists(
    api: httpx.Client, catalogs: list[Catalog], rounds: int, meanwhile: Future[Any] | None = None
) -> dict[str, dict[str, float]]:
    """`GET /connectors?limit=100` at random offsets, unfiltered and filtered: `rounds` rounds,
    or as many more as it takes `meanwhile` to end."""
    projects = [{"projectId": catalog.project_id} for catalog in catalogs]
    variants: dict[str, list[dict[str, Any]]] = {
        "all": [{}],
        "projectId": projects,
        "isActive": [{"isActive": "true"}],
        "projectId+isActive": [{**project, "isActive": "true"} for project in projects],
    }
    counts = {
        json.dumps(params): api.get("/connectors", params={**params, "limit": 1}).json()["count"]
        for choices in variants.values()
        for params in choices
    }
    random = Random(42)
    timings: dict[str, list[float]] = {name: [] for name in variants}
    done = 0
    while done < rounds or (meanwhile is not None and not meanwhile.done()):
        done += 1
        for name, choices in variants.items():
            params = random.choice(choices)
            offset = random.randrange(max(1, counts[json.dumps(params)] - 100))
            start = time.perf_counter()
            response = api.get("/connectors", params={**params, "limit": 100, "offset": offset})
            timings[name].append(time.perf_counter() - start)
            assert response.status_code == 200, response.text
            found, count = response.json()["data"], counts[json.dumps(params)]
            assert len(found) == min(100, count - offset), (params, offset, count)
    return {
        name: {
            "p50_ms": round(statistics.median(values) * 1000, 1),
            "p95_ms": round(percentile(values, 0.95) * 1000, 1),
            "n": len(values),
        }
        for name, values in timings.items()
    }


def _read_everything(api: httpx.Client, total: int) -> float:
    """Page through every connector 1,000 at a time; returns the seconds it took."""
    start = time.perf_counter()
    for offset in range(0, total, 1000):
        response = api.get("/connectors", params={"limit": 1000, "offset": offset})
        assert response.status_code == 200, response.text
    return time.perf_counter() - start


def _run(
    stack: LocalStack, home: Path, total: int, requests: int, create_all: bool
) -> dict[str, Any]:
    counter, prefect_database, server, api, catalogs = _measuring(stack)
    first = total if create_all else max(total // 40, 1)
    passes: list[Pass] = []
    figures: dict[str, Any] = {"created_by_reconcile": first}

    def reconcile(
        label: str, connectors: int, deployments: int, *, drift: bool, full: bool = True
    ) -> None:
        passes.append(
            _reconcile(
                counter, server, label, connectors, deployments, expect_drift=drift, full=full
            )
        )

    def lists(label: str, meanwhile: Future[Any] | None = None) -> None:
        cpu, start = cpu_seconds(server), time.perf_counter()
        variants = _time_lists(stack.api, catalogs, requests, meanwhile)
        busy = (cpu_seconds(server) - cpu) / (time.perf_counter() - start)
        figures[label] = {"variants": variants, "prefect_server_busy": round(busy, 2)}
        print(f"  {figures[label]}", flush=True)

    print(f"{first} connectors, deployments by reconcile", flush=True)
    _seed(stack.database_url, catalogs, range(first))
    reconcile("full drift", first, 0, drift=True)
    reconcile("no drift", first, _active_count(first), drift=False)
    if first < total:
        print(f"{total - first} more connectors, deployments cloned in Prefect", flush=True)
        start = time.perf_counter()
        ids = _clone_deployments(
            prefect_database, stack.database_url, catalogs, range(first, total)
        )
        _seed(stack.database_url, catalogs, range(first, total), ids)
        figures["cloned"] = {"deployments": len(ids), "s": round(time.perf_counter() - start, 1)}

    # Prefect's scheduler spends about 25 ms of CPU on each new deployment, one after the other
    # (minutes at 10,000). Have Prefect schedule them now, 8 at a time, and time the API's lists
    # meanwhile: they need the control plane's database only.
    print("scheduling runs; GET /connectors meanwhile", flush=True)
    rss = {"before_mb": _rss_mb(api)}
    with ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        scheduling = pool.submit(copy_context().run, asyncio.run, _schedule_runs(prefect_database))
        lists("list_while_scheduling", meanwhile=scheduling)
        figures["scheduling_s"] = round(time.perf_counter() - start, 1)
        scheduling.result()
    figures["read_everything_s"] = [round(_read_everything(stack.api, total), 2) for _ in range(3)]
    rss["after_lists_mb"] = _rss_mb(api)
    server_env = prefect_server_env(Settings(), home, prefect_database)
    min_runs = server_env["PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS"]
    scheduled = sum(1 for i in range(total) if _active(i) and _schedule(i))
    figures["scheduled_runs"] = _scheduled_runs(prefect_database, scheduled, int(min_runs))
    print(f"  {figures['scheduled_runs']}", flush=True)

    def drift(label: str, cron: str, *, full: bool) -> None:
        found, made = _drift_pass(
            counter, server, stack.database_url, label, total, cron=cron, full=full
        )
        passes.append(found)
        figures.setdefault("drift", made)

    drift("10% drift", DRIFT_SCHEDULE, full=True)
    # A pass over changes reads from a minute before the last pass began: the pass with no drift
    # begins more than a minute after the 10% drift pass's repairs, so that the pass over changes
    # after it finds them behind it, and nothing to read.
    time.sleep(EVENT_LAG.total_seconds() + 5)
    reconcile("no drift", total, _active_count(total), drift=False)
    print("GET /connectors", flush=True)
    lists("list")
    reconcile("changes, none", total, _active_count(total), drift=False, full=False)
    drift("changes, 10%", SECOND_DRIFT_SCHEDULE, full=False)
    rss["after_mb"] = _rss_mb(api)
    figures["api_rss"] = rss
    figures["passes"] = [p.as_row() for p in passes]
    return figures


def _print_table(figures: dict[str, Any]) -> None:
    print(
        f"\n{'reconcile pass':<16}{'connectors':>11}{'repaired':>9}{'s':>7}"
        f"{'Prefect calls':>15}{'pages':>7}{'Prefect CPU s':>15}"
    )
    for row in figures["passes"]:
        print(
            f"{row['pass']:<16}{row['connectors']:>11}{sum(row['repaired'].values()):>9}"
            f"{row['seconds']:>7}{row['prefect_calls']:>15}{row['list_pages']:>7}"
            f"{row['prefect_server_cpu_s']:>15}"
        )
    quiet, busy = figures["list"]["variants"], figures["list_while_scheduling"]["variants"]
    print(
        f"\n{'GET /connectors?limit=100':<26}{'p50 ms':>8}{'p95 ms':>8}"
        f"{'while Prefect schedules: p50':>30}{'p95':>7}{'n':>6}"
    )
    for name, row in quiet.items():
        print(
            f"{name:<26}{row['p50_ms']:>8}{row['p95_ms']:>8}"
            f"{busy[name]['p50_ms']:>30}{busy[name]['p95_ms']:>7}{busy[name]['n']:>6}"
        )
    runs = figures["scheduled_runs"]
    print(
        f"\nscheduled runs ahead per scheduled connector: max {runs['max']}, mean {runs['mean']}, "
        f"total {runs['total']} ({runs['deployments']} deployments)"
    )
    rss = figures["api_rss"]
    lists = sum(v["n"] for v in quiet.values()) + sum(v["n"] for v in busy.values())
    print(
        f"API RSS: {rss['before_mb']} MB before the lists, {rss['after_mb']} MB after {lists} "
        f"and reading all {len(figures['read_everything_s'])} times, 1,000 at a time"
    )
    print(f"bench: {figures['bench_s']} s")


def _curve(stack: LocalStack, sizes: list[int], requests: int) -> list[dict[str, Any]]:
    """One row per size: the stack grown to it, then measured (see the module's docstring)."""
    counter, prefect_database, server, api, catalogs = _measuring(stack)
    # A fortieth of the first size gets its deployments from reconcile, as a template to clone.
    grown = max(sizes[0] // 40, 1)
    _seed(stack.database_url, catalogs, range(grown))
    _reconcile(counter, server, "full drift", grown, 0, expect_drift=True, full=True)
    crons = [DRIFT_SCHEDULE, SECOND_DRIFT_SCHEDULE]
    rows: list[dict[str, Any]] = []
    for size in sizes:
        print(f"{size} connectors", flush=True)
        ids = _clone_deployments(prefect_database, stack.database_url, catalogs, range(grown, size))
        _seed(stack.database_url, catalogs, range(grown, size), ids)
        seeded, grown = time.monotonic(), size
        row: dict[str, Any] = {"connectors": size}
        row["list"] = _time_lists(stack.api, catalogs, requests)["all"]
        # A pass over changes reads from a minute before the last pass began: the full pass
        # waits until the rows just seeded are behind that, and Prefect's CPU is read meanwhile.
        cpu, start = cpu_seconds(server), time.monotonic()
        time.sleep(max(0.0, seeded + EVENT_LAG.total_seconds() + 5 - start))
        rest = (cpu_seconds(server) - cpu) / (time.monotonic() - start)
        row["prefect_busy_at_rest"] = round(rest, 3)
        passes = [
            _reconcile(
                counter, server, label, size, _active_count(size), expect_drift=False, full=full
            )
            for label, full in (("full, none", True), ("changes, none", False))
        ]
        for label, full in (("changes, 10%", False), ("full, 10%", True)):
            cron = crons[len(passes) % 2]
            found, _ = _drift_pass(
                counter, server, stack.database_url, label, size, cron=cron, full=full
            )
            passes.append(found)
        row["passes"] = [found.as_row() for found in passes]
        row["api_rss_mb"] = _rss_mb(api)
        rows.append(row)
    return rows


def _print_curve(figures: dict[str, Any]) -> None:
    rows = figures["rows"]
    labels = [found["pass"] for found in rows[0]["passes"]]
    print(f"\n{'connectors':>10}{'list p50/p95 ms':>17}{'Prefect busy':>13}{'API MB':>8}", end="")
    print("".join(f"{label + ': s / calls / CPU s':>34}" for label in labels))
    for row in rows:
        listed = f"{row['list']['p50_ms']} / {row['list']['p95_ms']}"
        print(
            f"{row['connectors']:>10}{listed:>17}{row['prefect_busy_at_rest']:>13.1%}"
            f"{row['api_rss_mb']:>8}",
            end="",
        )
        for found in row["passes"]:
            cell = (
                f"{found['seconds']} / {found['prefect_calls']} / {found['prefect_server_cpu_s']}"
            )
            print(f"{cell:>34}", end="")
        print()
    print(f"bench: {figures['bench_s']} s")


def _quiet_console() -> None:
    """Keep reconcile's line per repair off the terminal (it still goes to Prefect)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.setLevel(logging.WARNING)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connectors", type=int, default=10_000)
    parser.add_argument(
        "--requests", type=int, default=50, help="list requests per filter, Prefect quiet"
    )
    parser.add_argument(
        "--create-all", action="store_true", help="reconcile creates every deployment (slow)"
    )
    parser.add_argument(
        "--curve",
        type=lambda text: sorted(int(size) for size in text.split(",")),
        help="sizes to grow to, e.g. 1000,10000,30000 (the cost curve; scheduler off)",
    )
    args = parser.parse_args()
    _quiet_console()
    start = time.perf_counter()
    scheduler_off = {"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"} if args.curve else {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        local_stack(Path(tmp), postgres=True, prefect_env=scheduler_off) as stack,
    ):
        if args.curve:
            name, show = "scale_curve", _print_curve
            figures = {"sizes": args.curve, "rows": _curve(stack, args.curve, args.requests)}
        else:
            name, show = "scale", _print_table
            figures = {
                "connectors": args.connectors,
                **_run(stack, Path(tmp), args.connectors, args.requests, args.create_all),
            }
    figures["bench_s"] = round(time.perf_counter() - start, 1)
    show(figures)
    write_results(name, **figures)


if __name__ == "__main__":
    main()
