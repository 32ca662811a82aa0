"""The `reconcile-connectors` flow: make Prefect agree with the database again."""

from collections import Counter
from datetime import datetime, timedelta

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort

from control_plane import crud, reconcile, schedules
from control_plane.audit import label_refused, label_run
from control_plane.db import session_scope
from control_plane.orchestrator import prefect_client
from flows.freeze import unfreeze_project
from flows.lifecycle import SCHEDULE_ACTOR, resume_connector
from flows.runs import record_unfinished
from models import Connector, ConnectorContext
from models.base import as_utc, saved_id, utcnow

# A pause's (or freeze's) own run had this long to end it before reconcile does.
RESUME_GRACE = timedelta(minutes=1)
# How much earlier than the last pass began a pass over what changed looks: Prefect's event
# persister writes events in batches, seconds after they occurred, and a row's `updated_at` is
# set before its control flow commits.
EVENT_LAG = timedelta(minutes=1)
# A pass's run name, by whether it is full; a dry run's adds " (dry run)".
_PASSES = {True: "reconcile connectors", False: "reconcile changed connectors"}


@flow(
    name="reconcile-connectors",
    persist_result=False,
    on_failure=[label_refused("reconcile connectors")],
)
async def reconcile_connectors(
    dry_run: bool = False, full: bool = True, actor: str = SCHEDULE_ACTOR
) -> list[dict[str, str]]:
    """Compare the connectors with Prefect's managed deployments and repair what differs.

    A full pass compares every connector. Without `full`, only what changed since the last pass
    that completed began (a little earlier: Prefect writes its events in batches); a full pass
    when there was none or too much changed. Missing deployments are created, differing ones
    patched in place (the schedule keeps its identity), orphans deleted with their scheduled
    runs, a few at a time, each under its connector's row lock; sync runs that ended unrecorded
    (a crash whose event was missed) are recorded in their connectors' status, and pauses and
    freezes past their end whose own run never came are ended (a `resume-connector` or
    `unfreeze-project` run each). With `dry_run`, only report the drift.
    """
    await label_run(actor=actor, name=_PASSES[full] + (" (dry run)" if dry_run else ""))
    logger = get_run_logger()
    since = None if full else await _last_pass_began()
    async with session_scope() as session:
        drift = (
            await reconcile.find_changed_drift(session=session, since=since - EVENT_LAG)
            if since
            else None
        )
        if drift is None:
            full = True
            drift = await reconcile.find_drift(session=session)
    logger.info("compared %s", "every connector" if full else f"what changed since {since}")
    for item in drift:
        logger.info("%s %s: %s", item.action, item.deployment, "; ".join(item.differences))
    if not dry_run:
        await reconcile.repair_all(drift)
        for flow_run_id, end in (await record_unfinished()).items():
            logger.info("sync run %s ended unrecorded: recorded as %s", flow_run_id, end)
        async with session_scope() as session:
            overdue = await crud.overdue_pauses(session=session, before=utcnow() - RESUME_GRACE)
            overdue_freezes = await crud.overdue_freezes(
                session=session, before=utcnow() - RESUME_GRACE
            )
        for connector in overdue:
            assert connector.paused_until is not None
            await resume_connector(
                connector_id=saved_id(connector), paused_until=connector.paused_until, actor=actor
            )
        for project in overdue_freezes:
            await unfreeze_project(
                project_id=saved_id(project), frozen_until=project.frozen_until, actor=actor
            )
    rows = [item.as_row() for item in drift]
    await acreate_table_artifact(
        key=reconcile.REPAIRS_ARTIFACT,
        table=rows or [{"action": "none", "deployment": "", "connector": "", "differences": ""}],
        description=("Drift found" if dry_run else reconcile.REPAIRED) + f": {len(rows)}",
    )
    if full:
        try:
            await _publish_overview()
        except Exception:
            # A report: the pass's repairs stand without it, and the next pass publishes again.
            logger.warning("connectors-overview not published", exc_info=True)
    return rows


async def _last_pass_began() -> datetime | None:
    """When the latest pass that completed (and repaired: not a dry run) began."""
    async with prefect_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[reconcile_connectors.name])),
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=list(_PASSES.values())),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
            ),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    return runs[0].start_time if runs else None


async def _publish_overview() -> None:
    """Every connector at a glance, as the `connectors-overview` artifact: one key, so the UI
    shows the latest pass's table and keeps the earlier ones as its history."""
    async with session_scope() as session:
        contexts = await crud.contexts(session=session)
        connectors = await crud.all_connectors(session=session)
    rows = [_overview_row(connector, contexts[saved_id(connector)]) for connector in connectors]
    states = Counter(_state(connector) for connector in connectors)
    await acreate_table_artifact(
        key="connectors-overview",
        table=rows or [dict.fromkeys(_OVERVIEW_COLUMNS, "")],
        description=f"{len(rows)} connectors, {states['active']} active, "
        f"{states['paused']} paused, {states['inactive']} inactive",
    )


def _state(connector: Connector) -> str:
    if not connector.is_active:
        return "inactive"
    return "paused" if connector.paused_until else "active"


_OVERVIEW_COLUMNS = (
    "connector",
    "project",
    "moves",
    "state",
    "schedule",
    "last run",
    "consecutive failures",
    "status reason",
)


def _overview_row(connector: Connector, context: ConnectorContext) -> dict[str, str]:
    last = (
        f"{connector.last_run_state} at {as_utc(connector.last_run_at):%Y-%m-%d %H:%M} UTC"
        if connector.last_run_at
        else "never"
    )
    values = (
        f"{connector.id}: {connector.name}",
        context.project,
        f"{context.source_type} → {context.destination_type}",
        _state(connector),
        schedules.in_words(connector.schedule, connector.timezone),
        last,
        str(connector.consecutive_failures),
        connector.status_reason or "",
    )
    return dict(zip(_OVERVIEW_COLUMNS, values, strict=True))
