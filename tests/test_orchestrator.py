"""Prefect's errors as the control plane's: a 404 says which object Prefect lacks."""

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient

from bench._seed import Catalog, unique
from control_plane import deployments
from control_plane.errors import DeploymentMissing, PrefectRejected, WorkPoolMissing
from control_plane.orchestrator import translate_error
from control_plane.processes import api_server, free_port, running
from tests.conftest import Stack


def _error_of(call) -> Exception:
    try:
        call()
    except Exception as error:
        return error
    raise AssertionError("the call did not fail")


class TestNotFound:
    @pytest.mark.parametrize(
        ("method", "kind", "what"),
        [
            ("read_deployment", DeploymentMissing, "deployment"),
            ("delete_deployment", DeploymentMissing, "deployment"),
            ("create_flow_run_from_deployment", DeploymentMissing, "deployment"),
            ("read_flow_run", PrefectRejected, "flow run"),
            ("read_flow", PrefectRejected, "flow"),
            ("read_work_pool", WorkPoolMissing, "work pool"),
        ],
    )
    def test_the_error_names_what_is_missing(
        self, prefect: SyncPrefectClient, method: str, kind: type, what: str
    ):
        missing = uuid.uuid4()
        argument = str(missing) if what == "work pool" else missing
        error = translate_error(_error_of(lambda: getattr(prefect, method)(argument)))
        assert type(error) is kind, error.detail
        assert what in error.detail and str(missing) in error.detail

    def test_a_missing_deployment_reads_as_none(self, prefect_api_url: str):
        assert asyncio.run(deployments.read_by_name(unique("connector"))) is None


class TestMissingWorkPool:
    def test_a_create_names_the_pool_and_stores_nothing(
        self, stack: Stack, api: httpx.Client, catalog: Catalog, tmp_path: Path
    ):
        pool = unique("no-such-pool")
        env = {**stack.env, "CONTROL_PLANE_WORK_POOL": pool}
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with (
            running(api_server(env, port, tmp_path / "api.log"), f"{base}/health"),
            httpx.Client(base_url=f"{base}/api/v1", timeout=60) as client,
        ):
            response = client.post("/connectors", json=catalog.connector())
        assert response.status_code == 502, response.text
        detail = response.json()["detail"]
        assert f'work pool "{pool}"' in detail and "CONTROL_PLANE_WORK_POOL" in detail
        listed = api.get("/connectors", params={"projectId": catalog.project_id})
        assert listed.json()["count"] == 0, listed.text
