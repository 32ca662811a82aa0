"""The only module that talks to Prefect's deployment API.

A connector's deployment is derived from its row (`desired`), so creating, patching and
comparing deployments all start from the same spec.
"""

import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import (
    DeploymentScheduleCreate,
    DeploymentScheduleUpdate,
    DeploymentUpdate,
    WorkPoolCreate,
    WorkPoolUpdate,
)
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterTags,
    FlowFilter,
    FlowFilterName,
    WorkQueueFilter,
    WorkQueueFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.client.schemas.sorting import DeploymentSort
from prefect.events import DeploymentTriggerTypes
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectAlreadyExists
from prefect.flows import load_flow_from_entrypoint
from prefect.states import Scheduled
from prefect.utilities.callables import parameter_schema
from prefect.utilities.processutils import command_to_string
from prefect.workers.process import ProcessWorker
from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type
from pydantic import BaseModel, ConfigDict, TypeAdapter

from control_plane import freshness, notify, schedules
from control_plane.errors import DeploymentMissing, WorkPoolMissing
from control_plane.orchestrator import PREFECT_PAGE, prefect_client
from control_plane.runs import connector_tag
from control_plane.settings import Settings, get_settings
from control_plane.titles import field_title
from flows.sync import sync_connector
from models import Connector, ConnectorContext

MANAGED_TAG = "control-plane"
SCHEDULE_SLUG = "primary"
SYNC_ENTRYPOINT = "flows.sync:sync_connector"
# Starts a run's process as Prefect's engine in this interpreter. Without a command, Prefect's
# process worker (3.9) starts a workspace supervisor that imports Prefect and then execs the
# engine, which imports it again: 1.4 s more from trigger to Running.
LOCAL_ENGINE = command_to_string([sys.executable, "-m", "prefect.engine"])
_PARAMETER_SCHEMA = parameter_schema(sync_connector).model_dump()
HEARTBEAT_SECONDS = 30  # Prefect's least
_HEARTBEAT_ENV = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}


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


async def list_managed() -> list[DeploymentResponse]:
    """Every connector deployment in Prefect (sync-connector, tagged as managed), in pages."""
    found: list[DeploymentResponse] = []
    async with prefect_client() as client:
        while True:
            page = await client.read_deployments(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[sync_connector.name])),
                deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[MANAGED_TAG])),
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


async def run_control_later(
    flow_name: str, parameters: dict[str, Any], *, at: datetime, idempotency_key: str
) -> UUID:
    """Schedule a run of a control flow's deployment (prefect.yaml names each after its flow)
    at `at`; a second call with the same key finds the first run."""
    async with prefect_client() as client:
        deployment = await client.read_deployment_by_name(f"{flow_name}/{flow_name}")
        flow_run = await client.create_flow_run_from_deployment(
            deployment.id,
            parameters=parameters,
            state=Scheduled(scheduled_time=at),
            idempotency_key=idempotency_key,
        )
        return flow_run.id


# The connection check flow, deployed once per work pool of connectors (`start_check`).
CHECK_FLOW = "check-connector"
CHECK_ENTRYPOINT = "flows.check:check_connector"
_check_deployments: dict[str, UUID] = {}


async def _check_deployment(pool: str) -> UUID:
    """The check flow's deployment on `pool`, created (upserted) once per process: checks run
    where the pool's sync runs do, with the same files, network and credentials."""
    if pool not in _check_deployments:
        # Loaded by its entrypoint, as the worker does: flows.check imports this module.
        check_flow = load_flow_from_entrypoint(CHECK_ENTRYPOINT)
        async with prefect_client() as client:
            flow_id = await client.create_flow_from_name(check_flow.name)
            _check_deployments[pool] = await client.create_deployment(
                flow_id=flow_id,
                name=pool,
                work_pool_name=pool,
                entrypoint=CHECK_ENTRYPOINT,
                description=(
                    "Connection checks of the connectors on this work pool; the API starts each "
                    "one (POST .../check) and answers with its result."
                ),
                tags=[MANAGED_TAG],
                parameter_openapi_schema=_titled(parameter_schema(check_flow).model_dump()),
                enforce_parameter_schema=True,
            )
    return _check_deployments[pool]


