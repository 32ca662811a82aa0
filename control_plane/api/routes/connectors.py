"""Connectors, the seed's contract. Every change is a control flow run; reads are plain."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from control_plane import crud
from control_plane.api.deps import (
    CallerDep,
    ConnectorDep,
    PageDep,
    SessionDep,
    check_project_reference,
)
from flows.lifecycle import create_connector, delete_connector, trigger_connector, update_connector
from models import (
    ConnectorCreate,
    ConnectorPublic,
    ConnectorsPublic,
    ConnectorUpdate,
    TriggerResult,
)

router = APIRouter(prefix="/connectors", tags=["connectors"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ConnectorPublic)
async def create(spec: ConnectorCreate, caller: CallerDep):
    """Store the connector and create its Prefect deployment (when active)."""
    check_project_reference(caller, spec.project_id)
    return await create_connector(spec=spec, actor=caller.actor)


@router.get("", response_model=ConnectorsPublic)
async def list_all(
    session: SessionDep,
    page: PageDep,
    caller: CallerDep,
    project_id: Annotated[int | None, Query(alias="projectId")] = None,
    is_active: Annotated[bool | None, Query(alias="isActive")] = None,
):
    connectors, count = await crud.list_connectors(
        session=session,
        project_id=project_id,
        project_ids=caller.projects,
        is_active=is_active,
        limit=page.limit,
        offset=page.offset,
    )
    return ConnectorsPublic(data=connectors, count=count)


@router.get("/{connector_id}", response_model=ConnectorPublic)
async def read(connector: ConnectorDep):
    return connector


@router.patch("/{connector_id}", response_model=ConnectorPublic)
async def update(connector: ConnectorDep, changes: ConnectorUpdate, caller: CallerDep):
    """Change any field; the deployment follows (reschedule, activate, deactivate)."""
    check_project_reference(caller, changes.project_id)
    return await update_connector(connector_id=connector.id, changes=changes, actor=caller.actor)


@router.post("/{connector_id}/trigger", response_model=TriggerResult)
async def trigger(connector: ConnectorDep, caller: CallerDep):
    """Run the connector now, bypassing its schedule."""
    flow_run_id = await trigger_connector(connector_id=connector.id, actor=caller.actor)
    return TriggerResult(flow_run_id=flow_run_id)


@router.delete("/{connector_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete(connector: ConnectorDep, caller: CallerDep) -> None:
    """Remove the connector, its deployment and its scheduled runs."""
    await delete_connector(connector_id=connector.id, actor=caller.actor)
