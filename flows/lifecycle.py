"""The control flows: every change to a connector is one run of one of these.

Each flow keeps the database row and the connector's Prefect deployment in one unit: the row
is flushed, Prefect is changed, then the row is committed. If Prefect fails, the transaction
rolls back; if the commit fails, the Prefect change is undone.

Each flow's first step is `label_run`: a name for a person and the actor and connector tags,
from the parameters alone, so a refused attempt (404, 409, 412, 422) reads in the Prefect UI
like one that worked (a name template would cost one more Prefect call per run). A run whose
parameters fail Prefect's validation never reaches its body; `label_refused` names it then.
No run keeps a result: the database is the record, and Prefect's engine skips a result-storage
lookup.
"""

from dataclasses import dataclass
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic.alias_generators import to_camel
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane import crud, deployments, events, runs
from control_plane.audit import actor_tag, label_refused, label_run
from control_plane.db import session_scope, write_lock
from control_plane.deployments import DeploymentSpec
from control_plane.errors import Conflict
from control_plane.faults import pause_point
from control_plane.sync import failure_threshold
from models import Connector, ConnectorCreate, ConnectorPublic, ConnectorUpdate
from models.connector import OnConflict

UI_ACTOR = "prefect-ui"


def _spec(connector: Connector) -> DeploymentSpec | None:
    return deployments.desired(connector) if connector.is_active else None


async def _commit(
    session: AsyncSession,
    *,
    deployment_id: UUID | None,
    applied: DeploymentSpec | None,
    previous: DeploymentSpec | None,
) -> None:
    """Commit the row after Prefect was changed; if that fails, put Prefect back."""
    await pause_point(f"{flow_run.get_flow_name()}:before-commit")
    try:
        await session.commit()
    except BaseException:
        # BaseException too: Prefect turns SIGTERM during a flow run into TerminationSignal.
        await deployments.apply(deployment_id, applied, previous)
        raise


async def _apply_and_commit(
    session: AsyncSession, connector: Connector, before: DeploymentSpec | None
) -> ConnectorPublic:
    after = _spec(connector)
    connector.prefect_deployment_id = await deployments.apply(
        connector.prefect_deployment_id, before, after
    )
    await _commit(
        session, deployment_id=connector.prefect_deployment_id, applied=after, previous=before
    )
    get_run_logger().info(
        "connector %s committed with deployment %s", connector.id, connector.prefect_deployment_id
    )
    return ConnectorPublic.model_validate(connector)


def _describe_update(connector_id: int, changes: ConnectorUpdate) -> str:
    """What the caller asked for, from the request alone: the row is not read yet."""
    values = changes.model_dump(exclude_unset=True)
    is_active = values.pop("is_active", None)
    if is_active is None and values and values.keys() <= {"schedule", "timezone"}:
        when = []
        if "schedule" in values:
            when.append(values["schedule"] or "manual")
        if "timezone" in values:
            when.append(values["timezone"])
        return f"reschedule connector {connector_id} to {' '.join(when)}"
    fields = ", ".join(sorted(map(to_camel, values)))
    if is_active is None:
        return f"update connector {connector_id}: {fields or 'nothing'}"
    verb = "activate" if is_active else "deactivate"
    return f"{verb} connector {connector_id}" + (f" and update {fields}" if fields else "")


@dataclass(frozen=True)
class _Snapshot:
    schedule: str | None
    timezone: str
    is_active: bool

    @classmethod
    def of(cls, connector: Connector) -> "_Snapshot":
        return cls(connector.schedule, connector.timezone, connector.is_active)


def _emit_update(
    connector: Connector, previous: _Snapshot, changes: ConnectorUpdate, actor: str
) -> None:
    """One event per kind of change: activated/deactivated, rescheduled, updated."""
    current = _Snapshot.of(connector)
    if current.is_active != previous.is_active:
        events.emit(
            events.ACTIVATED if current.is_active else events.DEACTIVATED, connector, actor=actor
        )
    if (current.schedule, current.timezone) != (previous.schedule, previous.timezone):
        events.emit(
            events.RESCHEDULED,
            connector,
            actor=actor,
            before={"schedule": previous.schedule, "timezone": previous.timezone},
            after={"schedule": current.schedule, "timezone": current.timezone},
        )
    others = changes.model_fields_set - {"schedule", "timezone", "is_active"}
    if others:
        events.emit(events.UPDATED, connector, actor=actor, fields=sorted(map(to_camel, others)))


@flow(name="create-connector", persist_result=False, on_failure=[label_refused("create connector")])
async def create_connector(spec: ConnectorCreate, actor: str = UI_ACTOR) -> ConnectorPublic:
    """Store a new connector and, when active, create its scheduled deployment."""
    await label_run(
        actor=actor, name=f"create connector {spec.name!r} in project {spec.project_id}"
    )
    async with write_lock(f"create:{spec.project_id}:{spec.name}"), session_scope() as session:
        connector = await crud.add_connector(session=session, spec=spec)
        # The id exists only now: one more Prefect call, on create alone.
        await label_run(
            actor=actor,
            name=f"create connector {connector.id}: {connector.name}",
            connector_id=connector.id,
        )
        public = await _apply_and_commit(session, connector, before=None)
    events.emit(
        events.CREATED,
        connector,
        actor=actor,
        schedule=connector.schedule,
        timezone=connector.timezone,
        isActive=connector.is_active,
    )
    return public


