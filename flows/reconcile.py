"""The `reconcile-connectors` flow: make Prefect agree with the database again."""

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from control_plane import reconcile
from control_plane.audit import label_refused, label_run
from control_plane.db import session_scope
from flows.runs import record_unfinished

SCHEDULE_ACTOR = "schedule"


@flow(
    name="reconcile-connectors",
    persist_result=False,
    on_failure=[label_refused("reconcile connectors")],
)
async def reconcile_connectors(
    dry_run: bool = False, actor: str = SCHEDULE_ACTOR
) -> list[dict[str, str]]:
    """Compare every connector with Prefect's managed deployments and repair what differs.

    Missing deployments are created, differing ones patched in place (the schedule keeps its
    identity), orphans deleted with their scheduled runs, a few at a time, each under its
    connector's row lock; sync runs that ended unrecorded (a crash whose event was missed) are
    recorded in their connectors' status. With `dry_run`, only report the drift.
    """
    await label_run(actor=actor, name="reconcile connectors" + (" (dry run)" if dry_run else ""))
    async with session_scope() as session:
        drift = await reconcile.find_drift(session=session)
    logger = get_run_logger()
    for item in drift:
        logger.info("%s %s: %s", item.action, item.deployment, "; ".join(item.differences))
    if not dry_run:
        await reconcile.repair_all(drift)
        for flow_run_id, end in (await record_unfinished()).items():
            logger.info("sync run %s ended unrecorded: recorded as %s", flow_run_id, end)
    rows = [item.as_row() for item in drift]
    await create_table_artifact(
        key="reconcile-connectors",
        table=rows or [{"action": "none", "deployment": "", "connector": "", "differences": ""}],
        description=("Drift found" if dry_run else "Drift repaired") + f": {len(rows)}",
    )
    return rows
