"""A connector's audit trail, read back from Prefect: its control runs, newest first."""

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlmodel import Field

from models.base import ApiModel
from models.plan import FieldChange


class AskedField(ApiModel):
    field: str
    value: Any = Field(default=None, description="As the run was asked; secrets masked.")


class HistoryEntry(ApiModel):
    flow_run_id: UUID
    action: str = Field(description="The control flow, e.g. update-connector.")
    name: str = Field(description="What the run did, in words: the run's name in Prefect.")
    actor: str | None = Field(description="Who asked: the token's sub, or prefect-ui.")
    at: datetime | None = Field(description="When the run started (or was to start).")
    state: str
    changes: list[FieldChange] = Field(description="Before and after, secrets masked.")
    refused: str | None = Field(default=None, description="Why a refused run was refused.")
    asked: list[AskedField] = Field(
        default_factory=list, description="What a refused run was asked to do."
    )


class HistoryPublic(ApiModel):
    data: list[HistoryEntry]
    count: int
