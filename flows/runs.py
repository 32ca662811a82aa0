"""The `record-sync-run-end` flow: a sync run that ended where its own code could not record
it, recorded in its connector's status all the same."""

from datetime import timedelta
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType

from control_plane import crud
from control_plane.audit import label_refused, label_run
from control_plane.bootstrap import HEARTBEAT_SECONDS
from control_plane.db import session_scope
from control_plane.errors import PrefectRejected
from control_plane.orchestrator import PREFECT_PAGE, prefect_client
from control_plane.runs import connector_id_of
from control_plane.sync import tell_failed
from models import Connector
from models.base import as_utc, utcnow

# How a run's final state in Prefect reads in its connector's status, when the run's own code
# did not record it: killed (the worker says Crashed), lost with its worker (no heartbeats),
# cancelled while it ran.
_ENDS: dict[StateType, crud.RunEnd] = {
    StateType.CRASHED: "CRASHED",
    StateType.FAILED: "FAILED",
    StateType.CANCELLED: "CANCELLED",
}
# A run missing from Prefect is lost only once it could not still be starting.
_GONE_AFTER = timedelta(seconds=3 * HEARTBEAT_SECONDS)


async def record_end(flow_run_id: UUID, found: FlowRun | None) -> crud.RunEnd | None:
    """Record the end of a sync run that Prefect knows (`found`, None: gone from Prefect) and
    no code of ours recorded; returns the end recorded, None when there was nothing to do.

    A run that crashed or failed before it recorded its start (its process never got that far)
    gets its row now, from its connector tag, so that it counts too.
    """
    if found is None:
        end: crud.RunEnd = "CRASHED"
        message = "Crashed: the flow run is gone from Prefect"
    else:
        state = found.state
        if state is None or state.type not in _ENDS:
            return None  # still running, or completed (it recorded that itself)
        end, message = _ENDS[state.type], f"{state.name}: {state.message or 'no reason given'}"
    async with session_scope() as session:
        connector_id = connector_id_of(found.tags) if found else None
        if end != "CANCELLED" and connector_id is not None:
            started = found.start_time if found and found.start_time else utcnow()
            await crud.add_sync_run(
                session=session,
                connector_id=connector_id,
                flow_run_id=flow_run_id,
                started_at=started,
            )
        recorded = await crud.finish_sync_run(
            session=session, flow_run_id=flow_run_id, end=end, error=message, if_unfinished=True
        )
        await session.commit()
        run = await crud.get_sync_run(session=session, flow_run_id=flow_run_id)
        connector = (
            await session.get(Connector, run.connector_id) if recorded and run is not None else None
        )
        if connector is None:
            return None
        routes = await crud.notification_routes(session=session, connector=connector)
    if end in ("CRASHED", "FAILED"):
        tell_failed(connector, flow_run_id, message, crashed=end == "CRASHED", routes=routes)
    return end


async def record_unfinished() -> dict[UUID, crud.RunEnd]:
    """Record every sync run that ended unrecorded: the sweep behind the automation, for an end
    whose event was missed (its control run lost, say). A read of Prefect per 200 of them."""
    async with session_scope() as session:
        unfinished = await crud.unfinished_sync_runs(session=session)
    found: dict[UUID, FlowRun] = {}
    async with prefect_client() as client:
        for start in range(0, len(unfinished), PREFECT_PAGE):
            ids = [run.flow_run_id for run in unfinished[start : start + PREFECT_PAGE]]
            page = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=PREFECT_PAGE
            )
            found |= {run.id: run for run in page}
    gone_before = utcnow() - _GONE_AFTER
    recorded = {}
    for run in unfinished:
        flow_run = found.get(run.flow_run_id)
        if flow_run is None and as_utc(run.started_at) > gone_before:
            continue
        if end := await record_end(run.flow_run_id, flow_run):
            recorded[run.flow_run_id] = end
    return recorded


@flow(
    name="record-sync-run-end",
    persist_result=False,
    on_failure=[label_refused("record the end of sync run")],
)
async def record_sync_run_end(flow_run_id: UUID, actor: str = "automation") -> str:
    """Record in its connector's status a sync run that ended where its own code could not say
    so: crashed, lost with its worker, or cancelled. Crashes count towards the connector's
    failure threshold. A run already recorded is left as it is."""
    name = f"record the end of sync run {flow_run_id}"
    await label_run(actor=actor, name=name)
    try:
        async with prefect_client() as client:
            found: FlowRun | None = await client.read_flow_run(flow_run_id)
    except PrefectRejected:
        found = None
    # The connector is known only now, from the run's tags: one more Prefect call, as create.
    if found and (connector_id := connector_id_of(found.tags)) is not None:
        await label_run(actor=actor, name=name, connector_id=connector_id)
    end = await record_end(flow_run_id, found)
    get_run_logger().info("sync run %s: %s", flow_run_id, end or "nothing to record")
    return end or "nothing to record"
