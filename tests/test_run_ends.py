"""Every sync run ends in its connector's status, however it ends: killed, lost, cancelled by a
delete that raced its trigger, retried, or stopped by its timeout."""

import json
import os
import signal
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterTags,
)
from sqlalchemy import create_engine, insert, select

from bench._seed import created, unique
from control_plane.processes import api_server, free_port, running, wait_for
from models import SyncRun
from tests.conftest import Stack
from tests.helpers import reconcile_cli, serving, trigger_and_wait


@pytest.fixture
def project(api: httpx.Client, stack: Stack) -> tuple[int, Path]:
    project_id = created(api.post("/projects", json={"name": unique("ends")}))["id"]
    folder = stack.files / str(project_id)
    folder.mkdir(parents=True, exist_ok=True)
    return project_id, folder


def _connector(api: httpx.Client, project_id: int, source: dict, destination: dict, **fields):
    ids = [
        created(
            api.post(
                f"/defined-{kind}s", json={"name": unique(kind), "projectId": project_id, **body}
            )
        )["id"]
        for kind, body in (("source", source), ("destination", destination))
    ]
    body = {
        "name": unique("connector"),
        "projectId": project_id,
        "definedSourceId": ids[0],
        "definedDestinationId": ids[1],
        "schedule": None,
        **fields,
    }
    return created(api.post("/connectors", json=body))


def _csv_to_jsonl(api: httpx.Client, project: tuple[int, Path], **fields) -> dict:
    project_id, folder = project
    (folder / "in.csv").write_text("id\n" + "".join(f"{i}\n" for i in range(10)))
    return _connector(
        api,
        project_id,
        {"type": "csv", "config": {"path": "in.csv"}},
        {"type": "jsonl", "config": {"path": "out.jsonl"}},
        **fields,
    )


def _sync_runs(prefect: SyncPrefectClient, connector_id: int):
    return prefect.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["sync-connector"])),
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"connector:{connector_id}"])),
    )


@pytest.mark.usefixtures("control_deployments")
class TestCrashes:
    def test_a_killed_run_counts_and_switches_the_connector_off(
        self, api, prefect, stack, project, tmp_path
    ):
        connector = _csv_to_jsonl(api, project, maxConsecutiveFailures=1)
        point = "sync-connector:during-write"
        env = {
            "CONTROL_PLANE_PAUSE_POINTS": json.dumps([point]),
            "CONTROL_PLANE_DATA_DIR": str(tmp_path),
            "CONTROL_PLANE_FILE_ROOTS": json.dumps([str(stack.files)]),
            "CONTROL_PLANE_BATCH_SIZE": "5",
        }
        run = prefect.create_flow_run_from_deployment(
            UUID(connector["prefectDeploymentId"]), job_variables={"env": env}
        )
        wait_for(lambda: (tmp_path / f"paused-at-{point}").exists(), timeout=90, what="a pause")
        pid = prefect.read_flow_run(run.id).infrastructure_pid
        os.kill(int(str(pid).rpartition(":")[2]), signal.SIGKILL)

        path = f"/connectors/{connector['id']}"
        # Prefect marks it Crashed; the automation records it; past the threshold of 1, the
        # auto-deactivate automation switches the connector off.
        status = wait_for(
            lambda: (body := api.get(path).json())["isActive"] is False and body,
            timeout=90,
            what="the crashed connector to be switched off",
        )
        assert status["lastRunState"] == "CRASHED"
        assert status["consecutiveFailures"] == 1
        assert "Crashed" in status["statusReason"]
        [recorded] = api.get(f"{path}/runs").json()["data"]
        assert recorded["endedAt"] is not None and recorded["error"].startswith("Crashed")

    def test_reconcile_records_a_run_gone_from_prefect(self, api, stack, project):
        connector = _csv_to_jsonl(api, project)
        # A run that started ten minutes ago, whose flow run was deleted from Prefect since.
        engine = create_engine(stack.database_url)
        started = datetime.now(UTC) - timedelta(minutes=10)
        with engine.begin() as db:
            db.execute(
                insert(SyncRun).values(
                    flow_run_id=uuid.uuid4(), connector_id=connector["id"], started_at=started
                )
            )
        reconcile_cli(stack.env)
        with engine.begin() as db:
            [(error, ended)] = db.execute(
                select(SyncRun.error, SyncRun.ended_at).where(
                    SyncRun.connector_id == connector["id"]
                )
            ).all()
        engine.dispose()
        assert error == "Crashed: the flow run is gone from Prefect" and ended is not None
        status = api.get(f"/connectors/{connector['id']}").json()
        assert (status["lastRunState"], status["consecutiveFailures"]) == ("CRASHED", 1)


