"""The `sync-connector` flow that every connector's deployment runs."""

import asyncio
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from control_plane import crud, events, sync
from control_plane.db import session_scope
from control_plane.errors import InvalidInput
from control_plane.settings import get_settings
from models import Connector


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


def _warn_when_failing(connector: Connector, error: str) -> None:
    """Past its threshold, a failing connector says so; the shipped automation switches it off."""
    failures, threshold = connector.consecutive_failures, sync.failure_threshold(connector)
    if threshold and failures >= threshold:
        events.emit(
            events.FAILING,
            connector,
            actor="sync-connector",
            reason=f"{failures} consecutive failed runs, last: {error}",
            consecutiveFailures=failures,
            threshold=threshold,
        )


async def _failed(
    connector_id: int, run_id: UUID, *, cursor: Any, error: Exception, started: bool
) -> None:
    """Record the failed run in the connector's status; past its threshold, say so."""
    message = f"{type(error).__name__}: {error}"
    async with session_scope() as session:
        if not started:
            await crud.start_sync_run(
                session=session, connector_id=connector_id, flow_run_id=run_id
            )
        await crud.finish_sync_run(
            session=session,
            connector_id=connector_id,
            flow_run_id=run_id,
            records_read=0,
            records_written=0,
            cursor=cursor,
            error=message,
        )
        await session.commit()
        connector = await crud.get_connector(session=session, connector_id=connector_id)
    _warn_when_failing(connector, message)


@flow(name="sync-connector", flow_run_name="sync connector {connector_id}")
async def sync_connector(connector_id: int) -> dict[str, Any]:
    """Move the connector's new records from its defined source to its defined destination."""
    logger = get_run_logger()
    run_id = UUID(flow_run.get_id())
    try:
        async with session_scope() as session:
            plan = await sync.plan(session=session, connector_id=connector_id)
            await crud.start_sync_run(
                session=session, connector_id=connector_id, flow_run_id=run_id
            )
            await session.commit()
    except InvalidInput as refused:
        # A config outside the project's reach: refused before anything was opened.
        await _failed(connector_id, run_id, cursor=None, error=refused, started=False)
        raise
    logger.info(
        "moving %s -> %s, resuming after %r", plan.source_label, plan.destination_label, plan.cursor
    )
    try:
        moved = await asyncio.to_thread(sync.move, plan, batch_size=get_settings().batch_size)
    except Exception as error:
        await _failed(connector_id, run_id, cursor=plan.cursor, error=error, started=True)
        raise
    # The cursor advances only now that the destination has the records.
    async with session_scope() as session:
        await crud.finish_sync_run(
            session=session,
            connector_id=connector_id,
            flow_run_id=run_id,
            records_read=moved.records_read,
            records_written=moved.records_written,
            cursor=moved.cursor,
            error=None,
        )
        await session.commit()
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
