"""The connector: a schedule that moves data from a defined source to a defined destination."""

from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, PlainSerializer, StringConstraints, computed_field
from sqlalchemy import JSON, DateTime, Interval, UniqueConstraint
from sqlmodel import Field

from control_plane import schedules
from control_plane.connectors import MAX_STREAMS, SelectedStream, mask_secrets
from control_plane.encryption import EncryptedJSON
from models.base import (
    MAX_INT,
    ApiModel,
    Id,
    InputModel,
    ModelsJSON,
    PauseEnd,
    Reason,
    Staleness,
    UpdateModel,
    UtcDatetime,
    as_utc,
    check_cron,
    check_timezone,
    timestamp_field,
    utcnow,
)
from models.catalog import Description, Name, Owners, Timestamps
from models.notifications import Routes

Cron = Annotated[str, AfterValidator(check_cron)]
Timezone = Annotated[str, AfterValidator(check_timezone)]
MAX_RETRIES = 10
MAX_SECONDS = 7 * 24 * 3600
MAX_LABELS = 32
# Labels select connectors (list filters, bulk actions): a word, or key:value, key=value.
Label = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/=-]{0,62}$")]
Labels = Annotated[
    list[Label], Field(max_length=MAX_LABELS), AfterValidator(lambda labels: sorted(set(labels)))
]


def _distinct(streams: list[SelectedStream]) -> list[SelectedStream]:
    for what, names in (
        ("name", [s.name for s in streams]),
        ("destinationName", [s.target for s in streams if s.target is not None]),
    ):
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"each stream's {what} must differ: {', '.join(twice)} twice")
    return streams


Streams = Annotated[
    list[SelectedStream], Field(min_length=1, max_length=MAX_STREAMS), AfterValidator(_distinct)
]
# Overrides travel as control flow parameters, which Prefect stores: their JSON form (flow run
# parameters and API answers alike) masks the secret values.
SourceOverride = Annotated[
    dict[str, Any], PlainSerializer(partial(mask_secrets, "source"), when_used="json")
]
DestinationOverride = Annotated[
    dict[str, Any], PlainSerializer(partial(mask_secrets, "destination"), when_used="json")
]


class ConnectorBase(ApiModel):
    name: Name = Field(
        description="Unique within the project.", schema_extra={"examples": ["orders-hourly"]}
    )
    description: Description | None = None
    project_id: int = Field(foreign_key="project.id", index=True, ge=1, le=MAX_INT)
    defined_source_id: int = Field(foreign_key="defined_source.id", index=True, ge=1, le=MAX_INT)
    defined_destination_id: int = Field(
        foreign_key="defined_destination.id", index=True, ge=1, le=MAX_INT
    )
    schedule: Cron | None = Field(
        default=None,
        description="Five-field cron expression, e.g. '0 */4 * * *'; null for manual runs only.",
        schema_extra={"examples": ["0 */4 * * *"]},
    )
    timezone: Timezone = Field(
        default="UTC",
        description="IANA time zone of the schedule.",
        schema_extra={"examples": ["America/New_York"]},
    )
    is_active: bool = Field(
        default=True, description="Inactive connectors have no deployment and never run."
    )
    source_config_override: SourceOverride = Field(
        default_factory=dict,
        sa_type=EncryptedJSON,
        description="Merged over the defined source's config for this connector's runs.",
    )
    destination_config_override: DestinationOverride = Field(
        default_factory=dict,
        sa_type=EncryptedJSON,
        description="Merged over the defined destination's config for this connector's runs.",
    )
    max_consecutive_failures: int | None = Field(
        default=None,
        ge=0,
        le=MAX_INT,
        description=(
            "Failed runs in a row after which the connector deactivates itself; "
            "null: the setting's default; 0: never."
        ),
    )
    retries: int | None = Field(
        default=None,
        ge=0,
        le=MAX_RETRIES,
        description=(
            "Times a failed sync run is tried again (Prefect's flow retries) before it counts as "
            "a failure; null: the setting's default."
        ),
    )
    retry_delay_seconds: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SECONDS,
        description="Seconds between a failed try and the next; null: the setting's default.",
    )
    timeout_seconds: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SECONDS,
        description=(
            "Seconds a sync run may take before it fails and its partial load is rolled back; "
            "null: the setting's default; 0: no limit."
        ),
    )
    streams: Streams | None = Field(
        default=None,
        sa_type=ModelsJSON,
        description=(
            "The source's streams it moves, each with its sync mode and cursor; null: the "
            "source as configured, one stream."
        ),
    )
    labels: Labels = Field(
        default_factory=list,
        sa_type=JSON,
        description="Free-form labels (a word or key:value) for list filters and bulk actions.",
        schema_extra={"examples": [["team:finance", "tier-1"]]},
    )
    owners: Owners = Field(
        default_factory=list,
        sa_type=JSON,
        description=(
            "Who answers for the connector: people or teams, e.g. e-mail addresses; shown in "
            "its notifications. Empty: its project's owners."
        ),
    )
    notifications: Routes | None = Field(
        default=None,
        sa_type=ModelsJSON,
        description=(
            "Which of its events go to which Prefect notification block; null: its project's "
            "routes; []: none."
        ),
    )
    paused_until: UtcDatetime | None = Field(
        default=None,
        description=(
            "While set, scheduled runs stop and triggers are refused; at this time the "
            "connector resumes by itself. Null: not paused."
        ),
    )
    pause_reason: Reason | None = Field(default=None, description="Why it is paused.")
    max_staleness: Staleness | None = Field(
        default=None,
        sa_type=Interval,
        description=(
            "Freshness SLA: with no successful run for this long (ISO 8601, e.g. PT6H, or "
            "minutes), the connector is stale; null: the setting's default; 0: none."
        ),
        schema_extra={"examples": ["PT6H"]},
    )

    def paused(self, now: datetime) -> bool:
        return self.paused_until is not None and as_utc(self.paused_until) > now

    def pause_text(self) -> str:
        """`paused until <time>: <reason>`, for refusals and logs."""
        assert self.paused_until is not None
        until = as_utc(self.paused_until).isoformat()
        return f"paused until {until}" + (f": {self.pause_reason}" if self.pause_reason else "")


