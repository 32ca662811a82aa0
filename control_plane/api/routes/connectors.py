"""Connectors, the seed's contract. Every change is a control flow run; reads are plain."""

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, Header, Path, Query, Response, status
from prefect.client.schemas.objects import FlowRun, StateType

from control_plane import audit, checks, crud, deployments, reconcile, runs
from control_plane.api.deps import (
    CallerDep,
    ConnectorDep,
    DryRun,
    NoDryRun,
    PageDep,
    SessionDep,
    check_project_reference,
)
from control_plane.api.errors import error_responses
from control_plane.api.idempotency import IdempotencyDep
from control_plane.api.plans import planned
from control_plane.api.routes.schedules import add_warnings, schedule_preview
from control_plane.db import session_scope
from control_plane.errors import PreconditionFailed
from control_plane.public import state_etag, state_public
from control_plane.schedules import MAX_PREVIEW, PREVIEW_COUNT
from flows.bulk import bulk_connector_action
from flows.lifecycle import (
    LIFECYCLE_FLOWS,
    backfill_connector,
    cancel_connector_run,
    create_connector,
    delete_connector,
    plan_connector_change,
    reset_connector,
    set_connector_state,
    trigger_connector,
    update_connector,
)
from models import (
    BackfillRequest,
    ConnectorCreate,
    ConnectorPlan,
    ConnectorPublic,
    ConnectorsPublic,
    ConnectorUpdate,
    DriftPublic,
    HistoryPublic,
    RunPublic,
    RunsPublic,
    SchedulePreview,
    StatePublic,
    StateUpdate,
    SyncRun,
    TriggerRequest,
    TriggerResult,
)
from models.base import Id, saved_id
from models.bulk import BulkRequest, BulkResult
from models.check import CheckPublic, ConnectorCheckRequest
from models.connector import Label
from models.schedule import PreviewStart

router = APIRouter(prefix="/connectors", tags=["connectors"])


def _etag(version: int) -> str:
    return f'"{version}"'


IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description="The ETag the change is based on; 412 when the connector changed since.",
    ),
]


def _tag(if_match: str | None) -> str | None:
    """The ETag an If-Match names, quoted; None for none or `*`."""
    if if_match is None or if_match.strip() == "*":
        return None
    return if_match.strip().removeprefix("W/")


def _expected_version(if_match: str | None) -> int | None:
    tag = _tag(if_match)
    if tag is None:
        return None
    tag = tag.strip('"')
    if not tag.isdigit():
        raise PreconditionFailed(f"If-Match {if_match!r} is no ETag of a connector")
    return int(tag)


STALE = error_responses(412)
# A trigger without a body: a body a client may leave out, rather than one it may send as null,
# which clients generated from the OpenAPI document cannot leave out.
_TRIGGER_DEFAULTS = TriggerRequest()
_PLANNED: dict[int | str, dict[str, Any]] = {
    200: {"model": ConnectorPlan, "description": "With dryRun=true: the plan."}
}


@router.post(
    "",
    operation_id="createConnector",
    status_code=status.HTTP_201_CREATED,
    response_model=ConnectorPublic,
    responses=_PLANNED,
)
async def create(
    spec: ConnectorCreate,
    caller: CallerDep,
    idempotency: IdempotencyDep,
    response: Response,
    dry_run: DryRun = False,
):
    """Store the connector and create its Prefect deployment (when active)."""
    check_project_reference(caller, spec.project_id)
    if dry_run:
        return planned(await plan_connector_change(action="create", spec=spec, actor=caller.actor))
    connector = await idempotency.run(
        lambda: create_connector(spec=spec, actor=caller.actor),
        body=spec.model_dump(),
        status_code=status.HTTP_201_CREATED,
    )
    if isinstance(connector, ConnectorPublic):
        response.headers["ETag"] = _etag(connector.version)
        add_warnings(response, connector.schedule_warnings)
    return connector


