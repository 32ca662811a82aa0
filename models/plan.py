"""What a change of a connector would do, answered by `?dryRun=true` without doing it."""

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


class DeploymentPlan(ApiModel):
    action: Literal["create", "update", "delete", "none"] = Field(
        description="update: the schedule is patched in place (same schedule id)."
    )
    name: str | None = Field(description="The connector's deployment, connector-<id>.")
    differences: list[FieldChange] = Field(description="The deployment's fields that change.")


class RunDropped(ApiModel):
    flow_run_id: UUID
    state: str
    scheduled_at: datetime | None
    why: Literal["cancelled", "deleted with the deployment", "deleted by the deployment's update"]


class ConnectorPlan(ApiModel):
    dry_run: Literal[True] = True
    action: Literal["create", "update", "delete"]
    connector_id: int | None = Field(description="Null on create: the id is given on commit.")
    changes: list[FieldChange]
    deployment: DeploymentPlan
    runs_dropped: list[RunDropped] = Field(description="Runs the change would end or remove.")
    next_runs: list[ScheduledRun] = Field(description="The first runs after the change.")
    warnings: list[str] = Field(description="What DST does to the schedule within a year.")
