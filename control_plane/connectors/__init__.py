"""Source and destination types: plugins found through the `control_plane.connectors` entry points.

A type is a class with a `kind` ("source" or "destination"), a `name` (what `type` says in a
defined source or destination) and a pydantic `Config` model that its `config` must fit.
Third-party packages register their own types under the same entry-point group.

A source reads records in batches, and when it has a cursor field it resumes after the largest
cursor value of the last successful run. A destination writes the batches it is given, as one
unit where it can (a database transaction), and can merge on a key.

Loads are exactly-once where the destination keeps load state (`keeps_loads`): a run hands
`write` a `Load`
(its stream, its id, and the cursor it moves while the batches are read), and the destination
records it in the same unit as the records. The run saves its cursor in the control plane's
database only afterwards, so a crash between the two commits leaves the destination ahead;
the next run asks `last_load` what the destination really committed and resumes from there
instead of reading those records again. A destination without load state (the default, for
types written before it) is written as `write(batches)`, at-least-once across such a crash.

Config fields declared with `secret_field()` (tokens, passwords, headers) or
`url_field()` (a URL whose password and secret-looking query parameters are secret) are masked
in API answers.

What a config names on the worker's disk or network is typed with `SourcePath`, `TargetPath`,
`DatabaseUrl` or `HttpUrl`: they are checked against the project's scope (`control_plane.policy`)
when the config is saved and when a run plans, and the type opens them through the same scope.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime, time
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from sqlalchemy.types import TypeEngine

from control_plane.connectors._urls import MASK, mask_url, origin, secrets_of, with_secrets
from control_plane.connectors.discovery import Stream, sampled
from control_plane.errors import InvalidInput
from control_plane.policy import Scope, checked
from control_plane.titles import field_title

ENTRY_POINT_GROUP = "control_plane.connectors"

Kind = Literal["source", "destination"]
StepName = Literal["resolve", "connect", "authenticate", "read", "write", "discover"]
# A step of a connection check (`connectors.checks`): its name, and what runs it, returning
# what it found and raising with a message that says what is wrong.
CheckStep = tuple[StepName, Callable[[], str]]
_MAX_FIELDS_SHOWN = 20
# A source that holds one stream calls it so; so does a connector's state, until it selects
# several.
DEFAULT_STREAM = "default"
# How many records a discovery reads to tell a stream's fields and their types.
SAMPLE_SIZE = 100


class TypeConfig(BaseModel):
    """Base of every type's config: camelCase keys, unknown keys refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        field_title_generator=field_title,
    )


# How a selected stream is read and written: in full, replacing what the destination holds;
# after its cursor, appended; after its cursor when it has one, merged on its primary key.
SyncMode = Literal["full_refresh", "incremental", "merge"]
# The most streams a connector selects, and a discovery lists.
MAX_STREAMS = 1000
_NAME = Field(min_length=1, max_length=255)


class SelectedStream(TypeConfig):
    """A stream a connector moves, and how."""

    name: str = Field(
        min_length=1,
        max_length=255,
        description=(
            "The stream as `GET /defined-sources/{id}/streams` lists it: `namespace.name`, or "
            f"`name` alone; `{DEFAULT_STREAM}` is the source as configured."
        ),
    )
    sync_mode: SyncMode = Field(
        default="full_refresh",
        description=(
            "full_refresh: read it all and replace what the destination holds; incremental: "
            "read after the cursor and append; merge: read after the cursor (with a "
            "cursorField) and merge on primaryKey."
        ),
    )
    cursor_field: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="The field that only grows; runs resume after its last value.",
    )
    primary_key: list[Annotated[str, _NAME]] = Field(
        default_factory=list, max_length=32, description="The fields to merge on (merge)."
    )
    columns: list[Annotated[str, _NAME]] | None = Field(
        default=None,
        max_length=MAX_STREAMS,
        description="Only these fields are moved; null: every field.",
    )
    destination_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description=(
            "The table (sql) or file name (jsonl) it is written to; by default its name "
            "without namespace."
        ),
    )

    @model_validator(mode="after")
    def _fits_its_mode(self) -> Self:
        if self.sync_mode == "incremental" and self.cursor_field is None:
            raise ValueError(f"stream {self.name!r}: syncMode incremental needs cursorField")
        if self.sync_mode == "merge" and not self.primary_key:
            raise ValueError(f"stream {self.name!r}: syncMode merge needs primaryKey")
        if self.sync_mode == "full_refresh" and self.cursor_field is not None:
            raise ValueError(
                f"stream {self.name!r}: syncMode full_refresh reads everything; leave "
                "cursorField out, or choose incremental"
            )
        needed = [f for f in [self.cursor_field, *self.primary_key] if f is not None]
        if self.columns is not None and (missing := [f for f in needed if f not in self.columns]):
            raise ValueError(
                f"stream {self.name!r}: columns must include {', '.join(missing)} "
                "(its cursorField and primaryKey)"
            )
        return self

    @property
    def target(self) -> str | None:
        """What the destination calls it; None: the destination's configured target."""
        if self.destination_name is not None:
            return self.destination_name
        return None if self.name == DEFAULT_STREAM else self.name.rpartition(".")[2]


