"""Reads and writes of the control plane's tables. No Prefect, no HTTP.

Every function takes its session by keyword and leaves committing to the caller, so a control
flow can keep the database change and the Prefect change in one unit.
"""

import asyncio
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import TypeAdapter
from pydantic.alias_generators import to_camel
from sqlalchemy import DateTime, String, case, cast, delete, func, literal, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane.connectors import (
    DEFAULT_STREAM,
    MASK,
    Kind,
    Route,
    SelectedStream,
    TypeConfig,
    deep_merge,
    get_type,
    holds_mask,
    keep_secrets,
    mask_secrets,
    routes,
    validate_config,
)
from control_plane.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from control_plane.policy import Scope, scope_for
from models import (
    Backfill,
    BackfillRequest,
    Connector,
    ConnectorContext,
    ConnectorCreate,
    ConnectorUpdate,
    DefinedDestination,
    DefinedSource,
    EndpointCreate,
    EndpointUpdate,
    IdempotencyKey,
    Project,
    ProjectCreate,
    ProjectUpdate,
    SyncRun,
    SyncState,
)
from models.base import check_cron, check_timezone, utcnow
from models.notifications import effective

Endpoint = DefinedSource | DefinedDestination
_STREAMS = TypeAdapter(list[SelectedStream])
ENDPOINT_TABLES: dict[Kind, type[DefinedSource] | type[DefinedDestination]] = {
    "source": DefinedSource,
    "destination": DefinedDestination,
}


async def _page(
    session: AsyncSession, query: Any, *, limit: int, offset: int
) -> tuple[Sequence[Any], int]:
    count = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = (await session.exec(query.limit(limit).offset(offset))).all()
    return rows, count or 0


def _touch(row: Project | Endpoint | Connector, changes: dict[str, Any]) -> None:
    for name, value in changes.items():
        setattr(row, name, value)
    row.updated_at = utcnow()


def _names(connectors: Sequence[Connector]) -> str:
    return ", ".join(f"{c.id} ({c.name!r})" for c in connectors)


# Projects


async def get_project(*, session: AsyncSession, project_id: int) -> Project:
    project = await session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    return project


async def referenced_project(session: AsyncSession, project_id: int) -> None:
    """A 422 naming `projectId` when a body's project does not exist."""
    if await session.get(Project, project_id) is None:
        raise InvalidInput("projectId", f"project {project_id} does not exist")


async def list_projects(
    *, session: AsyncSession, project_ids: frozenset[int] | None, limit: int, offset: int
) -> tuple[Sequence[Project], int]:
    query = select(Project).order_by(col(Project.id))
    if project_ids is not None:
        query = query.where(col(Project.id).in_(project_ids))
    return await _page(session, query, limit=limit, offset=offset)


async def _check_project_name(session: AsyncSession, name: str) -> None:
    if await session.scalar(select(Project.id).where(Project.name == name)):
        raise Conflict(f"a project named {name!r} exists already")


async def new_project(*, session: AsyncSession, spec: ProjectCreate) -> Project:
    """The project the spec makes, checked, not added: it has no id yet."""
    await _check_project_name(session, spec.name)
    return Project.model_validate(spec)


async def overdue_freezes(*, session: AsyncSession, before: datetime) -> Sequence[Project]:
    """The projects whose freeze was to end before `before` and still stands."""
    query = select(Project).where(col(Project.frozen_until) < before).order_by(col(Project.id))
    return (await session.exec(query)).all()


async def create_project(*, session: AsyncSession, spec: ProjectCreate) -> Project:
    project = await new_project(session=session, spec=spec)
    session.add(project)
    await session.flush()
    return project


async def update_project(
    *, session: AsyncSession, project: Project, changes: ProjectUpdate
) -> Project:
    values = changes.model_dump(exclude_unset=True)
    if values.get("name", project.name) != project.name:
        await _check_project_name(session, values["name"])
    _touch(project, values)
    await session.flush()
    return project


