"""What a sync run does, step by step: plan it from the database, resume where the destination
really is, then move the records with the load's state."""

import asyncio
import gc
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from typing import Any, TypeVar
from uuid import UUID

from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane import crud, events
from control_plane.connectors import (
    DEFAULT_STREAM,
    Batch,
    ColumnsUnreadable,
    CopyRows,
    Load,
    Route,
    json_value,
)
from control_plane.errors import Conflict, InvalidInput
from control_plane.faults import blocking_pause_point
from control_plane.runs import SYNC_FLOW, connector_tag
from control_plane.settings import get_settings
from models import Backfill, Connector
from models.base import utcnow

T = TypeVar("T")
B = TypeVar("B")  # a batch: records, or an Arrow record batch


@dataclass
class SyncPlan:
    """Everything a run needs, read from the database before any record moves."""

    connector_id: int
    connector_name: str
    source_label: str
    destination_label: str
    routes: list[Route]  # a stream each
    cursors: dict[str, Any]  # by stream; a stream without one reads from the start
    resets: int  # the connector's, when the run planned: a reset since, and no cursor is saved
    retries: int
    retry_delay_seconds: int
    timeout_seconds: int  # 0: no limit
    backfill: Backfill | None = None  # a backfill's window: then `routes` is its one stream

    def load_stream(self, route: Route) -> str:
        """Whose load state a destination keeps for the route: `connector:<id>`, with the
        stream's name unless it is the default one."""
        tag = connector_tag(self.connector_id)
        return tag if route.stream == DEFAULT_STREAM else f"{tag}/{route.stream}"


@dataclass
class StreamMoved:
    stream: str
    records_read: int = 0
    records_written: int = 0
    cursor: Any = None
    error: str | None = None  # why it failed; None: committed


@dataclass
class Moved:
    streams: list[StreamMoved]
    seconds: float
    backfill: bool = False  # a backfill's: its cursors are not where the next run resumes

    @property
    def records_read(self) -> int:
        return sum(stream.records_read for stream in self.streams)

    @property
    def records_written(self) -> int:
        return sum(stream.records_written for stream in self.streams)

    @property
    def cursors(self) -> dict[str, Any]:
        """The cursors to save: those of the streams committed into the destination, unless
        the run was a backfill."""
        if self.backfill:
            return {}
        return {s.stream: s.cursor for s in self.streams if s.error is None}

    @property
    def failure(self) -> str | None:
        """Which streams failed and why; None when every one was committed."""
        failed = [s for s in self.streams if s.error is not None]
        if not failed:
            return None
        if len(self.streams) == 1:
            return failed[0].error
        reasons = "; ".join(f"stream {s.stream!r}: {s.error}" for s in failed)
        loaded = "the others were loaded" if len(failed) < len(self.streams) else "none loaded"
        return f"{len(failed)} of {len(self.streams)} streams failed, {loaded}: {reasons}"


class StreamsFailed(Exception):
    """Streams of the run failed (`Moved.failure` says which and why); the others committed."""


class RunTimedOut(TimeoutError):
    """The run took longer than its connector's timeout; the destination rolled back."""


# The actor of the events a sync run causes: the sync flow's own name.
SYNC_ACTOR = SYNC_FLOW


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


def backfilled(routes: list[Route], stream: str) -> Route:
    """The route of the stream a backfill reads again.

    Raises:
        InvalidInput: the connector moves no such stream, reads it in full, or replaces what
            its destination holds (a backfill would leave only its window there).
    """
    route = next((route for route in routes if route.stream == stream), None)
    if route is None:
        known = ", ".join(repr(route.stream) for route in routes)
        raise InvalidInput(
            "stream", f"the connector moves no stream {stream!r}; its streams: {known}"
        )
    if route.source.cursor_field is None or not route.source.reads_windows:
        raise InvalidInput(
            "stream",
            f"stream {stream!r} is read in full: a backfill reads a window of the cursor field "
            "of an incremental stream (a sql source with a cursorField)",
        )
    if route.destination.replaces:
        raise InvalidInput(
            "stream",
            f"stream {stream!r} replaces what its destination holds (a full refresh): a backfill "
            "would leave only its window there",
        )
    return route


