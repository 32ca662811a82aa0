"""Connection checks through the API: each one a `check-connector` run on a worker of the
connectors' work pool, named and tagged for the audit log, answered with its steps; and
activation that waits for a passing check when CONTROL_PLANE_REQUIRE_CHECK is on.

What each type's steps find is tested against real servers in test_connector_types.py."""

import asyncio
import secrets
from collections.abc import Iterator
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)

from bench._seed import POSTGRES_ADMIN_URL, Catalog, created
from control_plane import bootstrap
from control_plane.processes import api_server, free_port, running
from tests.conftest import Stack
from tests.helpers import POSTGRESQL_ONLY, execute


def _check(api: httpx.Client, path: str, body: dict | None = None) -> dict:
    response = api.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _steps(check: dict) -> dict[tuple[str, str], str]:
    return {(step["kind"], step["name"]): step["status"] for step in check["steps"]}


class TestChecks:
    def test_a_defined_source_is_checked_by_an_audited_run_on_the_worker(
        self, api: httpx.Client, prefect: SyncPrefectClient, stack: Stack, catalog: Catalog
    ) -> None:
        check = _check(api, f"/defined-sources/{catalog.source_id}/check")

        assert check["status"] == "passed", check
        assert _steps(check) == {
            ("source", "resolve"): "passed",
            ("source", "connect"): "passed",
            ("source", "read"): "passed",
        }
        assert check["message"] == "every step passed"
        run = prefect.read_flow_run(UUID(check["flowRunId"]))
        assert run.name == f"check defined source {catalog.source_id}"
        assert {"actor:anonymous", f"project:{catalog.project_id}"} <= set(run.tags)
        assert run.state.is_completed()
        assert run.parameters == {"check_id": check["id"]}
        assert prefect.read_deployment(run.deployment_id).work_pool_name == stack.work_pool

    # What the row and the run do is the same for any database: the one above covers SQLite.
    @POSTGRESQL_ONLY
    def test_an_unsaved_destination_that_cannot_be_written_fails_at_that_step(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog
    ) -> None:
        body = {
            "projectId": catalog.project_id,
            "type": "jsonl",
            "config": {"path": "in.csv/out.jsonl"},  # under a file
        }

        check = _check(api, "/defined-destinations/check", body)

        assert check["status"] == "failed"
        assert _steps(check) == {
            ("destination", "resolve"): "passed",
            ("destination", "write"): "failed",
        }
        assert check["message"].startswith("destination write: 'in.csv/out.jsonl' cannot be")
        run = prefect.read_flow_run(UUID(check["flowRunId"]))
        assert run.state.is_failed() and run.state.message == check["message"]
        listed = api.get("/defined-destinations", params={"projectId": catalog.project_id})
        assert listed.json()["count"] == 1  # the catalog's own: a check saves nothing

    @POSTGRESQL_ONLY
    def test_a_connector_is_checked_on_both_sides(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog
    ) -> None:
        connector = created(api.post("/connectors", json=catalog.connector()))

        check = _check(api, f"/connectors/{connector['id']}/check")

        assert check["status"] == "passed", check
        assert [(s["kind"], s["name"]) for s in check["steps"]] == [
            ("source", "resolve"),
            ("source", "connect"),
            ("source", "read"),
            ("destination", "resolve"),
            ("destination", "write"),
        ]
        run = prefect.read_flow_run(UUID(check["flowRunId"]))
        assert f"connector:{connector['id']}" in run.tags
        [last, *_] = api.get(f"/connectors/{connector['id']}/history").json()["data"]
        assert (last["action"], last["name"]) == (
            "check-connector",
            f"check connector {connector['id']}",
        )


@POSTGRESQL_ONLY
class TestDiscovery:
    def test_a_defined_source_lists_its_streams_from_a_run_on_the_worker(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog
    ) -> None:
        response = api.get(f"/defined-sources/{catalog.source_id}/streams")

        assert response.status_code == 200, response.text
        [stream] = response.json()["streams"]
        assert stream["name"] == "default"
        assert stream["jsonSchema"]["properties"] == {
            "id": {"type": "integer"},
            "name": {"type": "string"},
        }
        assert stream["cursorCandidates"] == ["id"]
        check = response.json()["check"]
        assert check["status"] == "passed"
        assert check["steps"][-1] == {
            "kind": "source",
            "name": "discover",
            "status": "passed",
            "message": "found 1 stream",
        }
        run = prefect.read_flow_run(UUID(check["flowRunId"]))
        assert run.name == f"discover the streams of defined source {catalog.source_id}"

    def test_a_source_that_cannot_be_read_lists_none_and_says_why(
        self, api: httpx.Client, catalog: Catalog
    ) -> None:
        (catalog.folder / "in.csv").unlink()

        response = api.get(f"/defined-sources/{catalog.source_id}/streams")

        assert response.status_code == 200, response.text
        assert response.json()["streams"] == []
        check = response.json()["check"]
        assert check["status"] == "failed"
        assert check["message"] == "source connect: 'in.csv' is no file in the project's folder"
        assert (
            check["steps"][-1]["name"] == "discover" and check["steps"][-1]["status"] == "skipped"
        )


