"""A connector's sync runs as Prefect knows them: history, the active ones, cancelling.

Runs are found by the flow `sync-connector` and the tag `connector:<id>`, so the history
survives the connector's deployment being deleted and created again.
"""

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta
from uuid import UUID

from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling

from control_plane.errors import Conflict, NotFound
from control_plane.orchestrator import PREFECT_PAGE, prefect_client
from control_plane.schedules import upcoming
from models.base import utcnow

SYNC_FLOW = "sync-connector"
MANUAL_TAG = "trigger:manual"
# A backfill's sync run: `backfill`, and `backfill:<id>` naming its window's row.
BACKFILL_TAG = "backfill"
ACTIVE_STATES = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED]
UNENDED_STATES = [StateType.SCHEDULED, *ACTIVE_STATES]


def connector_tag(connector_id: int) -> str:
    return f"connector:{connector_id}"


def connector_id_of(tags: Sequence[str]) -> int | None:
    """The connector a run is tagged with, if any."""
    prefix = connector_tag(0).removesuffix("0")
    ids = [tag.removeprefix(prefix) for tag in tags if tag.startswith(prefix)]
    return int(ids[0]) if ids and ids[0].isdigit() else None


def _filters(connector_id: int, states: Sequence[StateType] | None) -> dict:
    run_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[connector_tag(connector_id)]))
    if states:
        run_filter.state = FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states)))
    return {
        "flow_filter": FlowFilter(name=FlowFilterName(any_=[SYNC_FLOW])),
        "flow_run_filter": run_filter,
    }


async def list_runs(
    connector_id: int, *, states: Sequence[StateType] | None, limit: int, offset: int
) -> tuple[list[FlowRun], int]:
    """The connector's sync runs, newest first, and how many there are."""
    filters = _filters(connector_id, states)
    async with prefect_client() as client:
        runs: list[FlowRun] = []
        while len(runs) < limit:  # Prefect's API serves at most PREFECT_PAGE runs a request
            size = min(PREFECT_PAGE, limit - len(runs))
            page = await client.read_flow_runs(
                **filters,
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=size,
                offset=offset + len(runs),
            )
            runs += page
            if len(page) < size:
                break
        return runs, await client.count_flow_runs(**filters)


async def active_runs(connector_id: int) -> list[FlowRun]:
    """The connector's sync runs that are running or about to."""
    async with prefect_client() as client:
        return await client.read_flow_runs(**_filters(connector_id, ACTIVE_STATES), limit=10)


def backfill_tag(backfill_id: UUID) -> str:
    return f"{BACKFILL_TAG}:{backfill_id}"


def backfill_of(tags: Sequence[str]) -> UUID | None:
    """The backfill whose run carries these tags; None for a run that is no backfill."""
    prefix = f"{BACKFILL_TAG}:"
    ids = [tag.removeprefix(prefix) for tag in tags if tag.startswith(prefix)]
    return UUID(ids[0]) if ids else None


def trigger_of(run: FlowRun) -> str:
    """schedule, manual (a trigger through the control plane), backfill or automation."""
    if run.auto_scheduled:
        return "schedule"
    if BACKFILL_TAG in run.tags:
        return "backfill"
    return "manual" if MANUAL_TAG in run.tags else "automation"


async def cancel(connector_id: int, flow_run_id: UUID) -> FlowRun:
    """Cancel a scheduled or running sync run of the connector; 409 when it already ended."""
    async with prefect_client() as client:
        missing = NotFound(f"connector {connector_id} has no run {flow_run_id}")
        try:
            run = await client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            raise missing from None
        flow = await client.read_flow(run.flow_id)
        if flow.name != SYNC_FLOW or connector_tag(connector_id) not in run.tags:
            raise missing
        if run.state is None or run.state.is_final():
            state = run.state.name if run.state else "no state"
            raise Conflict(f"run {flow_run_id} has ended already ({state})")
        # A run that has not started yet has no process to stop: cancel it outright.
        scheduled = run.state.type in (StateType.SCHEDULED, StateType.PENDING)
        await client.set_flow_run_state(flow_run_id, Cancelled() if scheduled else Cancelling())
        return await client.read_flow_run(flow_run_id)


