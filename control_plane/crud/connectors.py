"""Connectors: their checks, selections, context, streams and routes, and their row's lock."""

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import String, cast, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane.connectors import (
    DEFAULT_STREAM,
    MASK,
    Kind,
    Route,
    SelectedStream,
    get_type,
    holds_mask,
    keep_secrets,
    mask_secrets,
    routes,
)
from control_plane.crud._common import (
    ENDPOINT_TABLES,
    Endpoint,
    _connectors_where,
    _endpoint_column,
    _page,
    _touch,
)
from control_plane.crud.endpoints import project_scope, resolve_config
from control_plane.crud.projects import get_project, referenced_project
from control_plane.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from control_plane.policy import Scope
from models import (
    Connector,
    ConnectorContext,
    ConnectorCreate,
    ConnectorUpdate,
    DefinedDestination,
    DefinedSource,
    Project,
)
from models.base import check_cron, check_timezone
from models.notifications import effective

_STREAMS = TypeAdapter(list[SelectedStream])


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
    endpoints: dict[Kind, Endpoint] = {}
    for kind, table in ENDPOINT_TABLES.items():
        field = _endpoint_column(kind).key
        endpoint_id = getattr(connector, field)
        endpoint: Endpoint | None = await session.get(table, endpoint_id)
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
                kind, values[field], getattr(connector, field), field=field
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
            field,
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
