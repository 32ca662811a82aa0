"""What a sync run does, step by step: plan it from the database, resume where the destination
really is, then move the records with the load's state."""

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane import crud, events
from control_plane.connectors import Batch, Destination, Load, Source, get_type, json_value
from control_plane.errors import Conflict
from control_plane.faults import blocking_pause_point
from control_plane.runs import connector_tag
from control_plane.settings import get_settings
from models import Connector
from models.base import utcnow

T = TypeVar("T")


@dataclass
class SyncPlan:
    """Everything a run needs, read from the database before any record moves."""

    connector_id: int
    connector_name: str
    source_label: str
    destination_label: str
    source: Source
    destination: Destination
    cursor: Any
    resets: int  # the connector's, when the run planned: a reset since, and its cursor is not saved
    retries: int
    retry_delay_seconds: int
    timeout_seconds: int  # 0: no limit

    @property
    def stream(self) -> str:
        """Whose load state a destination keeps for this run."""
        return connector_tag(self.connector_id)


@dataclass
class Moved:
    records_read: int
    records_written: int
    cursor: Any
    seconds: float


class RunTimedOut(TimeoutError):
    """The run took longer than its connector's timeout; the destination rolled back."""


# The actor of the events a sync run causes: the sync flow's own name.
SYNC_ACTOR = "sync-connector"


def failure_threshold(connector: Connector) -> int:
    """Failed runs in a row that switch the connector off; 0: never."""
    if connector.max_consecutive_failures is not None:
        return connector.max_consecutive_failures
    return get_settings().max_consecutive_failures


def tell_failed(
    connector: Connector,
    flow_run_id: UUID,
    error: str,
    *,
    crashed: bool,
    routes: list[dict[str, Any]],
) -> None:
    """`connector.run-failed` (or `run-crashed`) for a run that ended so; past its threshold,
    `connector.failing` too, which the shipped automation answers by switching it off."""
    events.emit(
        events.RUN_CRASHED if crashed else events.RUN_FAILED,
        connector,
        actor=SYNC_ACTOR,
        reason=error,
        routes=routes,
        flowRunId=str(flow_run_id),
        consecutiveFailures=connector.consecutive_failures,
    )
    failures, threshold = connector.consecutive_failures, failure_threshold(connector)
    if threshold and failures >= threshold:
        events.emit(
            events.FAILING,
            connector,
            actor=SYNC_ACTOR,
            reason=f"{failures} consecutive failed runs, last: {error}",
            routes=routes,
            flowRunId=str(flow_run_id),
            consecutiveFailures=failures,
            threshold=threshold,
        )


async def refusal(*, session: AsyncSession, connector: Connector) -> str | None:
    """Why the connector may not run now (inactive, paused, its project frozen), saying how to
    change that; None when it may."""
    if not connector.is_active:
        return f"connector {connector.id} is inactive; activate it (isActive: true) to run it"
    if connector.paused(utcnow()):
        return (
            f"connector {connector.id} is {connector.pause_text()}; "
            "resume it (pausedUntil: null) to run it now"
        )
    project = await crud.get_project(session=session, project_id=connector.project_id)
    if project.freeze_reason is not None:
        return (
            f"{project.freeze_text()}; unfreeze it (POST /api/v1/projects/{project.id}/unfreeze) "
            "to run its connectors"
        )
    return None


def _or_default(value: int | None, default: int) -> int:
    return default if value is None else value


async def plan(*, session: AsyncSession, connector_id: int) -> SyncPlan:
    """The connector's source and destination, built from their merged configs, its cursor and
    its run policy.

    Raises:
        NotFound: the connector is gone.
        Conflict: the connector may not run now (`refusal`).
        InvalidInput: a config is outside the project's reach.
    """
    connector = await crud.get_connector(session=session, connector_id=connector_id)
    if refused := await refusal(session=session, connector=connector):
        raise Conflict(refused)
    source = await crud.get_endpoint(
        session=session, kind="source", endpoint_id=connector.defined_source_id
    )
    destination = await crud.get_endpoint(
        session=session, kind="destination", endpoint_id=connector.defined_destination_id
    )
    # Checked again here, on the worker, under its settings: a row stored before a setting
    # changed, or written straight into the database, is refused before anything is opened.
    scope = await crud.project_scope(connector.project_id)
    source_config = await crud.resolve_config(
        connector=connector, kind="source", endpoint=source, scope=scope
    )
    destination_config = await crud.resolve_config(
        connector=connector, kind="destination", endpoint=destination, scope=scope
    )
    settings = get_settings()
    return SyncPlan(
        connector_id=connector_id,
        connector_name=connector.name,
        source_label=f"{source.name} ({source.type})",
        destination_label=f"{destination.name} ({destination.type})",
        source=get_type("source", source.type)(source_config, scope),  # type: ignore[arg-type]
        destination=get_type("destination", destination.type)(destination_config, scope),  # type: ignore[arg-type]
        cursor=await crud.get_cursor(session=session, connector_id=connector_id),
        resets=connector.resets,
        retries=_or_default(connector.retries, settings.run_retries),
        retry_delay_seconds=_or_default(
            connector.retry_delay_seconds, settings.run_retry_delay_seconds
        ),
        timeout_seconds=_or_default(connector.timeout_seconds, settings.run_timeout_seconds),
    )


