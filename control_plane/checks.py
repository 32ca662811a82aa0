"""Connection checks of defined sources, defined destinations and connectors, saved or not.

The API stores what to check (the configs, merged with a connector's overrides, encrypted as
every stored config is) and starts a `check-connector` run on the connectors' work pool, named
and tagged for the audit log; it runs there, where sync runs do (`flows.check`), and writes
each step's result into the check's row, forgetting the configs. The API waits for the run's
end and answers with the row. A check without a result within `check_timeout_seconds` (no
worker took it, say) fails, saying so, and its run is cancelled.

With `require_check` on, a connector is activated only if a check of it passed with its
configs as they are now: each check keeps a keyed hash of what it checked.
"""

from datetime import timedelta
from typing import Any, Protocol
from uuid import UUID

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane import bootstrap, crud, deployments, runs
from control_plane.audit import actor_tag
from control_plane.connectors import MASK, Kind, get_type, holds_mask
from control_plane.connectors.checks import Step
from control_plane.db import session_scope
from control_plane.encryption import digest_json
from control_plane.errors import Conflict, ControlPlaneError, InvalidInput
from control_plane.settings import get_settings
from models import Connector
from models.base import utcnow
from models.check import ConnectionCheck

# How much longer than its steps' deadline the API waits for a check's run to record them.
_RECORDING_SECONDS = 5.0

# What a check checks, by kind: {"source": {"type": ..., "config": {...}}, "destination": ...}
Target = dict[str, dict[str, Any]]


class ConnectorLike(Protocol):
    """A connector, saved or asked about: what it moves between, and its overrides."""

    project_id: int
    defined_source_id: int
    defined_destination_id: int
    source_config_override: dict[str, Any]
    destination_config_override: dict[str, Any]


def endpoint_target(kind: Kind, type_name: str, config: dict[str, Any]) -> Target:
    get_type(kind, type_name)  # a 422 naming the known types
    return {kind: {"type": type_name, "config": config}}


def unsaved(config: dict[str, Any], field: str) -> dict[str, Any]:
    """A config that no stored one backs: `MASK` keeps nothing there."""
    if holds_mask(config):
        raise InvalidInput(field, f"{MASK} keeps a stored secret, and none is stored here: send it")
    return config


async def connector_target(*, session: AsyncSession, connector: ConnectorLike) -> Target:
    """Both sides of the connector: each defined config with the connector's override over it."""
    target: Target = {}
    for kind, table in crud.ENDPOINT_TABLES.items():
        field = f"defined_{kind}_id"
        endpoint_id = getattr(connector, field)
        endpoint = await session.get(table, endpoint_id)
        if endpoint is None or endpoint.project_id != connector.project_id:
            raise InvalidInput(
                field, f"project {connector.project_id} has no defined {kind} {endpoint_id}"
            )
        # A request shaped like a connector merges as one does.
        config = crud.merged_config(connector=connector, kind=kind, endpoint=endpoint)  # type: ignore[arg-type]
        target[kind] = {"type": endpoint.type, "config": config}
    return target


def summary(steps: list[Step]) -> tuple[str, str]:
    """The check's status and what a person reads first: the failed step, if one did."""
    failed = next((step for step in steps if step.status == "failed"), None)
    if failed is None:
        return "passed", "every step passed"
    return "failed", f"{failed.kind} {failed.name}: {failed.message}"


async def finish(
    *,
    check_id: UUID,
    flow_run_id: UUID | None,
    status: str,
    message: str,
    steps: list[dict[str, Any]],
    streams: list[dict[str, Any]] | None = None,
) -> bool:
    """Record the check's result and forget its configs; False when it had ended already (the
    API gave up waiting): the first result stands."""
    async with session_scope() as session:
        result = await session.exec(
            update(ConnectionCheck)
            .where(col(ConnectionCheck.id) == check_id, col(ConnectionCheck.status) == "pending")
            .values(
                status=status,
                message=message,
                steps=steps,
                streams=streams,
                flow_run_id=flow_run_id,
                target=None,
                finished_at=utcnow(),
            )
        )
        await session.commit()
        return result.rowcount == 1


