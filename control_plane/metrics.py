"""Prometheus metrics of an API process, served at `/metrics`.

Counted as they happen: the process's HTTP requests (latency by route, method and status) and
the control flow runs it ran (by flow and final state). Read when scraped: what the database
holds (connectors by status, sync runs by outcome, records they moved) and Prefect's latest
reconcile pass (its repairs), so any API process answers for the whole control plane, whichever
worker ran the syncs and the reconcile.
"""

import json
import logging
import sys
from collections import Counter as Tally
from typing import Any

from prefect import Flow
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.objects import FlowRun, State
from prefect.client.schemas.sorting import ArtifactSort
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import case, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane import logs
from control_plane.errors import Unavailable
from control_plane.orchestrator import prefect_client
from control_plane.reconcile import REPAIRED, REPAIRS_ARTIFACT
from models import Connector, SyncRun
from models.base import utcnow

# Reconcile passes looked at for the latest that repaired: dry runs in between are skipped.
_PASSES_READ = 10
logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()  # the process's own: none of Prefect's client metrics in it
REQUEST_SECONDS = Histogram(
    "control_plane_http_request_duration_seconds",
    "Time to answer an API request, by route template, method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
CONTROL_FLOW_RUNS = Counter(
    "control_plane_control_flow_runs",
    "Control flow runs this process ran, by flow and final state.",
    ["flow", "state"],
    registry=REGISTRY,
)
CONNECTORS = Gauge(
    "control_plane_connectors",
    "Connectors by status: active (and not paused), paused, inactive.",
    ["status"],
    registry=REGISTRY,
)
SYNC_RUNS = Gauge(
    "control_plane_sync_runs",
    "Sync runs recorded in the database, by outcome: running, completed, failed.",
    ["outcome"],
    registry=REGISTRY,
)
RECORDS = Gauge(
    "control_plane_sync_records",
    "Records the recorded sync runs read and wrote, by direction.",
    ["direction"],
    registry=REGISTRY,
)
REPAIRS = Gauge(
    "control_plane_reconcile_last_pass_repairs",
    "Repairs of the latest reconcile pass, by action (create, update, delete, relink).",
    ["action"],
    registry=REGISTRY,
)
LAST_PASS = Gauge(
    "control_plane_reconcile_last_pass_timestamp_seconds",
    "When the latest reconcile pass published its repairs (Unix time); 0: none yet.",
    registry=REGISTRY,
)


async def count_flow_run(flow: Flow[..., Any], flow_run: FlowRun, state: State) -> None:
    """A flow run hook (`on_completion`, `on_failure`, `on_crashed`, `on_cancellation`): the
    run is counted, and the request that ran it logs its id on its remaining lines."""
    CONTROL_FLOW_RUNS.labels(flow.name, state.type.value).inc()
    logs.note_flow_run(flow_run.id)


class _HookLinesLeftOut(logging.Filter):
    """Prefect's engine logs two lines about each hook it runs, into the run's own log: those
    about `count_flow_run`, this process's bookkeeping, stay out of the runs' audit log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{count_flow_run.__name__!r}" not in record.getMessage()


# One instance: a logger adds a filter once, so instrumenting again adds none.
_HOOK_LINES_LEFT_OUT = _HookLinesLeftOut()


def instrument(package: str) -> None:
    """Count the runs of the flows this process runs, as they end: those of the modules of
    `package` imported so far (the API's routes import the flows they run). Idempotent."""
    logging.getLogger("prefect.flow_runs").addFilter(_HOOK_LINES_LEFT_OUT)
    for name, module in list(sys.modules.items()):
        if not name.startswith(f"{package}."):
            continue
        for flow in (value for value in vars(module).values() if isinstance(value, Flow)):
            for hooks in (
                flow.on_completion_hooks,
                flow.on_failure_hooks,
                flow.on_crashed_hooks,
                flow.on_cancellation_hooks,
            ):
                if count_flow_run not in hooks:
                    hooks.append(count_flow_run)


async def render(session: AsyncSession) -> bytes:
    """The metrics in Prometheus' text format, the stored state read now."""
    now = utcnow()
    paused = col(Connector.paused_until) > now
    status = case((~col(Connector.is_active), "inactive"), (paused, "paused"), else_="active")
    rows = await session.exec(select(status, func.count()).group_by(status))
    by_status = dict.fromkeys(("active", "paused", "inactive"), 0) | dict(rows.all())
    for name, count in by_status.items():
        CONNECTORS.labels(name).set(count)
    outcome = case(
        (col(SyncRun.ended_at).is_(None), "running"),
        (col(SyncRun.error).is_(None), "completed"),
        else_="failed",
    )
    runs = await session.exec(
        select(
            outcome,
            func.count(),
            func.coalesce(func.sum(SyncRun.records_read), 0),
            func.coalesce(func.sum(SyncRun.records_written), 0),
        ).group_by(outcome)
    )
    totals = {name: (0, 0, 0) for name in ("running", "completed", "failed")}
    totals |= {name: figures for name, *figures in runs.all()}
    for name, (count, _, _) in totals.items():
        SYNC_RUNS.labels(name).set(count)
    RECORDS.labels("read").set(sum(read for _, read, _ in totals.values()))
    RECORDS.labels("written").set(sum(written for _, _, written in totals.values()))
    await _read_last_pass()
    return generate_latest(REGISTRY)


async def _read_last_pass() -> None:
    """The repairs of the latest reconcile pass that repaired (not a dry run's), from its
    artifact: one call to Prefect. While Prefect cannot answer, the figures read before stay."""
    try:
        async with prefect_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[REPAIRS_ARTIFACT])),
                sort=ArtifactSort.CREATED_DESC,
                limit=_PASSES_READ,
            )
    except Unavailable as error:
        logger.warning("reconcile repairs not read: %s", error.detail)
        return
    passes = [a for a in artifacts if (a.description or "").startswith(REPAIRED)]
    if not passes:
        return
    latest = passes[0]
    # The table's rows as JSON: Prefect keeps a table artifact's data as its text.
    data: Any = json.loads(latest.data) if isinstance(latest.data, str) else latest.data
    actions = Tally(row["action"] for row in data or [])
    for action in ("create", "update", "delete", "relink"):
        REPAIRS.labels(action).set(actions[action])
    assert latest.created is not None
    LAST_PASS.set(latest.created.timestamp())


__all__ = ["REGISTRY", "REQUEST_SECONDS", "instrument", "render"]
