"""A connector's syncs: where its streams resume (cursors), its backfills, its runs' records."""

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from sqlalchemy import DateTime, case, delete, literal, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane.crud.connectors import lock_connector
from control_plane.errors import NotFound
from models import Backfill, BackfillRequest, Connector, SyncRun, SyncState
from models.base import utcnow

# What a run's end makes of its connector's status: COMPLETED resets the failures, FAILED and
# CRASHED count one, CANCELLED and AWAITING_RETRY (a retry follows) leave the count.
RunEnd = Literal["COMPLETED", "FAILED", "CRASHED", "CANCELLED", "AWAITING_RETRY"]
_COUNTED: set[str] = {"FAILED", "CRASHED"}


async def get_state(*, session: AsyncSession, connector_id: int, stream: str) -> SyncState | None:
    return await session.get(SyncState, (connector_id, stream))


async def get_states(*, session: AsyncSession, connector_id: int) -> dict[str, SyncState]:
    """The connector's saved cursors, by stream."""
    query = select(SyncState).where(col(SyncState.connector_id) == connector_id)
    return {state.stream: state for state in await session.exec(query)}


async def reset_state(
    *, session: AsyncSession, connector: Connector, streams: Collection[str] | None = None
) -> list[SyncState]:
    """Forget where incremental reads of `streams` (None: every stream) resume: their next run
    reads everything, and a run that started before this reset saves no cursor (it counts the
    resets it started with). Returns the states it forgot."""
    connector.resets += 1
    mine = [col(SyncState.connector_id) == connector.id]
    if streams is not None:
        mine.append(col(SyncState.stream).in_(streams))
    forgotten = list(await session.exec(select(SyncState).where(*mine)))
    await session.exec(delete(SyncState).where(*mine))
    await session.flush()
    return forgotten


async def save_cursor(
    *, session: AsyncSession, connector_id: int, stream: str, cursor: Any, load_id: UUID | None
) -> None:
    await session.merge(
        SyncState(
            connector_id=connector_id,
            stream=stream,
            cursor=cursor,
            load_id=load_id,
            updated_at=utcnow(),
        )
    )


async def set_state(
    *, session: AsyncSession, connector: Connector, cursors: dict[str, Any]
) -> list[SyncState]:
    """Make incremental reads of each stream resume after its cursor (None: from the start),
    as a reset does: a run that started before saves no cursor, and no load it committed is
    adopted. Returns the states it replaced."""
    replaced = await reset_state(session=session, connector=connector, streams=list(cursors))
    assert connector.id is not None
    for stream, cursor in cursors.items():
        if cursor is not None:
            await save_cursor(
                session=session,
                connector_id=connector.id,
                stream=stream,
                cursor=cursor,
                load_id=None,
            )
    await session.flush()
    return replaced


async def add_backfill(
    *, session: AsyncSession, connector_id: int, request: BackfillRequest, actor: str
) -> Backfill:
    backfill = Backfill(
        connector_id=connector_id,
        stream=request.stream,
        start=request.start,
        end=request.end,
        actor=actor,
    )
    session.add(backfill)
    await session.flush()
    return backfill


async def get_backfill(*, session: AsyncSession, backfill_id: UUID) -> Backfill:
    """The backfill's window; NotFound once its connector was deleted."""
    backfill = await session.get(Backfill, backfill_id)
    if backfill is None:
        raise NotFound(f"backfill {backfill_id} does not exist: its connector was deleted")
    return backfill


async def add_sync_run(
    *, session: AsyncSession, connector_id: int, flow_run_id: UUID, started_at: datetime
) -> None:
    """The run's row, if it has none yet, leaving the connector as it is: for a run that ended
    before it could record its start."""
    if await session.get(SyncRun, flow_run_id) is None:
        if await session.get(Connector, connector_id) is not None:
            session.add(
                SyncRun(flow_run_id=flow_run_id, connector_id=connector_id, started_at=started_at)
            )
            await session.flush()