# How a destination of tables writes a stream, by the stream's sync mode.
WRITE_MODES: dict[str, Literal["append", "replace", "merge"]] = {
    "full_refresh": "replace",
    "incremental": "append",
    "merge": "merge",
}


class TableConfig(TypeConfig):
    """The config of a destination of tables: how it writes them."""

    mode: Literal["append", "replace", "merge"] = Field(
        default="append",
        description="append; replace (a full refresh: the run reads its whole source); merge.",
    )
    primary_key: list[str] = Field(
        default_factory=list, description="Columns to merge on (mode merge)."
    )

    @model_validator(mode="after")
    def _merge_needs_key(self) -> Self:
        if self.mode == "merge" and not self.primary_key:
            raise ValueError("mode merge needs primaryKey")
        return self


# A record's values are Python's: a source that knows their types keeps them (datetime,
# Decimal, UUID, ...), so that a destination can too; `json_value` for where JSON holds them.
Record = dict[str, Any]
Batch = list[Record]

_JSON_TYPES = frozenset({str, int, float, bool, type(None), dict, list})


def json_value(value: Any) -> Any:
    """`value` as JSON holds it: ISO 8601 for dates and times, text for decimals, UUIDs and
    whatever else JSON has no type for; JSON's own types as they are."""
    if type(value) in _JSON_TYPES:
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


# What a config may name, each checked against the project's scope (see the module docstring).
SourcePath = Annotated[str, AfterValidator(checked(Scope.pattern))]  # a file or a glob
TargetPath = Annotated[str, AfterValidator(checked(Scope.path))]
DatabaseUrl = Annotated[str, AfterValidator(checked(Scope.database))]
HttpUrl = Annotated[str, AfterValidator(checked(Scope.http_url))]

SECRET = "x-secret"


def secret_field(**kwargs: Any) -> Any:
    """A config field whose whole value is secret (masked in API answers)."""
    return Field(json_schema_extra={SECRET: "value", "writeOnly": True}, **kwargs)


def url_field(**kwargs: Any) -> Any:
    """A URL config field whose password (`scheme://user:password@host/...`) and secret-looking
    query parameters (`?api_key=...`) are secret."""
    return Field(json_schema_extra={SECRET: "url"}, **kwargs)


class ConnectorType(ABC):
    """A registered source or destination type, built from its validated config and the scope
    of its project, through which it opens every file and connection."""

    kind: ClassVar[Kind]
    name: ClassVar[str]
    Config: ClassVar[type[TypeConfig]]
    # An instance of `Config`: a type declares `config: Config` so that its own fields type-check.
    config: TypeConfig

    def __init__(self, config: TypeConfig, scope: Scope) -> None:
        self.config = config
        self.scope = scope

    @classmethod
    def configured(cls, config: dict[str, Any], scope: Scope) -> "ConnectorType":
        """The type built from a raw config, validated within `scope`."""
        return cls(cls.Config.model_validate(config, context=scope), scope)

    def with_config(self, **changes: Any) -> Any:
        """The same type with some of its config's values changed: values that name nothing
        outside what the scope checked (a table in the same database, a cursor field)."""
        return type(self)(self.config.model_copy(update=changes), self.scope)

    def check_steps(self) -> list[CheckStep]:
        """The steps of a connection check after `resolve`, in order: connect, authenticate,
        then read or write, those that apply to the type. None by default."""
        return []


class ColumnsUnreadable(Exception):
    """A source's records cannot be read as columns (a CSV row shorter than its header): the run
    reads them as records instead, before its destination committed anything."""


class CopyRows(NamedTuple):
    """Rows in PostgreSQL's COPY text format, a line each."""

    row_count: int
    data: bytes | bytearray