@router.get("", operation_id="listConnectors", response_model=ConnectorsPublic)
async def list_all(
    session: SessionDep,
    page: PageDep,
    caller: CallerDep,
    label: Annotated[
        list[Label],
        Query(
            default_factory=list,
            description="Only connectors with this label; repeat it for all of several.",
        ),
    ],
    project_id: Annotated[Id | None, Query(alias="projectId")] = None,
    is_active: Annotated[bool | None, Query(alias="isActive")] = None,
):
    connectors, count = await crud.list_connectors(
        session=session,
        project_id=project_id,
        project_ids=caller.projects,
        is_active=is_active,
        labels=label,
        limit=page.limit,
        offset=page.offset,
    )
    return ConnectorsPublic(
        data=[ConnectorPublic.model_validate(c) for c in connectors], count=count
    )


@router.post("/bulk", operation_id="bulkConnectors", response_model=BulkResult)
async def bulk(request: BulkRequest, caller: CallerDep, dry_run: DryRun = False):
    """One action on every connector the selector names, within the caller's projects: a
    control run for the request and one for each connector it changes (none for a connector
    it would not change). A connector that fails does not stop the others; each one's outcome
    is in the answer. With dryRun=true, each change is planned instead."""
    check_project_reference(caller, request.selector.project_id)
    projects = sorted(caller.projects) if caller.projects is not None else None
    return await bulk_connector_action(
        request=request, dry_run=dry_run, actor=caller.actor, project_ids=projects
    )


@router.post(
    "/check",
    operation_id="checkConnectorConfig",
    response_model=CheckPublic,
    dependencies=[NoDryRun],
)
async def check_unsaved(request: ConnectorCheckRequest, caller: CallerDep):
    """Check a connector before saving it: its defined source and destination, with the
    overrides it would lay over their configs, step by step on a worker of the connectors'
    work pool, as a `check-connector` run. 200 with the result, passed or failed."""
    check_project_reference(caller, request.project_id)
    checks.unsaved(request.source_config_override, "source_config_override")
    checks.unsaved(request.destination_config_override, "destination_config_override")
    async with session_scope() as session:
        target = await checks.connector_target(session=session, connector=request)
    checked = await checks.run_check(
        project_id=request.project_id,
        subject=f"an unsaved connector of project {request.project_id}",
        target=target,
        actor=caller.actor,
    )
    return CheckPublic.model_validate(checked)


@router.get("/{connector_id}", operation_id="readConnector", response_model=ConnectorPublic)
async def read(connector: ConnectorDep, response: Response):
    response.headers["ETag"] = _etag(connector.version)
    return connector


# One status for both answers: the schema says either.
@router.patch(
    "/{connector_id}",
    operation_id="updateConnector",
    response_model=ConnectorPublic | ConnectorPlan,
    responses=STALE,
)
async def update(
    connector: ConnectorDep,
    changes: ConnectorUpdate,
    caller: CallerDep,
    response: Response,
    if_match: IfMatch = None,
    dry_run: DryRun = False,
):
    """Change any field; the deployment follows (reschedule, activate, deactivate)."""
    check_project_reference(caller, changes.project_id)
    if dry_run:
        plan = await plan_connector_change(
            action="update",
            connector_id=connector.id,
            changes=changes,
            actor=caller.actor,
            expected_version=_expected_version(if_match),
        )
        return planned(plan)
    updated = await update_connector(
        connector_id=saved_id(connector),
        changes=changes,
        actor=caller.actor,
        expected_version=_expected_version(if_match),
    )
    response.headers["ETag"] = _etag(updated.version)
    add_warnings(response, updated.schedule_warnings)
    return updated


@router.post(
    "/{connector_id}/trigger",
    operation_id="triggerConnector",
    response_model=TriggerResult,
    dependencies=[NoDryRun],
)
async def trigger(
    connector: ConnectorDep,
    caller: CallerDep,
    idempotency: IdempotencyDep,
    request: Annotated[TriggerRequest, Body()] = _TRIGGER_DEFAULTS,
):
    """Run the connector now, bypassing its schedule; the body is optional."""

    async def start() -> TriggerResult:
        flow_run_id = await trigger_connector(
            connector_id=saved_id(connector), on_conflict=request.on_conflict, actor=caller.actor
        )
        return TriggerResult(flow_run_id=flow_run_id)

    return await idempotency.run(start, body=request.model_dump(), status_code=status.HTTP_200_OK)


