"""Drift between the database and Prefect, found in two reads and repaired a few connectors at
a time, each under its row lock. The database is the truth: every active connector has exactly
its desired deployment, and no managed deployment lives without an active connector behind it."""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal
from uuid import UUID

from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane import crud, deployments
from control_plane.db import session_scope, write_lock
from control_plane.deployments import DeploymentSpec
from control_plane.errors import NotFound
from control_plane.runs import connector_tag
from models import Connector, ConnectorContext

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


def _connector_id(deployment_name: str) -> int | None:
    prefix = deployments.deployment_name(0)[:-1]
    suffix = deployment_name.removeprefix(prefix)
    return int(suffix) if deployment_name.startswith(prefix) and suffix.isdigit() else None


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


async def find_drift(*, session: AsyncSession) -> list[Drift]:
    """Every difference between the connectors and the managed deployments: two reads."""
    by_name = {d.name: d for d in await deployments.list_managed()}
    drift = []
    contexts = await crud.contexts(session=session)
    for connector in await crud.all_connectors(session=session):
        deployment = by_name.pop(deployments.deployment_name(connector.id), None)
        found = compare(connector, deployment, contexts[connector.id])
        if found:
            drift.append(found)
    for name, orphan in by_name.items():
        drift.append(Drift("delete", name, _connector_id(name), orphan.id, ["no active connector"]))
    return drift


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
    "REPAIR_CONCURRENCY",
    "Drift",
    "compare",
    "find_drift",
    "repair",
    "repair_all",
]
