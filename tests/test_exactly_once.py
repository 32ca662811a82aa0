"""A sync run killed (SIGKILL) at each point of its load, into PostgreSQL in each mode: the rerun
leaves exactly the source's rows, none twice, none lost; and a reset while a run is half-way
is not lost.

The runs pause at their kill point through `CONTROL_PLANE_PAUSE_POINTS`, given to each run alone
as a job variable, and are killed by the pid their worker reports, as an operator's kill -9
would. All cases run at once: one killed run and one rerun each.
"""

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient

from bench._seed import created, unique
from control_plane.processes import wait_for
from tests.conftest import Stack, fresh_postgres
from tests.helpers import execute, trigger_and_wait, wait_final

ROWS = 3000
BATCH = 500  # six batches: "during" is half-way through the COPY
MODES = ["append", "replace", "merge"]
POINTS = [
    "during-write",
    "before-destination-commit",
    "after-destination-commit",
    "after-control-commit",
]
# Where the killed run left its connector: only the last point saw the control plane commit.
CRASHED_BEFORE_RECORDING = POINTS[:3]


@pytest.fixture(scope="module")
def lake() -> Iterator[str]:
    """A PostgreSQL database of the module's own with the source table `orders`."""
    with fresh_postgres(f"exactly_once_{os.getpid()}_{int(time.time())}") as url:
        execute(url, "CREATE TABLE orders (id bigint PRIMARY KEY, amount text)")
        execute(
            url,
            f"INSERT INTO orders SELECT i, 'amount-' || i FROM generate_series(1, {ROWS}) i",
        )
        yield url


def _connector(api: httpx.Client, project_id: int, lake: str, table: str, mode: str) -> dict:
    source = {"url": lake, "table": "orders", "cursorField": "id"}
    destination = {"url": lake, "table": table, "mode": mode, "primaryKey": ["id"]}
    ids = [
        created(
            api.post(
                f"/defined-{kind}s",
                json={"name": unique(kind), "projectId": project_id, "type": "sql", "config": cfg},
            )
        )["id"]
        for kind, cfg in (("source", source), ("destination", destination))
    ]
    body = {
        "name": unique("exactly-once"),
        "projectId": project_id,
        "definedSourceId": ids[0],
        "definedDestinationId": ids[1],
        "schedule": None,
    }
    return created(api.post("/connectors", json=body))


def _start_paused(
    prefect: SyncPrefectClient, stack: Stack, connector: dict, point: str, marks: Path
) -> UUID:
    """A run of the connector's deployment that pauses at `point`, marking it under `marks`."""
    env = {
        "CONTROL_PLANE_PAUSE_POINTS": json.dumps([f"sync-connector:{point}"]),
        "CONTROL_PLANE_DATA_DIR": str(marks),
        "CONTROL_PLANE_FILE_ROOTS": json.dumps([str(stack.files)]),
        "CONTROL_PLANE_BATCH_SIZE": str(BATCH),
    }
    run = prefect.create_flow_run_from_deployment(
        UUID(connector["prefectDeploymentId"]), job_variables={"env": env}
    )
    return run.id


def _paused(marks: Path, point: str) -> bool:
    return (marks / f"paused-at-sync-connector:{point}").exists()


def _kill(prefect: SyncPrefectClient, flow_run_id: UUID) -> None:
    """SIGKILL the run's process, found by the pid its worker reported."""
    pid = prefect.read_flow_run(flow_run_id).infrastructure_pid
    os.kill(int(str(pid).rpartition(":")[2]), signal.SIGKILL)


def _counts(lake: str, table: str) -> tuple[int, int]:
    [(rows, distinct)] = execute(lake, f"SELECT count(*), count(DISTINCT id) FROM {table}")
    return rows, distinct