async def delete_project(*, session: AsyncSession, project: Project) -> None:
    users = await _connectors_where(session, Connector.project_id == project.id)
    if users:
        raise Conflict(f"project {project.id} still has connectors: {_names(users)}")
    for kind, table in ENDPOINT_TABLES.items():
        endpoints = (await session.exec(select(table).where(table.project_id == project.id))).all()
        if endpoints:
            names = ", ".join(f"{e.id} ({e.name!r})" for e in endpoints)
            raise Conflict(f"project {project.id} still has defined {kind}s: {names}")
    await session.delete(project)
    await session.flush()


# Defined sources and destinations


async def get_endpoint(*, session: AsyncSession, kind: Kind, endpoint_id: int) -> Endpoint:
    endpoint = await session.get(ENDPOINT_TABLES[kind], endpoint_id)
    if endpoint is None:
        raise NotFound(f"defined {kind} {endpoint_id} does not exist")
    return endpoint


async def list_endpoints(
    *,
    session: AsyncSession,
    kind: Kind,
    project_id: int | None,
    project_ids: frozenset[int] | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Endpoint], int]:
    table = ENDPOINT_TABLES[kind]
    query = select(table).order_by(col(table.id))
    if project_id is not None:
        query = query.where(table.project_id == project_id)
    if project_ids is not None:
        query = query.where(col(table.project_id).in_(project_ids))
    return await _page(session, query, limit=limit, offset=offset)


async def _check_endpoint_name(
    session: AsyncSession, kind: Kind, project_id: int, name: str
) -> None:
    table = ENDPOINT_TABLES[kind]
    query = select(table.id).where(table.project_id == project_id, table.name == name)
    if await session.scalar(query):
        raise Conflict(f"project {project_id} has a defined {kind} named {name!r} already")


async def project_scope(project_id: int) -> Scope:
    """What the project's connectors may reach. Built, as configs are checked, off the event
    loop: both resolve host names."""
    return await asyncio.to_thread(scope_for, project_id)


async def _validated(
    kind: Kind, name: str, config: dict[str, Any], *, field: str, scope: Scope
) -> TypeConfig:
    """The config checked by its type within the project's scope."""
    return await asyncio.to_thread(validate_config, kind, name, config, field=field, scope=scope)


def _check_run_limit(kind: Kind, limit: int | None) -> None:
    if kind == "source" and limit is not None:
        raise InvalidInput(
            "maxConcurrentRuns", "only a defined destination limits its runs; leave it out"
        )


async def new_endpoint(*, session: AsyncSession, kind: Kind, spec: EndpointCreate) -> Endpoint:
    """The source or destination the spec makes, checked, not added: it has no id yet."""
    _check_run_limit(kind, spec.max_concurrent_runs)
    scope = await project_scope(spec.project_id)
    await _validated(kind, spec.type, spec.config, field="config", scope=scope)
    await referenced_project(session, spec.project_id)
    await _check_endpoint_name(session, kind, spec.project_id, spec.name)
    return ENDPOINT_TABLES[kind].model_validate(spec)


async def create_endpoint(*, session: AsyncSession, kind: Kind, spec: EndpointCreate) -> Endpoint:
    endpoint = await new_endpoint(session=session, kind=kind, spec=spec)
    session.add(endpoint)
    await session.flush()
    return endpoint


async def update_endpoint(
    *, session: AsyncSession, kind: Kind, endpoint: Endpoint, changes: EndpointUpdate
) -> Endpoint:
    values = changes.model_dump(exclude_unset=True)
    _check_run_limit(kind, values.get("max_concurrent_runs"))
    if "config" in values:
        values["config"] = keep_secrets(kind, values["config"], endpoint.config, field="config")
    config, type_ = values.get("config", endpoint.config), values.get("type", endpoint.type)
    scope = await project_scope(endpoint.project_id)
    await _validated(kind, type_, config, field="config", scope=scope)
    if values.get("name", endpoint.name) != endpoint.name:
        await _check_endpoint_name(session, kind, endpoint.project_id, values["name"])
    users = await endpoint_users(session=session, kind=kind, endpoint=endpoint)
    for connector in users:
        merged = deep_merge(config, _override(connector, kind))
        await _validated(kind, type_, merged, field="config", scope=scope)
    _touch(endpoint, values)
    await session.flush()
    return endpoint


