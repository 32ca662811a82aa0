"""Defined sources and defined destinations: one router shape, built for each kind. Every
change is a control flow run (`flows.catalog`); reads and dry runs are plain."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, status

from control_plane import checks, crud
from control_plane.api.deps import (
    CallerDep,
    DryRun,
    NoDryRun,
    PageDep,
    SessionDep,
    check_project_reference,
)
from control_plane.api.plans import PLANNED, plan_change, plan_create
from control_plane.connectors import Kind, registered_types
from control_plane.crud import Endpoint
from control_plane.db import session_scope
from control_plane.errors import NotFound
from control_plane.public import endpoint_public
from flows.catalog import create_catalog_entry, delete_catalog_entry, update_catalog_entry
from models import (
    CatalogPlan,
    EndpointCreate,
    EndpointPublic,
    EndpointsPublic,
    EndpointUpdate,
    TypePublic,
    TypesPublic,
)
from models.base import Id, saved_id
from models.check import CheckPublic, EndpointCheckRequest, StreamPublic, StreamsPublic

ProjectFilter = Annotated[Id | None, Query(alias="projectId", description="Only this project's.")]


def endpoint_router(kind: Kind) -> APIRouter:
    """CRUD routes of the defined sources or the defined destinations."""
    router = APIRouter(prefix=f"/defined-{kind}s", tags=[f"defined {kind}s"])
    noun = f"Defined{kind.title()}"  # in the operations' ids: createDefinedSource, ...

    async def visible_endpoint(
        endpoint_id: Annotated[Id, Path(title=f"Defined {kind} ID")], caller: CallerDep
    ):
        # A session of its own, closed at once: a change waits in its control flow, which
        # opens another, so a request never holds two connections.
        async with session_scope() as session:
            endpoint = await crud.get_endpoint(session=session, kind=kind, endpoint_id=endpoint_id)
        if not caller.sees(endpoint.project_id):
            raise NotFound(f"defined {kind} {endpoint_id} does not exist")
        return endpoint

    EndpointDep = Annotated[Endpoint, Depends(visible_endpoint)]

    @router.post(
        "",
        operation_id=f"create{noun}",
        status_code=status.HTTP_201_CREATED,
        response_model=EndpointPublic,
        responses=PLANNED,
    )
    async def create(
        spec: EndpointCreate, session: SessionDep, caller: CallerDep, dry_run: DryRun = False
    ):
        check_project_reference(caller, spec.project_id)
        if dry_run:
            return plan_create(await crud.new_endpoint(session=session, kind=kind, spec=spec))
        return await create_catalog_entry(kind=kind, spec=spec, actor=caller.actor)

    @router.post(
        "/check",
        operation_id=f"check{noun}Config",
        response_model=CheckPublic,
        dependencies=[NoDryRun],
    )
    async def check_unsaved(request: EndpointCheckRequest, caller: CallerDep):
        """Check a config before saving it, step by step on a worker of the connectors' work
        pool, as a `check-connector` run. 200 with the result, passed or failed."""
        check_project_reference(caller, request.project_id)
        async with session_scope() as session:
            await crud.referenced_project(session, request.project_id)
        config = checks.unsaved(request.config, "config")
        checked = await checks.run_check(
            project_id=request.project_id,
            subject=f"an unsaved defined {kind} of project {request.project_id}",
            target=checks.endpoint_target(kind, request.type, config),
            actor=caller.actor,
        )
        return CheckPublic.model_validate(checked)

    @router.post(
        "/{endpoint_id}/check",
        operation_id=f"check{noun}",
        response_model=CheckPublic,
        dependencies=[NoDryRun],
    )
    async def check(endpoint: EndpointDep, caller: CallerDep):
        """Check the saved config (resolve, connect, authenticate, then read a sample or try
        the write permissions), on a worker of the connectors' work pool, as a
        `check-connector` run. 200 with the result, passed or failed."""
        checked = await checks.run_check(
            project_id=endpoint.project_id,
            subject=f"defined {kind} {endpoint.id}",
            target=checks.endpoint_target(kind, endpoint.type, endpoint.config),
            actor=caller.actor,
        )
        return CheckPublic.model_validate(checked)

    if kind == "source":

        @router.get(
            "/{endpoint_id}/streams",
            operation_id=f"list{noun}Streams",
            response_model=StreamsPublic,
        )
        async def streams(endpoint: EndpointDep, caller: CallerDep):
            """What the source holds, each stream with the JSON schema of its records, its key
            and cursor candidates: a database's tables and views from its catalog, a file's or
            an API's records as a sample of them shows. A check with one more step, run on a
            worker of the connectors' work pool; `check` says why when it failed."""
            checked = await checks.run_check(
                project_id=endpoint.project_id,
                subject=f"defined source {endpoint.id}",
                target=checks.endpoint_target(kind, endpoint.type, endpoint.config),
                actor=caller.actor,
                discover=True,
            )
            return StreamsPublic(
                streams=[StreamPublic.model_validate(s) for s in checked.streams or []],
                check=CheckPublic.model_validate(checked),
            )

    @router.get("", operation_id=f"list{noun}s", response_model=EndpointsPublic)
    async def list_all(
        session: SessionDep, page: PageDep, caller: CallerDep, project_id: ProjectFilter = None
    ):
        endpoints, count = await crud.list_endpoints(
            session=session,
            kind=kind,
            project_id=project_id,
            project_ids=caller.projects,
            limit=page.limit,
            offset=page.offset,
        )
        return EndpointsPublic(data=[endpoint_public(kind, e) for e in endpoints], count=count)

    @router.get("/{endpoint_id}", operation_id=f"read{noun}", response_model=EndpointPublic)
    async def read(endpoint: EndpointDep):
        return endpoint_public(kind, endpoint)

    # One status for both answers: the schema says either.
    @router.patch(
        "/{endpoint_id}", operation_id=f"update{noun}", response_model=EndpointPublic | CatalogPlan
    )
    async def update(
        endpoint: EndpointDep,
        changes: EndpointUpdate,
        session: SessionDep,
        caller: CallerDep,
        dry_run: DryRun = False,
    ):
        if dry_run:
            return await plan_change(
                session,
                action="update",
                row=endpoint,
                change=lambda: crud.update_endpoint(
                    session=session, kind=kind, endpoint=endpoint, changes=changes
                ),
            )
        return await update_catalog_entry(
            kind=kind, entry_id=saved_id(endpoint), changes=changes, actor=caller.actor
        )

    @router.delete(
        "/{endpoint_id}",
        operation_id=f"delete{noun}",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=PLANNED,
    )
    async def delete(
        endpoint: EndpointDep, session: SessionDep, caller: CallerDep, dry_run: DryRun = False
    ):
        if dry_run:
            return await plan_change(
                session,
                action="delete",
                row=endpoint,
                change=lambda: crud.delete_endpoint(session=session, kind=kind, endpoint=endpoint),
            )
        await delete_catalog_entry(kind=kind, entry_id=saved_id(endpoint), actor=caller.actor)

    return router


types_router = APIRouter(prefix="/types", tags=["types"])


@types_router.get("", operation_id="listTypes", response_model=TypesPublic)
async def list_types():
    """Every registered source and destination type with the JSON schema of its config."""
    return TypesPublic(
        data=[
            TypePublic(kind=kind, type=name, config_schema=cls.Config.model_json_schema())
            for (kind, name), cls in sorted(registered_types().items())
        ]
    )