async def plan(
    *, session: AsyncSession, connector_id: int, backfill: Backfill | None = None
) -> SyncPlan:
    """The connector's streams, each with its source and destination built from their merged
    configs and its cursor, and its run policy.

    Raises:
        NotFound: the connector is gone.
        Conflict: the connector may not run now (`refusal`).
        InvalidInput: a config is outside the project's reach, a stream cannot be moved, or
            the `backfill` cannot be read (`backfilled`).
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
    chosen = await crud.connector_routes(
        connector=connector, source=source, destination=destination, scope=scope
    )
    settings = get_settings()
    if backfill is not None:
        chosen = [backfilled(chosen, backfill.stream)]
    return SyncPlan(
        connector_id=connector_id,
        connector_name=connector.name,
        source_label=f"{source.name} ({source.type})",
        destination_label=f"{destination.name} ({destination.type})",
        routes=chosen,
        cursors={
            stream: state.cursor
            for stream, state in (
                await crud.get_states(session=session, connector_id=connector_id)
            ).items()
        },
        resets=connector.resets,
        retries=_or_default(connector.retries, settings.run_retries),
        retry_delay_seconds=_or_default(
            connector.retry_delay_seconds, settings.run_retry_delay_seconds
        ),
        timeout_seconds=_or_default(connector.timeout_seconds, settings.run_timeout_seconds),
        backfill=backfill,
    )


async def resume(*, session: AsyncSession, plan: SyncPlan) -> list[str]:
    """Make each stream resume after the destination's last load when the control plane never
    recorded it: a run that committed into the destination and died before its own commit.

    The destination's load counts only if it is a run of this connector, started after the
    connector's last reset, whose success no one recorded; then its cursor is saved as the
    stream's, under the connector's lock (a reset meanwhile wins), and the run's row says so.
    Returns what was adopted, for the log; empty when the control plane's cursors stand. A
    destination that keeps no load state is not asked. Its reads run in a thread.
    """
    adopted = []
    for route in plan.routes:
        if not route.destination.keeps_loads:
            continue
        committed = await asyncio.to_thread(route.destination.last_load, plan.load_stream(route))
        if committed is not None and await _adopt(session, plan, route.stream, committed):
            plan.cursors[route.stream] = committed.cursor
            adopted.append(
                f"the destination holds run {committed.load_id}'s load of stream "
                f"{route.stream!r}: resuming after {committed.cursor!r}"
            )
    return adopted


async def _adopt(session: AsyncSession, plan: SyncPlan, stream: str, committed: Load) -> bool:
    load_id = UUID(committed.load_id)
    locked = await crud.lock_connector(session=session, connector_id=plan.connector_id)
    state = await crud.get_state(session=session, connector_id=plan.connector_id, stream=stream)
    if locked is None or (state is not None and state.load_id == load_id):
        return False
    run = await crud.get_sync_run(session=session, flow_run_id=load_id)
    recorded = run is not None and run.ended_at is not None and run.error is None
    if run is None or recorded or run.connector_id != plan.connector_id:
        return False
    if run.resets != locked[1]:
        return False  # loaded before a reset: the next read starts over, as the reset asked
    await crud.save_cursor(
        session=session,
        connector_id=plan.connector_id,
        stream=stream,
        cursor=committed.cursor,
        load_id=load_id,
    )
    run.cursors = {**(run.cursors or {}), stream: committed.cursor}
    run.error = f"{run.error or 'ended unrecorded'}; its load of {stream!r} was committed, and kept"
    await session.commit()
    return True


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
    """Move each stream in turn, its records after its cursor (all of them for a destination
    that replaces) written with its load's state; blocking, so run it in a thread.

    A stream that fails (gone from the source, a change its table refuses) is rolled back and
    reported, and the next one moves; a timeout stops the run. The timeout is checked between
    batches: a source's request has its own timeouts.
    """
    started = time.perf_counter()
    deadline = time.monotonic() + plan.timeout_seconds if plan.timeout_seconds else None
    streams = []
    with _old_objects_frozen():
        for route in plan.routes:
            moved = StreamMoved(route.stream, cursor=plan.cursors.get(route.stream))
            try:
                _move_stream(
                    plan, route, moved, load_id=load_id, batch_size=batch_size, deadline=deadline
                )
            except RunTimedOut:
                raise
            except Exception as error:
                moved.error = f"{type(error).__name__}: {error}"
            streams.append(moved)
    return Moved(streams, time.perf_counter() - started, backfill=plan.backfill is not None)


@contextmanager
def _old_objects_frozen() -> Iterator[None]:
    """Keep the objects alive before the run moves records (its imports: Prefect, SQLAlchemy,
    ...) out of the garbage collector's passes until it is done. A record's or a line's objects
    are made and freed by the million, and the full passes they trigger went over the whole
    heap each time: the data path ran 2 to 3 times slower in a process that had imported the
    control plane than in a bare one (bench/data_plane.py). Unfrozen after: the collector sees
    everything again, garbage frozen with the rest included. (A collection first, to freeze
    none, cost 90 ms.)"""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _paced(
    plan: SyncPlan,
    batches: Iterable[B],
    size: Callable[[B], int],
    moved: StreamMoved,
    deadline: float | None,
) -> Iterator[B]:
    """The batches as a run hands them to its destination: counted, the timeout checked
    between them, and the points where tests stop a run (`faults`)."""
    for number, batch in enumerate(batches):
        _in_time(deadline, plan.timeout_seconds)
        moved.records_read += size(batch)
        yield batch
        if number == 0:
            blocking_pause_point("sync-connector:during-write")
    _in_time(deadline, plan.timeout_seconds)
    blocking_pause_point("sync-connector:before-destination-commit")


def _tracked(batches: Iterable[Batch], route: Route, load: Load) -> Iterator[Batch]:
    """The records with the load's cursor following them (the source's own position, or the
    largest value of its cursor field read), each cut to the route's columns."""
    cursor_field = route.source.cursor_field
    largest = None
    for batch in batches:
        if cursor_field and route.source.reports_position:
            load.cursor = route.source.position
        elif cursor_field:
            # The largest value read: a database reads in its order, an API in its own.
            values = [r[cursor_field] for r in batch if r.get(cursor_field) is not None]
            if values:
                largest = max(values) if largest is None else max(largest, *values)
                load.cursor = json_value(largest)
        if route.columns is not None:
            batch = [{name: r[name] for name in route.columns if name in r} for r in batch]
        yield batch
    if cursor_field and route.source.reports_position:
        load.cursor = route.source.position  # a state after the last record


