"""What a person reads in the Prefect UI and the API: run forms and schemas with human titles,
deployments that say what they are, each control run's before and after (its artifact and its
event), the history the API reads back, and the overview reconcile keeps."""

import json
import secrets
from datetime import UTC, datetime, timedelta
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterName,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import ArtifactSort
from prefect.deployments import run_deployment

from bench._seed import MONTHLY, Catalog, created, unique
from control_plane.processes import wait_for
from tests.conftest import PUBLIC_TEST_HOST, Stack
from tests.helpers import control_runs, prefect_events, reconcile_cli

MASK = "********"


class TestTitles:
    def test_the_api_schemas_title_fields_for_a_person(self, stack: Stack):
        openapi = httpx.get(f"{stack.api_url}/openapi.json").json()
        schemas = openapi["components"]["schemas"]
        titles = [field["title"] for field in schemas["ConnectorCreate"]["properties"].values()]
        assert titles[:8] == [
            "Name",
            "Description",
            "Project ID",
            "Defined source ID",
            "Defined destination ID",
            "Schedule",
            "Time zone",
            "Active",
        ]
        assert "Source config override" in titles
        assert schemas["ConnectorCreate"]["properties"]["schedule"]["examples"] == ["0 */4 * * *"]
        path_titles = {
            (parameter["name"], parameter["schema"]["title"])
            for operation in openapi["paths"].values()
            for method in operation.values()
            for parameter in method.get("parameters", [])
            if parameter["in"] == "path"
        }
        assert path_titles == {
            ("connector_id", "Connector ID"),
            ("flow_run_id", "Flow run ID"),
            ("project_id", "Project ID"),
            ("endpoint_id", "Defined source ID"),
            ("endpoint_id", "Defined destination ID"),
        }

    @pytest.mark.usefixtures("control_deployments")
    def test_the_run_forms_title_fields_for_a_person(self, prefect: SyncPrefectClient):
        form = prefect.read_deployment_by_name("update-connector/update-connector")
        schema = form.parameter_openapi_schema
        # The UI orders fields by `position`: PostgreSQL's jsonb keeps no key order.
        fields = sorted(schema["properties"].values(), key=lambda field: field["position"])
        assert [field["title"] for field in fields] == [
            "Connector ID",
            "Changes",
            "Actor",
            "Expected version",
        ]
        changes = schema["definitions"]["ConnectorUpdate"]["properties"]
        assert changes["definedSourceId"]["title"] == "Defined source ID"
        assert changes["isActive"]["title"] == "Active"


def _http_connector(api: httpx.Client, catalog: Catalog, key: str) -> dict:
    source = created(
        api.post(
            "/defined-sources",
            json={
                "name": f"api-{secrets.token_hex(4)}",
                "type": "http",
                "config": {"url": f"http://{PUBLIC_TEST_HOST}:9/items"},
                "projectId": catalog.project_id,
            },
        )
    )
    body = catalog.connector(
        definedSourceId=source["id"], sourceConfigOverride={"headers": {"X-Api-Key": key}}
    )
    return created(api.post("/connectors", json=body))


class TestBeforeAndAfter:
    def test_an_update_publishes_its_changes_in_its_artifact_and_its_event(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog, prefect_api_url
    ):
        since = datetime.now(UTC) - timedelta(seconds=5)
        old_key, new_key = secrets.token_hex(8), secrets.token_hex(8)
        connector = _http_connector(api, catalog, old_key)
        change = {
            "schedule": "0 6 * * *",
            "sourceConfigOverride": {"headers": {"X-Api-Key": new_key}},
        }
        assert api.patch(f"/connectors/{connector['id']}", json=change).status_code == 200

        update = next(
            r for r in control_runs(prefect, connector["id"]) if r.name.startswith("update")
        )
        [artifact] = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[update.id]))
        )
        assert artifact.type == "table"
        assert old_key not in artifact.data and new_key not in artifact.data
        rows = {row["field"]: row for row in json.loads(artifact.data)}
        assert (rows["schedule"]["before"], rows["schedule"]["after"]) == (
            f'"{MONTHLY}"',
            '"0 6 * * *"',
        )
        secret = rows["sourceConfigOverride"]
        assert secret["secretChanged"] and secret["before"] == secret["after"]
        assert json.loads(secret["after"]) == {"headers": {"X-Api-Key": MASK}}

        events = wait_for(
            lambda: [
                e
                for e in prefect_events(prefect_api_url, f"connector.{connector['id']}", since)
                if e["event"] == "connector.rescheduled"
            ],
            timeout=60,
            what="the connector.rescheduled event",
        )
        changes = {c["field"]: c for c in events[0]["payload"]["changes"]}
        assert changes["schedule"] == {
            "field": "schedule",
            "before": MONTHLY,
            "after": "0 6 * * *",
            "secretChanged": False,
        }
        assert changes["sourceConfigOverride"]["secretChanged"] is True
        assert new_key not in json.dumps(events) and old_key not in json.dumps(events)