async def run_check(
    *,
    project_id: int,
    subject: str,
    target: Target,
    actor: str,
    connector_id: int | None = None,
    discover: bool = False,
) -> ConnectionCheck:
    """Check `target` on the connectors' work pool (and with `discover`, list a source's
    streams) and answer with the check as it ended."""
    row = ConnectionCheck(
        project_id=project_id,
        subject=subject,
        connector_id=connector_id,
        target=target,
        fingerprint=digest_json(target),
        actor=actor,
        discover=discover,
    )
    async with session_scope() as session:
        await _forget_abandoned(session)
        session.add(row)
        await session.commit()
    tags = [deployments.MANAGED_TAG, actor_tag(actor), f"project:{project_id}"]
    if connector_id is not None:
        tags.append(runs.connector_tag(connector_id))
    timeout = get_settings().check_timeout_seconds
    flow_run_id = None
    try:
        name = f"{'discover the streams of' if discover else 'check'} {subject}"
        flow_run_id = await bootstrap.start_check(row.id, name=name, tags=tags)
        ended = await runs.wait_for_end(flow_run_id, timeout=timeout + _RECORDING_SECONDS)
        if ended is None:
            await runs.give_up(flow_run_id)
    except ControlPlaneError as error:
        why = f"Prefect failed the check's run: {error.detail}"
        await finish(
            check_id=row.id, flow_run_id=flow_run_id, status="failed", message=why, steps=[]
        )
        raise
    if ended is None:
        why = (
            f"no result within {timeout:.0f} s (CONTROL_PLANE_CHECK_TIMEOUT_SECONDS): is a worker "
            f"of the work pool {get_settings().work_pool!r} running?"
        )
    else:
        said = ended.state.message if ended.state else None
        why = f"its run ended {ended.state_name} without a result: {said}"
    # A run that got as far as its result has recorded it, and this changes nothing.
    await finish(check_id=row.id, flow_run_id=flow_run_id, status="failed", message=why, steps=[])
    async with session_scope() as session:
        stored = await session.get(ConnectionCheck, row.id)
    assert stored is not None
    return stored


async def _forget_abandoned(session: AsyncSession) -> None:
    """Fail the checks left pending by an API process that died waiting for them, so that the
    configs they hold are not kept."""
    given_up = utcnow() - timedelta(
        seconds=2 * (get_settings().check_timeout_seconds + _RECORDING_SECONDS)
    )
    await session.exec(
        update(ConnectionCheck)
        .where(col(ConnectionCheck.status) == "pending", col(ConnectionCheck.created_at) < given_up)
        .values(status="failed", message="abandoned: no one waited for its result", target=None)
    )


def refuse_unchecked_activation() -> None:
    """With `require_check` on, a 409 for a connector created active: none can be checked yet."""
    if get_settings().require_check:
        raise Conflict(
            "connectors are activated only after a passing check (CONTROL_PLANE_REQUIRE_CHECK): "
            "create it with isActive false, check it (POST /api/v1/connectors/{id}/check), "
            "then activate it"
        )


async def require_passed(*, session: AsyncSession, connector: Connector) -> None:
    """With `require_check` on, a 409 unless a check of this connector passed with the configs
    it has now; call it before the connector becomes active."""
    if not get_settings().require_check:
        return
    fingerprint = digest_json(await connector_target(session=session, connector=connector))
    passed = await session.scalar(
        select(ConnectionCheck.id)
        .where(
            ConnectionCheck.connector_id == connector.id,
            ConnectionCheck.fingerprint == fingerprint,
            ConnectionCheck.status == "passed",
        )
        .limit(1)
    )
    if passed is None:
        raise Conflict(
            f"connector {connector.id} has no passing check of its source and destination as "
            "they are configured now (CONTROL_PLANE_REQUIRE_CHECK): check it with "
            f"POST /api/v1/connectors/{connector.id}/check, then activate it"
        )


__all__ = [
    "ConnectorLike",
    "Target",
    "connector_target",
    "endpoint_target",
    "finish",
    "refuse_unchecked_activation",
    "require_passed",
    "run_check",
    "summary",
    "unsaved",
]
