"""Freshness SLAs, watched by Prefect: one proactive automation per window length.

A connector with a window (its `maxStaleness`, else the setting's) carries it on its events as
the resource label `max-staleness-seconds`. The automation of that window restarts its clock
on every event that says the connector ran well or was (re)started, and stops watching on one
that says it will not run; when the clock runs out, Prefect runs `mark-connector-stale`, which
checks the row and emits `connector.stale` once. The next successful run emits
`connector.fresh`. No loop of ours polls.
"""

from datetime import timedelta

from prefect.events.actions import RunDeployment
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from control_plane.orchestrator import prefect_client
from control_plane.settings import get_settings
from models import Connector

LABEL = "max-staleness-seconds"
MARK_STALE_FLOW = "mark-connector-stale"
# A connector that ran well, or starts to be watched: the window starts (again) with each.
RESTARTS = {
    "connector.synced",
    "connector.created",
    "connector.activated",
    "connector.resumed",
    "connector.updated",
}
# A connector that will not run until someone changes that: nothing to watch.
STOPS = {
    "connector.deactivated",
    "connector.auto-deactivated",
    "connector.paused",
    "connector.deleted",
}
_watched: set[str] = set()  # automations this process knows exist


def window(connector: Connector) -> timedelta | None:
    """How long the connector may go without a successful run; None: not watched."""
    chosen = connector.max_staleness
    if chosen is None:
        chosen = get_settings().max_staleness
    return chosen or None


def automation_name(seconds: int) -> str:
    return f"connector-freshness-{seconds}s"


def automation(seconds: int, deployment_id: str) -> AutomationCore:
    """The automation that watches every connector whose window is `seconds` long."""
    return AutomationCore(
        name=automation_name(seconds),
        description=(
            f"A connector with no successful run for {timedelta(seconds=seconds)} is marked "
            "stale (its maxStaleness, or CONTROL_PLANE_MAX_STALENESS)."
        ),
        trigger=EventTrigger(
            match=ResourceSpecification(
                {"prefect.resource.id": "connector.*", LABEL: str(seconds)}
            ),
            # An event in both restarts the window; one only expected ends it unfired.
            after=RESTARTS,
            expect=RESTARTS | STOPS,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=seconds),
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=deployment_id,
                parameters={
                    # The bucket's last event: the one that started the window.
                    "connector_id": "{{ event.resource['connector-id'] | int }}",
                    "actor": "automation",
                },
            )
        ],
    )


async def watch(length: timedelta | None) -> None:
    """Make sure the automation of windows of this length exists (one read when it does);
    None: nothing to watch."""
    if length is None:
        return
    seconds = int(length.total_seconds())
    name = automation_name(seconds)
    if name in _watched:
        return
    async with prefect_client() as client:
        if not await client.read_automations_by_name(name):
            deployment = await client.read_deployment_by_name(
                f"{MARK_STALE_FLOW}/{MARK_STALE_FLOW}"
            )
            await client.create_automation(automation(seconds, str(deployment.id)))
    _watched.add(name)


__all__ = ["LABEL", "MARK_STALE_FLOW", "automation", "automation_name", "watch", "window"]
