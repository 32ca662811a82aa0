"""Prefect stopped mid-test: actions answer 503 with a reason, nothing half-done is stored,
and once Prefect is back the same API process works again."""

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from bench._seed import created, make_catalog
from control_plane import bootstrap
from control_plane.processes import Process, api_server, free_port, running, wait_for
from tests.conftest import stack_env, start_prefect_server


@dataclass
class Outage:
    prefect: Process
    prefect_health: str
    api_url: str
    api: httpx.Client
    files: Path  # the API's file root, under its data dir


@pytest.fixture(scope="module")
def outage(database_url: str, tmp_path_factory) -> Iterator[Outage]:
    """A Prefect server of this module's own, which the test may stop, and an API on it."""
    home: Path = tmp_path_factory.mktemp("outage")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    prefect = start_prefect_server(home / "prefect", port)
    with running(prefect, f"{url}/health"):
        with temporary_settings({PREFECT_API_URL: url}):
            asyncio.run(bootstrap.ensure_work_pool("outage"))
        api_port = free_port()
        env = stack_env(url, database_url, "outage", home)
        with (
            running(
                api_server(env, api_port, home / "api.log"), f"http://127.0.0.1:{api_port}/health"
            ),
            httpx.Client(base_url=f"http://127.0.0.1:{api_port}/api/v1", timeout=120) as client,
        ):
            api_url = f"http://127.0.0.1:{api_port}"
            yield Outage(prefect, f"{url}/health", api_url, client, home / "files")


class TestPrefectOutage:
    def test_actions_fail_cleanly_and_recover(self, outage: Outage):
        api = outage.api
        catalog = make_catalog(api, outage.files)
        connector = created(api.post("/connectors", json=catalog.connector()))
        path = f"/connectors/{connector['id']}"
        stored = api.get(path).json()

        outage.prefect.stop()
        health = httpx.get(f"{outage.api_url}/health")
        assert health.status_code == 503
        assert health.json()["detail"]["database"] == "ok"
        assert "cannot be reached" in health.json()["detail"]["prefect"]

        attempts = [
            ("PATCH", path, {"schedule": "0 1 * * *"}),
            ("PATCH", path, {"isActive": False}),
            ("POST", f"{path}/trigger", None),
            ("DELETE", path, None),
            ("POST", "/connectors", catalog.connector()),
        ]
        for method, url, body in attempts:
            response = api.request(method, url, json=body)
            assert response.status_code == 503, (method, url, response.text)
            assert "Prefect" in response.json()["detail"], response.text
            assert api.get(path).json() == stored
        listed = api.get("/connectors", params={"projectId": catalog.project_id}).json()
        assert listed["count"] == 1

        outage.prefect.start().wait_healthy(outage.prefect_health)
        response = api.patch(path, json={"schedule": "0 1 * * *"})
        assert response.status_code == 200, response.text
        assert response.json()["prefectDeploymentId"] == connector["prefectDeploymentId"]
        wait_for(
            lambda: httpx.get(f"{outage.api_url}/health").status_code == 200,
            timeout=30,
            what="health",
        )