@pytest.mark.usefixtures("control_deployments")  # the automation that records crashed runs
class TestKilledSyncRuns:
    def test_every_kill_point_and_mode_leaves_exactly_the_source_rows(
        self, api, prefect, stack, lake, tmp_path
    ):
        project_id = created(api.post("/projects", json={"name": unique("exactly-once")}))["id"]
        # Every mode and point where the control plane's database is PostgreSQL. On SQLite,
        # which changes only how the control plane records runs, the points on either side of
        # the destination's commit.
        matrix = [(m, p) for m in MODES for p in POINTS]
        if stack.database_url.startswith("sqlite"):
            matrix = [("append", "before-destination-commit"), ("append", POINTS[2])]
        cases = {
            (mode, point): _connector(api, project_id, lake, f"t_{project_id}_{n}", mode)
            for n, (mode, point) in enumerate(matrix)
        }
        marks = {case: tmp_path / f"{case[0]}-{case[1]}" for case in cases}
        killed = {
            case: _start_paused(prefect, stack, connector, case[1], marks[case])
            for case, connector in cases.items()
        }
        wait_for(
            lambda: all(_paused(marks[case], case[1]) for case in cases),
            timeout=180,
            what="every run to pause at its kill point",
        )
        for run_id in killed.values():
            _kill(prefect, run_id)

        def recorded(case: tuple[str, str]) -> bool:
            status = api.get(f"/connectors/{cases[case]['id']}").json()
            wanted = "CRASHED" if case[1] in CRASHED_BEFORE_RECORDING else "COMPLETED"
            return status["lastRunState"] == wanted

        wait_for(
            lambda: all(map(recorded, cases)),
            timeout=120,
            what="every killed run to show in its connector's status",
        )
        for case in cases:
            if case[1] not in CRASHED_BEFORE_RECORDING:
                continue
            connector = api.get(f"/connectors/{cases[case]['id']}").json()
            assert connector["consecutiveFailures"] == 1
            assert connector["lastFailureAt"] is not None
            [run] = api.get(f"/connectors/{cases[case]['id']}/runs").json()["data"]
            assert run["endedAt"] is not None and run["error"].startswith("Crashed"), run

        reruns = {case: api.post(f"/connectors/{c['id']}/trigger") for case, c in cases.items()}
        for response in reruns.values():
            assert response.status_code == 200, response.text
        for response in reruns.values():
            rerun = wait_final(prefect, response.json()["flowRunId"], timeout=180)
            assert rerun.state.is_completed()

        rows = {case: _counts(lake, f"t_{project_id}_{n}") for n, case in enumerate(cases)}
        assert rows == dict.fromkeys(cases, (ROWS, ROWS))
        # What the rerun read: all of it again where nothing was committed (and always for a
        # replace), nothing where the destination had committed the load.
        read = {
            case: api.get(f"/connectors/{c['id']}/runs", params={"limit": 1}).json()["data"][0][
                "recordsRead"
            ]
            for case, c in cases.items()
        }
        expected = {
            (mode, point): ROWS
            if mode == "replace" or point in ("during-write", "before-destination-commit")
            else 0
            for mode, point in cases
        }
        assert read == expected


class TestResetDuringARun:
    def test_the_run_does_not_save_its_cursor(self, api, prefect, stack, lake, tmp_path):
        project_id = created(api.post("/projects", json={"name": unique("reset")}))["id"]
        connector = _connector(api, project_id, lake, f"t_reset_{project_id}", "append")
        point = "after-destination-commit"
        run_id = _start_paused(prefect, stack, connector, point, tmp_path)
        wait_for(lambda: _paused(tmp_path, point), timeout=120, what="the run to pause")

        assert api.post(f"/connectors/{connector['id']}/reset").status_code == 204
        (tmp_path / f"paused-at-sync-connector:{point}").unlink()
        assert wait_final(prefect, run_id).state.is_completed()

        # The reset stands: the next run reads everything again, and saves its cursor.
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        runs = api.get(f"/connectors/{connector['id']}/runs").json()["data"]
        assert [run["recordsRead"] for run in runs] == [0, ROWS, ROWS]