@router.post(
    "/{connector_id}/backfill",
    operation_id="backfillConnector",
    response_model=TriggerResult,
    dependencies=[NoDryRun],
)
async def backfill(
    connector: ConnectorDep,
    caller: CallerDep,
    idempotency: IdempotencyDep,
    request: BackfillRequest,
):
    """Read a window of an incremental stream again (a `backfill-connector` run, then a sync
    run tagged `backfill`), leaving its cursor where it is."""

    async def start() -> TriggerResult:
        flow_run_id = await backfill_connector(
            connector_id=saved_id(connector), backfill=request, actor=caller.actor
        )
        return TriggerResult(result="Backfill started", flow_run_id=flow_run_id)

    body = request.model_dump(mode="json", by_alias=True)
    return await idempotency.run(start, body=body, status_code=status.HTTP_200_OK)


@router.post(
    "/{connector_id}/check",
    operation_id="checkConnector",
    response_model=CheckPublic,
    dependencies=[NoDryRun],
)
async def check(connector: ConnectorDep, caller: CallerDep):
    """Check the connector's source and destination as its runs see them (resolve, connect,
    authenticate, read a sample, write permission), on a worker of the connectors' work pool,
    as a `check-connector` run. 200 with the result, passed or failed; with
    CONTROL_PLANE_REQUIRE_CHECK, a passed check is what lets the connector be activated."""
    async with session_scope() as session:
        target = await checks.connector_target(session=session, connector=connector)
    checked = await checks.run_check(
        project_id=connector.project_id,
        subject=f"connector {connector.id}",
        target=target,
        actor=caller.actor,
        connector_id=connector.id,
    )
    return CheckPublic.model_validate(checked)


@router.get(
    "/{connector_id}/schedule", operation_id="readConnectorSchedule", response_model=SchedulePreview
)
def schedule(
    connector: ConnectorDep,
    count: Annotated[int, Query(ge=1, le=MAX_PREVIEW, description="Runs to show.")] = PREVIEW_COUNT,
    start: Annotated[PreviewStart | None, Query(description="Default now.")] = None,
):
    """The connector's next runs, as Prefect's scheduler creates them: in UTC and in the
    connector's time zone, each with what daylight saving time does to it."""
    return schedule_preview(
        connector.schedule, connector.timezone, count, start, runs=connector.is_active
    )


@router.get("/{connector_id}/runs", operation_id="listConnectorRuns", response_model=RunsPublic)
async def list_runs(
    connector: ConnectorDep,
    session: SessionDep,
    page: PageDep,
    state: Annotated[
        StateType | None, Query(description="Only runs in this state, e.g. COMPLETED.")
    ] = None,
):
    """The connector's sync runs, newest first: Prefect's states with the records they moved."""
    flow_runs, count = await runs.list_runs(
        saved_id(connector), states=[state] if state else None, limit=page.limit, offset=page.offset
    )
    figures = await crud.sync_runs(session=session, flow_run_ids=[r.id for r in flow_runs])
    return RunsPublic(data=[_run_public(r, figures.get(r.id)) for r in flow_runs], count=count)


def _run_public(run: FlowRun, figures: SyncRun | None) -> RunPublic:
    state = run.state
    failed = state is not None and (state.is_failed() or state.is_crashed())
    return RunPublic(
        flow_run_id=run.id,
        name=run.name,
        state=run.state_type.value if run.state_type else "UNKNOWN",
        trigger=runs.trigger_of(run),
        scheduled_at=run.expected_start_time,
        started_at=run.start_time,
        ended_at=run.end_time,
        duration_seconds=run.total_run_time.total_seconds() if run.end_time else None,
        records_read=figures.records_read if figures else None,
        records_written=figures.records_written if figures else None,
        error=(figures and figures.error) or (state.message if failed and state else None),
    )