async def delete_endpoint(*, session: AsyncSession, kind: Kind, endpoint: Endpoint) -> None:
    users = await endpoint_users(session=session, kind=kind, endpoint=endpoint)
    if users:
        raise Conflict(f"defined {kind} {endpoint.id} is used by connectors: {_names(users)}")
    await session.delete(endpoint)
    await session.flush()


async def endpoint_users(
    *, session: AsyncSession, kind: Kind, endpoint: Endpoint
) -> Sequence[Connector]:
    """The connectors that read the source or destination, in the order of their ids."""
    return await _connectors_where(session, _endpoint_column(kind) == endpoint.id)


def _endpoint_column(kind: Kind) -> Any:
    return Connector.defined_source_id if kind == "source" else Connector.defined_destination_id


def _override(connector: Connector, kind: Kind) -> dict[str, Any]:
    return getattr(connector, f"{kind}_config_override")


def merged_config(*, connector: Connector, kind: Kind, endpoint: Endpoint) -> dict[str, Any]:
    """The endpoint's config with the connector's override laid over it, as its runs read it."""
    return deep_merge(endpoint.config, _override(connector, kind))


async def resolve_config(
    *, connector: Connector, kind: Kind, endpoint: Endpoint, scope: Scope
) -> TypeConfig:
    """The merged config (`merged_config`), checked by its type within the connector's
    project's `scope`."""
    merged = merged_config(connector=connector, kind=kind, endpoint=endpoint)
    return await _validated(kind, endpoint.type, merged, field=f"{kind}ConfigOverride", scope=scope)


# Connectors


async def _connectors_where(session: AsyncSession, condition: Any) -> Sequence[Connector]:
    return (
        await session.exec(select(Connector).where(condition).order_by(col(Connector.id)))
    ).all()


def check_version(connector: Connector, expected: int | None) -> None:
    """412 when a caller's If-Match names a version the connector has moved past."""
    if expected is not None and expected != connector.version:
        raise PreconditionFailed(
            f"connector {connector.id} is at version {connector.version}, not {expected}; "
            "read it again and retry with its new ETag"
        )


async def get_connector(
    *, session: AsyncSession, connector_id: int, for_update: bool = False
) -> Connector:
    """The connector; `for_update` locks its row (PostgreSQL) until the transaction ends."""
    query = select(Connector).where(Connector.id == connector_id)
    if for_update:
        query = query.with_for_update()
    connector = (await session.exec(query)).first()
    if connector is None:
        raise NotFound(f"connector {connector_id} does not exist")
    return connector


def _has_label(label: str) -> Any:
    # A label holds no quote, backslash or LIKE wildcard (`models.connector.Label`): in the
    # stored JSON text, the quoted label is found only where the list holds exactly it.
    return cast(Connector.labels, String).like(f'%"{label}"%')


def _selected(
    *,
    project_id: int | None,
    project_ids: Collection[int] | None,
    is_active: bool | None = None,
    labels: Sequence[str] = (),
    ids: Sequence[int] | None = None,
) -> Any:
    """Connectors that match every criterion given, in the order of their ids."""
    query = select(Connector).order_by(col(Connector.id))
    if project_id is not None:
        query = query.where(Connector.project_id == project_id)
    if project_ids is not None:
        query = query.where(col(Connector.project_id).in_(project_ids))
    if is_active is not None:
        query = query.where(Connector.is_active == is_active)
    if ids is not None:
        query = query.where(col(Connector.id).in_(ids))
    return query.where(*map(_has_label, labels))


