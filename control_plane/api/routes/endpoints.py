"""Defined sources and defined destinations: one router shape, built for each kind."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from control_plane import crud
from control_plane.api.deps import PageDep, SessionDep
from control_plane.connectors import Kind, registered_types
from models import (
    EndpointCreate,
    EndpointPublic,
    EndpointsPublic,
    EndpointUpdate,
    TypePublic,
    TypesPublic,
)

ProjectFilter = Annotated[int | None, Query(alias="projectId", description="Only this project's.")]


def endpoint_router(kind: Kind) -> APIRouter:
    """CRUD routes of the defined sources or the defined destinations."""
    router = APIRouter(prefix=f"/defined-{kind}s", tags=[f"defined {kind}s"])

    @router.post("", status_code=status.HTTP_201_CREATED, response_model=EndpointPublic)
    async def create(spec: EndpointCreate, session: SessionDep):
        endpoint = await crud.create_endpoint(session=session, kind=kind, spec=spec)
        await session.commit()
        return endpoint

    @router.get("", response_model=EndpointsPublic)
    async def list_all(session: SessionDep, page: PageDep, project_id: ProjectFilter = None):
        endpoints, count = await crud.list_endpoints(
            session=session, kind=kind, project_id=project_id, limit=page.limit, offset=page.offset
        )
        return EndpointsPublic(data=endpoints, count=count)

    @router.get("/{endpoint_id}", response_model=EndpointPublic)
    async def read(endpoint_id: int, session: SessionDep):
        return await crud.get_endpoint(session=session, kind=kind, endpoint_id=endpoint_id)

    @router.patch("/{endpoint_id}", response_model=EndpointPublic)
    async def update(endpoint_id: int, changes: EndpointUpdate, session: SessionDep):
        endpoint = await crud.get_endpoint(session=session, kind=kind, endpoint_id=endpoint_id)
        await crud.update_endpoint(session=session, kind=kind, endpoint=endpoint, changes=changes)
        await session.commit()
        return endpoint

    @router.delete("/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT)
    async def delete(endpoint_id: int, session: SessionDep) -> None:
        endpoint = await crud.get_endpoint(session=session, kind=kind, endpoint_id=endpoint_id)
        await crud.delete_endpoint(session=session, kind=kind, endpoint=endpoint)
        await session.commit()

    return router


types_router = APIRouter(prefix="/types", tags=["types"])


@types_router.get("", response_model=TypesPublic)
async def list_types():
    """Every registered source and destination type with the JSON schema of its config."""
    return TypesPublic(
        data=[
            TypePublic(
                kind=kind, type=name, config_schema=t.Config.model_json_schema(by_alias=True)
            )
            for (kind, name), t in sorted(registered_types().items())
        ]
    )
