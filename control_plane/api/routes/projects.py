"""Projects: the folders that connectors and their sources and destinations live in."""

from fastapi import APIRouter, status

from control_plane import crud
from control_plane.api.deps import (
    CallerDep,
    PageDep,
    ProjectDep,
    SessionDep,
    check_may_create_projects,
)
from models import ProjectCreate, ProjectPublic, ProjectsPublic, ProjectUpdate

router = APIRouter(prefix="/projects", tags=["projects"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ProjectPublic)
async def create_project(spec: ProjectCreate, session: SessionDep, caller: CallerDep):
    check_may_create_projects(caller)
    project = await crud.create_project(session=session, spec=spec)
    await session.commit()
    return project


@router.get("", response_model=ProjectsPublic)
async def list_projects(session: SessionDep, page: PageDep, caller: CallerDep):
    projects, count = await crud.list_projects(
        session=session, project_ids=caller.projects, limit=page.limit, offset=page.offset
    )
    return ProjectsPublic(data=projects, count=count)


@router.get("/{project_id}", response_model=ProjectPublic)
async def read_project(project: ProjectDep):
    return project


@router.patch("/{project_id}", response_model=ProjectPublic)
async def update_project(project: ProjectDep, changes: ProjectUpdate, session: SessionDep):
    await crud.update_project(session=session, project=project, changes=changes)
    await session.commit()
    return project


@router.delete("/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_project(project: ProjectDep, session: SessionDep) -> None:
    await crud.delete_project(session=session, project=project)
    await session.commit()