async def list_connectors(
    *,
    session: AsyncSession,
    project_id: int | None,
    project_ids: frozenset[int] | None,
    is_active: bool | None,
    labels: Sequence[str],
    limit: int,
    offset: int,
) -> tuple[Sequence[Connector], int]:
    query = _selected(
        project_id=project_id, project_ids=project_ids, is_active=is_active, labels=labels
    )
    return await _page(session, query, limit=limit, offset=offset)


async def select_connectors(
    *,
    session: AsyncSession,
    ids: Sequence[int] | None,
    project_id: int | None,
    labels: Sequence[str],
    project_ids: Collection[int] | None,
) -> Sequence[Connector]:
    """The connectors a bulk selector names, within `project_ids` (None: all projects)."""
    query = _selected(project_id=project_id, project_ids=project_ids, labels=labels, ids=ids)
    return (await session.exec(query)).all()


async def _check_connector(session: AsyncSession, connector: Connector) -> None:
    """The connector's references exist, belong to its project, its overrides fit, and an
    active one's schedule passes today's checks (a row may be older than one of them)."""
    if connector.is_active:
        for field, check in (("schedule", check_cron), ("timezone", check_timezone)):
            try:
                check(getattr(connector, field))
            except ValueError as error:
                raise InvalidInput(field, str(error)) from None
    with session.no_autoflush:
        await _check_connector_references(session, connector)


async def _check_connector_references(session: AsyncSession, connector: Connector) -> None:
    await referenced_project(session, connector.project_id)
    endpoints = {}
    for kind, field in (("source", "definedSourceId"), ("destination", "definedDestinationId")):
        endpoint_id = getattr(connector, _endpoint_column(kind).key)
        endpoint = await session.get(ENDPOINT_TABLES[kind], endpoint_id)
        if endpoint is None:
            raise InvalidInput(field, f"defined {kind} {endpoint_id} does not exist")
        if endpoint.project_id != connector.project_id:
            raise InvalidInput(
                field,
                f"defined {kind} {endpoint_id} belongs to project {endpoint.project_id}, "
                f"not to project {connector.project_id}",
            )
        endpoints[kind] = endpoint
    scope = await project_scope(connector.project_id)
    await connector_routes(
        connector=connector,
        source=endpoints["source"],
        destination=endpoints["destination"],
        scope=scope,
    )
    query = select(Connector.id).where(
        Connector.project_id == connector.project_id,
        Connector.name == connector.name,
        Connector.id != connector.id if connector.id is not None else True,
    )
    if await session.scalar(query):
        raise Conflict(
            f"project {connector.project_id} has a connector named {connector.name!r} already"
        )


def selected_streams(connector: Connector) -> list[SelectedStream] | None:
    """The streams the connector selected (its column holds them as dicts), or None."""
    if connector.streams is None:
        return None
    return _STREAMS.validate_python(connector.streams)


def stream_names(connector: Connector) -> list[str]:
    """The streams the connector moves: those it selected, or its source's one."""
    selected = selected_streams(connector)
    return [DEFAULT_STREAM] if selected is None else [stream.name for stream in selected]


async def connector_routes(
    *, connector: Connector, source: Endpoint, destination: Endpoint, scope: Scope
) -> list[Route]:
    """The connector's streams, each with its source and destination typed from their merged
    configs within the project's `scope` (`resolve_config`).

    Raises:
        InvalidInput: a config does not fit its type or the scope, or a stream cannot be moved.
    """
    typed: dict[Kind, Any] = {}
    pairs: tuple[tuple[Kind, Endpoint], ...] = (("source", source), ("destination", destination))
    for kind, endpoint in pairs:
        config = await resolve_config(
            connector=connector, kind=kind, endpoint=endpoint, scope=scope
        )
        typed[kind] = get_type(kind, endpoint.type)(config, scope)
    return routes(typed["source"], typed["destination"], selected_streams(connector))


async def new_connector(*, session: AsyncSession, spec: ConnectorCreate) -> Connector:
    """The connector the spec makes, checked, not added: it has no id yet."""
    connector = Connector.model_validate(spec)
    await _check_connector(session, connector)
    return connector


