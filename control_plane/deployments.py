"""The connectors' deployments in Prefect, and the work queue each destination's runs wait in.

A connector's deployment is derived from its row (`desired`), so creating, patching and
comparing deployments all start from the same spec. What else the control plane keeps in
Prefect (work pools, the control and check flows' deployments, automations) is
`control_plane.bootstrap`'s.
"""

from collections.abc import Collection
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import (
    DeploymentScheduleCreate,
    DeploymentScheduleUpdate,
    DeploymentUpdate,
)
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    DeploymentFilterTags,
    FlowFilter,
    FlowFilterName,
    WorkQueueFilter,
    WorkQueueFilterName,
)
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.schedules import CronSchedule
from prefect.client.schemas.sorting import DeploymentSort
from prefect.exceptions import ObjectAlreadyExists
from prefect.utilities.callables import parameter_schema
from pydantic import BaseModel, ConfigDict

from control_plane import schedules
from control_plane.errors import DeploymentMissing
from control_plane.orchestrator import PREFECT_PAGE, prefect_client
from control_plane.runs import connector_tag
from control_plane.settings import get_settings
from flows.sync import sync_connector
from models import Connector, ConnectorContext

MANAGED_TAG = "control-plane"
SCHEDULE_SLUG = "primary"
SYNC_ENTRYPOINT = "flows.sync:sync_connector"
_PARAMETER_SCHEMA = parameter_schema(sync_connector).model_dump()


class DeploymentSpec(BaseModel):
    """What a connector's deployment must look like; equal specs need no Prefect call."""

    model_config = ConfigDict(frozen=True)

    name: str
    schedule: str | None
    timezone: str | None  # of the schedule; None without one
    parameters: dict[str, int]
    tags: tuple[str, ...]  # sorted
    work_pool: str
    work_queue: str
    description: str | None = None
    paused: bool = False
    job_variables: dict[str, Any] = {}

    def differences(self, actual: "DeploymentSpec") -> list[str]:
        """What `actual` has that this spec does not, field by field."""
        return [
            f"{field}: {getattr(actual, field)!r} -> {getattr(self, field)!r}"
            for field in type(self).model_fields
            if getattr(actual, field) != getattr(self, field)
        ]


def deployment_name(connector_id: int) -> str:
    return f"connector-{connector_id}"


def destination_queue(destination_id: int) -> str:
    """The work queue of the connectors' pool that every run into the destination waits in:
    its concurrency limit is the destination's `maxConcurrentRuns`."""
    return f"destination-{destination_id}"


def desired(connector: Connector, context: ConnectorContext) -> DeploymentSpec:
    """The deployment an active connector must have."""
    assert connector.id is not None
    return DeploymentSpec(
        name=deployment_name(connector.id),
        schedule=connector.schedule,
        timezone=connector.timezone if connector.schedule else None,
        parameters={"connector_id": connector.id},
        tags=tuple(
            sorted([MANAGED_TAG, connector_tag(connector.id), f"project:{connector.project_id}"])
        ),
        work_pool=get_settings().work_pool,
        work_queue=destination_queue(connector.defined_destination_id),
        description=describe(connector, context),
        # Until the resume run clears it, or the project thaws: its scheduled runs stop.
        paused=connector.paused_until is not None or context.project_frozen,
        job_variables=get_settings().job_variables,
    )


def describe(connector: Connector, context: ConnectorContext) -> str:
    """The deployment's description in the Prefect UI (markdown): what it moves, for whom,
    when, and where the API keeps it; no config."""
    when = schedules.in_words(connector.schedule, connector.timezone)
    return (
        f"**{connector.name}** of project **{context.project}**: "
        f"{context.source_type} → {context.destination_type}, runs {when}.\n\n"
        f"API: `/api/v1/connectors/{connector.id}`"
    )


def actual(deployment: DeploymentResponse) -> DeploymentSpec:
    """The spec a deployment in Prefect has, to compare with `desired`."""
    primary = next((s for s in deployment.schedules if s.slug == SCHEDULE_SLUG and s.active), None)
    cron = primary.schedule if primary and isinstance(primary.schedule, CronSchedule) else None
    return DeploymentSpec(
        name=deployment.name,
        schedule=cron.cron if cron else None,
        timezone=cron.timezone if cron else None,
        parameters=deployment.parameters,
        tags=tuple(sorted(deployment.tags)),
        work_pool=deployment.work_pool_name or "",
        work_queue=deployment.work_queue_name or "",
        description=deployment.description,
        paused=deployment.paused,
        job_variables=deployment.job_variables or {},
    )


