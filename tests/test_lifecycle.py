"""The seed's lifecycle end to end through HTTP, checking Prefect itself after every step."""

import asyncio
import uuid
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound

from bench._seed import Catalog, created
from control_plane import bootstrap
from control_plane.processes import wait_for
from tests.helpers import all_match, control_runs, scheduled_runs, wait_final

OLD_CRON = "15 */4 * * *"
NEW_CRON = "45 */6 * * *"


def _deployment_gone(prefect: SyncPrefectClient, deployment_id: str) -> None:
    with pytest.raises(ObjectNotFound):
        prefect.read_deployment(UUID(deployment_id))
    assert scheduled_runs(prefect, deployment_id) == []


class TestSeedLifecycle:
    def test_create_reschedule_trigger_deactivate_delete(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog, stack
    ):
        # 1. Create with a schedule: a deployment of sync-connector with that cron.
        connector = created(
            api.post("/connectors", json=catalog.connector(schedule=OLD_CRON, timezone="UTC"))
        )
        connector_id, deployment_id = connector["id"], connector["prefectDeploymentId"]
        assert connector["isActive"] is True and connector["nextRunAt"]
        deployment = prefect.read_deployment(UUID(deployment_id))
        assert deployment.name == f"connector-{connector_id}"
        assert deployment.parameters == {"connector_id": connector_id}
        assert deployment.work_pool_name == stack.work_pool
        assert {
            "control-plane",
            f"connector:{connector_id}",
            f"project:{catalog.project_id}",
        } <= set(deployment.tags)
        [schedule] = deployment.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == (OLD_CRON, "UTC")
        old_runs = wait_for(
            lambda: scheduled_runs(prefect, deployment_id),
            timeout=30,
            what="the scheduler to schedule the first runs",
        )
        assert all_match(old_runs, OLD_CRON)

        # 2. Reschedule: the schedule is patched in place and no run of the old cron remains.
        response = api.patch(f"/connectors/{connector_id}", json={"schedule": NEW_CRON})
        assert response.status_code == 200, response.text
        assert response.json()["schedule"] == NEW_CRON
        assert response.json()["prefectDeploymentId"] == deployment_id
        [rescheduled] = prefect.read_deployment(UUID(deployment_id)).schedules
        assert rescheduled.id == schedule.id
        assert rescheduled.schedule.cron == NEW_CRON
        assert all_match(scheduled_runs(prefect, deployment_id), NEW_CRON)
        new_runs = wait_for(
            lambda: scheduled_runs(prefect, deployment_id),
            timeout=30,
            what="runs of the new schedule",
        )
        assert all_match(new_runs, NEW_CRON)

        # 3. Trigger: a run of the deployment now, which the worker executes, starting Prefect's
        # engine directly (the pool's command) rather than Prefect's workspace supervisor first.
        pool = prefect.read_work_pool(stack.work_pool)
        command = pool.base_job_template["variables"]["properties"]["command"]["default"]
        assert command == bootstrap.LOCAL_ENGINE
        assert command.endswith("-m prefect.engine")
        response = api.post(f"/connectors/{connector_id}/trigger")
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["result"]) == ("success", "Flow execution started")
        run = prefect.read_flow_run(UUID(body["flowRunId"]))
        assert str(run.deployment_id) == deployment_id
        assert {"trigger:manual", f"connector:{connector_id}"} <= set(run.tags)
        finished = wait_final(prefect, run.id)
        assert finished.state.type == StateType.COMPLETED, finished.state

        # 4. Deactivate: the deployment and its scheduled runs are gone.
        response = api.patch(f"/connectors/{connector_id}", json={"isActive": False})
        assert response.status_code == 200, response.text
        assert response.json()["prefectDeploymentId"] is None
        assert response.json()["nextRunAt"] is None
        _deployment_gone(prefect, deployment_id)

        # Activating again builds the deployment from the current row.
        response = api.patch(f"/connectors/{connector_id}", json={"isActive": True})
        assert response.status_code == 200, response.text
        reactivated_id = response.json()["prefectDeploymentId"]
        [schedule] = prefect.read_deployment(UUID(reactivated_id)).schedules
        assert schedule.schedule.cron == NEW_CRON

        # 5. Delete: the row, the deployment and its scheduled runs go.
        assert api.delete(f"/connectors/{connector_id}").status_code == 204
        assert api.get(f"/connectors/{connector_id}").status_code == 404
        _deployment_gone(prefect, reactivated_id)

        # The audit log: one completed control flow run per action, tagged and named.
        runs = control_runs(prefect, connector_id)
        assert [run.name for run in runs] == [
            f"create connector {connector_id}: {connector['name']}",
            f"reschedule connector {connector_id} to {NEW_CRON}",
            f"trigger connector {connector_id}",
            f"deactivate connector {connector_id}",
            f"activate connector {connector_id}",
            f"delete connector {connector_id}",
        ]
        for run in runs:
            assert run.state.type == StateType.COMPLETED, (run.name, run.state)
            assert {"control-plane", "actor:anonymous"} <= set(run.tags)


class TestManualOnly:
    def test_null_schedule_keeps_a_deployment_without_schedule(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog
    ):
        connector = created(api.post("/connectors", json=catalog.connector(schedule=None)))
        deployment_id = connector["prefectDeploymentId"]
        assert connector["nextRunAt"] is None
        assert prefect.read_deployment(UUID(deployment_id)).schedules == []
        response = api.post(f"/connectors/{connector['id']}/trigger")
        assert response.status_code == 200, response.text

        response = api.patch(
            f"/connectors/{connector['id']}",
            json={"schedule": "*/30 * * * *", "timezone": "Europe/Berlin"},
        )
        assert response.status_code == 200, response.text
        [schedule] = prefect.read_deployment(UUID(deployment_id)).schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == (
            "*/30 * * * *",
            "Europe/Berlin",
        )
        wait_for(lambda: scheduled_runs(prefect, deployment_id), timeout=30, what="scheduled runs")

        response = api.patch(f"/connectors/{connector['id']}", json={"schedule": None})
        assert response.status_code == 200, response.text
        assert prefect.read_deployment(UUID(deployment_id)).schedules == []
        assert scheduled_runs(prefect, deployment_id) == []


class TestWorkPool:
    def _command(self, prefect: SyncPrefectClient, name: str) -> str | None:
        template = prefect.read_work_pool(name).base_job_template
        return template["variables"]["properties"]["command"]["default"]

    def test_a_command_is_set_also_on_an_existing_pool_and_kept_without_one(
        self, prefect: SyncPrefectClient
    ):
        name = f"pool-{uuid.uuid4().hex[:6]}"
        asyncio.run(bootstrap.ensure_work_pool(name))
        assert self._command(prefect, name) is None  # Prefect's own way to start runs

        # `up` on its own server after the checkout moved: the pool follows the interpreter.
        asyncio.run(bootstrap.ensure_work_pool(name, command="/moved/python -m prefect.engine"))
        assert self._command(prefect, name) == "/moved/python -m prefect.engine"

        # `control-plane deploy` against any server leaves an existing pool as it is.
        asyncio.run(bootstrap.ensure_work_pool(name))
        assert self._command(prefect, name) == "/moved/python -m prefect.engine"