@dataclass
class CopyOut:
    """A source's rows as PostgreSQL COPY text, read in one snapshot: first its columns with
    their types and the largest value of its cursor field among the rows (None: no rows, or no
    cursor field), then `rows(names, batch_size)`, the rows of the columns named."""

    types: dict[str, TypeEngine[Any]]
    cursor: Any
    rows: Callable[[list[str], int], Iterator[CopyRows]]


class Source(ConnectorType):
    kind = "source"
    # A source that reads its records as Arrow record batches too (`read_columns`), which a
    # destination that takes columns writes without a Python object per record.
    reads_columns: ClassVar[bool] = False
    # A source that reads a window of its cursor field (`read_window`) can be backfilled.
    reads_windows: ClassVar[bool] = False
    # A source that tells where its next read resumes itself (an Airbyte connector's state):
    # `position`, as of the batches it has yielded, is then the cursor, not the largest value
    # of its cursor field.
    reports_position: ClassVar[bool] = False
    position: Any = None

    @property
    def cursor_field(self) -> str | None:
        """The field whose largest value read is where the next run resumes; None: full reads."""
        return None

    @property
    def copies_out(self) -> bool:
        """True when `copy_out` hands the rows over as PostgreSQL COPY text, which a
        destination that `takes_copy` writes as it comes, at about COPY's own speed."""
        return False

    def copy_out(
        self, *, cursor: Any | None, window: tuple[Any, Any] | None, columns: list[str] | None
    ) -> AbstractContextManager[CopyOut]:
        """The rows `read` (after `cursor`) or `read_window` (within `window`) would yield, of
        `columns` (None: all), as COPY text; only where `copies_out`."""
        raise NotImplementedError

    def check_steps(self) -> list[CheckStep]:
        return [("read", self.sample)]

    def sample(self) -> str:
        """Read one record, as a check does: which fields it has, never their values."""
        batch = self._first_batch(1)
        if not batch:
            return "read no record: the source is empty for now"
        fields = list(batch[0])
        shown = ", ".join(fields[:_MAX_FIELDS_SHOWN])
        if len(fields) > _MAX_FIELDS_SHOWN:
            shown += f" and {len(fields) - _MAX_FIELDS_SHOWN} more"
        return f"read a record with the fields {shown}"

    def stream(self, selected: SelectedStream) -> "Source":
        """This source reading one stream a connector selected, with its cursor field.

        By default a source holds one stream, `default`, and reads after a cursor only if its
        config has a `cursorField`. Raises InvalidInput for a stream it cannot read so.
        """
        if selected.name != DEFAULT_STREAM:
            raise InvalidInput(
                "streams",
                f"a {self.name} source holds one stream, {DEFAULT_STREAM!r}, not {selected.name!r}",
            )
        if "cursor_field" not in type(self.config).model_fields:
            if selected.cursor_field is not None:
                raise InvalidInput(
                    "streams",
                    f"a {self.name} source reads in full: give stream {selected.name!r} syncMode "
                    "full_refresh, or merge without cursorField",
                )
            return self
        return self.with_config(cursor_field=selected.cursor_field)

    def discover(self) -> list[Stream]:
        """The streams the source holds, with their records' JSON schema. By default one,
        `default`, as its first `SAMPLE_SIZE` records show it."""
        return [sampled(DEFAULT_STREAM, self._first_batch(SAMPLE_SIZE))]

    def _first_batch(self, size: int) -> Batch:
        batches = self.read(cursor=None, batch_size=size)
        try:
            return next(iter(batches), [])
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def read_columns(self, *, batch_size: int) -> Iterator[Any]:
        """Yield every record, in Arrow record batches of about `batch_size` rows, for a read in
        full. Only for types that say `reads_columns`; raises ColumnsUnreadable for data that
        only records can hold."""
        raise NotImplementedError

    def read_window(self, *, start: Any, end: Any, batch_size: int) -> Iterator[Batch]:
        """Yield the records whose cursor field lies between `start` and `end` (JSON values,
        both included), in ascending order of it, in batches: a backfill's read. Only for types
        that say `reads_windows`."""
        raise NotImplementedError

    @abstractmethod
    def read(self, *, cursor: Any | None, batch_size: int) -> Iterator[Batch]:
        """Yield the records, in batches of at most `batch_size`.

        With a cursor field and a `cursor` (the largest value a former run read, as JSON), only
        the records whose cursor field is greater, in ascending order of it.
        """


@dataclass
class Load:
    """One run's write, as a destination that keeps load state records it: in the same unit
    (transaction, rename) as the records themselves, so a rerun can tell what was committed."""

    stream: str  # whose state: "connector:<id>"
    load_id: str  # the run's id (a sync flow run's UUID, as str)
    # Where the next run resumes (JSON); the run updates it while the destination reads the
    # batches: final once `batches` is exhausted.
    cursor: Any = None


