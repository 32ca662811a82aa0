"""The catalog's writes as control flows: creating, changing or deleting a project, a defined
source or a defined destination is one run of one of these, in the audit log like a
connector's change.

Each labels its run first (`create defined source 'orders-db'`, `update project 3`), commits,
then publishes what it changed, before and after with secrets masked, as the run's artifact and
as a `project.*`, `defined-source.*` or `defined-destination.*` event (`control_plane.events`).
A refused change (404, 409, 422) is a Failed run with what was asked and why.
"""

from prefect import flow, get_run_logger
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane import catalog, crud, deployments, events, notify
from control_plane.audit import label_refused, label_run, publish_changes
from control_plane.db import session_scope, write_lock
from control_plane.errors import Unavailable
from flows.lifecycle import UI_ACTOR
from models import (
    DefinedDestination,
    EndpointCreate,
    EndpointPublic,
    EndpointUpdate,
    Project,
    ProjectCreate,
    ProjectPublic,
    ProjectUpdate,
)
from models.plan import CATALOG_NAMES, CatalogKind


async def _get(session: AsyncSession, kind: CatalogKind, entry_id: int) -> catalog.Row:
    if kind == "project":
        return await crud.get_project(session=session, project_id=entry_id)
    return await crud.get_endpoint(session=session, kind=kind, endpoint_id=entry_id)


async def _publish(
    action: str, row: catalog.Row, before: catalog.Seen, after: catalog.Seen, actor: str
) -> None:
    changes = await publish_changes(catalog.changes(before, after))
    assert row.id is not None
    events.emit_entry(
        catalog.kind_of(row),
        action,
        row.id,
        row.name,
        project_id=row.id if isinstance(row, Project) else row.project_id,
        actor=actor,
        changes=changes,
    )


@flow(
    name="create-catalog-entry",
    persist_result=False,
    on_failure=[label_refused("create catalog entry")],
)
async def create_catalog_entry(
    kind: CatalogKind, spec: ProjectCreate | EndpointCreate, actor: str = UI_ACTOR
) -> ProjectPublic | EndpointPublic:
    """Store a new project, defined source or defined destination."""
    await label_run(actor=actor, name=f"create {CATALOG_NAMES[kind]} {spec.name!r}")
    if isinstance(spec, ProjectCreate):
        await notify.check_channels(spec.notifications, field="notifications")
    async with write_lock(f"catalog:{kind}"), session_scope() as session:
        if isinstance(spec, ProjectCreate):
            row: catalog.Row = await crud.create_project(session=session, spec=spec)
        else:
            assert kind != "project"
            row = await crud.create_endpoint(session=session, kind=kind, spec=spec)
            if isinstance(row, DefinedDestination):
                assert row.id is not None
                await deployments.limit_destination(row.id, row.max_concurrent_runs)
        await session.commit()
    await _publish("created", row, catalog.seen(None), catalog.seen(row), actor)
    return catalog.public(row)


@flow(
    name="update-catalog-entry",
    persist_result=False,
    on_failure=[label_refused("update catalog entry")],
)
async def update_catalog_entry(
    kind: CatalogKind,
    entry_id: int,
    changes: ProjectUpdate | EndpointUpdate,
    actor: str = UI_ACTOR,
) -> ProjectPublic | EndpointPublic:
    """Change fields of a project, defined source or defined destination; the connectors that
    use a source or destination read the change on their next run. A destination's
    `max_concurrent_runs` is its work queue's concurrency limit in Prefect, set before the
    commit."""
    await label_run(actor=actor, name=f"update {CATALOG_NAMES[kind]} {entry_id}")
    if isinstance(changes, ProjectUpdate):
        await notify.check_channels(changes.notifications, field="notifications")
    async with write_lock(f"catalog:{kind}:{entry_id}"), session_scope() as session:
        row = await _get(session, kind, entry_id)
        before = catalog.seen(row)
        if isinstance(row, Project):
            assert isinstance(changes, ProjectUpdate)
            await crud.update_project(session=session, project=row, changes=changes)
        else:
            assert isinstance(changes, EndpointUpdate) and kind != "project"
            await crud.update_endpoint(session=session, kind=kind, endpoint=row, changes=changes)
            if (
                isinstance(row, DefinedDestination)
                and "max_concurrent_runs" in changes.model_fields_set
            ):
                await deployments.limit_destination(entry_id, row.max_concurrent_runs)
        await session.commit()
    await _publish("updated", row, before, catalog.seen(row), actor)
    return catalog.public(row)


@flow(
    name="delete-catalog-entry",
    persist_result=False,
    on_failure=[label_refused("delete catalog entry")],
)
async def delete_catalog_entry(kind: CatalogKind, entry_id: int, actor: str = UI_ACTOR) -> None:
    """Remove a project, defined source or defined destination no connector uses (409 while
    one does, naming them)."""
    await label_run(actor=actor, name=f"delete {CATALOG_NAMES[kind]} {entry_id}")
    async with write_lock(f"catalog:{kind}:{entry_id}"), session_scope() as session:
        row = await _get(session, kind, entry_id)
        before = catalog.seen(row)
        if isinstance(row, Project):
            await crud.delete_project(session=session, project=row)
        else:
            assert kind != "project"
            await crud.delete_endpoint(session=session, kind=kind, endpoint=row)
        await session.commit()
    if isinstance(row, DefinedDestination):
        try:
            await deployments.remove_destination_queue(entry_id)
        except Unavailable as error:
            get_run_logger().warning("its work queue stays, unused (%s)", error)
    await _publish("deleted", row, before, catalog.seen(None), actor)