def _write(write: Callable[..., int], batches: Any, load: Load | None) -> int:
    return write(batches) if load is None else write(batches, load)


def _move_stream(
    plan: SyncPlan,
    route: Route,
    moved: StreamMoved,
    *,
    load_id: UUID,
    batch_size: int,
    deadline: float | None,
) -> None:
    """Move one stream: as COPY text where its source and destination both can (PostgreSQL to
    PostgreSQL), as Arrow record batches for a read in full where both can, as records
    otherwise."""
    cursor_field = route.source.cursor_field
    load = Load(stream=plan.load_stream(route), load_id=str(load_id), cursor=moved.cursor)
    # A backfill's load is not the stream's: its cursor is not where the next run resumes.
    recorded = load if route.destination.keeps_loads and plan.backfill is None else None
    window = None if plan.backfill is None else (plan.backfill.start, plan.backfill.end)
    after = None if route.destination.replaces or window is not None else moved.cursor
    if route.source.copies_out and route.destination.takes_copy:
        with route.source.copy_out(cursor=after, window=window, columns=route.columns) as out:
            if out.cursor is not None:
                load.cursor = json_value(out.cursor)

            def rows(names: list[str]) -> Iterator[CopyRows]:
                lines = out.rows(names, batch_size)
                return _paced(plan, lines, attrgetter("row_count"), moved, deadline)

            write = partial(route.destination.write_copy, out.types)
            moved.records_written = _write(write, rows, recorded)
        moved.cursor = load.cursor if cursor_field else None
        return
    whole = window is None and cursor_field is None and route.columns is None
    if whole and route.source.reads_columns and route.destination.takes_columns:
        columns = route.source.read_columns(batch_size=batch_size)
        paced = _paced(plan, columns, attrgetter("num_rows"), moved, deadline)
        try:
            moved.records_written = _write(route.destination.write_columns, paced, recorded)
            return
        except ColumnsUnreadable:
            moved.records_read = 0  # nothing was committed: read it again as records
    if window is not None:
        read = route.source.read_window(start=window[0], end=window[1], batch_size=batch_size)
    else:
        read = route.source.read(cursor=after, batch_size=batch_size)
    paced = _paced(plan, _tracked(read, route, load), len, moved, deadline)
    moved.records_written = _write(route.destination.write, paced, recorded)
    moved.cursor = load.cursor if cursor_field else None


__all__ = [
    "SYNC_ACTOR",
    "Moved",
    "RunTimedOut",
    "StreamMoved",
    "StreamsFailed",
    "backfilled",
    "SyncPlan",
    "failure_threshold",
    "in_daemon_thread",
    "move",
    "plan",
    "refusal",
    "resume",
    "tell_failed",
]