class TestRefusedBeforeAnyRun:
    def test_a_masked_secret_in_an_unsaved_config_is_a_422(
        self, api: httpx.Client, catalog: Catalog
    ) -> None:
        body = {
            "projectId": catalog.project_id,
            "type": "sql",
            "config": {"url": "postgresql://app:********@db.example.com/x", "table": "t"},
        }

        response = api.post("/defined-sources/check", json=body)

        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", "config"] and error["msg"].endswith("send it")

    def test_an_unsaved_connector_between_another_projects_endpoints_is_a_422(
        self, api: httpx.Client, catalog: Catalog
    ) -> None:
        other = created(api.post("/projects", json={"name": f"other-{secrets.token_hex(4)}"}))
        body = {
            "projectId": other["id"],
            "definedSourceId": catalog.source_id,
            "definedDestinationId": catalog.destination_id,
        }

        response = api.post("/connectors/check", json=body)

        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", "definedSourceId"]

    def test_an_unknown_project_is_a_422(self, api: httpx.Client) -> None:
        body = {"projectId": 999_999_999, "type": "csv", "config": {"path": "in.csv"}}

        response = api.post("/defined-sources/check", json=body)

        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", "projectId"]

    def test_an_unknown_type_is_a_422(self, api: httpx.Client, catalog: Catalog) -> None:
        body = {"projectId": catalog.project_id, "type": "ftp", "config": {}}

        response = api.post("/defined-sources/check", json=body)

        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", "type"] and "unknown source type 'ftp'" in error["msg"]


@POSTGRESQL_ONLY
class TestSecretsOfChecks:
    def test_a_checked_password_reaches_neither_prefect_nor_stays_stored(
        self, api: httpx.Client, prefect: SyncPrefectClient, stack: Stack, catalog: Catalog
    ) -> None:
        password = f"pw-{secrets.token_hex(8)}"
        url = POSTGRES_ADMIN_URL.replace(
            "postgresql://postgres@", f"postgresql://postgres:{password}@"
        )
        body = {
            "projectId": catalog.project_id,
            "type": "sql",
            "config": {"url": url, "query": "SELECT 1 AS one"},
        }

        check = _check(api, "/defined-sources/check", body)

        assert check["status"] == "passed", check
        run = prefect.read_flow_run(UUID(check["flowRunId"]))
        logs = prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
        seen = [
            str(run.parameters),
            *(log.message for log in logs),
            *(str(a.data) for a in artifacts),
        ]
        assert artifacts and not any(password in text for text in seen)
        [(target,)] = execute(
            stack.database_url, f"SELECT target FROM connection_check WHERE id = '{check['id']}'"
        )
        assert target is None


@pytest.fixture(scope="module")
def checked_api(stack: Stack, tmp_path_factory) -> Iterator[httpx.Client]:
    """An API process of the stack that activates only connectors whose check passed."""
    env = {**stack.env, "CONTROL_PLANE_REQUIRE_CHECK": "true"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("checked") / "api.log"
    with (
        running(api_server(env, port, log), f"{url}/health"),
        httpx.Client(base_url=f"{url}/api/v1", timeout=60) as client,
    ):
        yield client


@POSTGRESQL_ONLY
class TestRequireCheck:
    def test_activation_waits_for_a_passing_check_of_the_configs_as_they_are(
        self, checked_api: httpx.Client, catalog: Catalog
    ) -> None:
        api = checked_api
        refused = api.post("/connectors", json=catalog.connector())
        assert refused.status_code == 409
        assert "create it with isActive false" in refused.json()["detail"]
        connector = created(api.post("/connectors", json=catalog.connector(isActive=False)))
        path = f"/connectors/{connector['id']}"

        unchecked = api.patch(path, json={"isActive": True})
        assert unchecked.status_code == 409
        assert f"POST /api/v1/connectors/{connector['id']}/check" in unchecked.json()["detail"]

        assert _check(api, f"{path}/check")["status"] == "passed"
        changed = api.patch(path, json={"destinationConfigOverride": {"path": "other.jsonl"}})
        assert changed.status_code == 200, changed.text
        assert api.patch(path, json={"isActive": True}).status_code == 409  # checked before

        assert _check(api, f"{path}/check")["status"] == "passed"
        activated = api.patch(path, json={"isActive": True})
        assert activated.status_code == 200, activated.text
        assert activated.json()["isActive"] is True


@POSTGRESQL_ONLY
class TestNoWorker:
    def test_a_check_no_worker_takes_fails_in_time_and_its_run_is_cancelled(
        self, stack: Stack, prefect: SyncPrefectClient, catalog: Catalog, tmp_path
    ) -> None:
        idle_pool = f"idle-{secrets.token_hex(4)}"
        asyncio.run(bootstrap.ensure_work_pool(idle_pool))
        env = {
            **stack.env,
            "CONTROL_PLANE_WORK_POOL": idle_pool,
            "CONTROL_PLANE_CHECK_TIMEOUT_SECONDS": "2",
        }
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with (
            running(api_server(env, port, tmp_path / "api.log"), f"{url}/health"),
            httpx.Client(base_url=f"{url}/api/v1", timeout=60) as api,
        ):
            check = _check(api, f"/defined-sources/{catalog.source_id}/check")

        assert check["status"] == "failed" and check["steps"] == []
        assert check["message"] == (
            "no result within 2 s (CONTROL_PLANE_CHECK_TIMEOUT_SECONDS): is a worker of the "
            f"work pool '{idle_pool}' running?"
        )
        assert prefect.read_flow_run(UUID(check["flowRunId"])).state.is_cancelled()
