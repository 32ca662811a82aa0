"""Dry runs (`?dryRun=true`): every plan's 200 answer, and the plans of the catalog's writes.

A catalog plan runs the real crud call in the request's session, then rolls back instead of
committing, so every check and every refusal is the real call's. Plain requests: no control
flow run, nothing recorded (the writes they plan are control flow runs, `flows.catalog`).
"""

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi.responses import JSONResponse
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane import catalog, crud
from models import CatalogPlan, Project
from models.base import ApiModel, saved_id

PLANNED: dict[int | str, dict[str, Any]] = {
    200: {"model": CatalogPlan, "description": "With dryRun=true: the plan."}
}


def planned(plan: ApiModel) -> JSONResponse:
    """The plan as a 200, whatever status and model the route answers otherwise."""
    return JSONResponse(plan.model_dump(mode="json", by_alias=True))


def plan_create(row: catalog.Row) -> JSONResponse:
    """What the create would insert: `row` as the create's own checks built it
    (`crud.new_project`, `crud.new_endpoint`), not added, so that PostgreSQL spends no
    sequence id on it."""
    row.id = 0  # stands in for the id given on commit, which a plan leaves out
    changes = catalog.changes(catalog.seen(None), catalog.seen(row))
    plan = CatalogPlan(
        action="create", kind=catalog.kind_of(row), id=None, changes=changes, used_by=[]
    )
    return planned(plan)


async def plan_change(
    session: AsyncSession,
    *,
    action: Literal["update", "delete"],
    row: catalog.Row,
    change: Callable[[], Awaitable[object]],
) -> JSONResponse:
    """Run `change`, the real crud call that updates or deletes `row`, and roll it back.

    An update of a source or destination names the connectors that use it: their next runs
    read the change. A project's fields reach no run.
    """
    kind, row_id, before = catalog.kind_of(row), row.id, catalog.seen(row)
    await change()
    after = catalog.seen(None if action == "delete" else row)
    used_by = []
    if action == "update" and not isinstance(row, Project):
        users = await crud.endpoint_users(
            session=session, kind=catalog.KINDS[type(row)], endpoint=row
        )
        used_by = [saved_id(user) for user in users]
    # What the plan needs is read: the rollback expires the row.
    await session.rollback()
    plan = CatalogPlan(
        action=action, kind=kind, id=row_id, changes=catalog.changes(before, after), used_by=used_by
    )
    return planned(plan)
