"""What every model shares: camelCase on the wire, UTC timestamps, validators of the edge."""

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from annotated_types import Interval
from croniter import CroniterBadDateError, croniter
from prefect.server.schemas.schedules import CronSchedule  # what the scheduler reads
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import to_jsonable_python
from sqlalchemy import JSON, DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from control_plane.durations import MAX_PAUSE, check_staleness, minutes_if_number
from control_plane.titles import field_title

MAX_JSON_DEPTH = 32

# Ids, counts and offsets are INTEGER columns: PostgreSQL's int4.
MAX_INT = 2**31 - 1
Id = Annotated[int, Interval(ge=1, le=MAX_INT)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every timestamp we store is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


@lru_cache(maxsize=4096)  # connectors share few schedules, and answers validate them too
def check_cron(value: str | None) -> str | None:
    """A five-field cron expression (minute hour day-of-month month day-of-week), or None."""
    if value is None:
        return None
    value = " ".join(value.split())
    if len(value.split(" ")) != 5 or not croniter.is_valid(value) or not _prefect_takes(value):
        raise ValueError(
            f"{value!r} is not a cron expression of five fields "
            "(minute hour day-of-month month day-of-week), e.g. '0 */4 * * *'"
        )
    try:
        croniter(value, utcnow()).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(
            f"{value!r} never fires: no month has that day (e.g. 30 February)"
        ) from None
    return value


def _prefect_takes(cron: str, timezone: str = "UTC") -> bool:
    """Whether Prefect's own schedule accepts them: its croniter is a vendored one, and its
    zones are the IANA database's names (not `posixrules` or `right/UTC`)."""
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError:
        return False
    return True


@lru_cache(maxsize=1024)  # Prefect's check reads the list of zones from disk
def check_timezone(value: str) -> str:
    """An IANA time zone name such as 'UTC' or 'Europe/Berlin'."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        valid = False
    else:
        valid = _prefect_takes("0 0 * * *", value)
    if not valid:
        raise ValueError(
            f"{value!r} is not an IANA time zone name, e.g. 'UTC' or 'Europe/Berlin'"
        ) from None
    return value


Reason = Annotated[str, StringConstraints(min_length=1, max_length=500)]


def check_pause_end(value: datetime) -> datetime:
    """A time within the next year, with its zone: when a pause or a freeze ends by itself."""
    if value.tzinfo is None:
        raise ValueError("has no time zone; give one, e.g. 2026-12-24T08:00:00Z")
    now = utcnow()
    if value <= now:
        raise ValueError("is not in the future; give a later time")
    if value > now + MAX_PAUSE:
        raise ValueError("is more than 366 days ahead; give an earlier time")
    return value


PauseEnd = Annotated[datetime, AfterValidator(check_pause_end)]
# An ISO 8601 duration (PT6H), or a number of minutes.
Staleness = Annotated[
    timedelta, BeforeValidator(minutes_if_number), AfterValidator(check_staleness)
]


def timestamp_field() -> datetime:
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class ModelsJSON(TypeDecorator[Any]):
    """A JSON column of models (notification routes, selected streams): written from models or
    dicts alike, read back as dicts."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else to_jsonable_python(value)


class _Row(Protocol):
    @property
    def id(self) -> int | None: ...


def saved_id(row: _Row) -> int:
    """The id of a table row the database has given one (loaded, or flushed); None before."""
    if row.id is None:
        raise ValueError(f"{type(row).__name__} has no id before it is flushed")
    return row.id


class ApiModel(SQLModel):
    """Request and response bodies: camelCase JSON, snake_case Python."""

    # SQLModel types model_config as its SQLModelConfig (a ConfigDict with its table options),
    # which it exports from no public module.
    model_config = ConfigDict(  # type: ignore[assignment]
        alias_generator=to_camel, populate_by_name=True, field_title_generator=field_title
    )


class InputModel(ApiModel):
    """Request bodies refuse fields they do not know, so a typo is a 422, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return check_json_value(value)


class UpdateModel(InputModel):
    """A PATCH body: every field optional; an explicit null only where `nullable` allows it."""

    nullable: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="after")
    @classmethod
    def _no_null_for_required(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name not in cls.nullable:
            raise ValueError("cannot be null; leave the field out to keep its value")
        return value


def check_json_value(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A field's value, unchanged, if it nests at most `max_depth` levels and every string in
    it, keys too, can be stored: no NUL, no lone surrogate (JSON's `\\ud800` escapes allow
    both; PostgreSQL refuses NUL and neither database can encode a surrogate).

    Meant as a pydantic validator of request bodies (`mode="after"`), so the 422 names the
    field; a dict or list counts one level, a string or number none.

    Raises:
        ValueError: saying what is wrong and where in the value.
    """
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, str):
            _check_text(item, "contains", where)
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise ValueError(
                    f"nested deeper than {max_depth} levels{_at(where)}; flatten the value"
                )
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str):
                    _check_text(key, "has a key with", where)
                stack.append((child, depth + 1, f"{where}.{key}" if where else str(key)))
    return value


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _check_text(text: str, verb: str, where: str) -> None:
    found = _UNSTORABLE.search(text)
    if found is None:
        return
    if found.group() == "\x00":
        raise ValueError(f"{verb} a NUL character (\\u0000){_at(where)}; remove it")
    character = f"\\u{ord(found.group()):04x}"
    raise ValueError(f"{verb} a lone surrogate ({character}){_at(where)}; send valid Unicode text")


def _at(where: str) -> str:
    if not where:
        return ""
    return f" at {where if len(where) <= 80 else where[:77] + '...'}"
