"""The `check-connector` flow: a connection check, on the connectors' work pool, where sync
runs read and write (`control_plane.checks`)."""

import time
from uuid import UUID

from prefect import State, flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from control_plane import bootstrap, checks, crud
from control_plane.connectors import Stream
from control_plane.connectors import checks as steps_of
from control_plane.db import session_scope
from control_plane.settings import get_settings
from control_plane.sync import in_daemon_thread
from models.base import as_utc, utcnow
from models.check import ConnectionCheck


@flow(name=bootstrap.CHECK_FLOW, persist_result=False)
async def check_connector(check_id: UUID) -> State:
    """Run each step of the stored check (resolve, connect, authenticate, read or write, and
    for a discovery, discover) until one fails, record the steps (and the streams found), and
    forget the configs checked. Ends Failed when a step failed, with what to fix."""
    logger = get_run_logger()
    async with session_scope() as session:
        check = await session.get(ConnectionCheck, check_id)
    if check is None or check.target is None:
        return Completed(message=f"check {check_id} has no configs to check (it ended already)")
    scope = await crud.project_scope(check.project_id)
    # The API waits this long from the check's creation, the worker's start-up included.
    waited = (utcnow() - as_utc(check.created_at)).total_seconds()
    deadline = time.monotonic() + get_settings().check_timeout_seconds - waited
    found: list[steps_of.Step] = []
    streams: list[Stream] = []
    for kind, side in check.target.items():
        side_steps, side_streams = await in_daemon_thread(
            steps_of.run,
            kind,
            side["type"],
            side["config"],
            scope,
            deadline=deadline,
            discover=check.discover,
        )
        found += side_steps
        streams += side_streams
    status, message = checks.summary(found)
    recorded = await checks.finish(
        check_id=check_id,
        flow_run_id=UUID(flow_run.get_id()),
        status=status,
        message=message,
        steps=[step.as_json() for step in found],
        streams=[stream.as_json() for stream in streams] if check.discover else None,
    )
    if not recorded:
        logger.warning("check %s ended before this run did: its result was not kept", check_id)
    await acreate_table_artifact(
        key=f"check-{check_id}",
        table=[step.as_json() for step in found],
        description=f"Connection check of {check.subject}: {status}",
    )
    logger.info("check of %s %s: %s", check.subject, status, message)
    return Completed(message=message) if status == "passed" else Failed(message=message)


__all__ = ["check_connector"]
