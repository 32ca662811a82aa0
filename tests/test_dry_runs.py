"""`?dryRun=true` on create, PATCH and DELETE answers what the change would do and changes
nothing: not the row, its version, the deployment or its scheduled runs. Each plan is a run of
`plan-connector-change`, which the audit log tells from the changes."""

from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowFilter, FlowFilterName

from tests.helpers import Catalog, created, scheduled_runs, unique
from tests.stack import wait_for

DRY = {"dryRun": "true"}


def _untouched(api: httpx.Client, prefect: SyncPrefectClient, connector: dict):
    """What a dry run must leave as it was: the row with its ETag, the deployment's `updated`
    timestamp and schedule, the ids of its scheduled runs."""
    answer = api.get(f"/connectors/{connector['id']}")
    row = answer.json()
    row.pop("nextRunAt")
    deployment = prefect.read_deployment(UUID(connector["prefectDeploymentId"]))
    runs = {run.id for run in scheduled_runs(prefect, deployment.id)}
    return row, answer.headers["ETag"], deployment.updated, deployment.schedules, runs


@pytest.fixture
def scheduled(api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog) -> dict:
    """An active connector whose deployment has its scheduled runs already."""
    connector = created(api.post("/connectors", json=catalog.connector(schedule="0 */4 * * *")))
    wait_for(
        lambda: scheduled_runs(prefect, connector["prefectDeploymentId"]),
        timeout=60,
        what="Prefect's scheduler to create the connector's runs",
    )
    return connector


def _plans(prefect: SyncPrefectClient) -> list[str]:
    runs = prefect.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["plan-connector-change"])), limit=200
    )
    return [run.name for run in runs]


