"""Small helpers the tests share: Prefect look-ups, SQL behind the connectors' back, HTTP servers
for sources to read. Unique names and catalogs are `bench._seed`'s, which the benchmarks share."""

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from uuid import UUID
from zoneinfo import ZoneInfo

import httpx
import pytest
from croniter import croniter
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from sqlalchemy import create_engine, text

from control_plane.processes import free_port, wait_for

# Where tests serve the HTTP APIs that connectors read: a loopback address of its own, so the
# rest of loopback can stay out of the connectors' reach.
PUBLIC_TEST_HOST = "127.0.0.2"

# On a test of Prefect's own machinery (its automations, work queues, events, a deployment's
# runs), whose database-dependent parts other tests cover on both databases: PostgreSQL only,
# which production runs, so the suite stays within its time.
POSTGRESQL_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

CONTROL_FLOWS = [
    "create-connector",
    "update-connector",
    "resume-connector",
    "deactivate-connector",
    "trigger-connector",
    "backfill-connector",
    "cancel-connector-run",
    "reset-connector",
    "set-connector-state",
    "delete-connector",
    "notify-owners",
]


def execute(url: str, sql: str) -> list[tuple]:
    """Run one SQL statement on the database at `url`, behind the connectors' back; its rows."""
    engine = create_engine(url)
    try:
        with engine.begin() as db:
            result = db.execute(text(sql))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def scheduled_runs(prefect: SyncPrefectClient, deployment_id: str | UUID) -> list[FlowRun]:
    """The runs that the deployment's schedule created and that still wait to start."""
    runs = prefect.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[UUID(str(deployment_id))])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
        limit=200,
    )
    return [run for run in runs if run.auto_scheduled]


def all_match(runs: list[FlowRun], cron: str, timezone: str = "UTC") -> bool:
    return all(
        # Prefect hands back Pendulum datetimes; croniter wants the standard library's.
        croniter.match(
            cron, datetime.fromtimestamp(run.expected_start_time.timestamp(), ZoneInfo(timezone))
        )
        for run in runs
    )


def control_runs(prefect: SyncPrefectClient, connector_id: int) -> list[FlowRun]:
    """The control flow runs tagged with the connector, oldest first."""
    return prefect.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=CONTROL_FLOWS)),
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"connector:{connector_id}"])),
        sort=FlowRunSort.START_TIME_ASC,
    )


def wait_final(prefect: SyncPrefectClient, flow_run_id: str | UUID, timeout: float = 90):
    """The flow run once it has ended (any final state)."""
    return wait_for(
        lambda: (run := prefect.read_flow_run(UUID(str(flow_run_id)))).state.is_final() and run,
        timeout=timeout,
        what=f"flow run {flow_run_id} to end",
    )


def reconcile_cli(env: dict[str, str | None], *args: str) -> str:
    """Run `control-plane reconcile` as a user would, against the stack `env` describes.

    A variable that `env` maps to None is left out of the command's environment.
    """
    merged = {**os.environ, **env}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "control-plane"), "reconcile", *args],
        env={name: value for name, value in merged.items() if value is not None},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def prefect_events(prefect_api_url: str, resource_id: str, since: datetime) -> list[dict]:
    """The events about one resource since `since`, oldest first, from Prefect's API."""
    body = {
        "filter": {
            "occurred": {"since": since.isoformat()},
            "resource": {"id": [resource_id]},
            "order": "ASC",
        },
        "limit": 50,
    }
    response = httpx.post(f"{prefect_api_url}/events/filter", json=body, timeout=30)
    response.raise_for_status()
    return response.json()["events"]


def trigger_and_wait(api: httpx.Client, prefect: SyncPrefectClient, connector_id: int):
    """Trigger the connector and return its sync run once it has ended."""
    response = api.post(f"/connectors/{connector_id}/trigger")
    assert response.status_code == 200, response.text
    return wait_final(prefect, response.json()["flowRunId"])


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], host: str = PUBLIC_TEST_HOST) -> Iterator[str]:
    """A real HTTP server of `handler` on a free port of `host` (by default the tests' public
    host: the rest of loopback, the API and Prefect among it, is out of the connectors' reach),
    in a thread until the block ends; its base URL on the public host."""
    server = ThreadingHTTPServer((host, free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://{PUBLIC_TEST_HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
