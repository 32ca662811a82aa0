"""The `freeze-project` and `unfreeze-project` flows: a project's freeze stops every one of its
connectors at once (their deployments paused, their triggers and runs refused), with a reason
and an optional end, at which a scheduled `unfreeze-project` run ends it.

The project's row is the truth and is committed first: from then on no trigger or run of its
connectors goes ahead (`control_plane.sync.refusal`), whatever their deployments say. Then each
active connector's deployment is paused (or unpaused) under its own lock; if Prefect fails
half-way, the run fails saying so, and reconcile brings the rest in line.
"""

from dataclasses import replace
from datetime import datetime

from prefect import flow, get_run_logger

from control_plane import bootstrap, catalog, crud, deployments, events
from control_plane.audit import label_refused, label_run, publish_changes
from control_plane.db import session_scope, write_lock
from control_plane.errors import DeploymentMissing, NotFound, Unavailable
from control_plane.runs import connector_tag
from flows.lifecycle import SCHEDULE_ACTOR, UI_ACTOR
from models import ProjectPublic
from models.base import as_utc, saved_id, utcnow


async def _follow(project_id: int) -> list[int]:
    """Pause or unpause the project's active connectors' deployments as its freeze now says
    (a connector paused by itself stays paused); returns the connectors whose deployment was
    patched. Each under its connector's lock, not the project's: on SQLite they are one."""
    async with session_scope() as session:
        connectors = await crud.select_connectors(
            session=session, ids=None, project_id=project_id, labels=[], project_ids=None
        )
    changed = []
    for connector_id in [saved_id(c) for c in connectors if c.is_active]:
        async with write_lock(connector_tag(connector_id)), session_scope() as session:
            try:
                connector = await crud.get_connector(
                    session=session, connector_id=connector_id, for_update=True
                )
            except NotFound:
                continue
            if not connector.is_active:
                continue
            context = await crud.context_of(session=session, connector=connector)
            after = deployments.desired(connector, context)
            # As if the freeze were the other way: the patch sets what the project says now.
            flipped = replace(context, project_frozen=not context.project_frozen)
            before = deployments.desired(connector, flipped)
            if before == after:
                continue
            connector.prefect_deployment_id = await deployments.apply(
                connector.prefect_deployment_id, before, after
            )
            await session.commit()
            changed.append(connector_id)
    return changed


async def _set_freeze(
    project_id: int, reason: str | None, until: datetime | None, actor: str, action: str
) -> ProjectPublic:
    """Store the project's freeze (reason None: none), then have its connectors follow."""
    async with write_lock(f"catalog:project:{project_id}"), session_scope() as session:
        project = await crud.get_project(session=session, project_id=project_id)
        before = catalog.seen(project)
        project.freeze_reason, project.frozen_until = reason, until
        project.updated_at = utcnow()
        await session.commit()
    followed = await _follow(project_id)
    logger = get_run_logger()
    logger.info("project %s: deployments of connectors %s follow", project_id, followed or "none")
    changes = await publish_changes(catalog.changes(before, catalog.seen(project)))
    events.emit_entry(
        "project",
        action,
        project_id,
        project.name,
        project_id=project_id,
        actor=actor,
        changes=changes,
    )
    if until is not None:
        try:
            await bootstrap.run_control_later(
                unfreeze_project.name,
                {"project_id": project_id, "frozen_until": as_utc(until).isoformat()},
                at=until,
                idempotency_key=f"unfreeze:{project_id}:{as_utc(until).isoformat()}",
            )
        except (Unavailable, DeploymentMissing) as error:
            logger.warning("its end was not scheduled (%s): reconcile ends it", error)
    return ProjectPublic.model_validate(project)


@flow(name="freeze-project", persist_result=False, on_failure=[label_refused("freeze project")])
async def freeze_project(
    project_id: int, reason: str, until: datetime | None = None, actor: str = UI_ACTOR
) -> ProjectPublic:
    """Freeze the project: its connectors' scheduled runs stop and their triggers are refused,
    with the reason, until `until` (None: until someone unfreezes it)."""
    end = f" until {as_utc(until):%Y-%m-%d %H:%M:%S} UTC" if until else ""
    await label_run(actor=actor, name=f"freeze project {project_id}{end}: {reason}")
    return await _set_freeze(project_id, reason, until, actor, "frozen")


@flow(name="unfreeze-project", persist_result=False, on_failure=[label_refused("unfreeze project")])
async def unfreeze_project(
    project_id: int, frozen_until: datetime | None = None, actor: str = SCHEDULE_ACTOR
) -> ProjectPublic:
    """End the project's freeze. With `frozen_until` (as a freeze schedules its end), only the
    freeze that was to end then: one changed or ended since is left as it is."""
    await label_run(actor=actor, name=f"unfreeze project {project_id}")
    if frozen_until is not None:
        async with session_scope() as session:
            project = await crud.get_project(session=session, project_id=project_id)
        ends = as_utc(project.frozen_until) if project.frozen_until else None
        if project.freeze_reason is None or ends != as_utc(frozen_until):
            get_run_logger().info("project %s: no such freeze to end", project_id)
            return ProjectPublic.model_validate(project)
    return await _set_freeze(project_id, None, None, actor, "unfrozen")


__all__ = ["freeze_project", "unfreeze_project"]
