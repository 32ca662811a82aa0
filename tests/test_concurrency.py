"""Bursts of concurrent requests against the session's Prefect server (on PostgreSQL, as its
SQLite backend serves one writer): the row and the deployment agree afterwards, and a name
exists once."""

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

from bench._seed import created, make_catalog
from control_plane import bootstrap
from control_plane.processes import api_server, free_port, running
from tests.conftest import stack_env
from tests.helpers import control_runs

REQUESTS = 50


@dataclass
class Burst:
    api: httpx.Client
    prefect: SyncPrefectClient
    url: str
    files: Path  # the API's file root, under its data dir

    def all_at_once(self, method: str, path: str, bodies: list[dict]) -> list[httpx.Response]:
        def send(body: dict) -> httpx.Response:
            return httpx.request(method, f"{self.url}/api/v1{path}", json=body, timeout=120)

        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            return list(pool.map(send, bodies))


@pytest.fixture
def burst(prefect_api_url: str, database_url: str, tmp_path) -> Iterator[Burst]:
    asyncio.run(bootstrap.ensure_work_pool("concurrency"))
    env = stack_env(prefect_api_url, database_url, "concurrency", tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        running(api_server(env, port, tmp_path / "api.log"), f"{url}/health"),
        httpx.Client(base_url=f"{url}/api/v1", timeout=60) as api,
        SyncPrefectClient(prefect_api_url) as prefect,
    ):
        yield Burst(api, prefect, url, tmp_path / "files")


class TestBursts:
    def test_concurrent_reschedules_end_with_one_writer_winning_whole(self, burst: Burst):
        catalog = make_catalog(burst.api, burst.files)
        connector = created(burst.api.post("/connectors", json=catalog.connector()))
        crons = [f"{minute} 3 * * *" for minute in range(REQUESTS)]
        answers = burst.all_at_once(
            "PATCH", f"/connectors/{connector['id']}", [{"schedule": c} for c in crons]
        )
        refused = [a.text for a in answers if a.status_code != 200]
        assert Counter(a.status_code for a in answers) == {200: REQUESTS}, refused
        row = burst.api.get(f"/connectors/{connector['id']}").json()
        assert row["schedule"] in crons
        [schedule] = burst.prefect.read_deployment(UUID(row["prefectDeploymentId"])).schedules
        assert schedule.schedule.cron == row["schedule"]
        assert burst.api.get(f"/connectors/{connector['id']}/drift").json()["inSync"] is True
        runs = control_runs(burst.prefect, connector["id"])
        assert len(runs) == REQUESTS + 1
        assert all(run.state.is_completed() for run in runs)

    def test_concurrent_creates_of_one_name_make_one_connector(self, burst: Burst):
        catalog = make_catalog(burst.api, burst.files)
        body = catalog.connector()
        answers = burst.all_at_once("POST", "/connectors", [body] * REQUESTS)
        assert Counter(a.status_code for a in answers) == {201: 1, 409: REQUESTS - 1}
        listed = burst.api.get("/connectors", params={"projectId": catalog.project_id}).json()
        assert [c["name"] for c in listed["data"]] == [body["name"]]
        tag = DeploymentFilterTags(all_=[f"project:{catalog.project_id}"])
        found = burst.prefect.read_deployments(deployment_filter=DeploymentFilter(tags=tag))
        assert [d.id for d in found] == [UUID(listed["data"][0]["prefectDeploymentId"])]


@dataclass
class TwoApis:
    urls: tuple[str, str]
    prefect: SyncPrefectClient
    files: Path

    def client(self, index: int) -> httpx.Client:
        return httpx.Client(base_url=f"{self.urls[index]}/api/v1", timeout=120)


@pytest.fixture
def two_apis(prefect_api_url: str, database_url: str, tmp_path) -> Iterator[TwoApis]:
    """Two API processes on one database and one Prefect, as a scaled-out deployment runs
    them behind a load balancer."""
    asyncio.run(bootstrap.ensure_work_pool("concurrency"))
    env = stack_env(prefect_api_url, database_url, "concurrency", tmp_path)
    ports = free_port(), free_port()
    urls = (f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}")
    with (
        running(api_server(env, ports[0], tmp_path / "api-a.log"), f"{urls[0]}/health"),
        running(api_server(env, ports[1], tmp_path / "api-b.log"), f"{urls[1]}/health"),
        SyncPrefectClient(prefect_api_url) as prefect,
    ):
        yield TwoApis(urls, prefect, tmp_path / "files")


class TestTwoApiProcesses:
    def test_patches_split_over_two_apis_leave_row_and_deployment_equal(self, two_apis: TwoApis):
        with two_apis.client(0) as first:
            catalog = make_catalog(first, two_apis.files)
            connector = created(first.post("/connectors", json=catalog.connector()))
        path = f"/api/v1/connectors/{connector['id']}"
        crons = [f"{minute} 4 * * *" for minute in range(20)]

        def send(index: int) -> httpx.Response:
            url = two_apis.urls[index % 2]  # every other request to the other process
            return httpx.patch(f"{url}{path}", json={"schedule": crons[index]}, timeout=120)

        with ThreadPoolExecutor(max_workers=len(crons)) as pool:
            answers = list(pool.map(send, range(len(crons))))

        assert Counter(a.status_code for a in answers) == {200: len(crons)}
        with two_apis.client(1) as second:
            row = second.get(f"/connectors/{connector['id']}").json()
            assert second.get(f"/connectors/{connector['id']}/drift").json()["inSync"] is True
        [schedule] = two_apis.prefect.read_deployment(UUID(row["prefectDeploymentId"])).schedules
        assert (row["schedule"] in crons, schedule.schedule.cron) == (True, row["schedule"])
        assert len(control_runs(two_apis.prefect, connector["id"])) == len(crons) + 1

    def test_an_idempotency_key_is_honoured_by_the_other_process(self, two_apis: TwoApis):
        key = {"Idempotency-Key": str(uuid.uuid4())}
        with two_apis.client(0) as first, two_apis.client(1) as second:
            catalog = make_catalog(first, two_apis.files)
            body = catalog.connector(schedule=None)
            made = first.post("/connectors", json=body, headers=key)
            again = second.post("/connectors", json=body, headers=key)
            other = second.post("/connectors", json=catalog.connector(), headers=key)
            listed = second.get("/connectors", params={"projectId": catalog.project_id}).json()

        assert (made.status_code, again.status_code) == (201, 201)
        assert again.json() == made.json()
        assert other.status_code == 422
        assert listed["count"] == 1
