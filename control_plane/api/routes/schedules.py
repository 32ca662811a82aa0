"""Schedule previews: the runs Prefect's scheduler will create, computed with its own code."""

from datetime import datetime

from fastapi import APIRouter, Response

from control_plane import schedules
from models import SchedulePreview, SchedulePreviewRequest
from models.base import utcnow
from models.schedule import scheduled_runs

router = APIRouter(prefix="/schedules", tags=["schedules"])


def schedule_preview(
    schedule: str | None, timezone: str, count: int, start: datetime | None, runs: bool = True
) -> SchedulePreview:
    """The next `count` runs on or after `start` (now by default), unless `runs` is false (an
    inactive connector has none), and what DST does to the schedule within a year."""
    start = start or utcnow()
    planned = schedules.preview(schedule, timezone, count, start) if schedule and runs else []
    return SchedulePreview(
        schedule=schedule,
        timezone=timezone,
        runs=scheduled_runs(planned),
        warnings=schedules.warnings(schedule, timezone, start),
    )


def add_warnings(response: Response, warnings: list[str]) -> None:
    """Each warning as a `Warning` header (RFC 7234's code 299, "miscellaneous persistent")."""
    for warning in warnings:
        response.headers.append("Warning", f'299 control-plane "{warning}"')


@router.post("/preview", operation_id="previewSchedule", response_model=SchedulePreview)
def preview(request: SchedulePreviewRequest) -> SchedulePreview:
    """The next runs of a schedule in a time zone, before any connector has it: in UTC and in
    the zone, each with what daylight saving time does to it. (Plain `def`: a century of a
    leap-day schedule's transitions takes FastAPI's thread pool, not the event loop.)"""
    return schedule_preview(request.schedule, request.timezone, request.count, request.start)