def _catalog_run(prefect: SyncPrefectClient, name: str) -> FlowRun:
    [run] = prefect.read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
    )
    return run


def _table(prefect: SyncPrefectClient, run: FlowRun):
    """The run's table artifact: ours (a failed run keeps its exception in one of Prefect's)."""
    found = prefect.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
    )
    [artifact] = [artifact for artifact in found if artifact.type == "table"]
    return artifact


class TestCatalogChanges:
    def test_each_change_of_a_source_is_a_run_with_its_changes_masked_and_an_event(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog, prefect_api_url
    ):
        since = datetime.now(UTC) - timedelta(seconds=5)
        old_key, new_key = secrets.token_hex(8), secrets.token_hex(8)
        name = unique("api")
        url = f"http://{PUBLIC_TEST_HOST}:9/items"
        body = {"name": name, "type": "http", "projectId": catalog.project_id}
        source = created(
            api.post(
                "/defined-sources",
                json={**body, "config": {"url": url, "headers": {"X-Key": old_key}}},
            )
        )
        path = f"/defined-sources/{source['id']}"
        change = {"name": f"{name}-2", "config": {"url": url, "headers": {"X-Key": new_key}}}
        assert api.patch(path, json=change).status_code == 200

        create = _catalog_run(prefect, f"create defined source {name!r}")
        update = _catalog_run(prefect, f"update defined source {source['id']}")
        for run in (create, update):
            assert run.state.is_completed() and "actor:anonymous" in run.tags
            assert old_key not in json.dumps(run.parameters) and new_key not in json.dumps(
                run.parameters
            )
        rows = {row["field"]: row for row in json.loads(_table(prefect, update).data)}
        assert (json.loads(rows["name"]["before"]), json.loads(rows["name"]["after"])) == (
            name,
            f"{name}-2",
        )
        assert (
            rows["config"]["secretChanged"] and rows["config"]["before"] == rows["config"]["after"]
        )
        assert json.loads(rows["config"]["after"]) == {"url": url, "headers": {"X-Key": MASK}}

        connector = created(
            api.post("/connectors", json=catalog.connector(definedSourceId=source["id"]))
        )
        assert api.delete(path).status_code == 409
        refused = _catalog_run(prefect, f"delete defined source {source['id']}")
        assert refused.state.is_failed()
        assert _table(prefect, refused).description.startswith("Refused: ")
        assert api.delete(f"/connectors/{connector['id']}").status_code == 204
        assert api.delete(path).status_code == 204

        resource = f"defined-source.{source['id']}"
        events = wait_for(
            lambda: len(found := prefect_events(prefect_api_url, resource, since)) >= 3 and found,
            timeout=60,
            what=f"the events of {resource}",
        )
        assert [e["event"] for e in events] == [
            "defined-source.created",
            "defined-source.updated",
            "defined-source.deleted",
        ]
        assert {
            "prefect.resource.id": f"project.{catalog.project_id}",
            "prefect.resource.role": "project",
        } in events[0]["related"]
        changed = {c["field"]: c for c in events[1]["payload"]["changes"]}
        assert changed["name"]["after"] == f"{name}-2" and changed["config"]["secretChanged"]
        assert old_key not in json.dumps(events) and new_key not in json.dumps(events)