async def wait_for_end(flow_run_id: UUID, *, timeout: float) -> FlowRun | None:
    """The run once it has ended, or None if it has not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    async with prefect_client() as client:
        while True:
            run = await client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.25)


async def give_up(flow_run_id: UUID) -> None:
    """Cancel a run whose result no one waits for any more: a running one is stopped by its
    worker, any other is cancelled outright."""
    async with prefect_client() as client:
        run = await client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_running():
            await client.set_flow_run_state(flow_run_id, Cancelling())
        else:
            await client.set_flow_run_state(flow_run_id, Cancelled(), force=True)


# A worker takes runs due within its prefetch (Prefect's default: 10 s) ahead of time.
_DUE_SOON = timedelta(minutes=1)


def _deletable(run: FlowRun) -> bool:
    """Scheduled, never run, not waiting for the deployment's concurrency slot: what Prefect
    deletes of a deployment's runs (`models.deployments._delete_scheduled_runs`)."""
    state = run.state
    if state is None or not state.is_scheduled():
        return False
    return run.run_count == 0 and state.name != "AwaitingConcurrencySlot"


def goes_with_deployment(run: FlowRun) -> bool:
    """A run that Prefect deletes with the deployment before any worker takes it (not due
    soon)."""
    later = run.expected_start_time is None or run.expected_start_time > utcnow() + _DUE_SOON
    return _deletable(run) and later


def goes_with_update(run: FlowRun) -> bool:
    """A run that Prefect deletes when the deployment changes: one its scheduler created for
    the future (`models.deployments.update_deployment`)."""
    future = run.expected_start_time is not None and run.expected_start_time > utcnow()
    return _deletable(run) and run.auto_scheduled and future


def _of_schedule(run: FlowRun, schedule: str | None, timezone: str) -> bool:
    at = run.expected_start_time
    return schedule is not None and at is not None and upcoming(schedule, timezone, 1, at)[0] == at


async def drop_stale(connector_id: int, schedule: str | None, timezone: str) -> list[UUID]:
    """Delete the runs Prefect's scheduler made for the connector from a schedule it no longer
    has; returns their ids. Called once a reschedule is committed.

    Prefect's scheduler reads the schedules of every deployment it schedules before it inserts
    their runs: a pass that read a deployment before the reschedule inserts runs of the old
    schedule after the update deleted the old ones (PrefectHQ/prefect#17703).
    """
    async with prefect_client() as client:
        found = await client.read_flow_runs(
            **_filters(connector_id, [StateType.SCHEDULED]), limit=PREFECT_PAGE
        )
        stale = [
            run.id
            for run in found
            if goes_with_update(run) and not _of_schedule(run, schedule, timezone)
        ]
        for flow_run_id in stale:
            try:
                await client.delete_flow_run(flow_run_id)
            except ObjectNotFound:
                pass
    return stale


# How long a running run gets to stop (its worker kills it) before it is cancelled outright.
STOP_SECONDS = 20.0


async def cancel_all(connector_id: int, *, wait: float) -> list[UUID]:
    """Cancel every run of the connector that has not ended and that deleting its deployment
    would leave behind; returns their ids.

    Call it before the connector's deployment goes. Deleting it deletes the scheduled runs that
    never ran, but not a run waiting for the deployment's concurrency slot (a trigger during a
    run) or to retry, nor one a worker takes meanwhile (due now, as a trigger's is); and
    Prefect's server cannot end a run that holds a slot of a deployment deleted meanwhile
    (releasing the slot fails with a 500): such runs would stay Scheduled, Pending or Running
    for good. A run that has not started is cancelled outright. A running
    one is asked to stop (Cancelling: its worker stops its process, and the destination rolls
    back what it had not committed) and waited for, at most `wait` seconds, then cancelled
    outright.
    """
    stopping: list[UUID] = []
    cancelled: list[UUID] = []
    deadline = time.monotonic() + wait
    async with prefect_client() as client:
        for run in await client.read_flow_runs(
            **_filters(connector_id, UNENDED_STATES), limit=PREFECT_PAGE
        ):
            if goes_with_deployment(run):
                continue
            state = run.state.type if run.state else None
            if wait and state in (StateType.RUNNING, StateType.CANCELLING):
                if state == StateType.RUNNING:
                    await client.set_flow_run_state(run.id, Cancelling())
                stopping.append(run.id)
            else:
                await client.set_flow_run_state(run.id, Cancelled(), force=True)
                cancelled.append(run.id)
        while stopping:
            await asyncio.sleep(0.5)
            ended = [
                run.id
                for run in await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=stopping))
                )
                if run.state is None or run.state.is_final()
            ]
            cancelled += ended
            stopping = [run_id for run_id in stopping if run_id not in ended]
            if stopping and time.monotonic() > deadline:
                for run_id in stopping:
                    await client.set_flow_run_state(run_id, Cancelled(), force=True)
                return cancelled + stopping
    return cancelled


__all__ = [
    "active_runs",
    "cancel",
    "cancel_all",
    "connector_id_of",
    "connector_tag",
    "goes_with_deployment",
    "give_up",
    "goes_with_update",
    "list_runs",
    "trigger_of",
    "wait_for_end",
]