async def add_connector(*, session: AsyncSession, spec: ConnectorCreate) -> Connector:
    """Insert the connector (its id is known afterwards); the caller commits."""
    connector = await new_connector(session=session, spec=spec)
    session.add(connector)
    await session.flush()
    return connector


async def change_connector(
    *, session: AsyncSession, connector: Connector, changes: ConnectorUpdate
) -> Connector:
    """Apply the changes to the row after checking them; the caller commits."""
    values = changes.model_dump(exclude_unset=True)
    for kind in ENDPOINT_TABLES:
        field = f"{kind}_config_override"
        _check_override_follows(connector, kind, values)
        if field in values:
            values[field] = keep_secrets(
                kind, values[field], getattr(connector, field), field=to_camel(field)
            )
    if values.get("is_active") is True:
        values["status_reason"] = None
    if "paused_until" in values and values["paused_until"] is None:
        values["pause_reason"] = None
    _touch(connector, {**values, "version": connector.version + 1})
    await _check_connector(session, connector)
    await session.flush()
    return connector


def _check_override_follows(connector: Connector, kind: Kind, values: dict[str, Any]) -> None:
    """A connector moving to another source (or destination) sends its override's secrets
    again: the stored ones were given for the old one's hosts, not the new one's."""
    reference, field = f"defined_{kind}_id", f"{kind}_config_override"
    if values.get(reference, getattr(connector, reference)) == getattr(connector, reference):
        return
    override = values.get(field, getattr(connector, field))
    carried = field not in values and mask_secrets(kind, override) != override
    if carried or holds_mask(values.get(field)):
        raise InvalidInput(
            to_camel(field),
            f"the connector moves to another defined {kind}: send this override again with its "
            f"secrets (not {MASK}), which were given for the old one",
        )


async def context_of(*, session: AsyncSession, connector: Connector) -> ConnectorContext:
    """Its project's name and freeze, its source's and destination's types (no config)."""
    # Three rows by their keys, as scalar subqueries: a cartesian product of three one-row
    # selections gives the same row, with a warning of SQLAlchemy's in every process's log.
    query = select(
        select(col(Project.name)).where(Project.id == connector.project_id).scalar_subquery(),
        select(col(DefinedSource.type))
        .where(DefinedSource.id == connector.defined_source_id)
        .scalar_subquery(),
        select(col(DefinedDestination.type))
        .where(DefinedDestination.id == connector.defined_destination_id)
        .scalar_subquery(),
        select(col(Project.freeze_reason).is_not(None))
        .where(Project.id == connector.project_id)
        .scalar_subquery(),
    )
    project, source_type, destination_type, frozen = (await session.exec(query)).one()
    return ConnectorContext(project, source_type, destination_type, bool(frozen))


def _with_catalog(*columns: Any) -> Any:
    """A select of `columns` over each connector joined with its project, source and
    destination."""
    return (
        select(*columns)
        .select_from(Connector)
        .join(Project, col(Project.id) == Connector.project_id)
        .join(DefinedSource, col(DefinedSource.id) == Connector.defined_source_id)
        .join(DefinedDestination, col(DefinedDestination.id) == Connector.defined_destination_id)
    )


async def contexts(
    *, session: AsyncSession, ids: Collection[int] | None = None
) -> dict[int, ConnectorContext]:
    """`context_of` every connector (or those of `ids`), by id, in one query."""
    query = _with_catalog(
        col(Connector.id),
        col(Project.name),
        col(DefinedSource.type),
        col(DefinedDestination.type),
        col(Project.freeze_reason).is_not(None),
    )
    if ids is not None:
        query = query.where(col(Connector.id).in_(ids))
    rows = (await session.exec(query)).all()
    return {row[0]: ConnectorContext(row[1], row[2], row[3], bool(row[4])) for row in rows}


