"""The `sync-connector` flow that every connector's deployment runs."""

from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import State, flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.schemas.objects import FlowRunPolicy
from prefect.runtime import flow_run
from prefect.states import Cancelled
from sqlalchemy.exc import IntegrityError

from control_plane import crud, events, runs, sync
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
            f"{plan.source_label} -> {plan.destination_label}, in {moved.seconds:.2f} s",
            "",
            "| stream | records read | records written | cursor | error |",
            "|---|---|---|---|---|",
            *(
                f"| {s.stream} | {s.records_read} | {s.records_written} | {s.cursor} "
                f"| {s.error or ''} |"
                for s in moved.streams
            ),
        ]
    )


async def _failed(
    connector_id: int,
    run_id: UUID,
    message: str,
    *,
    end: crud.RunEnd,
    started: bool,
    moved: sync.Moved | None = None,
) -> None:
    """Record the failed try in the connector's status, with the cursors of the streams it
    committed; past its threshold, say so."""
    figures: dict[str, Any] = {}
    if moved is not None:
        figures = {
            "records_read": moved.records_read,
            "records_written": moved.records_written,
            "cursors": moved.cursors,
        }
    async with session_scope() as session:
        if not started:
            await crud.start_sync_run(
                session=session, connector_id=connector_id, flow_run_id=run_id, resets=0
            )
        await crud.finish_sync_run(
            session=session, flow_run_id=run_id, end=end, error=message, **figures
        )
        await session.commit()
        connector = await crud.get_connector(session=session, connector_id=connector_id)
        routes = await crud.notification_routes(session=session, connector=connector)
    if end == "FAILED":
        sync.tell_failed(connector, run_id, message, crashed=False, routes=routes)


def _text(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


async def _publish_report(plan: sync.SyncPlan, moved: sync.Moved) -> None:
    await acreate_markdown_artifact(
        key=f"connector-{plan.connector_id}-sync",
        markdown=_report(plan, moved),
        description=f"What sync run of connector {plan.connector_id} moved",
    )


def _emit_synced(
    connector: Connector,
    run_id: UUID,
    moved: sync.Moved,
    stale_since: datetime | None,
    routes: list[dict[str, Any]],
) -> None:
    """`connector.synced` after every successful run (it restarts the freshness window), and
    `connector.fresh` after the first one of a stale connector."""
    figures: dict[str, Any] = {
        "recordsRead": moved.records_read,
        "recordsWritten": moved.records_written,
    }
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
    backfill_id = runs.backfill_of(flow_run.get_tags())
    try:
        async with session_scope() as session:
            backfill = None
            if backfill_id is not None:
                backfill = await crud.get_backfill(session=session, backfill_id=backfill_id)
            plan = await sync.plan(session=session, connector_id=connector_id, backfill=backfill)
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
        await _failed(connector_id, run_id, _text(refused), end="FAILED", started=False)
        raise
    await _retry_as_planned(plan, run_id)
    retry_follows = flow_run.get_run_count() <= plan.retries
    end: crud.RunEnd = "AWAITING_RETRY" if retry_follows else "FAILED"
    try:
        async with session_scope() as session:
            for adopted in await sync.resume(session=session, plan=plan):
                logger.warning(adopted)
        logger.info(
            "moving %s -> %s: %s",
            plan.source_label,
            plan.destination_label,
            ", ".join(
                f"{route.stream} after {plan.cursors.get(route.stream)!r}" for route in plan.routes
            ),
        )
        moved = await sync.in_daemon_thread(
            sync.move, plan, load_id=run_id, batch_size=get_settings().batch_size
        )
    except Exception as error:
        await _failed(connector_id, run_id, _text(error), end=end, started=True)
        raise
    if moved.failure is not None:
        await _failed(connector_id, run_id, moved.failure, end=end, started=True, moved=moved)
        await _publish_report(plan, moved)
        raise sync.StreamsFailed(moved.failure)
    await pause_point("sync-connector:after-destination-commit")
    # The cursor advances only now that the destination has the records.
    async with session_scope() as session:
        saved = await crud.finish_sync_run(
            session=session,
            flow_run_id=run_id,
            end="COMPLETED",
            records_read=moved.records_read,
            records_written=moved.records_written,
            cursors=moved.cursors,
        )
        connector, stale_since = await crud.mark_fresh(session=session, connector_id=connector_id)
        await session.commit()
        routes = (
            await crud.notification_routes(session=session, connector=connector)
            if connector is not None and stale_since is not None
            else []
        )
    if not saved:
        logger.warning("the connector was reset during this run: its cursors were not saved")
    if connector is not None:
        _emit_synced(connector, run_id, moved, stale_since, routes)
    await pause_point("sync-connector:after-control-commit")
    await _publish_report(plan, moved)
    logger.info("moved %s records in %.2f s", moved.records_written, moved.seconds)
    return {
        "recordsRead": moved.records_read,
        "recordsWritten": moved.records_written,
        "cursors": moved.cursors,
    }