class Destination(ConnectorType):
    kind = "destination"
    # A destination that keeps load state records `load` with the records in `write` and
    # answers `last_load`; the run hands it one. Others are written as `write(batches)`.
    keeps_loads: ClassVar[bool] = False

    @property
    def replaces(self) -> bool:
        """True when every write replaces what the destination holds (a full refresh), so the run
        reads its whole source; False by default."""
        return False

    def stream(self, selected: SelectedStream) -> "Destination":
        """This destination writing one stream a connector selected, in its sync mode. By
        default refused: the destination writes one stream, as configured."""
        raise InvalidInput(
            "streams",
            f"a {self.name} destination writes one stream as configured: leave streams out",
        )

    @property
    def takes_columns(self) -> bool:
        """True when `write_columns` takes the Arrow record batches of a source that
        `reads_columns`; False by default."""
        return False

    def write_columns(self, batches: Iterable[Any], load: Load | None = None) -> int:
        """As `write`, for Arrow record batches; only where `takes_columns`."""
        raise NotImplementedError

    @property
    def takes_copy(self) -> bool:
        """True when `write_copy` takes the COPY text of a source that `copies_out`."""
        return False

    def write_copy(
        self,
        types: dict[str, TypeEngine[Any]],
        rows: Callable[[list[str]], Iterable[CopyRows]],
        load: Load | None = None,
    ) -> int:
        """As `write`, for columns of these `types`: the destination picks the columns it
        takes and calls `rows` with their names once; only where `takes_copy`."""
        raise NotImplementedError

    @abstractmethod
    def write(self, batches: Iterable[Batch], load: Load | None = None) -> int:
        """Write every batch, as one unit where the destination allows, and with `load`, record
        it (stream, load id, its cursor read after the last batch) in that same unit. Return
        records written."""

    def last_load(self, stream: str) -> Load | None:
        """The last load the destination committed for `stream`; None when it has none, or keeps
        no load state (then a crash between its commit and the run's is at-least-once)."""
        return None


@dataclass
class Route:
    """One stream's way from a connector's source to its destination."""

    stream: str
    source: Source
    destination: Destination
    columns: list[str] | None = None  # None: every field


def routes(
    source: Source, destination: Destination, streams: list[SelectedStream] | None
) -> list[Route]:
    """The streams a connector moves: those it selected, each read and written in its sync
    mode; without a selection, the source's one stream as configured. Raises InvalidInput for
    a stream that its source or destination cannot move so."""
    if streams is None:
        return [Route(DEFAULT_STREAM, source, destination)]
    return [
        Route(stream.name, source.stream(stream), destination.stream(stream), stream.columns)
        for stream in streams
    ]


@lru_cache
def registered_types() -> dict[tuple[Kind, str], type[ConnectorType]]:
    """Every type that an installed package registers, by (kind, name)."""
    types: dict[tuple[Kind, str], type[ConnectorType]] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        connector_type = entry_point.load()
        types[(connector_type.kind, connector_type.name)] = connector_type
    return types