@router.post(
    "/{connector_id}/runs/{flow_run_id}/cancel",
    operation_id="cancelConnectorRun",
    dependencies=[NoDryRun],
)
async def cancel_run(
    connector: ConnectorDep,
    flow_run_id: Annotated[UUID, Path(title="Flow run ID")],
    caller: CallerDep,
):
    """Cancel a scheduled or running sync run; 409 when it has ended already."""
    state = await cancel_connector_run(
        connector_id=saved_id(connector), flow_run_id=flow_run_id, actor=caller.actor
    )
    return {"flowRunId": flow_run_id, "state": state}


@router.get(
    "/{connector_id}/history", operation_id="listConnectorHistory", response_model=HistoryPublic
)
async def history(connector: ConnectorDep, page: PageDep):
    """The connector's audit trail from Prefect, newest first: each control run with who asked,
    what it changed (before and after, secrets masked), or what it was asked and why it was
    refused."""
    entries, count = await audit.history(
        saved_id(connector), flows=LIFECYCLE_FLOWS, limit=page.limit, offset=page.offset
    )
    return HistoryPublic(data=entries, count=count)


@router.get("/{connector_id}/drift", operation_id="readConnectorDrift", response_model=DriftPublic)
async def drift(connector: ConnectorDep, session: SessionDep):
    """How the connector's deployment in Prefect differs from the row; nothing is repaired."""
    deployment = await deployments.read_by_name(deployments.deployment_name(saved_id(connector)))
    context = await crud.context_of(session=session, connector=connector)
    found = reconcile.compare(connector, deployment, context)
    return DriftPublic(
        connector_id=saved_id(connector),
        in_sync=found is None,
        action=found.action if found else None,
        differences=found.differences if found else [],
    )


@router.post(
    "/{connector_id}/reset",
    operation_id="resetConnector",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[NoDryRun],
)
async def reset(connector: ConnectorDep, caller: CallerDep) -> None:
    """Forget the incremental state: the next run is a full sync."""
    await reset_connector(connector_id=saved_id(connector), actor=caller.actor)


@router.get("/{connector_id}/state", operation_id="readConnectorState", response_model=StatePublic)
async def read_state(connector: ConnectorDep, session: SessionDep, response: Response):
    """Where each stream's next incremental read resumes; its ETag goes with a PUT's If-Match."""
    states = await crud.get_states(session=session, connector_id=saved_id(connector))
    state = state_public(connector, states)
    response.headers["ETag"] = state_etag(state)
    return state


@router.put(
    "/{connector_id}/state",
    operation_id="setConnectorState",
    response_model=StatePublic,
    responses=STALE,
    dependencies=[NoDryRun],
)
async def set_state(
    connector: ConnectorDep,
    state: StateUpdate,
    caller: CallerDep,
    response: Response,
    if_match: IfMatch = None,
):
    """Set where a stream's next incremental read resumes (a `set-connector-state` run): a
    cursor, or null to read from the start. 412 when the state changed since the If-Match."""
    public = await set_connector_state(
        connector_id=saved_id(connector),
        state=state,
        actor=caller.actor,
        expected_etag=_tag(if_match),
    )
    response.headers["ETag"] = state_etag(public)
    return public


@router.delete(
    "/{connector_id}",
    operation_id="deleteConnector",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_PLANNED,
)
async def delete(
    connector: ConnectorDep, caller: CallerDep, if_match: IfMatch = None, dry_run: DryRun = False
):
    """Remove the connector, its deployment and its scheduled runs."""
    if dry_run:
        plan = await plan_connector_change(
            action="delete",
            connector_id=connector.id,
            actor=caller.actor,
            expected_version=_expected_version(if_match),
        )
        return planned(plan)
    await delete_connector(
        connector_id=saved_id(connector),
        actor=caller.actor,
        expected_version=_expected_version(if_match),
    )
