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

from collections.abc import Callable
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
from control_plane.errors import Conflict, NotFound
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


async def _cancel_runs(connector_id: int, *, wait: float) -> None:
    """Cancel the connector's runs that have not ended, a running one after it had `wait`
    seconds to stop; before its deployment goes, which Prefect cannot end them after."""
    cancelled = await runs.cancel_all(connector_id, wait=wait)
    if cancelled:
        get_run_logger().info(
            "connector %s: cancelled runs %s", connector_id, ", ".join(map(str, cancelled))
        )


async def _stop_runs_first(connector_id: int, goes_ahead: Callable[[Connector], bool]) -> None:
    """Before its row is locked, stop the connector's runs if the change will switch it off.

    A running run records its end in the connector's row: it could not stop while the lock is
    held. What a trigger of another process starts meanwhile cannot be running yet when the
    locked change cancels it (`wait=0`).
    """
    async with session_scope() as session:
        try:
            connector = await crud.get_connector(session=session, connector_id=connector_id)
        except NotFound:
            return
    if goes_ahead(connector):
        await _cancel_runs(connector_id, wait=runs.STOP_SECONDS)


def _deactivates(connector: Connector, only_if_failing: bool) -> bool:
    threshold = failure_threshold(connector)
    failing = bool(threshold) and connector.consecutive_failures >= threshold
    return connector.is_active and (failing or not only_if_failing)


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
    async with write_lock(f"connector:{connector_id}"):
        await _stop_runs_first(
            connector_id,
            lambda c: (
                c.is_active and changes.is_active is False and expected_version in (None, c.version)
            ),
        )
        async with session_scope() as session:
            connector = await crud.get_connector(
                session=session, connector_id=connector_id, for_update=True
            )
            crud.check_version(connector, expected_version)
            before, previous = _spec(connector), _Snapshot.of(connector)
            await crud.change_connector(session=session, connector=connector, changes=changes)
            if previous.is_active and not connector.is_active:
                await _cancel_runs(connector_id, wait=0)
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
    """Switch the connector off with a reason: its runs that have not ended are cancelled (a
    running one is stopped, its load rolled back), then its deployment goes.

    With `only_if_failing` (as the auto-deactivate automation asks), it checks first that the
    connector still fails at least its threshold of runs in a row; a success in between wins.
    """
    await label_run(
        actor=actor,
        name=f"deactivate connector {connector_id}: {reason}",
        connector_id=connector_id,
    )
    async with write_lock(f"connector:{connector_id}"):
        await _stop_runs_first(connector_id, lambda c: _deactivates(c, only_if_failing))
        async with session_scope() as session:
            connector = await crud.get_connector(
                session=session, connector_id=connector_id, for_update=True
            )
            if not _deactivates(connector, only_if_failing):
                get_run_logger().info("connector %s: nothing to deactivate", connector_id)
                return ConnectorPublic.model_validate(connector)
            before, deployment_id = _spec(connector), connector.prefect_deployment_id
            await _cancel_runs(connector_id, wait=0)
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
    # Under the connector's lock: a delete or deactivate after this sees the new run and
    # cancels it; one before it leaves nothing to trigger.
    async with write_lock(f"connector:{connector_id}"), session_scope() as session:
        connector = await crud.get_connector(
            session=session, connector_id=connector_id, for_update=True
        )
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
    # Under the connector's lock, as trigger is: a cancel and a trigger never cross.
    async with write_lock(f"connector:{connector_id}"), session_scope() as session:
        await crud.get_connector(session=session, connector_id=connector_id, for_update=True)
        run = await runs.cancel(connector_id, flow_run_id)
    return run.state.name if run.state else "unknown"


@flow(name="reset-connector", persist_result=False, on_failure=[label_refused("reset connector")])
async def reset_connector(connector_id: int, actor: str = UI_ACTOR) -> None:
    """Forget the connector's incremental state: its next run reads everything again.

    A run in progress finishes, but does not save its cursor: it started before the reset.
    """
    await label_run(actor=actor, name=f"reset connector {connector_id}", connector_id=connector_id)
    async with write_lock(f"connector:{connector_id}"), session_scope() as session:
        connector = await crud.get_connector(
            session=session, connector_id=connector_id, for_update=True
        )
        await crud.reset_state(session=session, connector=connector)
        await session.commit()


@flow(name="delete-connector", persist_result=False, on_failure=[label_refused("delete connector")])
async def delete_connector(
    connector_id: int, actor: str = UI_ACTOR, expected_version: int | None = None
) -> None:
    """Remove the connector with its deployment; its runs that have not ended are cancelled
    first (a running one is stopped, its load rolled back)."""
    await label_run(actor=actor, name=f"delete connector {connector_id}", connector_id=connector_id)
    async with write_lock(f"connector:{connector_id}"):
        await _stop_runs_first(connector_id, lambda c: expected_version in (None, c.version))
        async with session_scope() as session:
            connector = await crud.get_connector(
                session=session, connector_id=connector_id, for_update=True
            )
            crud.check_version(connector, expected_version)
            before = _spec(connector)
            await _cancel_runs(connector_id, wait=0)
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
