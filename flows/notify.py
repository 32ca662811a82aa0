"""The `notify-owners` flow: what the automation `notify-owners-of-connector-events` runs for
each event a connector's routes hear (`control_plane.notify`)."""

import asyncio
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.blocks.abstract import NotificationBlock
from prefect.states import Completed, Failed, State

from control_plane import crud, notify
from control_plane.audit import label_refused, label_run
from control_plane.db import session_scope
from control_plane.errors import NotFound
from models.notifications import effective, hears

# A channel that fails is tried again after these many seconds, then given up on.
RETRY_DELAYS = (1, 4)


async def _send(block: NotificationBlock, said: dict[str, Any], delivery: str) -> None:
    with block.raise_on_failure():
        if isinstance(block, notify.SignedWebhook):
            await block.send(said, delivery=delivery, event=said["event"])
        else:
            await block.notify(said["text"], said["subject"])


async def _deliver(channel: str, delivery: str, said: dict[str, Any]) -> str:
    """Tell one channel, trying again while it fails; what came of it."""
    try:
        block = await notify.load_channel(channel)
    except (ValueError, KeyError):
        return f"undelivered: Prefect has no notification block {channel}"
    reason = ""
    for delay in (0, *RETRY_DELAYS):
        await asyncio.sleep(delay)
        try:
            await _send(block, said, delivery)
        except Exception as error:  # one channel's failure, whatever its block raised
            reason = notify.failure(error)
            get_run_logger().warning("%s: %s", channel, reason)
        else:
            return "delivered"
    return f"undelivered after {1 + len(RETRY_DELAYS)} tries: {reason}"


@flow(
    name="notify-owners",
    persist_result=False,
    on_failure=[label_refused("notify the owners of connector")],
)
async def notify_owners(
    event_id: UUID,
    event: str,
    connector_id: int,
    occurred: datetime,
    payload: dict[str, Any],
    actor: str = "automation",
) -> State:
    """Tell each channel whose route hears this event of the connector (its own routes, or its
    project's), once; a channel that keeps failing fails this run, and nothing else. The
    automation passes the event as it fired: Prefect may store it only after this run starts."""
    await label_run(
        actor=actor,
        name=f"notify the owners of connector {connector_id}: {event}",
        connector_id=connector_id,
    )
    logger = get_run_logger()
    async with session_scope() as session:
        try:
            connector = await crud.get_connector(session=session, connector_id=connector_id)
        except NotFound:
            return Completed(message=f"connector {connector_id} is gone")
        project = await crud.get_project(session=session, project_id=connector.project_id)
    routes = effective(connector.notifications, project.notifications)
    said = notify.message(event, occurred.isoformat(), payload, connector, project)
    outcomes = {}
    for channel in hears(routes, event):
        outcomes[channel] = await _deliver(channel, f"{event_id}/{channel}", said)
        logger.info("%s: %s", channel, outcomes[channel])
    await acreate_table_artifact(
        key=f"connector-{connector_id}-notifications",
        table=[{"channel": channel, "outcome": outcome} for channel, outcome in outcomes.items()],
        description=f"Who heard {event} of connector {connector_id}",
    )
    failed = {channel: o for channel, o in outcomes.items() if o != "delivered"}
    if failed:
        return Failed(message="; ".join(f"{channel} {o}" for channel, o in failed.items()))
    return Completed(message=f"told {len(outcomes)} channel(s)")


__all__ = ["notify_owners"]