async def resume(*, session: AsyncSession, plan: SyncPlan) -> str | None:
    """Make the plan resume after the destination's last load when the control plane never
    recorded it: a run that committed into the destination and died before its own commit.

    The destination's load counts only if it is a run of this connector, started after the
    connector's last reset, whose success no one recorded; then its cursor is saved as the
    connector's, under the connector's lock (a reset meanwhile wins), and the run's row says
    so. Returns what was adopted, for the log; None when the control plane's cursor stands.
    A destination that keeps no load state is not asked. Its reads run in a thread.
    """
    if not plan.destination.keeps_loads:
        return None
    committed = await asyncio.to_thread(plan.destination.last_load, plan.stream)
    if committed is None:
        return None
    load_id = UUID(committed.load_id)
    locked = await crud.lock_connector(session=session, connector_id=plan.connector_id)
    state = await crud.get_state(session=session, connector_id=plan.connector_id)
    if locked is None or (state is not None and state.load_id == load_id):
        return None
    run = await crud.get_sync_run(session=session, flow_run_id=load_id)
    recorded = run is not None and run.ended_at is not None and run.error is None
    if run is None or recorded or run.connector_id != plan.connector_id:
        return None
    if run.resets != locked[1]:
        return None  # loaded before a reset: the next read starts over, as the reset asked
    await crud.save_cursor(
        session=session, connector_id=plan.connector_id, cursor=committed.cursor, load_id=load_id
    )
    run.cursor = committed.cursor
    run.error = f"{run.error or 'ended unrecorded'}; its load was committed, and kept"
    await session.commit()
    plan.cursor = committed.cursor
    return f"the destination holds run {load_id}'s load: resuming after {committed.cursor!r}"


async def in_daemon_thread(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`asyncio.to_thread`, in a daemon thread: a run told to stop (its worker's SIGTERM on a
    cancel) exits at once, and the destination's open transaction dies with its process. From
    the executor's threads, which Python waits for at exit, the load would go on to the end,
    and might commit after the run was cancelled and the next one started."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(result)  # type: ignore[arg-type]
        else:
            done.set_exception(error)

    def run() -> None:
        try:
            outcome: tuple[T | None, BaseException | None] = (function(*args, **kwargs), None)
        except BaseException as error:
            outcome = (None, error)
        with suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name=f"{function.__name__} of the run", daemon=True).start()
    return await done


def _in_time(deadline: float | None, timeout_seconds: int) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise RunTimedOut(
            f"the run took longer than its timeout of {timeout_seconds} s (timeoutSeconds); "
            "nothing of it was committed"
        )


def move(plan: SyncPlan, *, load_id: UUID, batch_size: int) -> Moved:
    """Read every record after the cursor (all of them for a destination that replaces) and
    write them with the load's state; blocking, so run it in a thread.

    The timeout is checked between batches: a source's request has its own timeouts.
    """
    started = time.perf_counter()
    deadline = time.monotonic() + plan.timeout_seconds if plan.timeout_seconds else None
    cursor_field = plan.source.cursor_field
    load = Load(stream=plan.stream, load_id=str(load_id), cursor=plan.cursor)
    after = None if plan.destination.replaces else plan.cursor
    read = 0

    def batches() -> Iterator[Batch]:
        nonlocal read
        for number, batch in enumerate(plan.source.read(cursor=after, batch_size=batch_size)):
            _in_time(deadline, plan.timeout_seconds)
            read += len(batch)
            if cursor_field:
                # Sources read in ascending cursor order: the last value is the largest.
                values = [r[cursor_field] for r in batch if r.get(cursor_field) is not None]
                load.cursor = json_value(values[-1]) if values else load.cursor
            yield batch
            if number == 0:
                blocking_pause_point("sync-connector:during-write")
        _in_time(deadline, plan.timeout_seconds)
        blocking_pause_point("sync-connector:before-destination-commit")

    if plan.destination.keeps_loads:
        written = plan.destination.write(batches(), load)
    else:
        written = plan.destination.write(batches())
    cursor = load.cursor if cursor_field else None
    return Moved(read, written, cursor, time.perf_counter() - started)


__all__ = [
    "SYNC_ACTOR",
    "Moved",
    "RunTimedOut",
    "SyncPlan",
    "failure_threshold",
    "in_daemon_thread",
    "move",
    "plan",
    "refusal",
    "resume",
    "tell_failed",
]
