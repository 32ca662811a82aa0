"""The control flows: every change to a connector is one run of one of these.

Each flow keeps the database row and the connector's Prefect deployment in one unit: the row
is flushed, Prefect is changed, then the row is committed. If Prefect fails, the transaction
rolls back; if the commit fails, the Prefect change is undone.

Each flow's first step is `label_run`: a name for a person and the actor and connector tags,
from the parameters alone, so a refused attempt (404, 409, 412, 422) reads in the Prefect UI
like one that worked (a name template would cost one more Prefect call per run). A create
labels its run once the connector has an id, and as what was asked when refused before
(`labelled_when_refused`): one label call, not two. A run whose
parameters fail Prefect's validation never reaches its body; `label_refused` names it then.
No run keeps a result: the database is the record, and Prefect's engine skips a result-storage
lookup.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run
from pydantic.alias_generators import to_camel
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane import (
    bootstrap,
    checks,
    crud,
    deployments,
    events,
    freshness,
    notify,
    runs,
    schedules,
    sync,
)
from control_plane.audit import (
    actor_tag,
    label_refused,
    label_run,
    labelled_when_refused,
    publish_changes,
)
from control_plane.connectors import DEFAULT_STREAM
from control_plane.db import session_scope, write_lock
from control_plane.deployments import DeploymentSpec
from control_plane.errors import (
    Conflict,
    DeploymentMissing,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from control_plane.faults import pause_point
from control_plane.public import state_etag, state_public
from control_plane.sync import failure_threshold, refusal
from models import (
    BackfillRequest,
    Connector,
    ConnectorCreate,
    ConnectorPlan,
    ConnectorPublic,
    ConnectorUpdate,
    StatePublic,
    StateUpdate,
    SyncState,
)
from models.base import as_utc, utcnow
from models.connector import OnConflict
from models.plan import (
    DeploymentAction,
    DeploymentPlan,
    FieldChange,
    RunDropped,
    WhyDropped,
    field_changes,
)
from models.schedule import scheduled_runs

UI_ACTOR = "prefect-ui"
SCHEDULE_ACTOR = "schedule"


async def _spec(session: AsyncSession, connector: Connector) -> DeploymentSpec | None:
    if not connector.is_active:
        return None
    context = await crud.context_of(session=session, connector=connector)
    return deployments.desired(connector, context)


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
    after = await _spec(session, connector)
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


def _describe_create(spec: ConnectorCreate) -> str:
    return f"create connector {spec.name!r} in project {spec.project_id}"


def _describe_update(connector_id: int, changes: ConnectorUpdate) -> str:
    """What the caller asked for, from the request alone: the row is not read yet."""
    values = changes.model_dump(exclude_unset=True)
    is_active = values.pop("is_active", None)
    if is_active is None and "paused_until" in values and values.keys() <= _PAUSE_FIELDS:
        if until := values["paused_until"]:
            return f"pause connector {connector_id} until {until:%Y-%m-%d %H:%M:%S %Z}"
        return f"resume connector {connector_id}"
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


_PAUSE_FIELDS = {"paused_until", "pause_reason"}


@dataclass(frozen=True)
class _Snapshot:
    schedule: str | None
    timezone: str
    is_active: bool
    paused_until: datetime | None

    @classmethod
    def of(cls, connector: Connector) -> "_Snapshot":
        paused_until = as_utc(connector.paused_until) if connector.paused_until else None
        return cls(connector.schedule, connector.timezone, connector.is_active, paused_until)


def _emit_update(
    connector: Connector,
    previous: _Snapshot,
    changes: ConnectorUpdate,
    actor: str,
    changed: list[dict[str, Any]],
    routes: list[dict[str, Any]],
) -> None:
    """One event per kind of change: activated/deactivated, rescheduled, paused/resumed,
    updated; each with every field the run changed, before and after."""
    current = _Snapshot.of(connector)
    if current.is_active != previous.is_active:
        events.emit(
            events.ACTIVATED if current.is_active else events.DEACTIVATED,
            connector,
            actor=actor,
            reason=connector.status_reason,
            routes=routes,
            changes=changed,
        )
    if (current.schedule, current.timezone) != (previous.schedule, previous.timezone):
        events.emit(
            events.RESCHEDULED,
            connector,
            actor=actor,
            before={"schedule": previous.schedule, "timezone": previous.timezone},
            after={"schedule": current.schedule, "timezone": current.timezone},
            changes=changed,
        )
    if current.paused_until != previous.paused_until:
        events.emit(
            events.PAUSED if current.paused_until else events.RESUMED,
            connector,
            actor=actor,
            pausedUntil=current.paused_until.isoformat() if current.paused_until else None,
            reason=connector.pause_reason,
            routes=routes,
            changes=changed,
        )
    others = changes.model_fields_set - {"schedule", "timezone", "is_active", *_PAUSE_FIELDS}
    if others:
        events.emit(
            events.UPDATED,
            connector,
            actor=actor,
            fields=sorted(map(to_camel, others)),
            changes=changed,
        )


async def _publish_changes(
    before: ConnectorPublic | None, after: ConnectorPublic | None
) -> list[dict[str, Any]]:
    """What the committed run changed, as its artifact; the same goes into its events."""
    return await publish_changes(connector_changes(before, after))


@flow(name="create-connector", persist_result=False, on_failure=[label_refused("create connector")])
async def create_connector(spec: ConnectorCreate, actor: str = UI_ACTOR) -> ConnectorPublic:
    """Store a new connector and, when active, create its scheduled deployment."""
    # Labelled once the id exists; refused before, as what was asked.
    async with (
        labelled_when_refused(actor=actor, name=_describe_create(spec)),
        write_lock(f"create:{spec.project_id}:{spec.name}"),
        session_scope() as session,
    ):
        if spec.is_active:
            checks.refuse_unchecked_activation()
        await notify.check_channels(spec.notifications, field="notifications")
        connector = await crud.add_connector(session=session, spec=spec)
        await label_run(
            actor=actor,
            name=f"create connector {connector.id}: {connector.name}",
            connector_id=connector.id,
        )
        public = await _apply_and_commit(session, connector, before=None)
    await _watch_freshness(connector)
    events.emit(
        events.CREATED,
        connector,
        actor=actor,
        schedule=connector.schedule,
        timezone=connector.timezone,
        isActive=connector.is_active,
        changes=await _publish_changes(None, public),
    )
    await _schedule_resume(connector)
    return public


async def _watch_freshness(connector: Connector) -> None:
    """Before its event: the automation that watches its freshness window must see it."""
    try:
        await freshness.watch(freshness.window(connector))
    except (Unavailable, DeploymentMissing) as error:
        get_run_logger().warning(
            "its freshness is not watched (%s): `control-plane deploy` registers what it needs",
            error,
        )


async def _schedule_resume(connector: Connector) -> None:
    """After the commit, a run of `resume-connector` at the pause's end; if Prefect cannot take
    it now, reconcile resumes the connector once the time has passed."""
    if connector.paused_until is None:
        return
    until = as_utc(connector.paused_until)
    try:
        flow_run_id = await bootstrap.run_control_later(
            resume_connector.name,
            {"connector_id": connector.id, "paused_until": until.isoformat()},
            at=until,
            idempotency_key=f"resume:{connector.id}:{until.isoformat()}",
        )
    except (Unavailable, DeploymentMissing) as error:
        get_run_logger().warning(
            "resume at %s not scheduled (%s): reconcile resumes it", until, error
        )
        return
    get_run_logger().info("connector %s resumes at %s: run %s", connector.id, until, flow_run_id)


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
    return await _update(connector_id, changes, actor=actor, expected_version=expected_version)


async def _update(
    connector_id: int,
    changes: ConnectorUpdate,
    *,
    actor: str,
    expected_version: int | None = None,
    only_if: Callable[[Connector], bool] | None = None,
) -> ConnectorPublic:
    """The body of `update-connector`; with `only_if`, nothing changes unless the locked row
    passes it."""
    await notify.check_channels(changes.notifications, field="notifications")
    async with write_lock(runs.connector_tag(connector_id)):
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
            if only_if is not None and not only_if(connector):
                get_run_logger().info("connector %s: nothing to change", connector_id)
                return ConnectorPublic.model_validate(connector)
            before, previous = await _spec(session, connector), _Snapshot.of(connector)
            shown = ConnectorPublic.model_validate(connector)
            await crud.change_connector(session=session, connector=connector, changes=changes)
            if connector.is_active and not previous.is_active:
                await checks.require_passed(session=session, connector=connector)
            if previous.is_active and not connector.is_active:
                await _cancel_runs(connector_id, wait=0)
            public = await _apply_and_commit(session, connector, before)
            routes = await crud.notification_routes(session=session, connector=connector)
    if "max_staleness" in changes.model_fields_set:
        await _watch_freshness(connector)
    changed = await _publish_changes(shown, public)
    _emit_update(connector, previous, changes, actor, changed, routes)
    if connector.paused_until and _Snapshot.of(connector).paused_until != previous.paused_until:
        await _schedule_resume(connector)
    rescheduled = (connector.schedule, connector.timezone) != (previous.schedule, previous.timezone)
    if connector.is_active and rescheduled:
        # After the commit: a failure here leaves a run of the old schedule, not a failed change.
        try:
            stale = await runs.drop_stale(connector_id, connector.schedule, connector.timezone)
        except Unavailable:
            get_run_logger().warning("runs of the old schedule were not looked for")
        else:
            if stale:
                get_run_logger().info(
                    "connector %s: deleted runs of its old schedule %s",
                    connector_id,
                    ", ".join(map(str, stale)),
                )
    return public


@flow(name="resume-connector", persist_result=False, on_failure=[label_refused("resume connector")])
async def resume_connector(
    connector_id: int, paused_until: datetime, actor: str = SCHEDULE_ACTOR
) -> ConnectorPublic:
    """End the connector's pause that was to end at `paused_until`: its deployment is unpaused
    and its schedule runs again. Scheduled by the pause itself; a pause changed or ended since
    is left as it is."""
    until = f"{as_utc(paused_until):%Y-%m-%d %H:%M:%S} UTC"
    await label_run(
        actor=actor,
        name=f"resume connector {connector_id} (paused until {until})",
        connector_id=connector_id,
    )
    return await _update(
        connector_id,
        ConnectorUpdate(paused_until=None),
        actor=actor,
        only_if=lambda c: (
            c.paused_until is not None and as_utc(c.paused_until) == as_utc(paused_until)
        ),
    )


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
    async with write_lock(runs.connector_tag(connector_id)):
        await _stop_runs_first(connector_id, lambda c: _deactivates(c, only_if_failing))
        async with session_scope() as session:
            connector = await crud.get_connector(
                session=session, connector_id=connector_id, for_update=True
            )
            if not _deactivates(connector, only_if_failing):
                get_run_logger().info("connector %s: nothing to deactivate", connector_id)
                return ConnectorPublic.model_validate(connector)
            before, deployment_id = await _spec(session, connector), connector.prefect_deployment_id
            shown = ConnectorPublic.model_validate(connector)
            await crud.deactivate(session=session, connector=connector, reason=reason)
            await _cancel_runs(connector_id, wait=0)
            public = await _apply_and_commit(session, connector, before)
            routes = await crud.notification_routes(session=session, connector=connector)
    event = events.AUTO_DEACTIVATED if only_if_failing else events.DEACTIVATED
    events.emit(
        event,
        connector,
        actor=actor,
        reason=reason,
        deployment_id=deployment_id,
        routes=routes,
        changes=await _publish_changes(shown, public),
    )
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
    # Under the connector's lock, taken by a write (on SQLite, where FOR UPDATE locks nothing,
    # that takes the database's one write lock): a delete or deactivate writes the row before
    # it cancels the runs, so it either sees the new run or leaves nothing to trigger.
    async with write_lock(runs.connector_tag(connector_id)), session_scope() as session:
        await crud.lock_connector(session=session, connector_id=connector_id)
        connector = await crud.get_connector(session=session, connector_id=connector_id)
        if refused := await refusal(session=session, connector=connector):
            raise Conflict(refused)
        if connector.prefect_deployment_id is None:
            raise Conflict(
                f"connector {connector_id} has no deployment: `control-plane reconcile` makes it"
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
    name="backfill-connector",
    persist_result=False,
    on_failure=[label_refused("backfill connector")],
)
async def backfill_connector(
    connector_id: int, backfill: BackfillRequest, actor: str = UI_ACTOR
) -> UUID:
    """Read a window of an incremental stream again, in a sync run of the connector's
    deployment tagged `backfill`: the stream's records whose cursor lies in the window are
    written as its sync mode writes (appended or merged), and its cursor stays where it is."""
    await label_run(
        actor=actor, name=f"backfill connector {connector_id}", connector_id=connector_id
    )
    async with write_lock(runs.connector_tag(connector_id)), session_scope() as session:
        await crud.lock_connector(session=session, connector_id=connector_id)
        plan = await sync.plan(session=session, connector_id=connector_id)
        sync.backfilled(plan.routes, backfill.stream)
        connector = await crud.get_connector(session=session, connector_id=connector_id)
        if connector.prefect_deployment_id is None:
            raise Conflict(
                f"connector {connector_id} has no deployment: `control-plane reconcile` makes it"
            )
        window = await crud.add_backfill(
            session=session, connector_id=connector_id, request=backfill, actor=actor
        )
        await session.commit()
        flow_run_id = await deployments.run_now(
            connector.prefect_deployment_id,
            tags=[runs.BACKFILL_TAG, runs.backfill_tag(window.id), actor_tag(actor)],
        )
    get_run_logger().info("connector %s: started backfill run %s", connector_id, flow_run_id)
    events.emit(
        events.BACKFILL_STARTED,
        connector,
        actor=actor,
        flowRunId=str(flow_run_id),
        stream=backfill.stream,
    )
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
    async with write_lock(runs.connector_tag(connector_id)), session_scope() as session:
        await crud.get_connector(session=session, connector_id=connector_id, for_update=True)
        run = await runs.cancel(connector_id, flow_run_id)
    return run.state.name if run.state and run.state.name else "unknown"


@flow(name="reset-connector", persist_result=False, on_failure=[label_refused("reset connector")])
async def reset_connector(connector_id: int, actor: str = UI_ACTOR) -> None:
    """Forget the connector's incremental state: its next run reads everything again.

    A run in progress finishes, but does not save its cursor: it started before the reset.
    """
    await label_run(actor=actor, name=f"reset connector {connector_id}", connector_id=connector_id)
    async with write_lock(runs.connector_tag(connector_id)), session_scope() as session:
        connector = await crud.get_connector(
            session=session, connector_id=connector_id, for_update=True
        )
        forgotten = await crud.reset_state(session=session, connector=connector)
        await session.commit()
    changes = _cursor_changes(forgotten, dict.fromkeys(crud.stream_names(connector)))
    events.emit(events.RESET, connector, actor=actor, changes=await publish_changes(changes))


async def _refuse_while_running(connector_id: int) -> None:
    """A state set for some streams during a run would cost the run's other streams their
    cursors (a set counts as a reset): it waits for the run."""
    running = [
        run for run in await runs.active_runs(connector_id) if run.state_type == StateType.RUNNING
    ]
    if running:
        raise Conflict(
            f"sync run {running[0].id} of connector {connector_id} is running: set the state of "
            "some streams once it ended, or cancel it (POST /api/v1/connectors/"
            f"{connector_id}/runs/{running[0].id}/cancel), or set every stream's"
        )


def _cursor_changes(before: list[SyncState], after: dict[str, Any]) -> list[FieldChange]:
    """What changed in the streams' state: a cursor's value is the source's data, so its
    change says when the one before was saved, not what it was."""
    saved = {state.stream: f"saved {as_utc(state.updated_at).isoformat()}" for state in before}
    return [
        FieldChange(
            field="cursor" if stream == DEFAULT_STREAM else f"streams.{stream}.cursor",
            before=saved.get(stream),
            after=cursor,
            secret_changed=False,
        )
        for stream, cursor in after.items()
    ]


@flow(
    name="set-connector-state",
    persist_result=False,
    on_failure=[label_refused("set the state of connector")],
)
async def set_connector_state(
    connector_id: int,
    state: StateUpdate,
    actor: str = UI_ACTOR,
    expected_etag: str | None = None,
) -> StatePublic:
    """Set where the connector's next incremental read resumes (null: from the start). As with
    a reset, a run in progress finishes without saving its cursor.

    With `expected_etag` (a caller's If-Match), only if the state is still the one it names.
    """
    await label_run(
        actor=actor, name=f"set the state of connector {connector_id}", connector_id=connector_id
    )
    cursors = {stream.stream: stream.cursor for stream in state.streams}
    async with write_lock(runs.connector_tag(connector_id)), session_scope() as session:
        connector = await crud.get_connector(
            session=session, connector_id=connector_id, for_update=True
        )
        current = state_public(
            connector, await crud.get_states(session=session, connector_id=connector_id)
        )
        if expected_etag not in (None, state_etag(current)):
            raise PreconditionFailed(
                f"the state of connector {connector_id} changed since {expected_etag} (a run "
                "saved its cursor, or someone set it): read it again and retry with its ETag"
            )
        known = [stream.stream for stream in current.streams]
        if unknown := [name for name in cursors if name not in known]:
            raise InvalidInput(
                "streams",
                f"connector {connector_id} moves no stream {', '.join(map(repr, unknown))}; "
                f"its streams: {', '.join(map(repr, known))}",
            )
        if len(cursors) < len(known):
            await _refuse_while_running(connector_id)
        replaced = await crud.set_state(session=session, connector=connector, cursors=cursors)
        await session.commit()
        public = state_public(
            connector, await crud.get_states(session=session, connector_id=connector_id)
        )
    changes = _cursor_changes(replaced, cursors)
    events.emit(events.STATE_SET, connector, actor=actor, changes=await publish_changes(changes))
    return public


@flow(name="delete-connector", persist_result=False, on_failure=[label_refused("delete connector")])
async def delete_connector(
    connector_id: int, actor: str = UI_ACTOR, expected_version: int | None = None
) -> None:
    """Remove the connector with its deployment; its runs that have not ended are cancelled
    first (a running one is stopped, its load rolled back)."""
    await label_run(actor=actor, name=f"delete connector {connector_id}", connector_id=connector_id)
    async with write_lock(runs.connector_tag(connector_id)):
        await _stop_runs_first(connector_id, lambda c: expected_version in (None, c.version))
        async with session_scope() as session:
            connector = await crud.get_connector(
                session=session, connector_id=connector_id, for_update=True
            )
            crud.check_version(connector, expected_version)
            before, shown = (
                await _spec(session, connector),
                ConnectorPublic.model_validate(connector),
            )
            await crud.remove_connector(session=session, connector=connector)
            await _cancel_runs(connector_id, wait=0)
            await deployments.apply(connector.prefect_deployment_id, before, None)
            await _commit(session, deployment_id=None, applied=None, previous=before)
    events.emit(events.DELETED, connector, actor=actor, changes=await _publish_changes(shown, None))


# Fields no change sets by itself, and on create the runs' bookkeeping: not in a plan.
_BOOKKEEPING = {"id", "createdAt", "updatedAt", "nextRunAt", "scheduleWarnings"}
_RUN_STATUS = {
    "lastRunAt",
    "lastRunState",
    "lastSuccessAt",
    "lastFailureAt",
    "consecutiveFailures",
    "statusReason",
    "prefectDeploymentId",
}
# On create the id is given on commit: the deployment's fields that carry it are left out.
_CARRY_THE_ID = {"name", "parameters", "tags", "description"}
_PLANNED_RUNS = 5


@flow(
    name="plan-connector-change",
    persist_result=False,
    on_failure=[label_refused("plan a change of connector")],
)
async def plan_connector_change(
    action: Literal["create", "update", "delete"],
    connector_id: int | None = None,
    spec: ConnectorCreate | None = None,
    changes: ConnectorUpdate | None = None,
    actor: str = UI_ACTOR,
    expected_version: int | None = None,
) -> ConnectorPlan:
    """What the create, update or delete would do, from the same checks, stopped short of
    Prefect and rolled back: a run of its own flow, so the audit log tells plans from changes.
    """
    if action == "create":
        assert spec is not None
        described = _describe_create(spec)
    elif action == "update":
        assert connector_id is not None and changes is not None
        described = _describe_update(connector_id, changes)
    else:
        described = f"delete connector {connector_id}"
    await label_run(actor=actor, name=f"plan: {described}", connector_id=connector_id)
    routes = spec.notifications if spec else changes.notifications if changes else None
    await notify.check_channels(routes, field="notifications")
    # The real change's lock: on SQLite an update's flush takes the one writer's place.
    if spec:
        key = f"create:{spec.project_id}:{spec.name}"
    else:
        assert connector_id is not None  # an update or a delete names its connector
        key = runs.connector_tag(connector_id)
    async with write_lock(key), session_scope() as session:
        if spec is not None:
            # Not inserted: PostgreSQL would spend an id on it. 0 stands in for the id.
            connector = await crud.new_connector(session=session, spec=spec)
            connector.id = 0
            before, before_spec = None, None
        else:
            assert connector_id is not None
            connector = await crud.get_connector(session=session, connector_id=connector_id)
            crud.check_version(connector, expected_version)
            before, before_spec = (
                ConnectorPublic.model_validate(connector),
                await _spec(session, connector),
            )
            if changes is not None:
                await crud.change_connector(session=session, connector=connector, changes=changes)
        after = None if action == "delete" else ConnectorPublic.model_validate(connector)
        after_spec = None if action == "delete" else await _spec(session, connector)
        await session.rollback()
    now = utcnow()
    schedule, timezone = (after.schedule, after.timezone) if after else (None, "UTC")
    return ConnectorPlan(
        action=action,
        connector_id=connector_id,
        changes=connector_changes(before, after),
        deployment=_deployment_plan(before_spec, after_spec, creates=spec is not None),
        runs_dropped=await _runs_dropped(
            connector_id, before_spec, after_spec, deletes=action == "delete"
        ),
        next_runs=scheduled_runs(
            schedules.preview(schedule, timezone, _PLANNED_RUNS, now)
            if after_spec and schedule
            else []
        ),
        warnings=schedules.warnings(schedule, timezone, now),
    )


def connector_changes(
    before: ConnectorPublic | None, after: ConnectorPublic | None
) -> list[FieldChange]:
    """Field by field, masked; a secret that changes shows as `secretChanged`."""
    shown = [
        model.model_dump(mode="json", by_alias=True) if model else {} for model in (before, after)
    ]
    # Unmasked, to see a secret change; only compared, never answered.
    values = [
        {to_camel(name): getattr(model, name) for name in ConnectorPublic.model_fields}
        if model
        else {}
        for model in (before, after)
    ]
    skipped = _BOOKKEEPING | (_RUN_STATUS if before is None or after is None else set())
    return field_changes(shown=shown, unmasked=values, skipped=skipped)


def _deployment_plan(
    before: DeploymentSpec | None, after: DeploymentSpec | None, *, creates: bool
) -> DeploymentPlan:
    if before is None and after is None:
        return DeploymentPlan(action="none", name=None, differences=[])
    action: DeploymentAction = (
        "create" if before is None else "delete" if after is None else "update"
    )
    fields = [f for f in DeploymentSpec.model_fields if not (creates and f in _CARRY_THE_ID)]
    old = before.model_dump(mode="json") if before else {}
    new = after.model_dump(mode="json") if after else {}
    differences = [
        FieldChange(field=to_camel(field), before=old.get(field), after=new.get(field))
        for field in fields
        if old.get(field) != new.get(field)
    ]
    if action == "update" and not differences:
        action = "none"
    either = before or after
    assert either is not None
    return DeploymentPlan(
        action=action, name=None if creates else either.name, differences=differences
    )


async def _runs_dropped(
    connector_id: int | None,
    before: DeploymentSpec | None,
    after: DeploymentSpec | None,
    *,
    deletes: bool,
) -> list[RunDropped]:
    """The runs the change would end or remove: on delete and deactivate all that have not
    ended (`runs.cancel_all`, then Prefect's delete of the deployment); on a change of the
    deployment the future ones its schedule made (Prefect deletes them on every update)."""
    goes = deletes or (before is not None and after is None)
    if connector_id is None or not (goes or before != after):
        return []
    found, _ = await runs.list_runs(
        connector_id, states=runs.UNENDED_STATES, limit=runs.PREFECT_PAGE, offset=0
    )
    dropped = []
    for run in found:
        why: WhyDropped
        if goes:
            why = "deleted with the deployment" if runs.goes_with_deployment(run) else "cancelled"
        elif before is not None and runs.goes_with_update(run):
            why = "deleted by the deployment's update"
        else:
            continue
        dropped.append(
            RunDropped(
                flow_run_id=run.id,
                state=run.state.name if run.state and run.state.name else "unknown",
                scheduled_at=run.expected_start_time,
                why=why,
            )
        )
    return dropped


# The flows whose runs make a connector's history (GET /connectors/{id}/history): these, and
# its connection checks (flows/check.py, which runs on the connectors' pool).
LIFECYCLE_FLOWS = [
    flow_.name
    for flow_ in (
        create_connector,
        update_connector,
        resume_connector,
        deactivate_connector,
        trigger_connector,
        backfill_connector,
        cancel_connector_run,
        reset_connector,
        set_connector_state,
        delete_connector,
        plan_connector_change,
    )
] + [bootstrap.CHECK_FLOW]

__all__ = [
    "LIFECYCLE_FLOWS",
    "SCHEDULE_ACTOR",
    "backfill_connector",
    "cancel_connector_run",
    "connector_changes",
    "create_connector",
    "deactivate_connector",
    "delete_connector",
    "plan_connector_change",
    "reset_connector",
    "resume_connector",
    "set_connector_state",
    "trigger_connector",
    "update_connector",
]
