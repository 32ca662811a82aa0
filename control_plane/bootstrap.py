"""What the control plane needs in Prefect besides the connectors' deployments: the work pools
they run on, the control flows' deployments and automations that prefect.yaml declares, the
check flow's deployment on the connectors' pool, and the automation that marks Crashed a sync
run whose heartbeats stopped. Runs of the control and check flows start here too.

`control-plane up` and `control-plane deploy` register them (`deploy_control_flows`); running
it again changes nothing. The check deployment is created on a pool's first check.
"""

import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.events import DeploymentTriggerTypes
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectAlreadyExists
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.states import Scheduled
from prefect.utilities.callables import parameter_schema
from prefect.utilities.processutils import command_to_string
from prefect.workers.process import ProcessWorker
from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type
from pydantic import TypeAdapter

from control_plane import freshness, notify
from control_plane.deployments import MANAGED_TAG
from control_plane.errors import DeploymentMissing, WorkPoolMissing
from control_plane.orchestrator import prefect_client
from control_plane.settings import Settings, get_settings
from control_plane.titles import field_title
from flows.sync import sync_connector

# Starts a run's process as Prefect's engine in this interpreter. Without a command, Prefect's
# process worker (3.9) starts a workspace supervisor that imports Prefect and then execs the
# engine, which imports it again: 1.4 s more from trigger to Running.
LOCAL_ENGINE = command_to_string([sys.executable, "-m", "prefect.engine"])
HEARTBEAT_SECONDS = 30  # Prefect's least
_HEARTBEAT_ENV = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}


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
        check_flow: Flow[..., Any] = load_flow_from_entrypoint(CHECK_ENTRYPOINT)
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
        control_flow: Flow[..., Any] = load_flow_from_entrypoint(entry["entrypoint"])
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
    """Reconcile's schedules: passes over what changed, and full ones. Their intervals are
    settings; prefect.yaml holds their defaults and their parameters."""
    seconds = {
        False: settings.reconcile_interval_seconds,
        True: settings.full_reconcile_interval_seconds,
    }
    return [
        DeploymentScheduleCreate(
            schedule=IntervalSchedule(interval=timedelta(seconds=seconds[full])),
            parameters=schedule["parameters"],
        )
        for schedule in entry.get("schedules", [])
        if seconds[full := schedule["parameters"]["full"]]
    ]


async def _upsert_automation(client: PrefectClient, automation: AutomationCore) -> None:
    existing = await client.read_automations_by_name(automation.name)
    if existing:
        # An update may not name the owner; the automation keeps the one it was created with.
        update = AutomationCore.model_validate(automation.model_dump(exclude={"owner_resource"}))
        await client.update_automation(existing[0].id, update)
    else:
        await client.create_automation(automation)


__all__ = [
    "CHECK_FLOW",
    "HEARTBEAT_SECONDS",
    "LOCAL_ENGINE",
    "control_deployments",
    "deploy_control_flows",
    "ensure_work_pool",
    "lost_runs_automation",
    "run_control_later",
    "start_check",
]
