"""What sync runs leave behind: each connector's incremental state, and each run's figures."""

from datetime import datetime
from typing import Any, Self
from uuid import UUID, uuid4

from pydantic import StrictFloat, StrictInt, StrictStr, model_validator
from sqlalchemy import JSON, Column, DateTime, ForeignKey, Integer
from sqlmodel import Field, SQLModel

from control_plane.connectors import DEFAULT_STREAM, MAX_STREAMS
from models.base import ApiModel, InputModel, UtcDatetime, timestamp_field


def _connector_key(**kwargs: Any) -> Any:
    # Deleting a connector deletes its state and run figures with it.
    return Field(
        sa_column=Column(
            Integer, ForeignKey("connector.id", ondelete="CASCADE"), nullable=False, **kwargs
        )
    )


class SyncState(SQLModel, table=True):
    """Where the next incremental read of a connector's stream resumes."""

    __tablename__ = "sync_state"
    connector_id: int = _connector_key(primary_key=True)
    stream: str = Field(default=DEFAULT_STREAM, primary_key=True, max_length=255)
    cursor: Any | None = Field(default=None, sa_type=JSON)
    load_id: UUID | None = None  # the run whose load the cursor follows
    updated_at: datetime = timestamp_field()


class SyncRun(SQLModel, table=True):
    """The figures of one sync run; its state lives in Prefect."""

    __tablename__ = "sync_run"
    flow_run_id: UUID = Field(primary_key=True)
    connector_id: int = _connector_key(index=True)
    records_read: int = 0
    records_written: int = 0
    cursors: dict[str, Any] | None = Field(default=None, sa_type=JSON)  # by stream
    error: str | None = None
    # The connector's resets when the run started: a reset since, and its cursor is not saved.
    resets: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    started_at: datetime = timestamp_field()
    ended_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class Backfill(SQLModel, table=True):
    """A window of one stream to read again, by the sync run tagged `backfill:<id>`: its
    records whose cursor field lies between `start` and `end`, both included."""

    __tablename__ = "backfill"
    id: UUID = Field(default_factory=uuid4, primary_key=True)
    connector_id: int = _connector_key(index=True)
    stream: str = Field(max_length=255)
    start: Any = Field(sa_type=JSON)
    end: Any = Field(sa_type=JSON)
    actor: str = Field(max_length=200)
    created_at: datetime = timestamp_field()


# A window's end: a cursor value, as JSON has it (a timestamp as ISO 8601 text).
WindowEnd = StrictStr | StrictInt | StrictFloat


class BackfillRequest(InputModel):
    stream: str = Field(
        default=DEFAULT_STREAM,
        min_length=1,
        max_length=255,
        description="The incremental stream to read again; `default` without selected streams.",
    )
    start: WindowEnd = Field(
        alias="from",
        description="The first cursor value of the window, as the state shows cursors.",
        schema_extra={"examples": ["2026-01-01T00:00:00+00:00"]},
    )
    end: WindowEnd = Field(
        alias="to",
        description="The last cursor value of the window, included.",
        schema_extra={"examples": ["2026-02-01T00:00:00+00:00"]},
    )

    @model_validator(mode="after")
    def _a_window(self) -> Self:
        texts = isinstance(self.start, str), isinstance(self.end, str)
        if texts[0] == texts[1] and self.start > self.end:  # type: ignore[operator]
            raise ValueError(f"from ({self.start!r}) comes after to ({self.end!r}): swap them")
        return self


class RunPublic(ApiModel):
    flow_run_id: UUID
    name: str
    state: str
    trigger: str
    scheduled_at: UtcDatetime | None = None
    started_at: UtcDatetime | None = None
    ended_at: UtcDatetime | None = None
    duration_seconds: float | None = None
    records_read: int | None = None
    records_written: int | None = None
    error: str | None = None


class RunsPublic(ApiModel):
    data: list[RunPublic]
    count: int


class StreamState(ApiModel):
    stream: str = Field(
        description=f"A stream the connector selected; `{DEFAULT_STREAM}` when it selects none."
    )
    cursor: Any | None = Field(
        default=None,
        description=(
            "Where the next incremental read resumes: after this value of the source's "
            "cursorField. Null: from the start."
        ),
    )
    updated_at: UtcDatetime | None = Field(
        default=None, description="When it was saved: by a sync run, or set through the API."
    )


class StatePublic(ApiModel):
    streams: list[StreamState]


class StreamStateUpdate(InputModel):
    stream: str = Field(min_length=1, max_length=255, description="The stream whose cursor to set.")
    cursor: Any | None = Field(
        description="Where its next incremental read resumes; null: from the start (a reset)."
    )


class StateUpdate(InputModel):
    streams: list[StreamStateUpdate] = Field(min_length=1, max_length=MAX_STREAMS)


class IdempotencyKey(SQLModel, table=True):
    """The first answer to a request sent with an Idempotency-Key, replayed to its retries."""

    __tablename__ = "idempotency_key"
    scope: str = Field(primary_key=True, max_length=300)
    key: str = Field(primary_key=True, max_length=200)
    request_hash: str = Field(max_length=64)
    status_code: int | None = None  # None while the first request is still running
    body: Any | None = Field(default=None, sa_type=JSON)
    created_at: datetime = timestamp_field()
