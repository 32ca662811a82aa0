"""What a sync run does, step by step: plan it from the database, then move the records."""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane import crud
from control_plane.connectors import Batch, Destination, Source, get_type
from control_plane.errors import Conflict
from control_plane.settings import get_settings
from models import Connector


@dataclass
class SyncPlan:
    """Everything a run needs, read from the database before any record moves."""

    connector_id: int
    connector_name: str
    source_label: str
    destination_label: str
    source: Source
    destination: Destination
    cursor: Any


@dataclass
class Moved:
    records_read: int
    records_written: int
    cursor: Any
    seconds: float


def failure_threshold(connector: Connector) -> int:
    """Failed runs in a row that switch the connector off; 0: never."""
    if connector.max_consecutive_failures is not None:
        return connector.max_consecutive_failures
    return get_settings().max_consecutive_failures


async def plan(*, session: AsyncSession, connector_id: int) -> SyncPlan:
    """The connector's source and destination, built from their merged configs, and its cursor."""
    connector = await crud.get_connector(session=session, connector_id=connector_id)
    if not connector.is_active:
        raise Conflict(f"connector {connector_id} is inactive; activate it to run it")
    source = await crud.get_endpoint(
        session=session, kind="source", endpoint_id=connector.defined_source_id
    )
    destination = await crud.get_endpoint(
        session=session, kind="destination", endpoint_id=connector.defined_destination_id
    )
    # Checked again here, on the worker, under its settings: a row stored before a setting
    # changed, or written straight into the database, is refused before anything is opened.
    scope = await crud.project_scope(connector.project_id)
    source_config = await crud.resolve_config(
        connector=connector, kind="source", endpoint=source, scope=scope
    )
    destination_config = await crud.resolve_config(
        connector=connector, kind="destination", endpoint=destination, scope=scope
    )
    return SyncPlan(
        connector_id=connector_id,
        connector_name=connector.name,
        source_label=f"{source.name} ({source.type})",
        destination_label=f"{destination.name} ({destination.type})",
        source=get_type("source", source.type)(source_config, scope),  # type: ignore[arg-type]
        destination=get_type("destination", destination.type)(destination_config, scope),  # type: ignore[arg-type]
        cursor=await crud.get_cursor(session=session, connector_id=connector_id),
    )


def move(plan: SyncPlan, *, batch_size: int) -> Moved:
    """Read every record after the cursor and write it; blocking, so run it in a thread."""
    started = time.perf_counter()
    cursor_field = plan.source.cursor_field
    read = 0
    high = plan.cursor

    def batches() -> Iterator[Batch]:
        nonlocal read, high
        for batch in plan.source.read(cursor=plan.cursor, batch_size=batch_size):
            read += len(batch)
            if cursor_field:
                # Sources read in ascending cursor order: the last value is the largest.
                values = [r[cursor_field] for r in batch if r.get(cursor_field) is not None]
                high = values[-1] if values else high
            yield batch

    written = plan.destination.write(batches())
    return Moved(read, written, high if cursor_field else None, time.perf_counter() - started)


__all__ = ["Moved", "SyncPlan", "failure_threshold", "move", "plan"]
