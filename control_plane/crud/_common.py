"""What the entity modules share: the endpoint tables, paging, and stamping a changed row."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane.connectors import Kind
from models import Connector, DefinedDestination, DefinedSource, Project
from models.base import utcnow

Endpoint = DefinedSource | DefinedDestination
ENDPOINT_TABLES: dict[Kind, type[DefinedSource] | type[DefinedDestination]] = {
    "source": DefinedSource,
    "destination": DefinedDestination,
}


async def _page(
    session: AsyncSession, query: Any, *, limit: int, offset: int
) -> tuple[Sequence[Any], int]:
    count = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = (await session.exec(query.limit(limit).offset(offset))).all()
    return rows, count or 0


def _touch(row: Project | Endpoint | Connector, changes: dict[str, Any]) -> None:
    for name, value in changes.items():
        setattr(row, name, value)
    row.updated_at = utcnow()


def _names(connectors: Sequence[Connector]) -> str:
    return ", ".join(f"{c.id} ({c.name!r})" for c in connectors)


async def _connectors_where(session: AsyncSession, condition: Any) -> Sequence[Connector]:
    return (
        await session.exec(select(Connector).where(condition).order_by(col(Connector.id)))
    ).all()


def _endpoint_column(kind: Kind) -> Any:
    return Connector.defined_source_id if kind == "source" else Connector.defined_destination_id