async def start_check(check_id: UUID, *, name: str, tags: list[str]) -> UUID:
    """Start a run of the check flow for the stored check, on the connectors' work pool,
    named and tagged for the audit log as it is created; returns its flow run id."""
    pool = get_settings().work_pool
    try:
        return await _run_check(await _check_deployment(pool), check_id, name, tags)
    except DeploymentMissing:
        _check_deployments.pop(pool)  # deleted in Prefect since: created again
        return await _run_check(await _check_deployment(pool), check_id, name, tags)


async def _run_check(deployment_id: UUID, check_id: UUID, name: str, tags: list[str]) -> UUID:
    async with prefect_client() as client:
        flow_run = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"check_id": str(check_id)}, name=name, tags=tags
        )
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


async def ensure_work_pool(
    name: str, *, command: str | None = None, worker_type: str = "process"
) -> None:
    """Create the process work pool the deployments run on, unless it exists; its runs send
    heartbeats, so one lost with its worker is noticed (`lost_runs_automation`). A pool of
    another `worker_type` (docker, kubernetes) is created with Prefect's job template for it;
    one that exists is left as it is.

    With `command` (only for a pool whose workers run here, on a Prefect server of our own), the
    pool's runs start with it, also when the pool exists: a moved checkout moves the interpreter.
    A pool that exists otherwise keeps its job template, with the heartbeat added to its env.
    """
    if worker_type != "process":
        await _ensure_other_pool(name, worker_type)
        return
    template = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["command"]["default"] = command
    template["variables"]["properties"]["env"]["default"] = _HEARTBEAT_ENV
    async with prefect_client() as client:
        try:
            await client.create_work_pool(
                WorkPoolCreate(name=name, type="process", base_job_template=template)
            )
            return
        except ObjectAlreadyExists:
            if not command:
                template = (await client.read_work_pool(name)).base_job_template
                env = template.get("variables", {}).get("properties", {}).get("env")
                if env is None or _HEARTBEAT_ENV.items() <= (env.get("default") or {}).items():
                    return
                env["default"] = {**(env.get("default") or {}), **_HEARTBEAT_ENV}
        await client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))


async def _ensure_other_pool(name: str, worker_type: str) -> None:
    template = await get_default_base_job_template_for_infrastructure_type(worker_type)
    if template is None:
        raise WorkPoolMissing(
            f"Prefect knows no worker type {worker_type!r} for work pool {name!r}: set "
            "CONTROL_PLANE_WORK_POOL_TYPE to one of its worker types (process, docker, "
            f"kubernetes, ...), or create the pool yourself: prefect work-pool create {name} "
            "--type <type>"
        )
    async with prefect_client() as client:
        try:
            await client.create_work_pool(
                WorkPoolCreate(name=name, type=worker_type, base_job_template=template)
            )
        except ObjectAlreadyExists:
            pass


# States after which a run sends no heartbeats and is not lost: it ended, or waits to retry.
_ENDED_STATES = ("Completed", "Failed", "Cancelled", "Crashed", "AwaitingRetry", "Paused")


def lost_runs_automation() -> AutomationCore:
    """Prefect's recipe for runs that died without a word (their worker or machine lost): a
    sync run that misses three heartbeats in a row is marked Crashed, which the
    `record-sync-runs-that-ended-unrecorded` automation then records in its connector."""
    alive = {"prefect.flow-run.heartbeat"}
    ends = {f"prefect.flow-run.{state}" for state in _ENDED_STATES}
    return AutomationCore(
        name="sync-runs-without-heartbeats",
        description="A sync run that stops sending heartbeats is marked Crashed.",
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification(
                {"prefect.resource.role": "flow", "prefect.resource.name": sync_connector.name}
            ),
            after=alive,
            expect=alive | ends,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=3 * HEARTBEAT_SECONDS),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {3 * HEARTBEAT_SECONDS} s: its process is gone",
            )
        ],
    )


PROJECT_FILE = (
    Path(__file__).resolve().parent / "prefect.yaml"
)  # package data; ./prefect.yaml links it
# Automations of prefect.yaml that a setting switches on or off.
_SWITCHES = {"first-sync-on-create": "first_sync_on_create"}
_triggers: TypeAdapter[DeploymentTriggerTypes] = TypeAdapter(DeploymentTriggerTypes)


