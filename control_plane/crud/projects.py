"""Projects: their names, their freezes, and what keeps one from being deleted."""

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane.crud._common import (
    ENDPOINT_TABLES,
    Endpoint,
    _connectors_where,
    _names,
    _page,
    _touch,
)
from control_plane.errors import Conflict, InvalidInput, NotFound
from models import Connector, Project, ProjectCreate, ProjectUpdate


async def get_project(*, session: AsyncSession, project_id: int) -> Project:
    project = await session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    return project


async def referenced_project(session: AsyncSession, project_id: int) -> None:
    """A 422 naming `project_id` when a body's project does not exist."""
    if await session.get(Project, project_id) is None:
        raise InvalidInput("project_id", f"project {project_id} does not exist")


async def list_projects(
    *, session: AsyncSession, project_ids: frozenset[int] | None, limit: int, offset: int
) -> tuple[Sequence[Project], int]:
    query = select(Project).order_by(col(Project.id))
    if project_ids is not None:
        query = query.where(col(Project.id).in_(project_ids))
    return await _page(session, query, limit=limit, offset=offset)


async def _check_project_name(session: AsyncSession, name: str) -> None:
    if await session.scalar(select(Project.id).where(Project.name == name)):
        raise Conflict(f"a project named {name!r} exists already")


async def new_project(*, session: AsyncSession, spec: ProjectCreate) -> Project:
    """The project the spec makes, checked, not added: it has no id yet."""
    await _check_project_name(session, spec.name)
    return Project.model_validate(spec)


async def overdue_freezes(*, session: AsyncSession, before: datetime) -> Sequence[Project]:
    """The projects whose freeze was to end before `before` and still stands."""
    query = select(Project).where(col(Project.frozen_until) < before).order_by(col(Project.id))
    return (await session.exec(query)).all()


async def create_project(*, session: AsyncSession, spec: ProjectCreate) -> Project:
    project = await new_project(session=session, spec=spec)
    session.add(project)
    await session.flush()
    return project


async def update_project(
    *, session: AsyncSession, project: Project, changes: ProjectUpdate
) -> Project:
    values = changes.model_dump(exclude_unset=True)
    if values.get("name", project.name) != project.name:
        await _check_project_name(session, values["name"])
    _touch(project, values)
    await session.flush()
    return project


async def delete_project(*, session: AsyncSession, project: Project) -> None:
    users = await _connectors_where(session, Connector.project_id == project.id)
    if users:
        raise Conflict(f"project {project.id} still has connectors: {_names(users)}")
    for kind, table in ENDPOINT_TABLES.items():
        found = await session.exec(select(table).where(table.project_id == project.id))
        # mypy types select() of either table as of their base, which has no id.
        endpoints = cast(Sequence[Endpoint], found.all())
        if endpoints:
            names = ", ".join(f"{e.id} ({e.name!r})" for e in endpoints)
            raise Conflict(f"project {project.id} still has defined {kind}s: {names}")
    await session.delete(project)
    await session.flush()
