"""Connection checks: what was checked, by whom, and each step's result."""

from datetime import datetime
from typing import Any, Literal
from uuid import UUID, uuid4

from sqlalchemy import JSON, DateTime
from sqlmodel import Field

from control_plane.connectors import Kind, StepName
from control_plane.connectors.checks import StepStatus
from control_plane.encryption import EncryptedJSON
from models.base import ApiModel, Id, InputModel, UtcDatetime, timestamp_field
from models.catalog import InputConfig
from models.connector import DestinationOverride, SourceOverride

CheckStatus = Literal["pending", "passed", "failed"]


class ConnectionCheck(ApiModel, table=True):
    """One check, from its request to its result. `target` holds the configs to check (merged,
    with their secrets, encrypted like every stored config) until the check has run."""

    __tablename__ = "connection_check"
    id: UUID = Field(default_factory=uuid4, primary_key=True)
    project_id: int = Field(index=True)
    subject: str = Field(max_length=300)  # "connector 7", "defined source 3", "unsaved ..."
    connector_id: int | None = Field(default=None, index=True)
    # {"source": {"type", "config"}, "destination": {...}}: either side, or both.
    target: dict[str, Any] | None = Field(default=None, sa_type=EncryptedJSON)
    # A keyed hash of `target`: a passed check counts for activation while it still matches.
    fingerprint: str = Field(max_length=64)
    actor: str = Field(max_length=200)
    status: str = Field(default="pending", max_length=20)
    # A discovery: a check of a source that lists its streams too, kept in `streams`.
    discover: bool = False
    steps: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    streams: list[dict[str, Any]] | None = Field(default=None, sa_type=JSON)
    message: str | None = None
    flow_run_id: UUID | None = None
    created_at: datetime = timestamp_field()
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class CheckStepPublic(ApiModel):
    kind: Kind
    name: StepName
    status: StepStatus
    message: str


class CheckPublic(ApiModel):
    id: UUID
    subject: str
    status: CheckStatus
    message: str | None = None
    steps: list[CheckStepPublic]
    flow_run_id: UUID | None = None
    created_at: UtcDatetime
    finished_at: UtcDatetime | None = None


class StreamPublic(ApiModel):
    name: str
    namespace: str | None = Field(default=None, description="Its schema, in a database.")
    json_schema: dict[str, Any] = Field(description="The JSON schema of its records.")
    primary_key: list[str] = Field(description="Its key's fields, where the source says.")
    cursor_candidates: list[str] = Field(
        description="Fields whose type a cursor can have (numbers, dates, timestamps)."
    )


class StreamsPublic(ApiModel):
    streams: list[StreamPublic] = Field(description="Empty when the discovery failed.")
    check: CheckPublic = Field(description="The discovery's run and steps: why, if it failed.")


class EndpointCheckRequest(InputModel):
    """A defined source's or destination's config not saved yet, to check before it is."""

    project_id: Id
    type: str = Field(max_length=100)
    config: InputConfig = Field(default_factory=dict)


class ConnectorCheckRequest(InputModel):
    """A connector not saved yet: the defined source and destination it would move between,
    with the overrides it would lay over their configs."""

    project_id: Id
    defined_source_id: Id
    defined_destination_id: Id
    source_config_override: SourceOverride = Field(default_factory=dict)
    destination_config_override: DestinationOverride = Field(default_factory=dict)
