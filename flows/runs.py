"""The `record-sync-run-end` flow: a sync run that ended where its own code could not record
it, recorded in its connector's status all the same."""

from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType

from control_plane import crud
from control_plane.audit import label_refused, label_run
from control_plane.db import session_scope
from control_plane.errors import PrefectRejected
from control_plane.orchestrator import prefect_client
from control_plane.runs import connector_tag
from control_plane.sync import warn_when_failing
from models import Connector

CONNECTOR_TAG = connector_tag(0)[:-1]

# How a run's final state in Prefect reads in its connector's status, when the run's own code
# did not record it: killed (the worker says Crashed), lost with its worker (no heartbeats),
# cancelled while it ran.
_ENDS: dict[StateType, crud.RunEnd] = {
    StateType.CRASHED: "CRASHED",
    StateType.FAILED: "FAILED",
    StateType.CANCELLED: "CANCELLED",
}


async def record_end(flow_run_id: UUID, found: FlowRun | None) -> crud.RunEnd | None:
    """Record the end of a sync run that Prefect knows (`found`, None: gone from Prefect) and
    no code of ours recorded; returns the end recorded, None when there was nothing to do."""
    if found is None:
        end: crud.RunEnd = "CRASHED"
        message = "Crashed: the flow run is gone from Prefect"
    else:
        state = found.state
        if state is None or state.type not in _ENDS:
            return None  # still running, or completed (it recorded that itself)
        end, message = _ENDS[state.type], f"{state.name}: {state.message or 'no reason given'}"
    async with session_scope() as session:
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
    if end in ("CRASHED", "FAILED"):
        warn_when_failing(connector, message)
    return end


async def record_unfinished() -> dict[UUID, crud.RunEnd]:
    """Record every sync run that ended unrecorded: the sweep behind the automation, for an end
    whose event was missed (its control run lost, say). One read of Prefect for all of them."""
    async with session_scope() as session:
        unfinished = [run.flow_run_id for run in await crud.unfinished_sync_runs(session=session)]
    if not unfinished:
        return {}
    async with prefect_client() as client:
        found = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=unfinished)),
            limit=len(unfinished),
        )
    by_id = {run.id: run for run in found}
    recorded = {}
    for flow_run_id in unfinished:
        if end := await record_end(flow_run_id, by_id.get(flow_run_id)):
            recorded[flow_run_id] = end
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
    await label_run(actor=actor, name=f"record the end of sync run {flow_run_id}")
    async with prefect_client() as client:
        try:
            found: FlowRun | None = await client.read_flow_run(flow_run_id)
        except PrefectRejected:
            found = None
    # The connector is known only now, from the run's tags: one more Prefect call, as create.
    tag = next((t for t in found.tags if t.startswith(CONNECTOR_TAG)), None) if found else None
    if tag and tag.removeprefix(CONNECTOR_TAG).isdigit():
        await label_run(
            actor=actor,
            name=f"record the end of sync run {flow_run_id}",
            connector_id=int(tag.removeprefix(CONNECTOR_TAG)),
        )
    end = await record_end(flow_run_id, found)
    get_run_logger().info("sync run %s: %s", flow_run_id, end or "nothing to record")
    return end or "nothing to record"