class ConnectorStatus(ApiModel):
    """What the connector's sync runs did lately; written by the sync flow only."""

    last_run_at: UtcDatetime | None = None
    last_run_state: str | None = None
    last_success_at: UtcDatetime | None = None
    last_failure_at: UtcDatetime | None = None
    consecutive_failures: int = 0
    status_reason: str | None = None
    stale_since: UtcDatetime | None = Field(
        default=None,
        description="Since when it has been stale (its SLA missed); null while fresh.",
    )


class Connector(ConnectorBase, ConnectorStatus, table=True):
    # Ids are never reused, so `connector:<id>` in Prefect's audit log names one connector ever.
    __table_args__ = (UniqueConstraint("project_id", "name"), {"sqlite_autoincrement": True})
    id: int | None = Field(default=None, primary_key=True)
    prefect_deployment_id: UUID | None = None
    last_run_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    last_success_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    last_failure_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    paused_until: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    stale_since: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    consecutive_failures: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Counts the changes made through the control flows; the ETag of the connector.
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    # Counts its resets: a run that started before the last one does not save its cursor.
    resets: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


@dataclass(frozen=True)
class ConnectorContext:
    """What a connector's deployment tells beside the connector's own fields: its catalog's
    names and types (never a config), and whether its project is frozen."""

    project: str
    source_type: str
    destination_type: str
    project_frozen: bool


_PAUSE_END = "The time (with its zone) the pause ends; null: not paused."


class ConnectorCreate(ConnectorBase, InputModel):
    paused_until: PauseEnd | None = Field(default=None, description=_PAUSE_END)


class ConnectorUpdate(UpdateModel):
    """Any field of a connector; a field left out keeps its value."""

    nullable = frozenset(
        {
            "description",
            "schedule",
            "max_consecutive_failures",
            "retries",
            "retry_delay_seconds",
            "timeout_seconds",
            "paused_until",
            "pause_reason",
            "max_staleness",
            "notifications",
            "streams",
        }
    )

    name: Name | None = None
    description: Description | None = None
    project_id: Id | None = None
    defined_source_id: Id | None = None
    defined_destination_id: Id | None = None
    schedule: Cron | None = None
    timezone: Timezone | None = None
    is_active: bool | None = None
    source_config_override: SourceOverride | None = None
    destination_config_override: DestinationOverride | None = None
    streams: Streams | None = None
    max_consecutive_failures: int | None = Field(default=None, ge=0, le=MAX_INT)
    retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES)
    retry_delay_seconds: int | None = Field(default=None, ge=0, le=MAX_SECONDS)
    timeout_seconds: int | None = Field(default=None, ge=0, le=MAX_SECONDS)
    labels: Labels | None = None
    owners: Owners | None = None
    notifications: Routes | None = None
    paused_until: PauseEnd | None = Field(default=None, description=_PAUSE_END)
    pause_reason: Reason | None = None
    max_staleness: Staleness | None = None


class ConnectorPublic(ConnectorBase, ConnectorStatus, Timestamps):
    # As stored, not checked again: a value stored before a check was added still reads.
    schedule: str | None = Field(default=None, description="Five-field cron expression.")
    timezone: str = Field(default="UTC", description="IANA time zone of the schedule.")
    id: int
    version: int = Field(description="Grows with every change; the ETag of the connector.")
    prefect_deployment_id: UUID | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def next_run_at(self) -> datetime | None:
        """When the schedule fires next (UTC); null when inactive or manual only."""
        if not (self.is_active and self.schedule):
            return None
        now = utcnow().replace(second=0, microsecond=0)
        return schedules.next_fire(self.schedule, self.timezone, now)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def freshness(self) -> Literal["fresh", "stale"]:
        """stale: it missed its freshness SLA (maxStaleness) since `staleSince`; its next
        successful run makes it fresh again."""
        return "stale" if self.stale_since else "fresh"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def schedule_warnings(self) -> list[str]:
        """What daylight saving time does to the schedule within a year: a run that moves, is
        skipped or runs once where its local time happens twice. Never blocks a change;
        `GET /connectors/{id}/schedule` shows each run."""
        return schedules.warnings(self.schedule, self.timezone, utcnow())


class ConnectorsPublic(ApiModel):
    data: list[ConnectorPublic]
    count: int


OnConflict = Literal["queue", "reject"]


class TriggerRequest(InputModel):
    on_conflict: OnConflict = Field(
        default="queue",
        description="While a run is active: queue this one after it, or refuse with 409.",
    )


class TriggerResult(ApiModel):
    status: str = "success"
    result: str = "Flow execution started"
    flow_run_id: UUID


class DriftPublic(ApiModel):
    connector_id: int
    in_sync: bool
    action: Literal["create", "update", "delete", "relink"] | None = None
    differences: list[str] = Field(default_factory=list)