async def changed_connector_ids(*, session: AsyncSession, since: datetime) -> set[int]:
    """The connectors whose row, project, source or destination changed since `since`: the
    rows a change to their deployment can come from."""
    query = _with_catalog(col(Connector.id)).where(
        or_(
            col(Connector.updated_at) >= since,
            col(Project.updated_at) >= since,
            col(DefinedSource.updated_at) >= since,
            col(DefinedDestination.updated_at) >= since,
        )
    )
    return set((await session.exec(query)).all())


async def all_connectors(*, session: AsyncSession) -> Sequence[Connector]:
    return (await session.exec(select(Connector).order_by(col(Connector.id)))).all()


async def connectors_by_id(*, session: AsyncSession, ids: Collection[int]) -> Sequence[Connector]:
    return await _connectors_where(session, col(Connector.id).in_(ids))


async def overdue_pauses(*, session: AsyncSession, before: datetime) -> Sequence[Connector]:
    """The connectors whose pause was to end before `before` and still stands."""
    return await _connectors_where(session, col(Connector.paused_until) < before)


async def deactivate(*, session: AsyncSession, connector: Connector, reason: str) -> None:
    """Switch the connector off, saying why; the caller applies the deployment and commits."""
    _touch(
        connector, {"is_active": False, "status_reason": reason, "version": connector.version + 1}
    )
    await session.flush()


async def remove_connector(*, session: AsyncSession, connector: Connector) -> None:
    await session.delete(connector)
    await session.flush()


# Sync state and run figures

# What a run's end makes of its connector's status: COMPLETED resets the failures, FAILED and
# CRASHED count one, CANCELLED and AWAITING_RETRY (a retry follows) leave the count.
RunEnd = Literal["COMPLETED", "FAILED", "CRASHED", "CANCELLED", "AWAITING_RETRY"]
_COUNTED: set[str] = {"FAILED", "CRASHED"}


async def get_state(*, session: AsyncSession, connector_id: int, stream: str) -> SyncState | None:
    return await session.get(SyncState, (connector_id, stream))


async def get_states(*, session: AsyncSession, connector_id: int) -> dict[str, SyncState]:
    """The connector's saved cursors, by stream."""
    query = select(SyncState).where(col(SyncState.connector_id) == connector_id)
    return {state.stream: state for state in await session.exec(query)}


async def reset_state(
    *, session: AsyncSession, connector: Connector, streams: Collection[str] | None = None
) -> list[SyncState]:
    """Forget where incremental reads of `streams` (None: every stream) resume: their next run
    reads everything, and a run that started before this reset saves no cursor (it counts the
    resets it started with). Returns the states it forgot."""
    connector.resets += 1
    mine = [col(SyncState.connector_id) == connector.id]
    if streams is not None:
        mine.append(col(SyncState.stream).in_(streams))
    forgotten = list(await session.exec(select(SyncState).where(*mine)))
    await session.exec(delete(SyncState).where(*mine))
    await session.flush()
    return forgotten


async def save_cursor(
    *, session: AsyncSession, connector_id: int, stream: str, cursor: Any, load_id: UUID | None
) -> None:
    await session.merge(
        SyncState(
            connector_id=connector_id,
            stream=stream,
            cursor=cursor,
            load_id=load_id,
            updated_at=utcnow(),
        )
    )


async def set_state(
    *, session: AsyncSession, connector: Connector, cursors: dict[str, Any]
) -> list[SyncState]:
    """Make incremental reads of each stream resume after its cursor (None: from the start),
    as a reset does: a run that started before saves no cursor, and no load it committed is
    adopted. Returns the states it replaced."""
    replaced = await reset_state(session=session, connector=connector, streams=list(cursors))
    assert connector.id is not None
    for stream, cursor in cursors.items():
        if cursor is not None:
            await save_cursor(
                session=session,
                connector_id=connector.id,
                stream=stream,
                cursor=cursor,
                load_id=None,
            )
    await session.flush()
    return replaced