class TestHistory:
    def test_history_reads_back_each_change_and_the_refusal_newest_first(
        self, api: httpx.Client, catalog: Catalog
    ):
        connector = created(api.post("/connectors", json=catalog.connector()))
        path = f"/connectors/{connector['id']}"
        assert api.patch(path, json={"schedule": "0 5 * * *"}).status_code == 200
        assert api.patch(path, json={"description": "nightly"}).status_code == 200
        stale = api.patch(path, json={"retries": 3}, headers={"If-Match": '"1"'})
        assert stale.status_code == 412

        history = api.get(f"{path}/history").json()
        assert history["count"] == 4
        refused, described, rescheduled, create = history["data"]
        assert [e["action"] for e in history["data"]] == [
            "update-connector",
            "update-connector",
            "update-connector",
            "create-connector",
        ]
        assert {e["actor"] for e in history["data"]} == {"anonymous"}
        assert "version 3, not 1" in refused["refused"] and refused["changes"] == []
        assert {"field": "retries", "value": 3} in refused["asked"]
        assert {"field": "expected_version", "value": 1} in refused["asked"]
        assert {c["field"]: (c["before"], c["after"]) for c in described["changes"]} == {
            "description": (None, "nightly"),
            "version": (2, 3),
        }
        assert (MONTHLY, "0 5 * * *") in [(c["before"], c["after"]) for c in rescheduled["changes"]]
        assert {c["field"] for c in create["changes"]} >= {"name", "schedule", "isActive"}
        assert all(c["before"] is None for c in create["changes"])

        page = api.get(f"{path}/history", params={"limit": 1, "offset": 1}).json()
        assert [e["flowRunId"] for e in page["data"]] == [described["flowRunId"]]

        assert api.post(f"{path}/reset").status_code == 204
        reset = api.get(f"{path}/history", params={"limit": 1}).json()["data"][0]
        assert reset["action"] == "reset-connector"
        assert reset["changes"] == [
            {"field": "cursor", "before": None, "after": None, "secretChanged": False}
        ]

    @pytest.mark.usefixtures("control_deployments")
    def test_a_refused_run_from_the_prefect_ui_shows_its_secrets_masked(
        self, api: httpx.Client, catalog: Catalog
    ):
        connector = _http_connector(api, catalog, secrets.token_hex(8))
        key = secrets.token_hex(8)
        # As the run form sends it: the raw override, a secret in it, and a stale version.
        changes = {"sourceConfigOverride": {"headers": {"X-Api-Key": key}}}
        parameters = {"connector_id": connector["id"], "changes": changes, "expected_version": 9}
        run = run_deployment(
            name="update-connector/update-connector", parameters=parameters, timeout=120
        )
        assert run.state.is_failed(), run.state

        history = api.get(f"/connectors/{connector['id']}/history").json()
        assert key not in json.dumps(history)
        refused = history["data"][0]
        assert "is at version 1, not 9" in refused["refused"]
        masked = {"field": "sourceConfigOverride", "value": {"headers": {"X-Api-Key": MASK}}}
        assert masked in refused["asked"]


class TestDeploymentDescription:
    def test_it_says_what_moves_for_whom_and_when_and_follows_changes(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog
    ):
        project = api.get(f"/projects/{catalog.project_id}").json()["name"]
        connector = created(api.post("/connectors", json=catalog.connector()))
        path = f"/connectors/{connector['id']}"

        def description() -> str:
            return prefect.read_deployment(UUID(connector["prefectDeploymentId"])).description

        assert description() == (
            f"**{connector['name']}** of project **{project}**: csv → jsonl, "
            f"runs at 03:00, on day 1 of the month (UTC).\n\nAPI: `/api/v1{path}`"
        )
        change = {"schedule": "30 2 * * 1-5", "timezone": "America/New_York"}
        assert api.patch(path, json=change).status_code == 200
        assert "runs at 02:30, Monday through Friday (America/New_York)." in description()
        name = unique("renamed")
        assert api.patch(path, json={"name": name}).status_code == 200
        assert description().startswith(f"**{name}** of project **{project}**")

        renamed = unique("project")
        assert (
            api.patch(f"/projects/{catalog.project_id}", json={"name": renamed}).status_code == 200
        )
        drift = api.get(f"{path}/drift").json()
        assert drift["action"] == "update"
        assert any(d.startswith("description:") and renamed in d for d in drift["differences"])
        assert api.delete(path).status_code == 204  # no drift left for other tests' reconciles


class TestOverview:
    def test_reconcile_publishes_every_connector_at_a_glance(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog, stack: Stack
    ):
        since = datetime.now(UTC)
        active = created(api.post("/connectors", json=catalog.connector()))
        inactive = created(api.post("/connectors", json=catalog.connector(isActive=False)))
        reconcile_cli(stack.env, "--dry-run")  # a report of every pass, repairs or not

        [artifact] = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["connectors-overview"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
        assert artifact.created >= since
        rows = {row["connector"]: row for row in json.loads(artifact.data)}
        assert rows[f"{active['id']}: {active['name']}"] == {
            "connector": f"{active['id']}: {active['name']}",
            "project": api.get(f"/projects/{catalog.project_id}").json()["name"],
            "moves": "csv → jsonl",
            "state": "active",
            "schedule": "at 03:00, on day 1 of the month (UTC)",
            "last run": "never",
            "consecutive failures": "0",
            "status reason": "",
        }
        assert rows[f"{inactive['id']}: {inactive['name']}"]["state"] == "inactive"
