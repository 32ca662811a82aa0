"""The only module that talks to Prefect's deployment API.

A connector's deployment is derived from its row (`desired`), so creating, patching and
comparing deployments all start from the same spec.
"""

from uuid import UUID

from prefect.client.schemas.actions import (
    DeploymentScheduleCreate,
    DeploymentScheduleUpdate,
    DeploymentUpdate,
    WorkPoolCreate,
)
from prefect.client.schemas.schedules import CronSchedule
from prefect.exceptions import ObjectAlreadyExists
from prefect.utilities.callables import parameter_schema
from prefect.workers.process import ProcessWorker
from pydantic import BaseModel, ConfigDict

from control_plane.errors import DeploymentMissing
from control_plane.orchestrator import prefect_client, translate_error
from control_plane.settings import get_settings
from flows.sync import sync_connector
from models import Connector

MANAGED_TAG = "control-plane"
SCHEDULE_SLUG = "primary"
SYNC_ENTRYPOINT = "flows.sync:sync_connector"
_PARAMETER_SCHEMA = parameter_schema(sync_connector).model_dump()


class DeploymentSpec(BaseModel):
    """What a connector's deployment must look like; equal specs need no Prefect call."""

    model_config = ConfigDict(frozen=True)

    name: str
    schedule: str | None
    timezone: str
    parameters: dict[str, int]
    tags: tuple[str, ...]
    work_pool: str


def deployment_name(connector_id: int) -> str:
    return f"connector-{connector_id}"


def desired(connector: Connector) -> DeploymentSpec:
    """The deployment an active connector must have."""
    assert connector.id is not None
    return DeploymentSpec(
        name=deployment_name(connector.id),
        schedule=connector.schedule,
        timezone=connector.timezone,
        parameters={"connector_id": connector.id},
        tags=(MANAGED_TAG, f"connector:{connector.id}", f"project:{connector.project_id}"),
        work_pool=get_settings().work_pool,
    )


def _cron(spec: DeploymentSpec) -> CronSchedule:
    return CronSchedule(cron=spec.schedule, timezone=spec.timezone)


async def _create(spec: DeploymentSpec) -> UUID:
    """Create (or replace) the deployment; returns its id."""
    async with prefect_client() as client:
        flow_id = await client.create_flow_from_name(sync_connector.name)
        schedules = (
            [DeploymentScheduleCreate(schedule=_cron(spec), slug=SCHEDULE_SLUG)]
            if spec.schedule
            else []
        )
        return await client.create_deployment(
            flow_id=flow_id,
            name=spec.name,
            work_pool_name=spec.work_pool,
            schedules=schedules,
            parameters=dict(spec.parameters),
            tags=list(spec.tags),
            entrypoint=SYNC_ENTRYPOINT,
            parameter_openapi_schema=_PARAMETER_SCHEMA,
            enforce_parameter_schema=True,
            # One run at a time per connector; a trigger meanwhile waits its turn.
            concurrency_limit=1,
        )


async def _update(deployment_id: UUID, before: DeploymentSpec, after: DeploymentSpec) -> None:
    async with prefect_client() as client:
        if before.schedule and not after.schedule:
            deployment = await client.read_deployment(deployment_id)
            for schedule in deployment.schedules:
                await client.delete_deployment_schedule(deployment_id, schedule.id)
        patch = DeploymentUpdate(
            parameters=dict(after.parameters),
            tags=list(after.tags),
            work_pool_name=after.work_pool,
        )
        if after.schedule:
            # Patched by slug, the schedule keeps its id and Prefect drops the old future runs.
            patch.schedules = [
                DeploymentScheduleUpdate(slug=SCHEDULE_SLUG, schedule=_cron(after), active=True)
            ]
        await client.update_deployment(deployment_id, patch)


async def _delete(deployment_id: UUID) -> None:
    try:
        async with prefect_client() as client:
            await client.delete_deployment(deployment_id)
    except DeploymentMissing:
        pass


async def apply(
    deployment_id: UUID | None, before: DeploymentSpec | None, after: DeploymentSpec | None
) -> UUID | None:
    """Bring the deployment from `before` to `after` (None: no deployment); returns its id.

    Deleting also removes its scheduled runs; a deployment that went missing is created again.
    """
    if after is None:
        if deployment_id is not None:
            await _delete(deployment_id)
        return None
    if deployment_id is None or before is None:
        return await _create(after)
    if before != after:
        try:
            await _update(deployment_id, before, after)
        except DeploymentMissing:
            return await _create(after)
    return deployment_id


async def run_now(deployment_id: UUID, *, tags: list[str]) -> UUID:
    """Start a run of the deployment now, bypassing its schedule; returns the flow run id."""
    async with prefect_client() as client:
        flow_run = await client.create_flow_run_from_deployment(deployment_id, tags=tags)
        return flow_run.id


async def ensure_work_pool(name: str) -> None:
    """Create the process work pool the deployments run on, unless it exists."""
    pool = WorkPoolCreate(
        name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
    )
    async with prefect_client() as client:
        try:
            await client.create_work_pool(pool)
        except ObjectAlreadyExists:
            pass


async def check_health() -> str | None:
    """None when Prefect's API answers, otherwise what is wrong."""
    async with prefect_client() as client:
        error = await client.api_healthcheck()
    return None if error is None else translate_error(error).detail


__all__ = [
    "MANAGED_TAG",
    "DeploymentSpec",
    "check_health",
    "apply",
    "deployment_name",
    "desired",
    "ensure_work_pool",
    "run_now",
]