def get_type(kind: Kind, name: str) -> type[ConnectorType]:
    """The registered type, or a 422 listing the known ones."""
    try:
        return registered_types()[(kind, name)]
    except KeyError:
        known = ", ".join(sorted(n for k, n in registered_types() if k == kind))
        raise InvalidInput("type", f"unknown {kind} type {name!r}; known: {known}") from None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` laid over it; nested dicts merge, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def validate_config(
    kind: Kind, name: str, config: dict[str, Any], *, field: str, scope: Scope
) -> TypeConfig:
    """`config` checked against the type's model within the project's scope; a 422 naming
    every bad key otherwise."""
    try:
        return get_type(kind, name).Config.model_validate(config, context=scope)
    except ValidationError as error:
        problems = [(tuple(map(str, e["loc"])), e["msg"]) for e in error.errors()]
        raise InvalidInput(field, problems=problems) from None


@lru_cache
def _secret_keys(kind: Kind) -> dict[str, str]:
    """Config keys that are secret in any type of the kind, and how (whole value, or a URL's
    secret parts).

    Masking by key across a kind's types also masks overrides, whose type is the endpoint's.
    """
    keys: dict[str, str] = {}
    for (type_kind, _), connector_type in registered_types().items():
        if type_kind != kind:
            continue
        for name, field in connector_type.Config.model_fields.items():
            extra = field.json_schema_extra
            if isinstance(extra, dict) and SECRET in extra:
                keys[field.alias or name] = str(extra[SECRET])
    return keys


def secret_values(kind: Kind, config: dict[str, Any]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Each secret in the config by where it is: a whole value, a header, a URL's part (under
    the URL's key). Raises ValueError for a URL that cannot be split."""
    for key, how in _secret_keys(kind).items():
        value = config.get(key)
        if not value:
            continue
        if how == "url" and isinstance(value, str):
            for secret in secrets_of(value).values():
                yield (key,), secret
        elif isinstance(value, dict):
            for name, secret in value.items():
                yield (key, name), secret
        else:
            yield (key,), value


def mask_secrets(kind: Kind, config: dict[str, Any]) -> dict[str, Any]:
    """The config with its secret values replaced by `MASK`, for showing."""
    masked = dict(config)
    for key, how in _secret_keys(kind).items():
        value = masked.get(key)
        if not value:
            continue
        if how == "url" and isinstance(value, str):
            masked[key] = mask_url(value)
        elif isinstance(value, dict):
            masked[key] = dict.fromkeys(value, MASK)
        else:
            masked[key] = MASK
    return masked


def keep_secrets(
    kind: Kind, new: dict[str, Any], old: dict[str, Any], *, field: str
) -> dict[str, Any]:
    """`new` with every `MASK` a client sent back replaced by the stored secret in `old`.

    Only while the config's URLs keep their host: a masked secret sent back with a new host
    would hand the stored secret to that host, so that is a 422 asking for the secret again.
    """
    keys = _secret_keys(kind)
    moved = [
        key
        for key, how in keys.items()
        if how == "url"
        and isinstance(new.get(key), str)
        and isinstance(old.get(key), str)
        and origin(new[key]) != origin(old[key])
    ]
    kept = dict(new)
    for key, how in keys.items():
        value, stored = kept.get(key), old.get(key)
        if how == "url" and isinstance(value, str):
            masked = [part for part, sent in secrets_of(value).items() if sent == MASK]
            if masked:
                _refuse_if_moved(field, key, moved)
                known = secrets_of(stored) if isinstance(stored, str) else {}
                _refuse_if_none([part for part in masked if part not in known], field, key)
                kept[key] = with_secrets(value, {part: known[part] for part in masked})
        elif isinstance(value, dict):
            masked = [k for k, v in value.items() if v == MASK]
            if masked:
                _refuse_if_moved(field, key, moved)
                known = stored if isinstance(stored, dict) else {}
                _refuse_if_none([k for k in masked if k not in known], field, key)
                kept[key] = {k: known[k] if v == MASK else v for k, v in value.items()}
        elif value == MASK:
            _refuse_if_moved(field, key, moved)
            _refuse_if_none([] if stored is not None else [key], field, key)
            kept[key] = stored
    return kept


def holds_mask(value: Any) -> bool:
    """Whether `value` sends `MASK` back anywhere: it asks to keep a stored secret."""
    if isinstance(value, str):
        return MASK in value
    if isinstance(value, dict):
        return any(holds_mask(item) for item in value.values())
    if isinstance(value, list):
        return any(holds_mask(item) for item in value)
    return False


def _refuse_if_none(unknown: list[str], field: str, key: str) -> None:
    if unknown:
        raise InvalidInput(
            f"{field}.{key}",
            f"{MASK} keeps a stored secret, but none is stored for "
            f"{', '.join(part.lstrip(':') for part in unknown)}: send the secret itself",
        )


def _refuse_if_moved(field: str, key: str, moved: list[str]) -> None:
    if moved:
        raise InvalidInput(
            f"{field}.{key}",
            f"{', '.join(moved)} now names another host: send this secret again instead of "
            f"{MASK}, which would give the stored one to that host",
        )


__all__ = [
    "Batch",
    "CheckStep",
    "ConnectorType",
    "CopyOut",
    "CopyRows",
    "DEFAULT_STREAM",
    "DatabaseUrl",
    "Destination",
    "HttpUrl",
    "Kind",
    "Load",
    "MASK",
    "Record",
    "Source",
    "SourcePath",
    "StepName",
    "Stream",
    "TargetPath",
    "TypeConfig",
    "deep_merge",
    "get_type",
    "holds_mask",
    "json_value",
    "keep_secrets",
    "mask_secrets",
    "mask_url",
    "registered_types",
    "secret_field",
    "secret_values",
    "url_field",
    "validate_config",
]