class TestDryRuns:
    def test_create_plans_the_deployment_and_creates_nothing(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog
    ):
        spec = catalog.connector(schedule="30 2 * * *", timezone="America/New_York")
        answer = api.post("/connectors", params=DRY, json=spec)
        assert answer.status_code == 200, answer.text
        plan = answer.json()
        assert (plan["dryRun"], plan["action"], plan["connectorId"]) == (True, "create", None)
        changes = {c["field"]: (c["before"], c["after"]) for c in plan["changes"]}
        assert changes["schedule"] == (None, "30 2 * * *")
        assert changes["name"] == (None, spec["name"])
        deployment = plan["deployment"]
        assert deployment["action"] == "create"
        differences = {d["field"]: (d["before"], d["after"]) for d in deployment["differences"]}
        assert differences["schedule"] == (None, "30 2 * * *")
        assert "tags" not in differences  # they carry the id, given on commit
        assert len(plan["nextRuns"]) == 5
        assert all(run["localTime"].endswith(("-05:00", "-04:00")) for run in plan["nextRuns"])
        assert any("02:30 does not exist" in warning for warning in plan["warnings"])
        listed = api.get("/connectors", params={"projectId": catalog.project_id}).json()
        assert listed["count"] == 0
        assert f"plan: create connector {spec['name']!r} in project {catalog.project_id}" in (
            _plans(prefect)
        )

    def test_a_refused_create_is_the_same_4xx(self, api: httpx.Client, catalog: Catalog):
        spec = catalog.connector(definedSourceId=987654321)
        real = api.post("/connectors", json=spec)
        dry = api.post("/connectors", params=DRY, json=spec)
        assert dry.status_code == real.status_code == 422
        assert dry.json() == real.json()

    def test_a_reschedule_shows_the_runs_it_drops_and_changes_nothing(
        self, api: httpx.Client, prefect: SyncPrefectClient, scheduled: dict
    ):
        before = _untouched(api, prefect, scheduled)
        answer = api.patch(
            f"/connectors/{scheduled['id']}",
            params=DRY,
            json={"schedule": "15 3 * * *", "timezone": "Europe/Berlin"},
            headers={"If-Match": before[1]},
        )
        assert answer.status_code == 200, answer.text
        plan = answer.json()
        assert plan["action"] == "update" and plan["connectorId"] == scheduled["id"]
        assert {c["field"]: (c["before"], c["after"]) for c in plan["changes"]} == {
            "schedule": ("0 */4 * * *", "15 3 * * *"),
            "timezone": ("UTC", "Europe/Berlin"),
            "version": (1, 2),
        }
        assert plan["deployment"]["action"] == "update"
        assert plan["deployment"]["name"] == f"connector-{scheduled['id']}"
        assert {d["field"] for d in plan["deployment"]["differences"]} == {"schedule", "timezone"}
        assert {UUID(run["flowRunId"]) for run in plan["runsDropped"]} == before[4]
        assert {run["why"] for run in plan["runsDropped"]} == {"deleted by the deployment's update"}
        assert all(run["localTime"].endswith(("+01:00", "+02:00")) for run in plan["nextRuns"])
        assert _untouched(api, prefect, scheduled) == before

    def test_deactivate_and_delete_show_what_goes(
        self, api: httpx.Client, prefect: SyncPrefectClient, scheduled: dict
    ):
        before = _untouched(api, prefect, scheduled)
        path = f"/connectors/{scheduled['id']}"
        for answer in (
            api.patch(path, params=DRY, json={"isActive": False}),
            api.delete(path, params=DRY),
        ):
            assert answer.status_code == 200, answer.text
            plan = answer.json()
            assert plan["deployment"]["action"] == "delete"
            assert {run["why"] for run in plan["runsDropped"]} == {"deleted with the deployment"}
            assert {UUID(run["flowRunId"]) for run in plan["runsDropped"]} == before[4]
            assert plan["nextRuns"] == []
        assert plan["action"] == "delete"
        assert {c["field"] for c in plan["changes"]} >= {"name", "schedule", "isActive"}
        assert _untouched(api, prefect, scheduled) == before

    def test_a_secret_that_changes_shows_masked(self, api: httpx.Client, catalog: Catalog):
        config = {"url": "postgresql://postgres:old-secret@127.0.0.1:5432/test", "table": "t"}
        body = {"name": unique("sql"), "type": "sql", "config": config}
        source = created(
            api.post("/defined-sources", json={**body, "projectId": catalog.project_id})
        )
        spec = catalog.connector(definedSourceId=source["id"], isActive=False)
        connector = created(api.post("/connectors", json=spec))
        override = {"url": "postgresql://postgres:new-secret@127.0.0.1:5432/test"}
        answer = api.patch(
            f"/connectors/{connector['id']}", params=DRY, json={"sourceConfigOverride": override}
        )
        assert answer.status_code == 200, answer.text
        assert "new-secret" not in answer.text
        [change] = [c for c in answer.json()["changes"] if c["field"] == "sourceConfigOverride"]
        assert change["secretChanged"] is False  # the override was empty: the change shows
        stored = api.patch(
            f"/connectors/{connector['id']}", json={"sourceConfigOverride": override}
        )
        assert stored.status_code == 200, stored.text
        rotated = {"url": "postgresql://postgres:newer-secret@127.0.0.1:5432/test"}
        answer = api.patch(
            f"/connectors/{connector['id']}", params=DRY, json={"sourceConfigOverride": rotated}
        )
        [change] = [c for c in answer.json()["changes"] if c["field"] == "sourceConfigOverride"]
        assert change["secretChanged"] is True and change["before"] == change["after"]
        assert "newer-secret" not in answer.text

    def test_a_stale_etag_is_refused_as_for_the_real_change(
        self, api: httpx.Client, scheduled: dict
    ):
        path = f"/connectors/{scheduled['id']}"
        assert api.patch(path, json={"description": unique("changed")}).status_code == 200
        stale = {"If-Match": '"1"'}
        assert api.delete(path, params=DRY, headers=stale).status_code == 412
        assert api.patch(path, params=DRY, json={"name": "x"}, headers=stale).status_code == 412
