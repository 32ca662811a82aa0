"""The `mark-connector-stale` flow: what a freshness automation runs when a connector's window
ran out without a successful run (`control_plane.freshness`)."""

from prefect import flow, get_run_logger

from control_plane import crud, events, freshness
from control_plane.audit import label_refused, label_run
from control_plane.db import session_scope, write_lock
from control_plane.errors import NotFound
from control_plane.runs import connector_tag
from control_plane.sync import refusal
from models.base import as_utc, utcnow


@flow(
    name=freshness.MARK_STALE_FLOW,
    persist_result=False,
    on_failure=[label_refused("check the freshness of connector")],
)
async def mark_connector_stale(connector_id: int, actor: str = "automation") -> str:
    """Mark the connector stale if it has had no successful run (since it was created) for
    longer than its window, and say so once with `connector.stale`. A connector that may not
    run now (inactive, paused, its project frozen), has no window, is stale already or ran
    well meanwhile is left as it is."""
    await label_run(
        actor=actor,
        name=f"check the freshness of connector {connector_id}",
        connector_id=connector_id,
    )
    logger = get_run_logger()
    async with write_lock(connector_tag(connector_id)), session_scope() as session:
        try:
            connector = await crud.get_connector(
                session=session, connector_id=connector_id, for_update=True
            )
        except NotFound:
            return "gone"
        length = freshness.window(connector)
        if length is None or connector.stale_since is not None:
            return "not watched" if length is None else "stale already"
        if refused := await refusal(session=session, connector=connector):
            logger.info("not stale: %s", refused)
            return "not running"
        last = as_utc(connector.last_success_at or connector.created_at)
        if last + length > utcnow():
            return "fresh"
        connector.stale_since = last + length
        await session.commit()
        routes = await crud.notification_routes(session=session, connector=connector)
    logger.info("connector %s is stale since %s", connector_id, connector.stale_since)
    events.emit(
        events.STALE,
        connector,
        actor=actor,
        reason=f"no successful run for {length} (maxStaleness)",
        routes=routes,
        staleSince=connector.stale_since.isoformat(),
        lastSuccessAt=connector.last_success_at and as_utc(connector.last_success_at).isoformat(),
        maxStalenessSeconds=int(length.total_seconds()),
    )
    return "stale"


__all__ = ["mark_connector_stale"]
