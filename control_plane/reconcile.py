"""Drift between the database and Prefect, found and repaired a few connectors at a time, each
under its row lock. The database is the truth: every active connector has exactly its desired
deployment, and no managed deployment lives without an active connector behind it.

A full pass compares every connector with every managed deployment: two reads, whose cost grows
with the connectors. A pass over what changed compares only the connectors whose rows (or
project, source, destination) changed since a time, and those whose deployments Prefect says
were created, updated or deleted since (its `prefect.deployment.*` events): its cost grows with
the changes. Prefect emits no event when a deployment's schedule alone is edited (through its
schedules endpoints, as the UI does) and rows changed behind the control plane's back keep
their `updated_at`: only a full pass finds those.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from uuid import UUID

from prefect.client.schemas.events import EventPage
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane import crud, deployments
from control_plane.db import session_scope, write_lock
from control_plane.deployments import DeploymentSpec
from control_plane.errors import NotFound
from control_plane.orchestrator import prefect_client
from control_plane.runs import connector_tag
from models import Connector, ConnectorContext
from models.base import saved_id

Action = Literal["create", "update", "delete", "relink"]
# Repairs in flight at once. A repair mostly waits on Prefect: one at a time, reconcile created
# about 6 deployments a second; 8 at a time, about 18 on a 2-core machine, where Prefect's
# server (about 50 ms of CPU per create) is the limit. Each holds a database connection (the
# engine's pool has 5 + 10).
REPAIR_CONCURRENCY = 8
# The table artifact of each pass's drift, and how a pass that repaired it (not a dry run)
# describes it.
REPAIRS_ARTIFACT = "reconcile-connectors"
REPAIRED = "Drift repaired"
# The events that say a deployment changed. Prefect's events API answers 50 a page.
_DEPLOYMENT_EVENTS = [
    f"prefect.deployment.{change}" for change in ("created", "updated", "deleted")
]
_EVENTS_PAGE = 50
# Beyond this many changed connectors, a full pass's two reads cost less than reading them by
# their names (and an IN list this long stays within SQLite's limit on parameters).
MOST_CHANGED = 5_000


@dataclass
class Drift:
    """One repair: what is wrong with one deployment (or one row's link to it)."""

    action: Action
    deployment: str
    connector_id: int | None
    deployment_id: UUID | None
    differences: list[str] = field(default_factory=list)
    # What was compared: the row's version and the deployment as Prefect listed it (None:
    # missing). A repair of a row no control flow has changed since needs no second read.
    version: int | None = None
    found: deployments.DeploymentResponse | None = field(default=None, repr=False)

    def as_row(self) -> dict[str, str]:
        return {
            "action": self.action,
            "deployment": self.deployment,
            "connector": str(self.connector_id or ""),
            "differences": "; ".join(self.differences),
        }


# What every connector deployment's name starts with.
_NAME_PREFIX = deployments.deployment_name(0)[:-1]


def _connector_id(deployment_name: str) -> int | None:
    suffix = deployment_name.removeprefix(_NAME_PREFIX)
    return int(suffix) if deployment_name.startswith(_NAME_PREFIX) and suffix.isdigit() else None


def compare(
    connector: Connector,
    deployment: deployments.DeploymentResponse | None,
    context: ConnectorContext,
) -> Drift | None:
    """The drift of one connector against its deployment in Prefect (None: none there)."""
    assert connector.id is not None
    name = deployments.deployment_name(connector.id)

    def drift(action: Action, differences: list[str]) -> Drift:
        deployment_id = deployment.id if deployment else None
        return Drift(
            action,
            name,
            connector.id,
            deployment_id,
            differences,
            version=connector.version,
            found=deployment,
        )

    if not connector.is_active:
        if deployment is not None:
            return drift("delete", ["connector is inactive"])
        if connector.prefect_deployment_id is not None:
            return drift("relink", ["row points to no deployment"])
        return None
    if deployment is None:
        return drift("create", ["deployment is missing"])
    want = deployments.desired(connector, context)
    differences = want.differences(deployments.actual(deployment))
    if differences:
        return drift("update", differences)
    if connector.prefect_deployment_id != deployment.id:
        return drift("relink", ["row points elsewhere"])
    return None


def _drift(
    connectors: Sequence[Connector],
    contexts: dict[int, ConnectorContext],
    found: Sequence[deployments.DeploymentResponse],
) -> list[Drift]:
    """The drift of `connectors` against the deployments `found`; a deployment found with no
    connector there is an orphan."""
    by_name = {d.name: d for d in found}
    drift = []
    for connector in connectors:
        deployment = by_name.pop(deployments.deployment_name(saved_id(connector)), None)
        differs = compare(connector, deployment, contexts[saved_id(connector)])
        if differs:
            drift.append(differs)
    for name, orphan in by_name.items():
        drift.append(Drift("delete", name, _connector_id(name), orphan.id, ["no active connector"]))
    return drift


async def find_drift(*, session: AsyncSession) -> list[Drift]:
    """Every difference between the connectors and the managed deployments: two reads."""
    found = await deployments.list_managed()
    contexts = await crud.contexts(session=session)
    return _drift(await crud.all_connectors(session=session), contexts, found)


async def changed_deployments(since: datetime) -> set[str]:
    """The names of the connector deployments Prefect created, updated or deleted since
    `since`, from its events."""
    names: set[str] = set()
    async with prefect_client() as client:
        page: EventPage | None = await client.read_events(
            filter=EventFilter(
                occurred=EventOccurredFilter(since=since),
                event=EventNameFilter(name=_DEPLOYMENT_EVENTS),
                resource=EventResourceFilter(id_prefix=["prefect.deployment."]),
            ),
            limit=_EVENTS_PAGE,
        )
        while page:
            names |= {
                name
                for event in page.events
                if (name := event.resource.name or "").startswith(_NAME_PREFIX)
            }
            page = await page.get_next_page(client)
    return names


async def find_changed_drift(*, session: AsyncSession, since: datetime) -> list[Drift] | None:
    """The drift of what changed since `since`: the connectors whose rows changed, and the
    deployments Prefect changed. None when more than `MOST_CHANGED` changed: a full pass
    (`find_drift`) costs less."""
    names = await changed_deployments(since)
    ids = {i for i in map(_connector_id, names) if i is not None}
    ids |= await crud.changed_connector_ids(session=session, since=since)
    names |= {deployments.deployment_name(i) for i in ids}
    if len(names) > MOST_CHANGED:
        return None
    found = await deployments.list_managed(names) if names else []
    contexts = await crud.contexts(session=session, ids=ids)
    return _drift(await crud.connectors_by_id(session=session, ids=ids), contexts, found)


async def repair(item: Drift) -> None:
    """Repair one drift under the connector's row lock, from what the row says now."""
    key = connector_tag(item.connector_id) if item.connector_id else f"deployment:{item.deployment}"
    # The control flows' lock too: on SQLite, with its one writer, repairs take turns.
    async with write_lock(key), session_scope() as session:
        try:
            connector = (
                await crud.get_connector(
                    session=session, connector_id=item.connector_id, for_update=True
                )
                if item.connector_id is not None
                else None
            )
        except NotFound:
            connector = None
        want: DeploymentSpec | None = (
            deployments.desired(
                connector, await crud.context_of(session=session, connector=connector)
            )
            if connector and connector.is_active
            else None
        )
        # A control flow that changed Prefect for this connector since also moved its version.
        # Without one, what was found stands: creating upserts by name, and patching or
        # deleting a deployment that went missing meanwhile creates it or changes nothing.
        unchanged = connector is not None and connector.version == item.version
        current = item.found if unchanged else await deployments.read_by_name(item.deployment)
        have = deployments.actual(current) if current else None
        deployment_id = await deployments.apply(current.id if current else None, have, want)
        if connector is not None:
            connector.prefect_deployment_id = deployment_id
            await session.commit()


async def repair_all(drift: Sequence[Drift], *, concurrency: int = REPAIR_CONCURRENCY) -> None:
    """Repair every drift, `concurrency` at a time.

    The first failure stops new repairs; it is raised once the repairs in flight have ended,
    so none is cut off between its Prefect change and its commit.
    """
    pending = iter(drift)
    failures: list[Exception] = []

    async def work() -> None:
        for item in pending:
            if failures:
                return
            try:
                await repair(item)
            except Exception as error:
                failures.append(error)

    await asyncio.gather(*(work() for _ in range(min(concurrency, len(drift)))))
    if failures:
        raise failures[0]


__all__ = [
    "REPAIRED",
    "REPAIRS_ARTIFACT",
    "MOST_CHANGED",
    "REPAIR_CONCURRENCY",
    "Drift",
    "changed_deployments",
    "compare",
    "find_changed_drift",
    "find_drift",
    "repair",
    "repair_all",
]
