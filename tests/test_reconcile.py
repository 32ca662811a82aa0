"""Drift between the database and Prefect is found, shown without repair, and repaired by
reconcile, whose second run changes nothing."""

import asyncio
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.schedules import CronSchedule
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from sqlalchemy import create_engine, text

from control_plane import deployments
from control_plane.deployments import DeploymentSpec
from tests.helpers import Catalog, created, reconcile_cli, scheduled_runs


def _sql(stack, statement: str, **params) -> None:
    engine = create_engine(stack.database_url)
    with engine.begin() as db:
        db.execute(text(statement), params)
    engine.dispose()


class TestReconcile:
    def test_every_kind_of_drift_is_shown_then_repaired_once(
        self, api, prefect: SyncPrefectClient, catalog: Catalog, stack
    ):
        make = lambda **f: created(api.post("/connectors", json=catalog.connector(**f)))  # noqa: E731
        lost, changed, stale, relinked = make(), make(schedule="*/10 * * * *"), make(), make()

        # Behind the control plane's back: a deployment deleted, one rescheduled and paused,
        # a row switched off with its deployment left running, a row pointing nowhere, and a
        # managed deployment of a connector that never existed.
        prefect.delete_deployment(UUID(lost["prefectDeploymentId"]))
        changed_id = UUID(changed["prefectDeploymentId"])
        [schedule] = prefect.read_deployment(changed_id).schedules
        prefect.update_deployment_schedule(
            changed_id, schedule.id, schedule=CronSchedule(cron="0 3 * * *", timezone="UTC")
        )
        prefect.pause_deployment(changed_id)
        _sql(stack, "UPDATE connector SET is_active = false WHERE id = :id", id=stale["id"])
        _sql(
            stack,
            "UPDATE connector SET prefect_deployment_id = NULL WHERE id = :id",
            id=relinked["id"],
        )
        orphan_name = deployments.deployment_name(987654)
        orphan = DeploymentSpec(
            name=orphan_name,
            schedule="* * * * *",
            timezone="UTC",
            parameters={"connector_id": 987654},
            tags=("control-plane", "connector:987654"),
            work_pool=stack.work_pool,
            work_queue="default",
        )
        orphan_id = asyncio.run(deployments.apply(None, None, orphan))

        drift = {c["id"]: api.get(f"/connectors/{c['id']}/drift").json() for c in (lost, changed)}
        assert drift[lost["id"]]["action"] == "create"
        assert drift[changed["id"]]["action"] == "update"
        assert any(
            d.startswith("schedule: '0 3 * * *'") for d in drift[changed["id"]]["differences"]
        )
        assert any(d.startswith("paused: True") for d in drift[changed["id"]]["differences"])

        found = reconcile_cli(stack.env, "--dry-run")
        for name, action in [
            (deployments.deployment_name(lost["id"]), "create"),
            (deployments.deployment_name(changed["id"]), "update"),
            (deployments.deployment_name(stale["id"]), "delete"),
            (deployments.deployment_name(relinked["id"]), "relink"),
            (orphan_name, "delete"),
        ]:
            assert any(line.split()[:2] == [action, name] for line in found.splitlines()), (
                name,
                action,
                found,
            )
        assert api.get(f"/connectors/{lost['id']}/drift").json()["inSync"] is False

        reconcile_cli(stack.env)
        for connector in (lost, changed, relinked):
            path = f"/connectors/{connector['id']}"
            assert api.get(f"{path}/drift").json() == {
                "connectorId": connector["id"],
                "inSync": True,
                "action": None,
                "differences": [],
            }
            row = api.get(path).json()
            prefect.read_deployment(UUID(row["prefectDeploymentId"]))
        repaired = prefect.read_deployment(changed_id)
        assert not repaired.paused
        assert [(s.id, s.schedule.cron) for s in repaired.schedules] == [
            (schedule.id, "*/10 * * * *")
        ]
        for gone in (UUID(stale["prefectDeploymentId"]), orphan_id):
            with pytest.raises(ObjectNotFound):
                prefect.read_deployment(gone)
            assert scheduled_runs(prefect, gone) == []
        assert api.get(f"/connectors/{stale['id']}").json()["prefectDeploymentId"] is None

        assert reconcile_cli(stack.env).strip().splitlines()[-1] == "0 repaired"

    def test_a_reconcile_run_is_audited(self, prefect: SyncPrefectClient, stack):
        reconcile_cli(stack.env, "--dry-run")
        [run] = prefect.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["reconcile-connectors"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        assert run.name == "reconcile connectors (dry run)"
        assert run.state.type == StateType.COMPLETED
        assert {"control-plane", "actor:cli"} <= set(run.tags)
