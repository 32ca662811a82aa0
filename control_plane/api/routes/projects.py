"""Projects: the folders that connectors and their sources and destinations live in."""

from fastapi import APIRouter, status

from control_plane import crud
from control_plane.api.deps import PageDep, SessionDep
from models import ProjectCreate, ProjectPublic, ProjectsPublic, ProjectUpdate

router = APIRouter(prefix="/projects", tags=["projects"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ProjectPublic)
async def create_project(spec: ProjectCreate, session: SessionDep):
    project = await crud.create_project(session=session, spec=spec)
    await session.commit()
    return project


@router.get("", response_model=ProjectsPublic)
async def list_projects(session: SessionDep, page: PageDep):
    projects, count = await crud.list_projects(
        session=session, limit=page.limit, offset=page.offset
    )
    return ProjectsPublic(data=projects, count=count)


@router.get("/{project_id}", response_model=ProjectPublic)
async def read_project(project_id: int, session: SessionDep):
    return await crud.get_project(session=session, project_id=project_id)


@router.patch("/{project_id}", response_model=ProjectPublic)
async def update_project(project_id: int, changes: ProjectUpdate, session: SessionDep):
    project = await crud.get_project(session=session, project_id=project_id)
    await crud.update_project(session=session, project=project, changes=changes)
    await session.commit()
    return project


@router.delete("/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_project(project_id: int, session: SessionDep) -> None:
    project = await crud.get_project(session=session, project_id=project_id)
    await crud.delete_project(session=session, project=project)
    await session.commit()
