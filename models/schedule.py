"""Schedule previews: the runs Prefect's scheduler will create, and what DST does to them."""

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator
from sqlmodel import Field

from control_plane.schedules import FIRST_YEAR, LAST_YEAR, MAX_PREVIEW, PREVIEW_COUNT, PlannedRun
from models.base import ApiModel, InputModel, UtcDatetime
from models.connector import Cron, Timezone


def check_start(value: datetime) -> datetime:
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise ValueError(f"start must be in the years {FIRST_YEAR} to {LAST_YEAR}")
    return value


PreviewStart = Annotated[UtcDatetime, AfterValidator(check_start)]


class ScheduledRun(ApiModel):
    at: datetime = Field(description="When Prefect's scheduler starts the run, UTC.")
    local_time: datetime = Field(description="The same moment in the schedule's time zone.")
    dst: str | None = Field(
        default=None, description="What daylight saving time does to this run, if anything."
    )


def scheduled_runs(planned: list[PlannedRun]) -> list[ScheduledRun]:
    return [ScheduledRun(at=run.at, local_time=run.local, dst=run.dst) for run in planned]


class SchedulePreview(ApiModel):
    schedule: str | None = Field(description="Null: the connector runs only when triggered.")
    timezone: str
    runs: list[ScheduledRun] = Field(
        description="The next runs, on or after `start`; none for an inactive connector."
    )
    warnings: list[str] = Field(
        description="Within a year of `start`: runs that DST moves, skips or does not repeat."
    )


class SchedulePreviewRequest(InputModel):
    schedule: Cron = Field(description="Five cron fields, read in `timezone`.")
    timezone: Timezone = "UTC"
    count: int = Field(default=PREVIEW_COUNT, ge=1, le=MAX_PREVIEW, description="Runs to show.")
    start: PreviewStart | None = Field(
        default=None, description="Show runs on or after this moment; default now."
    )
