"""Projects: the folders that connectors and their sources and destinations live in. Every
change is a control flow run (`flows.catalog`); reads and dry runs are plain."""

from fastapi import APIRouter, status

from control_plane import crud, notify
from control_plane.api.deps import (
    CallerDep,
    DryRun,
    NoDryRun,
    PageDep,
    ProjectDep,
    SessionDep,
    check_may_create_projects,
)
from control_plane.api.plans import PLANNED, plan_change, plan_create
from flows.catalog import create_catalog_entry, delete_catalog_entry, update_catalog_entry
from flows.freeze import freeze_project, unfreeze_project
from models import CatalogPlan, ProjectCreate, ProjectPublic, ProjectsPublic, ProjectUpdate
from models.base import saved_id
from models.catalog import FreezeRequest

router = APIRouter(prefix="/projects", tags=["projects"])


@router.post(
    "",
    operation_id="createProject",
    status_code=status.HTTP_201_CREATED,
    response_model=ProjectPublic,
    responses=PLANNED,
)
async def create_project(
    spec: ProjectCreate, session: SessionDep, caller: CallerDep, dry_run: DryRun = False
):
    check_may_create_projects(caller)
    if dry_run:
        await notify.check_channels(spec.notifications, field="notifications")
        return plan_create(await crud.new_project(session=session, spec=spec))
    return await create_catalog_entry(kind="project", spec=spec, actor=caller.actor)


@router.get("", operation_id="listProjects", response_model=ProjectsPublic)
async def list_projects(session: SessionDep, page: PageDep, caller: CallerDep):
    projects, count = await crud.list_projects(
        session=session, project_ids=caller.projects, limit=page.limit, offset=page.offset
    )
    return ProjectsPublic(data=[ProjectPublic.model_validate(p) for p in projects], count=count)


@router.get("/{project_id}", operation_id="readProject", response_model=ProjectPublic)
async def read_project(project: ProjectDep):
    return project


# One status for both answers: the schema says either.
@router.patch(
    "/{project_id}", operation_id="updateProject", response_model=ProjectPublic | CatalogPlan
)
async def update_project(
    project: ProjectDep,
    changes: ProjectUpdate,
    session: SessionDep,
    caller: CallerDep,
    dry_run: DryRun = False,
):
    if dry_run:
        await notify.check_channels(changes.notifications, field="notifications")
        return await plan_change(
            session,
            action="update",
            row=project,
            change=lambda: crud.update_project(session=session, project=project, changes=changes),
        )
    return await update_catalog_entry(
        kind="project", entry_id=saved_id(project), changes=changes, actor=caller.actor
    )


@router.delete(
    "/{project_id}",
    operation_id="deleteProject",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=PLANNED,
)
async def delete_project(
    project: ProjectDep, session: SessionDep, caller: CallerDep, dry_run: DryRun = False
):
    if dry_run:
        return await plan_change(
            session,
            action="delete",
            row=project,
            change=lambda: crud.delete_project(session=session, project=project),
        )
    await delete_catalog_entry(kind="project", entry_id=saved_id(project), actor=caller.actor)


@router.post(
    "/{project_id}/freeze",
    operation_id="freezeProject",
    response_model=ProjectPublic,
    dependencies=[NoDryRun],
)
async def freeze(project: ProjectDep, request: FreezeRequest, caller: CallerDep):
    """Freeze the project with a reason and an optional end: its connectors' scheduled runs
    stop (their deployments are paused) and their triggers answer 409 with the reason, until
    `until` or an unfreeze. Freezing a frozen project sets its reason and end anew."""
    return await freeze_project(
        project_id=saved_id(project), reason=request.reason, until=request.until, actor=caller.actor
    )


@router.post(
    "/{project_id}/unfreeze",
    operation_id="unfreezeProject",
    response_model=ProjectPublic,
    dependencies=[NoDryRun],
)
async def unfreeze(project: ProjectDep, caller: CallerDep):
    """End the project's freeze now; its connectors run on their schedules again."""
    return await unfreeze_project(project_id=saved_id(project), actor=caller.actor)