class TestTriggerAndDeleteRace:
    def test_no_run_of_a_deleted_connector_stays_pending(self, api, prefect, stack, project):
        port = free_port()
        other_url = f"http://127.0.0.1:{port}"
        log = Path(stack.env["CONTROL_PLANE_DATA_DIR"]) / f"api-{port}.log"
        connectors = [_csv_to_jsonl(api, project) for _ in range(4)]
        with (
            running(api_server(stack.env, port, log), f"{other_url}/health"),
            httpx.Client(base_url=f"{other_url}/api/v1", timeout=60) as other,
            ThreadPoolExecutor(max_workers=8) as pool,
        ):
            triggers = [pool.submit(api.post, f"/connectors/{c['id']}/trigger") for c in connectors]
            deletes = [pool.submit(other.delete, f"/connectors/{c['id']}") for c in connectors]
            assert [d.result().status_code for d in deletes] == [204] * 4
            assert {t.result().status_code for t in triggers} <= {200, 404, 409}

        def all_ended() -> bool:
            runs = [run for c in connectors for run in _sync_runs(prefect, c["id"])]
            return all(run.state.is_final() for run in runs)

        wait_for(all_ended, timeout=90, what="every run of the deleted connectors to end")


class _FlakyOrSlow(BaseHTTPRequestHandler):
    """/flaky/<key> fails its first request with 500; /slow/N answers page N after 0.6 s and
    links to the next, up to page 6."""

    seen: set[str] = set()
    lock = threading.Lock()

    def do_GET(self) -> None:
        kind, _, rest = self.path.strip("/").partition("/")
        body: dict = {"items": [{"id": 1}, {"id": 2}]}
        if kind == "flaky":
            with self.lock:
                first = rest not in self.seen
                self.seen.add(rest)
            if first:
                self.send_response(500)
                self.end_headers()
                return
        if kind == "slow":
            threading.Event().wait(0.6)
            page = int(rest)
            body = {"items": [{"id": page}], **({"next": f"/slow/{page + 1}"} if page < 6 else {})}
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_api() -> Iterator[str]:
    with serving(_FlakyOrSlow) as url:
        yield url


class TestRunPolicies:
    def test_a_failed_try_is_retried_by_prefect(self, api, prefect, project, http_api):
        project_id, folder = project
        source = {"url": f"{http_api}/flaky/{uuid.uuid4().hex}", "recordsPath": "items"}
        connector = _connector(
            api,
            project_id,
            {"type": "http", "config": source},
            {"type": "jsonl", "config": {"path": "flaky.jsonl"}},
            retries=1,
            retryDelaySeconds=0,
        )
        run = trigger_and_wait(api, prefect, connector["id"])
        assert run.state.is_completed() and run.run_count == 2
        status = api.get(f"/connectors/{connector['id']}").json()
        assert (status["lastRunState"], status["consecutiveFailures"]) == ("COMPLETED", 0)
        assert len((folder / "flaky.jsonl").read_text().splitlines()) == 2

    def test_a_run_past_its_timeout_fails_and_commits_nothing(
        self, api, prefect, project, http_api
    ):
        project_id, folder = project
        source = {"url": f"{http_api}/slow/1", "recordsPath": "items", "nextPagePath": "next"}
        connector = _connector(
            api,
            project_id,
            {"type": "http", "config": source},
            {"type": "sql", "config": {"url": "sqlite:///slow.db", "table": "pages"}},
            timeoutSeconds=1,
        )
        run = trigger_and_wait(api, prefect, connector["id"])
        assert run.state.is_failed()
        assert "timeout of 1 s (timeoutSeconds)" in run.state.message
        status = api.get(f"/connectors/{connector['id']}").json()
        assert (status["lastRunState"], status["consecutiveFailures"]) == ("FAILED", 1)
        with sqlite3.connect(folder / "slow.db") as db:
            tables = db.execute("SELECT name FROM sqlite_master WHERE name = 'pages'").fetchall()
        assert tables == []
