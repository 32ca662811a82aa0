"""The `sync-connector` flow that every connector's deployment runs."""

from typing import Any

from prefect import flow, get_run_logger

from control_plane import crud
from control_plane.db import session_scope
from control_plane.errors import Conflict


@flow(name="sync-connector", flow_run_name="sync connector {connector_id}")
async def sync_connector(connector_id: int) -> dict[str, Any]:
    """Move the connector's data from its defined source to its defined destination."""
    logger = get_run_logger()
    async with session_scope() as session:
        connector = await crud.get_connector(session=session, connector_id=connector_id)
        if not connector.is_active:
            raise Conflict(f"connector {connector_id} is inactive; activate it to run it")
        source = await crud.get_endpoint(
            session=session, kind="source", endpoint_id=connector.defined_source_id
        )
        destination = await crud.get_endpoint(
            session=session, kind="destination", endpoint_id=connector.defined_destination_id
        )
        crud.resolve_config(connector=connector, kind="source", endpoint=source)
        crud.resolve_config(connector=connector, kind="destination", endpoint=destination)
    logger.info(
        "connector %s %r: %s source %r -> %s destination %r",
        connector_id,
        connector.name,
        source.type,
        source.name,
        destination.type,
        destination.name,
    )
    return {"connectorId": connector_id, "source": source.type, "destination": destination.type}
