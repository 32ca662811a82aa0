"""Drift between the database and Prefect is found, shown without repair, and repaired by
reconcile, whose second run changes nothing; a pass over what changed repairs what changed."""

import asyncio
from datetime import UTC, datetime
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.schedules import CronSchedule
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from sqlalchemy import create_engine, text

from bench._seed import Catalog, created
from control_plane import deployments, reconcile
from control_plane.db import get_engine, session_scope
from control_plane.deployments import DeploymentSpec
from control_plane.processes import wait_for
from control_plane.settings import get_settings
from tests.helpers import reconcile_cli, scheduled_runs


def _orphan(stack, connector_id: int) -> tuple[str, UUID]:
    """A managed deployment of a connector that never existed: its name and id."""
    name = deployments.deployment_name(connector_id)
    spec = DeploymentSpec(
        name=name,
        schedule="* * * * *",
        timezone="UTC",
        parameters={"connector_id": connector_id},
        tags=("control-plane", f"connector:{connector_id}"),
        work_pool=stack.work_pool,
        work_queue="default",
    )
    return name, asyncio.run(deployments.apply(None, None, spec))


def _changed_drift(stack, since: datetime) -> list[reconcile.Drift]:
    """`find_changed_drift` in this process, on the stack's database."""

    async def find() -> list[reconcile.Drift]:
        try:
            async with session_scope() as session:
                drift = await reconcile.find_changed_drift(session=session, since=since)
        finally:
            await get_engine().dispose()
        assert drift is not None, "more changed than a pass over changes reads"
        return drift

    with pytest.MonkeyPatch.context() as patch:
        for name, value in stack.env.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        get_engine.cache_clear()
        try:
            return asyncio.run(find())
        finally:
            get_settings.cache_clear()
            get_engine.cache_clear()


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
        orphan_name, orphan_id = _orphan(stack, 987654)

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

    def test_a_pass_over_changes_repairs_what_changed_and_reads_nothing_else(
        self, api, prefect: SyncPrefectClient, catalog: Catalog, stack
    ):
        make = lambda **f: created(api.post("/connectors", json=catalog.connector(**f)))  # noqa: E731
        lost, paused, switched_off, rescheduled = make(), make(), make(), make()
        since = datetime.now(UTC)

        # Changes Prefect has events for (a deployment deleted, one paused, an orphan created),
        # a row changed with its updated_at, and a schedule edited alone: Prefect has no event
        # for that, so only a full pass finds it.
        prefect.delete_deployment(UUID(lost["prefectDeploymentId"]))
        prefect.pause_deployment(UUID(paused["prefectDeploymentId"]))
        orphan_name, orphan_id = _orphan(stack, 987655)
        _sql(
            stack,
            "UPDATE connector SET is_active = false, updated_at = :now WHERE id = :id",
            id=switched_off["id"],
            now=datetime.now(UTC),
        )
        rescheduled_id = UUID(rescheduled["prefectDeploymentId"])
        [schedule] = prefect.read_deployment(rescheduled_id).schedules
        prefect.update_deployment_schedule(
            rescheduled_id, schedule.id, schedule=CronSchedule(cron="0 3 * * *", timezone="UTC")
        )
        expected = {
            deployments.deployment_name(lost["id"]): "create",
            deployments.deployment_name(paused["id"]): "update",
            deployments.deployment_name(switched_off["id"]): "delete",
            orphan_name: "delete",
        }
        # Prefect's event persister writes its events a few seconds after they occurred.
        wait_for(
            lambda: (
                set(expected) - asyncio.run(reconcile.changed_deployments(since))
                == {deployments.deployment_name(switched_off["id"])}
            ),
            timeout=30,
            what="Prefect's events of the deployments changed",
        )

        found = {item.deployment: item.action for item in _changed_drift(stack, since)}
        assert expected.items() <= found.items()
        assert deployments.deployment_name(rescheduled["id"]) not in found

        # The scheduled pass looks from a minute before the last one began: these connectors,
        # made just now, are all read again, and what changed is repaired.
        repaired = reconcile_cli(stack.env, "--changed")
        actions = {line.split()[1]: line.split()[0] for line in repaired.splitlines()[:-1]}
        assert expected.items() <= actions.items()
        assert not prefect.read_deployment(UUID(paused["prefectDeploymentId"])).paused
        with pytest.raises(ObjectNotFound):
            prefect.read_deployment(orphan_id)
        [run] = prefect.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["reconcile-connectors"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        assert run.name == "reconcile changed connectors"
