"""Dry runs (`?dryRun=true`): every plan's 200 answer, and the plans of the catalog's writes.

A catalog plan runs the real crud call in the request's session, then rolls back instead of
committing, so every check and every refusal is the real call's. Like the writes they plan,
plain requests: no control flow run, nothing recorded.
"""

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic.alias_generators import to_camel
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane import crud
from control_plane.connectors import Kind
from control_plane.crud import ENDPOINT_TABLES, Endpoint
from control_plane.public import endpoint_public
from models import CatalogPlan, Project, ProjectPublic
from models.base import ApiModel
from models.plan import CatalogKind, field_changes

Row = Project | Endpoint
Seen = tuple[dict[str, Any], dict[str, Any]]  # a row as shown, and unmasked; {} for none
_KINDS: dict[type, Kind] = {table: kind for kind, table in ENDPOINT_TABLES.items()}
# Set by the write itself, never asked for: not in a plan.
_BOOKKEEPING = frozenset({"id", "createdAt", "updatedAt"})

PLANNED = {200: {"model": CatalogPlan, "description": "With dryRun=true: the plan."}}


def planned(plan: ApiModel) -> JSONResponse:
    """The plan as a 200, whatever status and model the route answers otherwise."""
    return JSONResponse(plan.model_dump(mode="json", by_alias=True))


def _kind(row: Row) -> CatalogKind:
    return "project" if isinstance(row, Project) else _KINDS[type(row)]


def _seen(row: Row | None) -> Seen:
    """The row as the API shows it (secrets masked), and unmasked: compared, never answered."""
    if row is None:
        return {}, {}
    public = (
        ProjectPublic.model_validate(row)
        if isinstance(row, Project)
        else endpoint_public(_KINDS[type(row)], row)
    )
    unmasked = {to_camel(name): getattr(row, name) for name in type(public).model_fields}
    return public.model_dump(mode="json", by_alias=True), unmasked


def _plan(
    action: Literal["create", "update", "delete"],
    kind: CatalogKind,
    row_id: int | None,
    before: Seen,
    after: Seen,
    used_by: list[int],
) -> CatalogPlan:
    (old, old_values), (new, new_values) = before, after
    return CatalogPlan(
        action=action,
        kind=kind,
        id=row_id,
        changes=field_changes(
            shown=(old, new), unmasked=(old_values, new_values), skipped=_BOOKKEEPING
        ),
        used_by=used_by,
    )


def plan_create(row: Row) -> JSONResponse:
    """What the create would insert: `row` as the create's own checks built it
    (`crud.new_project`, `crud.new_endpoint`), not added, so that PostgreSQL spends no
    sequence id on it."""
    row.id = 0  # stands in for the id given on commit, which a plan leaves out
    return planned(_plan("create", _kind(row), None, _seen(None), _seen(row), used_by=[]))


async def plan_change(
    session: AsyncSession,
    *,
    action: Literal["update", "delete"],
    row: Row,
    change: Callable[[], Awaitable[object]],
) -> JSONResponse:
    """Run `change`, the real crud call that updates or deletes `row`, and roll it back.

    An update of a source or destination names the connectors that use it: their next runs
    read the change. A project's fields reach no run.
    """
    kind, row_id, before = _kind(row), row.id, _seen(row)
    await change()
    after = _seen(None if action == "delete" else row)
    used_by = []
    if action == "update" and not isinstance(row, Project):
        users = await crud.endpoint_users(session=session, kind=_KINDS[type(row)], endpoint=row)
        used_by = [user.id for user in users]
    # What the plan needs is read: the rollback expires the row.
    await session.rollback()
    return planned(_plan(action, kind, row_id, before, after, used_by))
