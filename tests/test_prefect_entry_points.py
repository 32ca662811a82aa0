"""The control flows used the Prefect way: run as deployments (as the UI does), reacting to
events through the shipped automations, and emitting connector events."""

import asyncio
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from bench._seed import MONTHLY, Catalog, created, unique
from control_plane import bootstrap
from control_plane.processes import wait_for
from control_plane.settings import Settings
from tests.helpers import POSTGRESQL_ONLY, prefect_events, trigger_and_wait


def _run(name: str, **parameters) -> FlowRun:
    """Run a control deployment as the Prefect UI does, and wait for it to end."""
    return run_deployment(name=f"{name}/{name}", parameters=parameters, timeout=120)


@pytest.mark.usefixtures("control_deployments")
class TestControlDeployments:
    def test_deploying_twice_changes_nothing(self, prefect: SyncPrefectClient):
        def snapshot():
            names = [entry["name"] for entry in bootstrap.control_deployments()]
            ids = {n: prefect.read_deployment_by_name(f"{n}/{n}").id for n in names}
            automations = {a.name: a.id for a in prefect.read_automations()}
            return ids, automations

        before = snapshot()
        asyncio.run(
            bootstrap.deploy_control_flows(
                settings=Settings(reconcile_interval_seconds=0, full_reconcile_interval_seconds=0)
            )
        )
        assert snapshot() == before
        assert {"auto-deactivate-failing-connectors", "first-sync-on-create"} <= before[1].keys()

    @POSTGRESQL_ONLY
    def test_the_whole_lifecycle_runs_from_deployments(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog
    ):
        spec = catalog.connector(schedule="0 1 * * *")
        run = _run("create-connector", spec=spec)
        assert run.state.type == StateType.COMPLETED, run.state
        [connector] = [
            c
            for c in api.get("/connectors", params={"projectId": catalog.project_id}).json()["data"]
            if c["name"] == spec["name"]
        ]
        connector_id = connector["id"]
        assert "actor:prefect-ui" in prefect.read_flow_run(run.id).tags
        assert prefect.read_deployment(UUID(connector["prefectDeploymentId"])).schedules

        run = _run("update-connector", connector_id=connector_id, changes={"schedule": "0 2 * * *"})
        assert run.state.is_completed(), run.state
        [schedule] = prefect.read_deployment(UUID(connector["prefectDeploymentId"])).schedules
        assert schedule.schedule.cron == "0 2 * * *"

        run = _run("trigger-connector", connector_id=connector_id)
        assert run.state.is_completed(), run.state

        run = _run("deactivate-connector", connector_id=connector_id, reason="maintenance")
        assert run.state.is_completed(), run.state
        stored = api.get(f"/connectors/{connector_id}").json()
        assert (stored["isActive"], stored["statusReason"]) == (False, "maintenance")
        with pytest.raises(ObjectNotFound):
            prefect.read_deployment(UUID(connector["prefectDeploymentId"]))

        run = _run("delete-connector", connector_id=connector_id)
        assert run.state.is_completed(), run.state
        assert api.get(f"/connectors/{connector_id}").status_code == 404

    def test_invalid_parameters_fail_the_run_and_change_nothing(
        self, api: httpx.Client, catalog: Catalog
    ):
        run = _run("create-connector", spec=catalog.connector(schedule="every morning"))
        assert run.state.type == StateType.FAILED
        assert "schedule" in run.state.message
        listed = api.get("/connectors", params={"projectId": catalog.project_id}).json()
        assert listed["count"] == 0


@pytest.mark.usefixtures("control_deployments")
class TestAutoDeactivate:
    @POSTGRESQL_ONLY
    def test_a_connector_failing_three_times_switches_itself_off(
        self,
        api: httpx.Client,
        prefect: SyncPrefectClient,
        catalog: Catalog,
        prefect_api_url,
    ):
        since = datetime.now(UTC) - timedelta(seconds=5)
        broken = {"path": "nothing-here.csv"}
        connector = created(
            api.post(
                "/connectors",
                json=catalog.connector(
                    schedule=None, maxConsecutiveFailures=3, sourceConfigOverride=broken
                ),
            )
        )
        path = f"/connectors/{connector['id']}"
        started = time.monotonic()
        for _ in range(3):
            assert trigger_and_wait(api, prefect, connector["id"]).state.type == StateType.FAILED
        stored = wait_for(
            lambda: (c := api.get(path).json())["isActive"] is False and c,
            timeout=60,
            what="the automation to deactivate the connector",
        )
        elapsed = time.monotonic() - started
        assert stored["statusReason"].startswith("3 consecutive failed runs, last: ")
        assert "nothing-here.csv" in stored["statusReason"]
        with pytest.raises(ObjectNotFound):
            prefect.read_deployment(UUID(connector["prefectDeploymentId"]))
        events = wait_for(
            lambda: [
                e
                for e in prefect_events(prefect_api_url, f"connector.{connector['id']}", since)
                if e["event"] == "connector.auto-deactivated"
            ],
            timeout=30,
            what="the connector.auto-deactivated event",
        )
        assert events[0]["payload"]["actor"] == "automation"
        print(f"failing connector switched off {elapsed:.1f} s after its first trigger")


class TestEvents:
    @POSTGRESQL_ONLY
    def test_a_full_lifecycle_emits_its_events_in_order(
        self, api: httpx.Client, prefect, catalog: Catalog, prefect_api_url
    ):
        since = datetime.now(UTC) - timedelta(seconds=5)
        connector = created(api.post("/connectors", json=catalog.connector()))
        path = f"/connectors/{connector['id']}"
        for body in (
            {"schedule": "0 */6 * * *"},
            {"isActive": False},
            {"isActive": True},
            {"description": "renamed", "name": unique("renamed")},
        ):
            assert api.patch(path, json=body).status_code == 200
        assert trigger_and_wait(api, prefect, connector["id"]).state.is_completed()
        assert api.delete(path).status_code == 204
        expected = [
            "connector.created",
            "connector.rescheduled",
            "connector.deactivated",
            "connector.activated",
            "connector.updated",
            "connector.triggered",
            "connector.synced",
            "connector.deleted",
        ]
        events = wait_for(
            lambda: (
                len(e := prefect_events(prefect_api_url, f"connector.{connector['id']}", since))
                >= len(expected)
                and e
            ),
            timeout=60,
            what="the lifecycle's events to be stored",
        )
        assert [e["event"] for e in events] == expected
        created_event, rescheduled, *_ = events
        assert created_event["resource"]["prefect.resource.name"] == connector["name"]
        roles = {
            r["prefect.resource.role"]: r["prefect.resource.id"] for r in created_event["related"]
        }
        assert roles["project"] == f"project.{catalog.project_id}"
        assert roles["deployment"] == f"prefect.deployment.{connector['prefectDeploymentId']}"
        assert roles["flow-run"].startswith("prefect.flow-run.")
        assert rescheduled["payload"]["before"]["schedule"] == MONTHLY
        assert rescheduled["payload"]["after"]["schedule"] == "0 */6 * * *"
        assert events[4]["payload"]["fields"] == ["description", "name"]
        synced = events[6]["payload"]
        assert (synced["actor"], synced["recordsWritten"]) == ("sync-connector", 2)
        assert all(e["payload"]["actor"] == "anonymous" for e in events if e is not events[6])
        # The API runs its control flows in-process without heartbeats (api/flow_context.py).
        run_events = {e["event"] for e in prefect_events(prefect_api_url, roles["flow-run"], since)}
        assert "prefect.flow-run.Completed" in run_events
        assert "prefect.flow-run.heartbeat" not in run_events
