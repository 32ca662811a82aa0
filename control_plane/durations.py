"""Bounds of the durations a connector or a setting gives: pauses and freshness windows."""

from datetime import timedelta
from typing import Any

MAX_PAUSE = timedelta(days=366)

# Prefect's least window of a proactive automation, which watches a connector's freshness.
MIN_STALENESS = timedelta(seconds=10)


def minutes_if_number(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(minutes=value)
    return value


def check_staleness(value: timedelta) -> timedelta:
    """A freshness window: 0 (off), or from 10 seconds to 366 days."""
    if value and value < MIN_STALENESS:
        raise ValueError(
            "is shorter than 10 seconds, the least window Prefect's automations watch; "
            "give e.g. PT1H or 60 (minutes), or 0 for none"
        )
    if value > MAX_PAUSE:
        raise ValueError("is longer than 366 days; give e.g. P1D")
    return value
