"""The `sync-connector` flow that every connector's deployment runs."""

from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import State, flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import FlowRunPolicy
from prefect.runtime import flow_run
from prefect.states import Cancelled
from sqlalchemy.exc import IntegrityError

from control_plane import crud, events, sync
from control_plane.db import session_scope
from control_plane.errors import Conflict, InvalidInput, NotFound
from control_plane.faults import pause_point
from control_plane.orchestrator import prefect_client
from control_plane.settings import get_settings
from models import Connector
from models.base import as_utc


def _report(plan: sync.SyncPlan, moved: sync.Moved) -> str:
    return "\n".join(
        [
            f"### Sync of connector {plan.connector_id}: {plan.connector_name}",
            "",
            "| source | destination | records read | records written | seconds | cursor |",
            "|---|---|---|---|---|---|",
            f"| {plan.source_label} | {plan.destination_label} | {moved.records_read} "
            f"| {moved.records_written} | {moved.seconds:.2f} | {moved.cursor} |",
        ]
    )


async def _failed(
    connector_id: int, run_id: UUID, error: Exception, *, end: crud.RunEnd, started: bool
) -> None:
    """Record the failed try in the connector's status; past its threshold, say so."""
    message = f"{type(error).__name__}: {error}"
    async with session_scope() as session:
        if not started:
            await crud.start_sync_run(
                session=session, connector_id=connector_id, flow_run_id=run_id, resets=0
            )
        await crud.finish_sync_run(session=session, flow_run_id=run_id, end=end, error=message)
        await session.commit()
        connector = await crud.get_connector(session=session, connector_id=connector_id)
        routes = await crud.notification_routes(session=session, connector=connector)
    if end == "FAILED":
        sync.tell_failed(connector, run_id, message, crashed=False, routes=routes)


def _emit_synced(
    connector: Connector,
    run_id: UUID,
    moved: sync.Moved,
    stale_since: datetime | None,
    routes: list[dict[str, Any]],
) -> None:
    """`connector.synced` after every successful run (it restarts the freshness window), and
    `connector.fresh` after the first one of a stale connector."""
    figures = {"recordsRead": moved.records_read, "recordsWritten": moved.records_written}
    events.emit(events.SYNCED, connector, actor=sync.SYNC_ACTOR, flowRunId=str(run_id), **figures)
    if stale_since is not None:
        events.emit(
            events.FRESH,
            connector,
            actor=sync.SYNC_ACTOR,
            reason=f"sync run {run_id} succeeded",
            routes=routes,
            staleSince=as_utc(stale_since).isoformat(),
            flowRunId=str(run_id),
        )


async def _retry_as_planned(plan: sync.SyncPlan, run_id: UUID) -> None:
    """Give the run the connector's retries: Prefect's server reads them from the run's policy
    when the run fails, and schedules the next try (the engine runs it in this process)."""
    if plan.retries and flow_run.get_run_count() == 1:
        policy = FlowRunPolicy(retries=plan.retries, retry_delay=plan.retry_delay_seconds)
        async with prefect_client() as client:
            await client.update_flow_run(run_id, empirical_policy=policy)


@flow(name=sync.SYNC_ACTOR, flow_run_name="sync connector {connector_id}")
async def sync_connector(connector_id: int) -> dict[str, Any] | State:
    """Move the connector's new records from its defined source to its defined destination.

    A run whose connector was deleted or switched off since it was scheduled ends Cancelled,
    saying so. The destination keeps the load's state with the records (where it can), so a
    run that died after the destination committed is not loaded twice: the next run resumes
    after it (`sync.resume`).
    """
    logger = get_run_logger()
    run_id = UUID(flow_run.get_id())
    try:
        async with session_scope() as session:
            plan = await sync.plan(session=session, connector_id=connector_id)
            await crud.start_sync_run(
                session=session, connector_id=connector_id, flow_run_id=run_id, resets=plan.resets
            )
            await session.commit()
    except (NotFound, Conflict) as gone:
        logger.info("nothing to run: %s", gone.detail)
        return Cancelled(message=gone.detail)
    except IntegrityError:
        # Its row went between the plan and the start: a delete that raced this run.
        logger.info("connector %s was deleted as the run started", connector_id)
        return Cancelled(message=f"connector {connector_id} was deleted as the run started")
    except InvalidInput as refused:
        # A config outside the project's reach: refused before anything was opened.
        await _failed(connector_id, run_id, refused, end="FAILED", started=False)
        raise
    await _retry_as_planned(plan, run_id)
    try:
        async with session_scope() as session:
            if adopted := await sync.resume(session=session, plan=plan):
                logger.warning(adopted)
        logger.info(
            "moving %s -> %s, resuming after %r",
            plan.source_label,
            plan.destination_label,
            plan.cursor,
        )
        moved = await sync.in_daemon_thread(
            sync.move, plan, load_id=run_id, batch_size=get_settings().batch_size
        )
    except Exception as error:
        retry_follows = flow_run.get_run_count() <= plan.retries
        end: crud.RunEnd = "AWAITING_RETRY" if retry_follows else "FAILED"
        await _failed(connector_id, run_id, error, end=end, started=True)
        raise
    await pause_point("sync-connector:after-destination-commit")
    # The cursor advances only now that the destination has the records.
    async with session_scope() as session:
        saved = await crud.finish_sync_run(
            session=session,
            flow_run_id=run_id,
            end="COMPLETED",
            records_read=moved.records_read,
            records_written=moved.records_written,
            cursor=moved.cursor,
        )
        connector, stale_since = await crud.mark_fresh(session=session, connector_id=connector_id)
        await session.commit()
        routes = (
            await crud.notification_routes(session=session, connector=connector)
            if connector is not None and stale_since is not None
            else []
        )
    if not saved:
        logger.warning("the connector was reset during this run: its cursor was not saved")
    if connector is not None:
        _emit_synced(connector, run_id, moved, stale_since, routes)
    await pause_point("sync-connector:after-control-commit")
    await create_markdown_artifact(
        key=f"connector-{connector_id}-sync",
        markdown=_report(plan, moved),
        description=f"What sync run of connector {connector_id} moved",
    )
    logger.info("moved %s records in %.2f s", moved.records_written, moved.seconds)
    return {
        "recordsRead": moved.records_read,
        "recordsWritten": moved.records_written,
        "cursor": moved.cursor,
    }