async def add_backfill(
    *, session: AsyncSession, connector_id: int, request: BackfillRequest, actor: str
) -> Backfill:
    backfill = Backfill(
        connector_id=connector_id,
        stream=request.stream,
        start=request.start,
        end=request.end,
        actor=actor,
    )
    session.add(backfill)
    await session.flush()
    return backfill


async def get_backfill(*, session: AsyncSession, backfill_id: UUID) -> Backfill:
    """The backfill's window; NotFound once its connector was deleted."""
    backfill = await session.get(Backfill, backfill_id)
    if backfill is None:
        raise NotFound(f"backfill {backfill_id} does not exist: its connector was deleted")
    return backfill


async def add_sync_run(
    *, session: AsyncSession, connector_id: int, flow_run_id: UUID, started_at: datetime
) -> None:
    """The run's row, if it has none yet, leaving the connector as it is: for a run that ended
    before it could record its start."""
    if await session.get(SyncRun, flow_run_id) is None:
        if await session.get(Connector, connector_id) is not None:
            session.add(
                SyncRun(flow_run_id=flow_run_id, connector_id=connector_id, started_at=started_at)
            )
            await session.flush()


async def start_sync_run(
    *, session: AsyncSession, connector_id: int, flow_run_id: UUID, resets: int
) -> None:
    now = utcnow()
    await session.merge(
        SyncRun(flow_run_id=flow_run_id, connector_id=connector_id, resets=resets, started_at=now)
    )
    await session.exec(
        update(Connector)
        .where(col(Connector.id) == connector_id)
        .values(last_run_at=now, last_run_state="RUNNING")
    )


async def lock_connector(*, session: AsyncSession, connector_id: Any) -> tuple[int, int] | None:
    """Lock the connector's row with a write that changes nothing, and return its id and its
    resets; None when it is gone. `connector_id` may be a scalar subquery.

    A write, not SELECT ... FOR UPDATE: it locks the row on PostgreSQL and takes the one write
    lock on SQLite, where reads run outside the transaction. Whoever records a run's end takes
    it first, in the order the control flows lock in (the connector, then its runs).
    """
    locked = (
        update(Connector)
        .where(col(Connector.id) == connector_id)
        .values(resets=Connector.resets)
        .returning(col(Connector.id), col(Connector.resets))
    )
    row = (await session.exec(locked)).first()  # type: ignore[call-overload]
    return None if row is None else (row[0], row[1])


async def finish_sync_run(
    *,
    session: AsyncSession,
    flow_run_id: UUID,
    end: RunEnd,
    records_read: int = 0,
    records_written: int = 0,
    cursors: dict[str, Any] | None = None,
    error: str | None = None,
    if_unfinished: bool = False,
) -> bool:
    """Record the run's end and the connector's status, and save the `cursors` (by stream) of
    what the run committed into the destination (every stream of a completed run; some of a
    run that failed), unless the connector was reset since the run started.

    The connector's last run state moves only if no later run started; a failed or crashed run
    counts unless a success started after it. With `if_unfinished` (someone else noticed the
    run end), only the end and the error, and only if no end is recorded yet: of two such
    recorders, one wins. Returns whether the end was recorded and its cursors saved. The
    connector is locked first, so a reset is either before this (the cursors are not saved) or
    after it (it deletes them).
    """
    owner = select(SyncRun.connector_id).where(col(SyncRun.flow_run_id) == flow_run_id)
    locked = await lock_connector(session=session, connector_id=owner.scalar_subquery())
    if locked is None:
        return False  # the run or its connector is gone
    connector_id, resets = locked
    now = literal(utcnow(), DateTime(timezone=True))
    figures = {"records_read": records_read, "records_written": records_written, "cursors": cursors}
    query = update(SyncRun).where(col(SyncRun.flow_run_id) == flow_run_id)
    if if_unfinished:
        query = query.where(col(SyncRun.ended_at).is_(None))
    ended = query.values(error=error, ended_at=now, **({} if if_unfinished else figures)).returning(
        col(SyncRun.resets), col(SyncRun.started_at)
    )
    run = (await session.exec(ended)).first()  # type: ignore[call-overload]
    if run is None:
        return False
    run_resets, started_at = run
    latest = or_(col(Connector.last_run_at).is_(None), col(Connector.last_run_at) <= started_at)
    status: dict[str, Any] = {"last_run_state": case((latest, end), else_=Connector.last_run_state)}
    if end == "COMPLETED":
        status |= {"last_success_at": now, "consecutive_failures": 0}
    elif end in _COUNTED:
        unanswered = or_(
            col(Connector.last_success_at).is_(None), col(Connector.last_success_at) < started_at
        )
        status |= {
            "last_failure_at": case((unanswered, now), else_=Connector.last_failure_at),
            "consecutive_failures": case(
                (unanswered, Connector.consecutive_failures + 1),
                else_=Connector.consecutive_failures,
            ),
        }
    await session.exec(update(Connector).where(col(Connector.id) == connector_id).values(**status))
    if not cursors:
        return True
    if resets != run_resets:
        return False
    for stream, cursor in cursors.items():
        await save_cursor(
            session=session,
            connector_id=connector_id,
            stream=stream,
            cursor=cursor,
            load_id=flow_run_id,
        )
    return True


