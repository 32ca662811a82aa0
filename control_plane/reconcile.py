"""Drift between the database and Prefect, found in two reads and repaired one connector at a
time. The database is the truth: every active connector has exactly its desired deployment,
and no managed deployment lives without an active connector behind it."""

from dataclasses import dataclass, field
from typing import Literal
from uuid import UUID

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane import crud, deployments
from control_plane.db import session_scope
from control_plane.deployments import DeploymentSpec
from control_plane.errors import NotFound
from models import Connector

Action = Literal["create", "update", "delete", "relink"]


@dataclass
class Drift:
    """One repair: what is wrong with one deployment (or one row's link to it)."""

    action: Action
    deployment: str
    connector_id: int | None
    deployment_id: UUID | None
    differences: list[str] = field(default_factory=list)

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
    connector: Connector, deployment: deployments.DeploymentResponse | None
) -> Drift | None:
    """The drift of one connector against its deployment in Prefect (None: none there)."""
    assert connector.id is not None
    name = deployments.deployment_name(connector.id)
    if not connector.is_active:
        if deployment is not None:
            return Drift("delete", name, connector.id, deployment.id, ["connector is inactive"])
        if connector.prefect_deployment_id is not None:
            return Drift("relink", name, connector.id, None, ["row points to no deployment"])
        return None
    if deployment is None:
        return Drift("create", name, connector.id, None, ["deployment is missing"])
    differences = deployments.desired(connector).differences(deployments.actual(deployment))
    if differences:
        return Drift("update", name, connector.id, deployment.id, differences)
    if connector.prefect_deployment_id != deployment.id:
        return Drift("relink", name, connector.id, deployment.id, ["row points elsewhere"])
    return None


async def find_drift(*, session: AsyncSession) -> list[Drift]:
    """Every difference between the connectors and the managed deployments: two reads."""
    by_name = {d.name: d for d in await deployments.list_managed()}
    drift = []
    for connector in (await session.exec(select(Connector).order_by(col(Connector.id)))).all():
        found = compare(connector, by_name.pop(deployments.deployment_name(connector.id), None))
        if found:
            drift.append(found)
    for name, orphan in by_name.items():
        drift.append(Drift("delete", name, _connector_id(name), orphan.id, ["no active connector"]))
    return drift


async def repair(item: Drift) -> None:
    """Repair one drift under the connector's row lock, from what the row says now."""
    async with session_scope() as session:
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
            deployments.desired(connector) if connector and connector.is_active else None
        )
        current = await deployments.read_by_name(item.deployment)
        have = deployments.actual(current) if current else None
        deployment_id = await deployments.apply(current.id if current else None, have, want)
        if connector is not None:
            connector.prefect_deployment_id = deployment_id
            await session.commit()


__all__ = ["Drift", "compare", "find_drift", "repair"]
