"""Defined sources and destinations: their configs checked, and merged with connector overrides."""

import asyncio
from collections.abc import Sequence
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane.connectors import Kind, TypeConfig, deep_merge, keep_secrets, validate_config
from control_plane.crud._common import (
    ENDPOINT_TABLES,
    Endpoint,
    _connectors_where,
    _endpoint_column,
    _names,
    _page,
    _touch,
)
from control_plane.crud.projects import referenced_project
from control_plane.errors import Conflict, InvalidInput, NotFound
from control_plane.policy import Scope, scope_for
from models import Connector, EndpointCreate, EndpointUpdate


async def get_endpoint(*, session: AsyncSession, kind: Kind, endpoint_id: int) -> Endpoint:
    endpoint: Endpoint | None = await session.get(ENDPOINT_TABLES[kind], endpoint_id)
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
            "max_concurrent_runs", "only a defined destination limits its runs; leave it out"
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
    return await _validated(
        kind, endpoint.type, merged, field=f"{kind}_config_override", scope=scope
    )
