"""Projects and the defined sources and destinations that connectors move data between."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, PlainSerializer, StringConstraints
from sqlalchemy import JSON, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel

from control_plane.connectors import mask_secrets
from control_plane.encryption import EncryptedJSON
from models.base import (
    MAX_INT,
    ApiModel,
    InputModel,
    ModelsJSON,
    PauseEnd,
    Reason,
    UpdateModel,
    UtcDatetime,
    as_utc,
    timestamp_field,
)
from models.notifications import Routes

Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Description = Annotated[str, StringConstraints(max_length=2000)]
MAX_OWNERS = 32
Owner = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Owners = Annotated[
    list[Owner],
    Field(max_length=MAX_OWNERS),
    AfterValidator(lambda owners: list(dict.fromkeys(owners))),
]


def _masked(config: dict[str, Any]) -> dict[str, Any]:
    return mask_secrets("destination", mask_secrets("source", config))


# A config sent to be saved travels as a control flow parameter, which Prefect stores: its JSON
# form masks the secrets of every type (what kind it is for, the route knows).
InputConfig = Annotated[dict[str, Any], PlainSerializer(_masked, when_used="json")]


class ProjectBase(ApiModel):
    name: Name
    description: Description | None = None
    owners: Owners = Field(
        default_factory=list,
        sa_type=JSON,
        description="Who answers for its connectors that name no owners of their own.",
    )
    notifications: Routes = Field(
        default_factory=list,
        sa_type=ModelsJSON,
        description=(
            "Which events of its connectors go to which Prefect notification block, for "
            "connectors with no routes of their own."
        ),
    )


class Freeze(ApiModel):
    """What a project's freeze says; set by `POST /projects/{id}/freeze` only."""

    freeze_reason: str | None = Field(
        default=None,
        description="While set, the project is frozen: its connectors' scheduled runs stop and "
        "their triggers are refused.",
    )
    frozen_until: UtcDatetime | None = Field(
        default=None, description="When the freeze ends by itself; null: when someone ends it."
    )


class Project(ProjectBase, Freeze, table=True):
    __table_args__ = {"sqlite_autoincrement": True}
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    frozen_until: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))

    def freeze_text(self) -> str:
        """`project 3 is frozen until <time>: <reason>`, for refusals and logs."""
        until = f" until {as_utc(self.frozen_until).isoformat()}" if self.frozen_until else ""
        return f"project {self.id} is frozen{until}: {self.freeze_reason}"

    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


class ProjectCreate(ProjectBase, InputModel):
    pass


class ProjectUpdate(UpdateModel):
    nullable = frozenset({"description"})

    name: Name | None = None
    description: Description | None = None
    owners: Owners | None = None
    notifications: Routes | None = None


class Timestamps(ApiModel):
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ProjectPublic(ProjectBase, Freeze, Timestamps):
    id: int


class FreezeRequest(InputModel):
    reason: Reason = Field(description="Why, e.g. 'quarter-end close'; shown in refusals.")
    until: PauseEnd | None = Field(
        default=None, description="When it ends by itself (with its zone); null: no end set."
    )


class ProjectsPublic(ApiModel):
    data: list[ProjectPublic]
    count: int


class EndpointBase(ApiModel):
    """What a defined source and a defined destination share: a typed, validated config."""

    name: Name
    type: str = Field(max_length=100)
    config: dict[str, Any] = Field(default_factory=dict, sa_type=EncryptedJSON)
    project_id: int = Field(foreign_key="project.id", index=True, ge=1, le=MAX_INT)


MAX_CONCURRENT_RUNS = 1000
# Prefect's work queue of the destination holds its connectors' runs: it takes this many at once.
RunLimit = Annotated[int, Field(ge=1, le=MAX_CONCURRENT_RUNS)]
_RUN_LIMIT = (
    "Defined destinations only: how many sync runs may write into it at once; more wait their "
    "turn. Null: no limit."
)


class EndpointCreate(EndpointBase, InputModel):
    config: InputConfig = Field(default_factory=dict)
    max_concurrent_runs: RunLimit | None = Field(default=None, description=_RUN_LIMIT)


class EndpointUpdate(UpdateModel):
    nullable = frozenset({"max_concurrent_runs"})

    name: Name | None = None
    type: str | None = None
    config: InputConfig | None = None
    max_concurrent_runs: RunLimit | None = Field(default=None, description=_RUN_LIMIT)


class EndpointPublic(EndpointBase, Timestamps):
    id: int
    max_concurrent_runs: int | None = Field(default=None, description=_RUN_LIMIT)


class EndpointsPublic(ApiModel):
    data: list[EndpointPublic]
    count: int


class DefinedSource(EndpointBase, table=True):
    __tablename__ = "defined_source"
    __table_args__ = (UniqueConstraint("project_id", "name"), {"sqlite_autoincrement": True})
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


class DefinedDestination(EndpointBase, table=True):
    __tablename__ = "defined_destination"
    __table_args__ = (UniqueConstraint("project_id", "name"), {"sqlite_autoincrement": True})
    id: int | None = Field(default=None, primary_key=True)
    max_concurrent_runs: int | None = None
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


class TypePublic(ApiModel):
    kind: str
    type: str
    config_schema: dict[str, Any]


class TypesPublic(SQLModel):
    data: list[TypePublic]
