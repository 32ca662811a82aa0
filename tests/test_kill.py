"""The API process killed (SIGKILL) half-way through a create, an update and a delete, after
Prefect changed and before the database committed: reconcile makes them agree again, and
nothing the database holds is lost."""

import json
import threading
from pathlib import Path
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

from bench._seed import created
from control_plane import deployments
from control_plane.processes import api_server, free_port, wait_for
from tests.helpers import reconcile_cli

CREATE, UPDATE, DELETE = (
    f"{flow}-connector:before-commit" for flow in ("create", "update", "delete")
)


def _killed_during(stack, tmp_path: Path, point: str, method: str, path: str, body=None) -> None:
    """Send one request to an API of the test's own, and kill it at `point`."""
    env = {**stack.env, "CONTROL_PLANE_PAUSE_POINTS": json.dumps([point])}
    # Its pause points are marked in a data dir of its own; its files are the stack's.
    env["CONTROL_PLANE_DATA_DIR"] = str(tmp_path)
    env["CONTROL_PLANE_FILE_ROOTS"] = json.dumps([str(stack.files)])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = api_server(env, port, tmp_path / "api.log").start()
    try:
        server.wait_healthy(f"{url}/health")
        request = threading.Thread(
            target=lambda: _quietly(method, f"{url}/api/v1{path}", body), daemon=True
        )
        request.start()
        wait_for(
            lambda: (tmp_path / f"paused-at-{point}").exists(),
            timeout=60,
            what=f"the flow to pause at {point}",
        )
    finally:
        server.kill()
    request.join(timeout=30)


def _quietly(method: str, url: str, body) -> None:
    try:
        httpx.request(method, url, json=body, timeout=120)
    except httpx.HTTPError:
        pass  # the process dies under the request


def _project_deployments(prefect: SyncPrefectClient, project_id: int):
    tag = DeploymentFilterTags(all_=[f"project:{project_id}"])
    return prefect.read_deployments(deployment_filter=DeploymentFilter(tags=tag))


def _agrees(api: httpx.Client, prefect: SyncPrefectClient, connector_id: int) -> dict:
    row = api.get(f"/connectors/{connector_id}").json()
    assert api.get(f"/connectors/{connector_id}/drift").json()["inSync"] is True
    deployment = prefect.read_deployment(UUID(row["prefectDeploymentId"]))
    assert deployments.actual(deployment).schedule == row["schedule"]
    return row


class TestKilledHalfway:
    def test_create_leaves_no_orphan(self, api, prefect, catalog, stack, tmp_path):
        body = catalog.connector()
        _killed_during(
            stack, tmp_path, "create-connector:before-commit", "POST", "/connectors", body
        )
        # Prefect has the deployment, the database has no row.
        assert len(_project_deployments(prefect, catalog.project_id)) == 1
        assert api.get("/connectors", params={"projectId": catalog.project_id}).json()["count"] == 0
        reconcile_cli(stack.env)
        assert _project_deployments(prefect, catalog.project_id) == []
        # Nothing is lost: the same create works now.
        created(api.post("/connectors", json=body))

    def test_update_keeps_the_stored_schedule(self, api, prefect, catalog, stack, tmp_path):
        connector = created(api.post("/connectors", json=catalog.connector(schedule="0 1 * * *")))
        path = f"/connectors/{connector['id']}"
        _killed_during(
            stack,
            tmp_path,
            "update-connector:before-commit",
            "PATCH",
            path,
            {"schedule": "0 2 * * *"},
        )
        assert api.get(f"{path}/drift").json()["action"] == "update"
        reconcile_cli(stack.env)
        row = _agrees(api, prefect, connector["id"])
        assert row["schedule"] == "0 1 * * *"

    def test_delete_keeps_the_connector_whole(self, api, prefect, catalog, stack, tmp_path):
        connector = created(api.post("/connectors", json=catalog.connector()))
        path = f"/connectors/{connector['id']}"
        _killed_during(stack, tmp_path, DELETE, "DELETE", path)
        assert api.get(f"{path}/drift").json()["action"] == "create"
        reconcile_cli(stack.env)
        _agrees(api, prefect, connector["id"])
        assert api.delete(path).status_code == 204
