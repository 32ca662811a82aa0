"""`?dryRun=true` on create, PATCH and DELETE answers what the change would do and changes
nothing: not the row, its version, the deployment or its scheduled runs. Each plan of a
connector is a run of `plan-connector-change`, which the audit log tells from the changes; a
plan of the catalog (projects, defined sources and destinations) is a plain request, as the
catalog's writes are."""

import uuid
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowFilter,
    FlowFilterName,
)

from bench._seed import MONTHLY, Catalog, created, make_catalog, unique
from control_plane.api.auth import READ
from control_plane.connectors import mask_url
from control_plane.processes import wait_for
from tests.conftest import AuthApi, Stack
from tests.helpers import scheduled_runs

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
    connector = created(api.post("/connectors", json=catalog.connector(schedule=MONTHLY)))
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
            "schedule": (MONTHLY, "15 3 * * *"),
            "timezone": ("UTC", "Europe/Berlin"),
            "version": (1, 2),
        }
        assert plan["deployment"]["action"] == "update"
        assert plan["deployment"]["name"] == f"connector-{scheduled['id']}"
        differences = {d["field"] for d in plan["deployment"]["differences"]}
        assert differences == {"schedule", "timezone", "description"}  # the schedule in words
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

    def test_actions_without_a_plan_refuse_a_dry_run_and_do_nothing(
        self, api: httpx.Client, prefect: SyncPrefectClient, scheduled: dict
    ):
        path = f"/connectors/{scheduled['id']}"
        deployment = DeploymentFilter(
            id=DeploymentFilterId(any_=[scheduled["prefectDeploymentId"]])
        )
        before = (
            _untouched(api, prefect, scheduled),
            prefect.read_flow_runs(deployment_filter=deployment),
        )
        for action in ("trigger", "reset", f"runs/{uuid.uuid4()}/cancel"):
            answer = api.post(f"{path}/{action}", params=DRY)
            assert answer.status_code == 422, answer.text
            [error] = answer.json()["detail"]
            assert error["loc"] == ["query", "dryRun"] and "has no dry run" in error["msg"]
        after = (
            _untouched(api, prefect, scheduled),
            prefect.read_flow_runs(deployment_filter=deployment),
        )
        assert after == before


def _sql(kind: str, project_id: int, password: str) -> dict:
    url = f"postgresql://postgres:{password}@127.0.0.1:5432/test"
    return {
        "name": unique(f"sql-{kind}"),
        "type": "sql",
        "config": {"url": url, "table": "t"},
        "projectId": project_id,
    }


