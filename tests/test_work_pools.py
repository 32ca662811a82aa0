"""The connectors' work pool as a platform runs it: job variables (an image, env) on every
connector deployment, and a pool of another worker type created from Prefect's template. Only
the process type runs here; docker and kubernetes pools are created, not run."""

import asyncio
import json
import uuid
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient

from bench._seed import Catalog, created
from control_plane import bootstrap, deployments
from control_plane.errors import WorkPoolMissing
from control_plane.processes import api_server, free_port, running
from tests.conftest import Stack

JOB_VARIABLES = {"env": {"CONNECTOR_MARK": "on"}}


def test_job_variables_reach_the_deployment_and_drift_names_them(
    stack: Stack, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog, tmp_path
) -> None:
    env = {**stack.env, "CONTROL_PLANE_JOB_VARIABLES": json.dumps(JOB_VARIABLES)}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        running(api_server(env, port, tmp_path / "api.log"), f"{url}/health"),
        httpx.Client(base_url=f"{url}/api/v1", timeout=60) as configured,
    ):
        connector = created(configured.post("/connectors", json=catalog.connector()))

    deployment = prefect.read_deployment(UUID(connector["prefectDeploymentId"]))
    assert deployment.job_variables == JOB_VARIABLES
    # The stack's own API has none set: to it, the deployment drifted.
    drift = api.get(f"/connectors/{connector['id']}/drift").json()
    assert drift["inSync"] is False
    assert any(line.startswith("job_variables") for line in drift["differences"])


def test_a_pool_of_another_worker_type_is_made_from_prefects_template(
    prefect: SyncPrefectClient,
) -> None:
    name = f"k8s-{uuid.uuid4().hex[:8]}"
    asyncio.run(bootstrap.ensure_work_pool(name, worker_type="kubernetes"))
    asyncio.run(bootstrap.ensure_work_pool(name, worker_type="kubernetes"))  # exists: kept

    pool = prefect.read_work_pool(name)
    assert pool.type == "kubernetes"
    assert {"image", "namespace", "env"} <= set(pool.base_job_template["variables"]["properties"])
    with pytest.raises(WorkPoolMissing, match="no worker type 'mainframe'"):
        asyncio.run(bootstrap.ensure_work_pool(f"{name}-x", worker_type="mainframe"))


def test_a_create_after_the_sync_flow_went_missing_upserts_it_again(
    prefect: SyncPrefectClient, stack: Stack
) -> None:
    # As if someone deleted the flow in Prefect after this process cached its id.
    deployments._flow_ids[deployments.sync_connector.name] = uuid.uuid4()
    spec = deployments.DeploymentSpec(
        name=f"flow-gone-{uuid.uuid4().hex[:8]}",
        schedule=None,
        timezone=None,
        parameters={"connector_id": 0},
        tags=(),  # not managed: no reconcile of another test takes it for an orphan
        work_pool=stack.work_pool,
        work_queue="default",
    )

    deployment_id = asyncio.run(deployments.apply(None, None, spec))

    assert deployment_id is not None
    flow = prefect.read_flow(prefect.read_deployment(deployment_id).flow_id)
    assert flow.name == deployments.sync_connector.name
    assert deployments._flow_ids[flow.name] == flow.id
    prefect.delete_deployment(deployment_id)
