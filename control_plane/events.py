"""The Prefect events a control flow emits after each committed change to a connector or to
an entry of the catalog.

Each event's resource is the connector (`connector.<id>`, with its name and a `connector-id`
label automations can template), related to its project and its deployment; emitted inside a
flow run, Prefect relates it to that run, its flow and its tags as well. The payload says who
asked and why, and `changes`: every field the run changed, before and after, as the API shows
them (secrets masked), the same rows as the run's artifact. A catalog entry's events are
`project.*`, `defined-source.*` and `defined-destination.*` (`created`, `updated`, `deleted`),
on the entry (`project.<id>`, `defined-source.<id>`, ...), related to its project.
"""

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from prefect.events import emit_event

from control_plane import freshness
from models import Connector
from models.notifications import hears
from models.plan import CATALOG_NAMES, CatalogKind

CREATED = "connector.created"
UPDATED = "connector.updated"
RESCHEDULED = "connector.rescheduled"
ACTIVATED = "connector.activated"
DEACTIVATED = "connector.deactivated"
AUTO_DEACTIVATED = "connector.auto-deactivated"
TRIGGERED = "connector.triggered"
BACKFILL_STARTED = "connector.backfill-started"
RESET = "connector.reset"
STATE_SET = "connector.state-set"
PAUSED = "connector.paused"
RESUMED = "connector.resumed"
DELETED = "connector.deleted"
FAILING = "connector.failing"
RUN_FAILED = "connector.run-failed"
RUN_CRASHED = "connector.run-crashed"
SYNCED = "connector.synced"
STALE = "connector.stale"
FRESH = "connector.fresh"


# On an event that one of the connector's notification routes hears.
NOTIFY_LABEL = "notify"


def resource(connector: Connector) -> dict[str, str]:
    labels = {
        "prefect.resource.id": f"connector.{connector.id}",
        "prefect.resource.name": connector.name,
        "connector-id": str(connector.id),
    }
    if length := freshness.window(connector):
        labels[freshness.LABEL] = str(int(length.total_seconds()))
    return labels


def _related(resource_id: str, role: str) -> dict[str, str]:
    return {"prefect.resource.id": resource_id, "prefect.resource.role": role}


def emit(
    event: str,
    connector: Connector,
    *,
    actor: str,
    reason: str | None = None,
    deployment_id: UUID | None = None,
    routes: Sequence[dict[str, Any]] = (),
    **payload: Any,
) -> None:
    """Emit one connector event; Prefect sends it in the background. With the connector's
    notification routes (`crud.notification_routes`), an event one of them hears is labelled
    for the automation that tells their channels."""
    labels = resource(connector)
    if hears(routes, event):
        labels[NOTIFY_LABEL] = "true"
    related = [_related(f"project.{connector.project_id}", "project")]
    deployment_id = deployment_id or connector.prefect_deployment_id
    if deployment_id:
        related.append(_related(f"prefect.deployment.{deployment_id}", "deployment"))
    emit_event(
        event=event,
        resource=labels,
        related=related,
        payload={"actor": actor, "reason": reason, **payload},
    )


def emit_entry(
    kind: CatalogKind,
    action: str,
    entry_id: int,
    name: str,
    *,
    project_id: int,
    actor: str,
    changes: list[dict[str, Any]],
) -> None:
    """Emit `<entry>.<action>` for a catalog entry, e.g. `defined-source.updated`."""
    entry = CATALOG_NAMES[kind].replace(" ", "-")
    related = [] if kind == "project" else [_related(f"project.{project_id}", "project")]
    emit_event(
        event=f"{entry}.{action}",
        resource={
            "prefect.resource.id": f"{entry}.{entry_id}",
            "prefect.resource.name": name,
        },
        related=related,
        payload={"actor": actor, "changes": changes},
    )


__all__ = [
    "ACTIVATED",
    "AUTO_DEACTIVATED",
    "CREATED",
    "DEACTIVATED",
    "DELETED",
    "FAILING",
    "FRESH",
    "NOTIFY_LABEL",
    "PAUSED",
    "RESCHEDULED",
    "RESET",
    "STATE_SET",
    "RESUMED",
    "RUN_CRASHED",
    "RUN_FAILED",
    "STALE",
    "SYNCED",
    "TRIGGERED",
    "UPDATED",
    "emit",
    "emit_entry",
    "resource",
]
