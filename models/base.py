"""What every model shares: camelCase on the wire, UTC timestamps, validators of the edge."""

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import AfterValidator, ConfigDict, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel
from sqlalchemy import DateTime
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every timestamp we store is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


def check_cron(value: str | None) -> str | None:
    """A five-field cron expression (minute hour day-of-month month day-of-week), or None."""
    if value is None:
        return None
    value = " ".join(value.split())
    if len(value.split(" ")) != 5 or not croniter.is_valid(value):
        raise ValueError(
            f"{value!r} is not a cron expression of five fields "
            "(minute hour day-of-month month day-of-week), e.g. '0 */4 * * *'"
        )
    return value


def check_timezone(value: str) -> str:
    """An IANA time zone name such as 'UTC' or 'Europe/Berlin'."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{value!r} is not an IANA time zone name, e.g. 'UTC' or 'Europe/Berlin'"
        ) from None
    return value


def timestamp_field() -> datetime:
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class ApiModel(SQLModel):
    """Request and response bodies: camelCase JSON, snake_case Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class InputModel(ApiModel):
    """Request bodies refuse fields they do not know, so a typo is a 422, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class UpdateModel(InputModel):
    """A PATCH body: every field optional; an explicit null only where `nullable` allows it."""

    nullable: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="after")
    @classmethod
    def _no_null_for_required(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name not in cls.nullable:
            raise ValueError("cannot be null; leave the field out to keep its value")
        return value
