"""Dependencies that carry the checks every route shares: session, caller, visible rows."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane import crud
from control_plane.api.auth import Caller, bearer, caller_of
from control_plane.db import session_scope
from control_plane.errors import Forbidden, InvalidInput, NotFound
from models import Connector, Project
from models.base import MAX_INT, Id


async def get_session() -> AsyncIterator[AsyncSession]:
    async with session_scope() as session:
        yield session


async def current_caller(request: Request) -> Caller:
    """Who is calling; every /api/v1 route depends on it, so auth guards them all."""
    # Read here, not as a dependency, so the OpenAPI document declares bearer auth only when it
    # is on (`create_app` adds the scheme then).
    return caller_of(request, await bearer(request))


class Page:
    """`limit` and `offset` query parameters of every list."""

    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=1000, description="Most items to return.")] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_INT, description="Items to skip.")] = 0,
    ) -> None:
        self.limit = limit
        self.offset = offset


SessionDep = Annotated[AsyncSession, Depends(get_session)]
CallerDep = Annotated[Caller, Depends(current_caller)]
PageDep = Annotated[Page, Depends()]
DryRun = Annotated[
    bool,
    Query(
        alias="dryRun",
        description="Answer 200 with what the change would do, and change nothing.",
    ),
]


def no_dry_run(
    dry_run: Annotated[bool | None, Query(alias="dryRun", include_in_schema=False)] = None,
) -> None:
    """For the actions that have no plan (trigger, reset, cancel): a client asking for a dry
    run gets a 422, not the real action. Not in the OpenAPI document: nothing to offer there."""
    if dry_run is not None:
        message = "this action has no dry run; leave dryRun out to do it"
        raise RequestValidationError(
            [{"loc": ("query", "dryRun"), "msg": message, "type": "value_error"}]
        )


NoDryRun = Depends(no_dry_run)


def check_project_reference(caller: Caller, project_id: int | None) -> None:
    """A body's `projectId` outside the caller's projects is as unknown as a missing one."""
    if project_id is not None and not caller.sees(project_id):
        raise InvalidInput("project_id", f"project {project_id} does not exist")


def check_may_create_projects(caller: Caller) -> None:
    if caller.projects is not None:
        raise Forbidden("a token limited to some projects cannot create projects")


async def visible_project(
    project_id: Annotated[Id, Path(title="Project ID")], caller: CallerDep
) -> Project:
    # A session of its own, as for a connector (below).
    async with session_scope() as session:
        project = await crud.get_project(session=session, project_id=project_id)
    if not caller.sees(project_id):
        raise NotFound(f"project {project_id} does not exist")
    return project


async def visible_connector(
    connector_id: Annotated[Id, Path(title="Connector ID")], caller: CallerDep
) -> Connector:
    # A session of its own, closed at once: a change then waits in its control flow, which
    # opens another, so a request never holds two connections.
    async with session_scope() as session:
        connector = await crud.get_connector(session=session, connector_id=connector_id)
    if not caller.sees(connector.project_id):
        raise NotFound(f"connector {connector_id} does not exist")
    return connector


ProjectDep = Annotated[Project, Depends(visible_project)]
ConnectorDep = Annotated[Connector, Depends(visible_connector)]
