"""Operations: Prometheus `/metrics` of a real API process after real actions, runs and a
reconcile pass; JSON log lines that name the control flow run of the request they belong to."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prometheus_client.parser import text_string_to_metric_families

from bench._seed import Catalog, created
from control_plane.processes import api_server, free_port, running
from tests.conftest import Stack
from tests.helpers import reconcile_cli, trigger_and_wait


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_requests_flows_runs_and_the_last_reconcile(
    api: httpx.Client, prefect: SyncPrefectClient, stack: Stack, catalog: Catalog
) -> None:
    connector = created(api.post("/connectors", json=catalog.connector(schedule=None)))
    assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
    passed = time.time()
    reconcile_cli(stack.env)

    answer = httpx.get(f"{stack.api_url}/metrics", timeout=30)

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples = _samples(answer.text)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0)

    requests = "control_plane_http_request_duration_seconds_count"
    assert value(requests, route="/api/v1/connectors", method="POST", status="201") >= 1
    path = "/api/v1/connectors/{connector_id}/trigger"
    assert value(requests, route=path, method="POST", status="200") >= 1
    flows = "control_plane_control_flow_runs_total"
    assert value(flows, flow="create-connector", state="COMPLETED") >= 1
    assert value(flows, flow="trigger-connector", state="COMPLETED") >= 1
    assert value("control_plane_connectors", status="active") >= 1
    assert value("control_plane_sync_runs", outcome="completed") >= 1
    assert value("control_plane_sync_records", direction="written") >= 2  # the CSV's two rows
    repairs = {"create", "update", "delete", "relink"}
    assert {
        dict(labels)["action"]
        for name, labels in samples
        if name == "control_plane_reconcile_last_pass_repairs"
    } == repairs
    # The session's Prefect serves every stack: the latest pass may be another one's, not older.
    assert value("control_plane_reconcile_last_pass_timestamp_seconds") >= passed - 1


@pytest.fixture(scope="module")
def json_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An API process of the stack that logs JSON, and its log file."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("json-logs") / "api.log"
    env = {**stack.env, "CONTROL_PLANE_LOG_FORMAT": "json"}
    with running(api_server(env, port, log), f"{url}/health"):
        yield url, log


def test_json_logs_name_the_control_flow_run_of_a_request(
    json_api: tuple[str, Path], catalog: Catalog
) -> None:
    url, log = json_api
    with httpx.Client(base_url=f"{url}/api/v1", timeout=60) as client:
        connector = created(client.post("/connectors", json=catalog.connector(schedule=None)))
        [entry] = client.get(f"/connectors/{connector['id']}/history").json()["data"]
    flow_run_id = entry["flowRunId"]

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    of_the_run = [line for line in lines if line.get("flowRunId") == flow_run_id]
    # Prefect's own lines inside the run, and the request's access line after it.
    assert any(line["logger"].startswith("prefect.flow_runs") for line in of_the_run)
    [access] = [line for line in of_the_run if line["logger"] == "uvicorn.access"]
    assert "POST /api/v1/connectors" in access["message"]