async def list_managed(names: Collection[str] | None = None) -> list[DeploymentResponse]:
    """Every connector deployment in Prefect (sync-connector, tagged as managed), or those of
    `names`, in pages."""
    managed = DeploymentFilterTags(all_=[MANAGED_TAG])
    if names is None:
        return await _pages(DeploymentFilter(tags=managed))
    ordered = sorted(names)
    found = []
    for start in range(0, len(ordered), PREFECT_PAGE):
        named = DeploymentFilterName(any_=ordered[start : start + PREFECT_PAGE])
        found += await _pages(DeploymentFilter(tags=managed, name=named))
    return found


async def _pages(deployment_filter: DeploymentFilter) -> list[DeploymentResponse]:
    found: list[DeploymentResponse] = []
    async with prefect_client() as client:
        while True:
            page = await client.read_deployments(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[sync_connector.name])),
                deployment_filter=deployment_filter,
                sort=DeploymentSort.NAME_ASC,
                limit=PREFECT_PAGE,
                offset=len(found),
            )
            found.extend(page)
            if len(page) < PREFECT_PAGE:
                return found


async def read_by_name(name: str) -> DeploymentResponse | None:
    """The connector deployment of that name, or None."""
    try:
        async with prefect_client() as client:
            return await client.read_deployment_by_name(f"{sync_connector.name}/{name}")
    except DeploymentMissing:
        return None


def _cron(spec: DeploymentSpec) -> CronSchedule:
    return CronSchedule(cron=spec.schedule, timezone=spec.timezone)


# The sync flow's id in Prefect, by its name: upserted once per process, not once per create.
_flow_ids: dict[str, UUID] = {}


async def _sync_flow_id(client: PrefectClient) -> UUID:
    if sync_connector.name not in _flow_ids:
        _flow_ids[sync_connector.name] = await client.create_flow_from_name(sync_connector.name)
    return _flow_ids[sync_connector.name]


async def _create(spec: DeploymentSpec) -> UUID:
    """Create (or replace) the deployment; returns its id."""
    async with prefect_client() as client:
        try:
            return await _create_deployment(client, await _sync_flow_id(client), spec)
        except ObjectAlreadyExists:
            # Prefect answers 409 for a flow id it does not have: the flow was deleted since.
            _flow_ids.clear()
            return await _create_deployment(client, await _sync_flow_id(client), spec)


async def _create_deployment(client: PrefectClient, flow_id: UUID, spec: DeploymentSpec) -> UUID:
    schedules = (
        [DeploymentScheduleCreate(schedule=_cron(spec), slug=SCHEDULE_SLUG)]
        if spec.schedule
        else []
    )
    return await client.create_deployment(
        flow_id=flow_id,
        name=spec.name,
        work_pool_name=spec.work_pool,
        work_queue_name=spec.work_queue,
        schedules=schedules,
        parameters=dict(spec.parameters),
        tags=list(spec.tags),
        description=spec.description,
        entrypoint=SYNC_ENTRYPOINT,
        parameter_openapi_schema=_PARAMETER_SCHEMA,
        enforce_parameter_schema=True,
        paused=spec.paused,
        job_variables=dict(spec.job_variables),
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
            work_queue_name=after.work_queue,
            description=after.description,
            paused=after.paused,
            job_variables=dict(after.job_variables),
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


async def limit_destination(destination_id: int, limit: int | None) -> None:
    """Let the destination's work queue start `limit` runs at once (None: any number); the
    queue is made if missing (a deployment's create makes it too, without a limit)."""
    name, pool = destination_queue(destination_id), get_settings().work_pool
    async with prefect_client() as client:
        queues = await client.read_work_queues(
            work_pool_name=pool,
            work_queue_filter=WorkQueueFilter(name=WorkQueueFilterName(any_=[name])),
        )
        if queues:
            await client.update_work_queue(queues[0].id, concurrency_limit=limit)
            return
        await client.create_work_queue(
            name=name,
            work_pool_name=pool,
            concurrency_limit=limit,
            description=f"Sync runs into defined destination {destination_id}.",
        )


async def remove_destination_queue(destination_id: int) -> None:
    """Delete the destination's work queue, if it has one (no connector uses it any more)."""
    name, pool = destination_queue(destination_id), get_settings().work_pool
    async with prefect_client() as client:
        queues = await client.read_work_queues(
            work_pool_name=pool,
            work_queue_filter=WorkQueueFilter(name=WorkQueueFilterName(any_=[name])),
        )
        for queue in queues:
            await client.delete_work_queue_by_id(queue.id)


__all__ = [
    "MANAGED_TAG",
    "actual",
    "DeploymentSpec",
    "apply",
    "deployment_name",
    "destination_queue",
    "limit_destination",
    "remove_destination_queue",
    "desired",
    "list_managed",
    "read_by_name",
    "run_now",
]