@flow(name="update-connector", persist_result=False, on_failure=[label_refused("update connector")])
async def update_connector(
    connector_id: int,
    changes: ConnectorUpdate,
    actor: str = UI_ACTOR,
    expected_version: int | None = None,
) -> ConnectorPublic:
    """Change any field; reschedules, activates or deactivates the deployment to match.

    With `expected_version` (a caller's If-Match), only if the connector is still at it.
    """
    await label_run(
        actor=actor, name=_describe_update(connector_id, changes), connector_id=connector_id
    )
    async with write_lock(f"connector:{connector_id}"), session_scope() as session:
        connector = await crud.get_connector(
            session=session, connector_id=connector_id, for_update=True
        )
        crud.check_version(connector, expected_version)
        before, previous = _spec(connector), _Snapshot.of(connector)
        await crud.change_connector(session=session, connector=connector, changes=changes)
        public = await _apply_and_commit(session, connector, before)
    _emit_update(connector, previous, changes, actor)
    return public


@flow(
    name="deactivate-connector",
    persist_result=False,
    on_failure=[label_refused("deactivate connector")],
)
async def deactivate_connector(
    connector_id: int, reason: str, actor: str = UI_ACTOR, only_if_failing: bool = False
) -> ConnectorPublic:
    """Switch the connector off with a reason: its deployment and scheduled runs go.

    With `only_if_failing` (as the auto-deactivate automation asks), it checks first that the
    connector still fails at least its threshold of runs in a row; a success in between wins.
    """
    await label_run(
        actor=actor,
        name=f"deactivate connector {connector_id}: {reason}",
        connector_id=connector_id,
    )
    async with write_lock(f"connector:{connector_id}"), session_scope() as session:
        connector = await crud.get_connector(
            session=session, connector_id=connector_id, for_update=True
        )
        threshold = failure_threshold(connector)
        if not connector.is_active or (
            only_if_failing and not (threshold and connector.consecutive_failures >= threshold)
        ):
            get_run_logger().info("connector %s: nothing to deactivate", connector_id)
            return ConnectorPublic.model_validate(connector)
        before, deployment_id = _spec(connector), connector.prefect_deployment_id
        crud.deactivate(connector=connector, reason=reason)
        public = await _apply_and_commit(session, connector, before)
    event = events.AUTO_DEACTIVATED if only_if_failing else events.DEACTIVATED
    events.emit(event, connector, actor=actor, reason=reason, deployment_id=deployment_id)
    return public


@flow(
    name="trigger-connector", persist_result=False, on_failure=[label_refused("trigger connector")]
)
async def trigger_connector(
    connector_id: int, on_conflict: OnConflict = "queue", actor: str = UI_ACTOR
) -> UUID:
    """Start a run of the connector's deployment now, bypassing its schedule.

    While a run is active, the new one waits for it (the deployment runs one at a time),
    or with `on_conflict="reject"` the trigger fails.
    """
    await label_run(
        actor=actor, name=f"trigger connector {connector_id}", connector_id=connector_id
    )
    async with session_scope() as session:
        connector = await crud.get_connector(session=session, connector_id=connector_id)
    if not connector.is_active or connector.prefect_deployment_id is None:
        raise Conflict(
            f"connector {connector_id} is inactive; activate it (isActive: true) to run it"
        )
    if on_conflict == "reject" and (active := await runs.active_runs(connector_id)):
        raise Conflict(f"connector {connector_id} has a run in progress: {active[0].id}")
    flow_run_id = await deployments.run_now(
        connector.prefect_deployment_id, tags=[runs.MANUAL_TAG, actor_tag(actor)]
    )
    get_run_logger().info("connector %s: started sync run %s", connector_id, flow_run_id)
    events.emit(events.TRIGGERED, connector, actor=actor, flowRunId=str(flow_run_id))
    return flow_run_id


@flow(
    name="cancel-connector-run",
    persist_result=False,
    on_failure=[label_refused("cancel a run of connector")],
)
async def cancel_connector_run(connector_id: int, flow_run_id: UUID, actor: str = UI_ACTOR) -> str:
    """Cancel a scheduled or running sync run of the connector."""
    await label_run(
        actor=actor,
        name=f"cancel run {flow_run_id} of connector {connector_id}",
        connector_id=connector_id,
    )
    run = await runs.cancel(connector_id, flow_run_id)
    return run.state.name if run.state else "unknown"


@flow(name="reset-connector", persist_result=False, on_failure=[label_refused("reset connector")])
async def reset_connector(connector_id: int, actor: str = UI_ACTOR) -> None:
    """Forget the connector's incremental state: its next run reads everything again."""
    await label_run(actor=actor, name=f"reset connector {connector_id}", connector_id=connector_id)
    async with session_scope() as session:
        await crud.get_connector(session=session, connector_id=connector_id)
        await crud.reset_state(session=session, connector_id=connector_id)
        await session.commit()


@flow(name="delete-connector", persist_result=False, on_failure=[label_refused("delete connector")])
async def delete_connector(
    connector_id: int, actor: str = UI_ACTOR, expected_version: int | None = None
) -> None:
    """Remove the connector with its deployment and scheduled runs."""
    await label_run(actor=actor, name=f"delete connector {connector_id}", connector_id=connector_id)
    async with write_lock(f"connector:{connector_id}"), session_scope() as session:
        connector = await crud.get_connector(
            session=session, connector_id=connector_id, for_update=True
        )
        crud.check_version(connector, expected_version)
        before = _spec(connector)
        await crud.remove_connector(session=session, connector=connector)
        await deployments.apply(connector.prefect_deployment_id, before, None)
        await _commit(session, deployment_id=None, applied=None, previous=before)
    events.emit(events.DELETED, connector, actor=actor)


__all__ = [
    "cancel_connector_run",
    "create_connector",
    "deactivate_connector",
    "delete_connector",
    "reset_connector",
    "trigger_connector",
    "update_connector",
]
