"""One request that acts on many connectors: which ones (a selector), what to do, and what
came of it for each."""

from typing import Literal, Self
from uuid import UUID

from pydantic import model_validator
from sqlmodel import Field

from models.base import MAX_INT, ApiModel, Id, InputModel, UpdateModel
from models.catalog import Owners
from models.connector import (
    MAX_RETRIES,
    MAX_SECONDS,
    Cron,
    Labels,
    PauseEnd,
    Reason,
    Timezone,
)
from models.plan import FieldChange

MAX_BULK = 500


class BulkSelector(InputModel):
    """The connectors that match every criterion given; at least one is required."""

    ids: list[Id] | None = Field(default=None, max_length=MAX_BULK)
    project_id: Id | None = None
    labels: Labels | None = Field(default=None, description="Connectors with all of them.")

    @model_validator(mode="after")
    def _not_everything(self) -> Self:
        if self.ids is None and self.project_id is None and not self.labels:
            raise ValueError("select by ids, projectId or labels; a bulk action never means all")
        return self


class BulkChanges(UpdateModel):
    """The fields a bulk update may set; a field left out keeps each connector's value."""

    nullable = frozenset(
        {"schedule", "paused_until", "pause_reason", "max_consecutive_failures", "retries"}
        | {"retry_delay_seconds", "timeout_seconds"}
    )

    is_active: bool | None = None
    schedule: Cron | None = None
    timezone: Timezone | None = None
    paused_until: PauseEnd | None = None
    pause_reason: Reason | None = None
    labels: Labels | None = None
    owners: Owners | None = None
    max_consecutive_failures: int | None = Field(default=None, ge=0, le=MAX_INT)
    retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES)
    retry_delay_seconds: int | None = Field(default=None, ge=0, le=MAX_SECONDS)
    timeout_seconds: int | None = Field(default=None, ge=0, le=MAX_SECONDS)


BulkActionName = Literal["update", "deactivate", "trigger"]


class BulkRequest(InputModel):
    selector: BulkSelector
    action: BulkActionName = Field(
        description="update: set `changes` (activate, pause, reschedule, owners, labels...); "
        "deactivate: with a `reason`; trigger: run each now."
    )
    changes: BulkChanges | None = None
    reason: Reason | None = Field(default=None, description="Why; required to deactivate.")

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.action == "update" and not (self.changes and self.changes.model_fields_set):
            raise ValueError('action update needs changes, e.g. {"isActive": true}')
        if self.action != "update" and self.changes is not None:
            raise ValueError(f"action {self.action} takes no changes; use action update")
        if self.action == "deactivate" and not self.reason:
            raise ValueError("action deactivate needs a reason")
        return self


class BulkOutcome(ApiModel):
    connector_id: int
    outcome: Literal["changed", "unchanged", "planned", "failed"] = Field(
        description="unchanged: nothing to do, no control run; planned: on a dry run."
    )
    flow_run_id: UUID | None = Field(description="The connector's control run, if one ran.")
    sync_run_id: UUID | None = Field(default=None, description="On trigger: the run started.")
    changes: list[FieldChange] = Field(default_factory=list)
    error: str | None = None


class BulkResult(ApiModel):
    action: BulkActionName
    dry_run: bool
    flow_run_id: UUID = Field(description="The bulk request's own control run.")
    selected: int
    changed: int
    failed: int
    results: list[BulkOutcome]