async def start_sync_run(
    *, session: AsyncSession, connector_id: int, flow_run_id: UUID, resets: int
) -> None:
    now = utcnow()
    await session.merge(
        SyncRun(flow_run_id=flow_run_id, connector_id=connector_id, resets=resets, started_at=now)
    )
    await session.exec(
        update(Connector)
        .where(col(Connector.id) == connector_id)
        .values(last_run_at=now, last_run_state="RUNNING")
    )


async def finish_sync_run(
    *,
    session: AsyncSession,
    flow_run_id: UUID,
    end: RunEnd,
    records_read: int = 0,
    records_written: int = 0,
    cursors: dict[str, Any] | None = None,
    error: str | None = None,
    if_unfinished: bool = False,
) -> bool:
    """Record the run's end and the connector's status, and save the `cursors` (by stream) of
    what the run committed into the destination (every stream of a completed run; some of a
    run that failed), unless the connector was reset since the run started.

    The connector's last run state moves only if no later run started; a failed or crashed run
    counts unless a success started after it. With `if_unfinished` (someone else noticed the
    run end), only the end and the error, and only if no end is recorded yet: of two such
    recorders, one wins. Returns whether the end was recorded and its cursors saved. The
    connector is locked first, so a reset is either before this (the cursors are not saved) or
    after it (it deletes them).
    """
    owner = select(SyncRun.connector_id).where(col(SyncRun.flow_run_id) == flow_run_id)
    locked = await lock_connector(session=session, connector_id=owner.scalar_subquery())
    if locked is None:
        return False  # the run or its connector is gone
    connector_id, resets = locked
    now = literal(utcnow(), DateTime(timezone=True))
    figures = {"records_read": records_read, "records_written": records_written, "cursors": cursors}
    query = update(SyncRun).where(col(SyncRun.flow_run_id) == flow_run_id)
    if if_unfinished:
        query = query.where(col(SyncRun.ended_at).is_(None))
    ended = query.values(error=error, ended_at=now, **({} if if_unfinished else figures)).returning(
        col(SyncRun.resets), col(SyncRun.started_at)
    )
    run = (await session.exec(ended)).first()  # type: ignore[call-overload]
    if run is None:
        return False
    run_resets, started_at = run
    latest = or_(col(Connector.last_run_at).is_(None), col(Connector.last_run_at) <= started_at)
    status: dict[str, Any] = {"last_run_state": case((latest, end), else_=Connector.last_run_state)}
    if end == "COMPLETED":
        status |= {"last_success_at": now, "consecutive_failures": 0}
    elif end in _COUNTED:
        unanswered = or_(
            col(Connector.last_success_at).is_(None), col(Connector.last_success_at) < started_at
        )
        status |= {
            "last_failure_at": case((unanswered, now), else_=Connector.last_failure_at),
            "consecutive_failures": case(
                (unanswered, Connector.consecutive_failures + 1),
                else_=Connector.consecutive_failures,
            ),
        }
    await session.exec(update(Connector).where(col(Connector.id) == connector_id).values(**status))
    if not cursors:
        return True
    if resets != run_resets:
        return False
    for stream, cursor in cursors.items():
        await save_cursor(
            session=session,
            connector_id=connector_id,
            stream=stream,
            cursor=cursor,
            load_id=flow_run_id,
        )
    return True


async def unfinished_sync_runs(*, session: AsyncSession) -> Sequence[SyncRun]:
    """Runs whose end no one recorded yet: running, or ended where no code of ours ran."""
    query = select(SyncRun).where(col(SyncRun.ended_at).is_(None))
    return (await session.exec(query.order_by(col(SyncRun.started_at)))).all()


async def get_sync_run(*, session: AsyncSession, flow_run_id: UUID) -> SyncRun | None:
    return await session.get(SyncRun, flow_run_id)


async def sync_runs(*, session: AsyncSession, flow_run_ids: Sequence[UUID]) -> dict[UUID, SyncRun]:
    query = select(SyncRun).where(col(SyncRun.flow_run_id).in_(flow_run_ids))
    return {run.flow_run_id: run for run in (await session.exec(query)).all()}
