"""What a change would do, answered by `?dryRun=true` without doing it: of a connector, or of
the catalog (a project, a defined source or destination)."""

from collections.abc import Mapping, Sequence, Set
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from sqlmodel import Field

from models.base import ApiModel
from models.schedule import ScheduledRun


class FieldChange(ApiModel):
    field: str = Field(description="The API's field name; nested config keys are not split.")
    before: Any = Field(default=None, description="Null on create; secrets masked.")
    after: Any = Field(default=None, description="Null on delete; secrets masked.")
    secret_changed: bool = Field(
        default=False, description="A secret in it changes, which the masked values hide."
    )


def field_changes(
    *,
    shown: Sequence[Mapping[str, Any]],
    unmasked: Sequence[Mapping[str, Any]],
    skipped: Set[str],
) -> list[FieldChange]:
    """Field by field from before to after (`{}` where there is no row), as the API shows them.

    `unmasked` holds the same fields with their secrets, only to tell a change the masks hide,
    which shows as `secretChanged`; its values are never answered.
    """
    (old_shown, new_shown), (old_values, new_values) = shown, unmasked
    changed = []
    for field in new_shown or old_shown:
        old, new = old_shown.get(field), new_shown.get(field)
        if field in skipped or old_values.get(field) == new_values.get(field):
            continue
        changed.append(FieldChange(field=field, before=old, after=new, secret_changed=old == new))
    return changed


DeploymentAction = Literal["create", "update", "delete", "none"]
WhyDropped = Literal[
    "cancelled", "deleted with the deployment", "deleted by the deployment's update"
]


class DeploymentPlan(ApiModel):
    action: DeploymentAction = Field(
        description="update: the schedule is patched in place (same schedule id)."
    )
    name: str | None = Field(description="The connector's deployment, connector-<id>.")
    differences: list[FieldChange] = Field(description="The deployment's fields that change.")


class RunDropped(ApiModel):
    flow_run_id: UUID
    state: str
    scheduled_at: datetime | None
    why: WhyDropped


class ConnectorPlan(ApiModel):
    dry_run: Literal[True] = True
    action: Literal["create", "update", "delete"]
    connector_id: int | None = Field(description="Null on create: the id is given on commit.")
    changes: list[FieldChange]
    deployment: DeploymentPlan
    runs_dropped: list[RunDropped] = Field(description="Runs the change would end or remove.")
    next_runs: list[ScheduledRun] = Field(description="The first runs after the change.")
    warnings: list[str] = Field(description="What DST does to the schedule within a year.")


CatalogKind = Literal["project", "source", "destination"]
CATALOG_NAMES: dict[CatalogKind, str] = {
    "project": "project",
    "source": "defined source",
    "destination": "defined destination",
}


class CatalogPlan(ApiModel):
    dry_run: Literal[True] = True
    action: Literal["create", "update", "delete"]
    kind: CatalogKind
    id: int | None = Field(description="Null on create: the id is given on commit.")
    changes: list[FieldChange]
    used_by: list[int] = Field(
        description="On a source's or destination's update, the connectors that use it: their "
        "next runs read the change. Empty otherwise (a project's fields reach no run)."
    )