class TestCatalogDryRuns:
    """The same for projects and defined sources and destinations: the real checks in the
    request's transaction, rolled back; plain requests, as their writes are."""

    def test_a_project_create_plans_and_stores_nothing(self, api: httpx.Client):
        first = created(api.post("/projects", json={"name": unique("project")}))
        count = api.get("/projects").json()["count"]
        name = unique("project")
        answer = api.post("/projects", params=DRY, json={"name": name, "description": "d"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "dryRun": True,
            "action": "create",
            "kind": "project",
            "id": None,
            "changes": [
                {"field": "name", "before": None, "after": name, "secretChanged": False},
                {"field": "description", "before": None, "after": "d", "secretChanged": False},
                {"field": "owners", "before": None, "after": [], "secretChanged": False},
                {"field": "notifications", "before": None, "after": [], "secretChanged": False},
            ],
            "usedBy": [],
        }
        assert api.get("/projects").json()["count"] == count
        # No sequence id spent: the next project gets the id after the first's.
        assert created(api.post("/projects", json={"name": name}))["id"] == first["id"] + 1

    def test_a_source_create_plans_masked_and_stores_nothing(
        self, api: httpx.Client, catalog: Catalog
    ):
        body = _sql("source", catalog.project_id, "first-secret")
        first = created(api.post("/defined-sources", json=body))
        body = _sql("source", catalog.project_id, "planned-secret")
        answer = api.post("/defined-sources", params=DRY, json=body)
        assert answer.status_code == 200, answer.text
        assert "planned-secret" not in answer.text
        plan = answer.json()
        assert (plan["action"], plan["kind"], plan["id"], plan["usedBy"]) == (
            "create",
            "source",
            None,
            [],
        )
        changes = {c["field"]: (c["before"], c["after"]) for c in plan["changes"]}
        assert changes.keys() == {"name", "type", "config", "projectId"}
        assert changes["config"] == (
            None,
            {**body["config"], "url": mask_url(body["config"]["url"])},
        )
        listed = api.get("/defined-sources", params={"projectId": catalog.project_id}).json()
        assert {s["id"] for s in listed["data"]} == {catalog.source_id, first["id"]}
        assert created(api.post("/defined-sources", json=body))["id"] == first["id"] + 1

    def test_a_rotated_secret_shows_as_changed_and_never_shows(
        self, api: httpx.Client, catalog: Catalog
    ):
        body = _sql("destination", catalog.project_id, "old-secret")
        destination = created(api.post("/defined-destinations", json=body))
        path = f"/defined-destinations/{destination['id']}"
        stored = api.get(path).json()
        rotated = _sql("destination", catalog.project_id, "new-secret")["config"]
        answer = api.patch(path, params=DRY, json={"config": rotated})
        assert answer.status_code == 200, answer.text
        assert "new-secret" not in answer.text and "old-secret" not in answer.text
        plan = answer.json()
        assert (plan["action"], plan["kind"], plan["id"]) == (
            "update",
            "destination",
            destination["id"],
        )
        [change] = plan["changes"]
        assert change["field"] == "config" and change["secretChanged"] is True
        assert change["before"] == change["after"] == stored["config"]
        assert api.get(path).json() == stored
        # The stored secret is still the old one: sending it back changes nothing.
        unchanged = api.patch(
            path, params=DRY, json={"config": body["config"], "name": body["name"]}
        )
        assert unchanged.status_code == 200, unchanged.text
        assert unchanged.json()["changes"] == []

    def test_an_update_names_the_connectors_that_use_it(self, api: httpx.Client, catalog: Catalog):
        connector = created(api.post("/connectors", json=catalog.connector(isActive=False)))
        path = f"/defined-destinations/{catalog.destination_id}"
        before = api.get(path).json()
        answer = api.patch(path, params=DRY, json={"config": {"path": "other.jsonl"}})
        assert answer.status_code == 200, answer.text
        plan = answer.json()
        assert plan["usedBy"] == [connector["id"]]
        assert plan["changes"] == [
            {
                "field": "config",
                "before": {"path": "out.jsonl"},
                "after": {"path": "other.jsonl"},
                "secretChanged": False,
            }
        ]
        assert api.get(path).json() == before
        project = f"/projects/{catalog.project_id}"
        answer = api.patch(project, params=DRY, json={"description": "planned"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["usedBy"] == []
        assert answer.json()["changes"] == [
            {"field": "description", "before": None, "after": "planned", "secretChanged": False}
        ]
        assert api.get(project).json()["description"] is None

    def test_a_refused_delete_is_the_same_409(self, api: httpx.Client, catalog: Catalog):
        created(api.post("/connectors", json=catalog.connector(isActive=False)))
        for path in (f"/defined-sources/{catalog.source_id}", f"/projects/{catalog.project_id}"):
            dry = api.delete(path, params=DRY)
            real = api.delete(path)
            assert dry.status_code == real.status_code == 409
            assert dry.json() == real.json()

    def test_a_delete_plans_what_goes_and_keeps_the_row(self, api: httpx.Client, catalog: Catalog):
        path = f"/defined-sources/{catalog.source_id}"
        before = api.get(path).json()
        answer = api.delete(path, params=DRY)
        assert answer.status_code == 200, answer.text
        plan = answer.json()
        assert (plan["action"], plan["kind"], plan["id"], plan["usedBy"]) == (
            "delete",
            "source",
            catalog.source_id,
            [],
        )
        changes = {c["field"]: (c["before"], c["after"]) for c in plan["changes"]}
        assert changes == {
            "name": (before["name"], None),
            "type": ("csv", None),
            "config": ({"path": "in.csv"}, None),
            "projectId": (catalog.project_id, None),
        }
        assert api.get(path).json() == before

    def test_a_bad_config_is_the_same_422(self, api: httpx.Client, catalog: Catalog):
        body = {
            "name": unique("csv"),
            "type": "csv",
            "config": {"path": "in.csv", "nope": 1},
            "projectId": catalog.project_id,
        }
        path = f"/defined-sources/{catalog.source_id}"
        for method, url, json in (
            ("POST", "/defined-sources", body),
            ("PATCH", path, {"config": body["config"]}),
        ):
            dry = api.request(method, url, params=DRY, json=json)
            real = api.request(method, url, json=json)
            assert dry.status_code == real.status_code == 422, (method, real.text)
            assert dry.json() == real.json()
            assert dry.json()["detail"][0]["loc"][:2] == ["body", "config"]

    def test_a_dry_run_needs_what_the_write_needs(self, auth_api: AuthApi, stack: Stack):
        with auth_api.client(auth_api.token()) as admin:
            mine = make_catalog(admin, stack.files)
            theirs = make_catalog(admin, stack.files)
        with auth_api.client(auth_api.token(projects=[mine.project_id])) as client:
            assert (
                client.post("/projects", params=DRY, json={"name": unique("p")}).status_code == 403
            )
            hidden = f"/defined-sources/{theirs.source_id}"
            assert client.delete(hidden, params=DRY).status_code == 404
            assert client.patch(hidden, params=DRY, json={"name": "x"}).status_code == 404
            body = {"name": unique("s"), "type": "csv", "config": {"path": "in.csv"}}
            answer = client.post(
                "/defined-sources", params=DRY, json={**body, "projectId": theirs.project_id}
            )
            assert answer.status_code == 422
            assert answer.json()["detail"][0]["loc"] == ["body", "projectId"]
        with auth_api.client(auth_api.token(scopes=[READ])) as reader:
            path = f"/projects/{mine.project_id}"
            assert reader.delete(path, params=DRY).status_code == 403
