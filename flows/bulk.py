"""The `bulk-connector-action` flow: one request that acts on many connectors, as one parent
run and, below it, one audited control run for each connector it changes.

A connector the action would not change gets no run of its own: the audit log stays one run
per change. One connector failing does not stop the others; the answer says what came of each.
"""

from typing import Any
from uuid import UUID

from prefect import State, flow
from prefect.artifacts import acreate_table_artifact
from prefect.runtime import flow_run

from control_plane import crud
from control_plane.audit import label_refused, label_run
from control_plane.db import session_scope
from control_plane.errors import ControlPlaneError, InvalidInput
from control_plane.sync import refusal
from flows.lifecycle import (
    UI_ACTOR,
    connector_changes,
    deactivate_connector,
    plan_connector_change,
    trigger_connector,
    update_connector,
)
from models import Connector, ConnectorPlan, ConnectorPublic, ConnectorUpdate
from models.base import as_utc, saved_id
from models.bulk import MAX_BULK, BulkOutcome, BulkRequest, BulkResult


def _describe(request: BulkRequest, dry_run: bool) -> str:
    criteria = request.selector.model_dump(exclude_none=True, by_alias=True)
    which = ", ".join(f"{name} {value}" for name, value in criteria.items())
    return f"{'plan: ' if dry_run else ''}bulk {request.action} of connectors with {which}"


def _changes(connector: Connector, request: BulkRequest) -> ConnectorUpdate | None:
    """What the action changes in this connector; None when it changes nothing."""
    if request.action == "deactivate":
        return ConnectorUpdate(is_active=False) if connector.is_active else None
    assert request.changes is not None
    values = request.changes.model_dump(exclude_unset=True)

    def differs(name: str, value: Any) -> bool:
        current = getattr(connector, name)
        return (as_utc(current) if current and name == "paused_until" else current) != value

    if not any(differs(name, value) for name, value in values.items()):
        return None
    return ConnectorUpdate(**values)


async def _outcome(connector: Connector, state: State) -> BulkOutcome:
    """What a connector's control run came to: its changes, or why it was refused."""
    run_id = state.state_details.flow_run_id
    result = await state.aresult(raise_on_failure=False)
    if not state.is_completed():
        error = result.detail if isinstance(result, ControlPlaneError) else state.message
        return BulkOutcome(
            connector_id=saved_id(connector), outcome="failed", flow_run_id=run_id, error=error
        )
    if isinstance(result, ConnectorPublic):
        changes = connector_changes(ConnectorPublic.model_validate(connector), result)
        return BulkOutcome(
            connector_id=saved_id(connector), outcome="changed", flow_run_id=run_id, changes=changes
        )
    if isinstance(result, ConnectorPlan):
        return BulkOutcome(
            connector_id=saved_id(connector),
            outcome="planned",
            flow_run_id=run_id,
            changes=result.changes,
        )
    assert isinstance(result, UUID)  # a trigger's: the sync run it started
    return BulkOutcome(
        connector_id=saved_id(connector), outcome="changed", flow_run_id=run_id, sync_run_id=result
    )


async def _act(
    connector: Connector, request: BulkRequest, dry_run: bool, actor: str
) -> BulkOutcome:
    assert connector.id is not None
    if request.action == "trigger":
        if not dry_run:
            state: State[Any] = await trigger_connector(
                connector_id=connector.id, actor=actor, return_state=True
            )
            return await _outcome(connector, state)
        async with session_scope() as session:
            refused = await refusal(session=session, connector=connector)
        return BulkOutcome(
            connector_id=connector.id,
            outcome="failed" if refused else "planned",
            flow_run_id=None,
            error=refused,
        )
    changes = _changes(connector, request)
    if changes is None:
        return BulkOutcome(connector_id=connector.id, outcome="unchanged", flow_run_id=None)
    if dry_run:
        state = await plan_connector_change(
            action="update",
            connector_id=connector.id,
            changes=changes,
            actor=actor,
            return_state=True,
        )
    elif request.action == "deactivate":
        assert request.reason is not None
        state = await deactivate_connector(
            connector_id=connector.id, reason=request.reason, actor=actor, return_state=True
        )
    else:
        state = await update_connector(
            connector_id=connector.id, changes=changes, actor=actor, return_state=True
        )
    return await _outcome(connector, state)


@flow(
    name="bulk-connector-action",
    persist_result=False,
    on_failure=[label_refused("bulk action on connectors")],
)
async def bulk_connector_action(
    request: BulkRequest,
    dry_run: bool = False,
    actor: str = UI_ACTOR,
    project_ids: list[int] | None = None,
) -> BulkResult:
    """Update, deactivate or trigger every connector the selector names (within `project_ids`,
    the caller's projects; None: all), one after the other, each in its own control run; with
    `dry_run`, plan each change instead."""
    await label_run(actor=actor, name=_describe(request, dry_run))
    selector = request.selector
    async with session_scope() as session:
        connectors = await crud.select_connectors(
            session=session,
            ids=selector.ids,
            project_id=selector.project_id,
            labels=selector.labels or [],
            project_ids=project_ids,
        )
    if len(connectors) > MAX_BULK:
        raise InvalidInput(
            "selector",
            f"selects {len(connectors)} connectors, more than {MAX_BULK} at once; "
            "narrow it with projectId, labels or ids",
        )
    found = {connector.id for connector in connectors}
    results = [
        BulkOutcome(
            connector_id=missing,
            outcome="failed",
            flow_run_id=None,
            error=f"connector {missing} does not exist",
        )
        for missing in selector.ids or []
        if missing not in found
    ]
    for connector in connectors:
        results.append(await _act(connector, request, dry_run, actor))
    results.sort(key=lambda outcome: outcome.connector_id)
    outcomes = [outcome.outcome for outcome in results]
    await acreate_table_artifact(
        key="bulk-connector-action",
        table=[
            {
                "connector": str(outcome.connector_id),
                "outcome": outcome.outcome,
                "control run": str(outcome.flow_run_id or ""),
                "error": outcome.error or "",
            }
            for outcome in results
        ]
        or [{"connector": "", "outcome": "none selected", "control run": "", "error": ""}],
        description=f"{request.action}: {len(results)} selected, "
        f"{outcomes.count('changed')} changed, {outcomes.count('failed')} failed",
    )
    return BulkResult(
        action=request.action,
        dry_run=dry_run,
        flow_run_id=UUID(flow_run.get_id()),
        selected=len(results),
        changed=outcomes.count("changed"),
        failed=outcomes.count("failed"),
        results=results,
    )