async def notification_routes(
    *, session: AsyncSession, connector: Connector
) -> list[dict[str, Any]]:
    """The connector's notification routes: its own, or its project's while it has none."""
    project_routes = None
    if connector.notifications is None:
        project = await get_project(session=session, project_id=connector.project_id)
        project_routes = project.notifications
    return effective(connector.notifications, project_routes)


async def mark_fresh(
    *, session: AsyncSession, connector_id: int
) -> tuple[Connector | None, datetime | None]:
    """After a successful run, under its lock: the connector, fresh again (None: gone), and
    since when it had been stale (None: it was fresh)."""
    connector = await session.get(Connector, connector_id)
    if connector is None:
        return None, None
    stale_since, connector.stale_since = connector.stale_since, None
    await session.flush()
    return connector, stale_since


async def unfinished_sync_runs(*, session: AsyncSession) -> Sequence[SyncRun]:
    """Runs whose end no one recorded yet: running, or ended where no code of ours ran."""
    query = select(SyncRun).where(col(SyncRun.ended_at).is_(None))
    return (await session.exec(query.order_by(col(SyncRun.started_at)))).all()


async def get_sync_run(*, session: AsyncSession, flow_run_id: UUID) -> SyncRun | None:
    return await session.get(SyncRun, flow_run_id)


async def sync_runs(*, session: AsyncSession, flow_run_ids: Sequence[UUID]) -> dict[UUID, SyncRun]:
    query = select(SyncRun).where(col(SyncRun.flow_run_id).in_(flow_run_ids))
    return {run.flow_run_id: run for run in (await session.exec(query)).all()}


# Idempotency keys


async def reserve_idempotency_key(
    *, session: AsyncSession, scope: str, key: str, request_hash: str, expired_before: datetime
) -> IdempotencyKey | None:
    """Reserve the key for this request (None), or the row of the request that holds it."""
    await session.exec(
        delete(IdempotencyKey).where(col(IdempotencyKey.created_at) < expired_before)
    )
    await session.commit()
    session.add(IdempotencyKey(scope=scope, key=key, request_hash=request_hash))
    try:
        await session.commit()
        return None
    except IntegrityError:
        await session.rollback()
    return await session.get(IdempotencyKey, (scope, key))


async def answer_idempotency_key(
    *, session: AsyncSession, scope: str, key: str, status_code: int, body: Any
) -> None:
    await session.exec(
        update(IdempotencyKey)
        .where(col(IdempotencyKey.scope) == scope, col(IdempotencyKey.key) == key)
        .values(status_code=status_code, body=body)
    )


async def release_idempotency_key(*, session: AsyncSession, scope: str, key: str) -> None:
    await session.exec(
        delete(IdempotencyKey).where(
            col(IdempotencyKey.scope) == scope, col(IdempotencyKey.key) == key
        )
    )