def control_deployments(path: Path = PROJECT_FILE) -> list[dict[str, Any]]:
    """The control flows' deployments that prefect.yaml declares."""
    return yaml.safe_load(path.read_text())["deployments"]


async def deploy_control_flows(
    path: Path = PROJECT_FILE, settings: Settings | None = None
) -> list[str]:
    """Register prefect.yaml's deployments and automations; running it again changes nothing.

    Deployments are upserted by name, automations updated in place by name.
    """
    settings = settings or get_settings()
    await ensure_work_pool(settings.work_pool, worker_type=settings.work_pool_type)
    registered = []
    for entry in control_deployments(path):
        await ensure_work_pool(entry["work_pool"]["name"])
        control_flow = load_flow_from_entrypoint(entry["entrypoint"])
        async with prefect_client() as client:
            flow_id = await client.create_flow_from_name(control_flow.name)
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name=entry["name"],
                schedules=_control_schedules(entry, settings),
                work_pool_name=entry["work_pool"]["name"],
                entrypoint=entry["entrypoint"],
                description=entry.get("description"),
                tags=entry.get("tags", []),
                parameter_openapi_schema=_titled(parameter_schema(control_flow).model_dump()),
                enforce_parameter_schema=True,
            )
            for spec in entry.get("triggers", []):
                switch = _SWITCHES.get(spec["name"])
                enabled = getattr(settings, switch) if switch else spec.get("enabled", True)
                trigger = _triggers.validate_python({**spec, "enabled": enabled})
                trigger.set_deployment_id(deployment_id)
                await _upsert_automation(client, trigger.as_automation())
        registered.append(f"{control_flow.name}/{entry['name']}")
    async with prefect_client() as client:
        await _upsert_automation(client, lost_runs_automation())
        # So that the Prefect UI offers it as a block to create notification channels with.
        await notify.SignedWebhook.aregister_type_and_schema(client=client)
    await freshness.watch(settings.max_staleness)
    return registered


def _titled(schema: dict[str, Any]) -> dict[str, Any]:
    """The run form's schema with titles a person reads: Prefect titles a flow's parameters
    with their names (`connector_id`); the models inside title their own fields."""
    for name, field in schema.get("properties", {}).items():
        field["title"] = field_title(name)
    return schema


def _control_schedules(entry: dict[str, Any], settings: Settings) -> list[DeploymentScheduleCreate]:
    if not entry.get("schedules"):
        return []
    # The reconcile interval is a setting; prefect.yaml holds its default.
    seconds = settings.reconcile_interval_seconds
    if not seconds:
        return []
    return [
        DeploymentScheduleCreate(schedule=IntervalSchedule(interval=timedelta(seconds=seconds)))
    ]


async def _upsert_automation(client: PrefectClient, automation: AutomationCore) -> None:
    existing = await client.read_automations_by_name(automation.name)
    if existing:
        # An update may not name the owner; the automation keeps the one it was created with.
        update = AutomationCore.model_validate(automation.model_dump(exclude={"owner_resource"}))
        await client.update_automation(existing[0].id, update)
    else:
        await client.create_automation(automation)


async def check_health() -> None:
    """Return when Prefect's API and its database answer; raise `Unavailable` saying which not.

    Reads one work pool: Prefect's `/api/health` answers 200 without a query, also when its
    database is gone (SQLite files deleted under a running server).
    """
    async with prefect_client() as client:
        await client.read_work_pools(limit=1)


__all__ = [
    "LOCAL_ENGINE",
    "MANAGED_TAG",
    "actual",
    "DeploymentSpec",
    "CHECK_FLOW",
    "check_health",
    "apply",
    "deployment_name",
    "destination_queue",
    "limit_destination",
    "remove_destination_queue",
    "control_deployments",
    "deploy_control_flows",
    "desired",
    "ensure_work_pool",
    "lost_runs_automation",
    "list_managed",
    "read_by_name",
    "run_control_later",
    "run_now",
    "start_check",
]
