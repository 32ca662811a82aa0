"""Notification routes: which events of a connector go to which channel.

A channel is a Prefect notification block, named `<block type>/<block name>`: Prefect keeps
its credentials encrypted and masked, and the Prefect UI creates and edits it. A connector's
routes, or its project's when it has none of its own, say which events each channel hears.
"""

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, StringConstraints
from pydantic_core import to_jsonable_python
from sqlmodel import Field

from models.base import InputModel

MAX_ROUTES = 16
NotifyEvent = Literal[
    "run-failed",
    "run-crashed",
    "failing",
    "auto-deactivated",
    "stale",
    "fresh",
    "activated",
    "deactivated",
    "paused",
    "resumed",
]
# Prefect's block type slugs and block names: lowercase letters, digits and dashes.
Channel = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,100}/[a-z0-9-]{1,100}$")]


class NotificationRoute(InputModel):
    events: Annotated[
        list[NotifyEvent],
        Field(min_length=1),
        AfterValidator(lambda events: sorted(set(events))),
    ] = Field(description="The connector's events this channel hears (`connector.<event>`).")
    channel: Channel = Field(
        description=(
            "A Prefect notification block, `<block type>/<block name>`: e.g. "
            "`signed-webhook/ops` (an HMAC-signed webhook) or `slack-webhook/data-team`."
        ),
        schema_extra={"examples": ["slack-webhook/data-team"]},
    )


Routes = Annotated[list[NotificationRoute], Field(max_length=MAX_ROUTES)]


def effective(own: Any, project_routes: Any) -> list[dict[str, Any]]:
    """A connector's routes: its own, or its project's while it has none (null)."""
    return to_jsonable_python(own if own is not None else project_routes or [])


def hears(routes: Sequence[dict[str, Any]], event: str) -> list[str]:
    """The channels of the routes that hear `connector.<event>`."""
    suffix = event.removeprefix("connector.")
    return [route["channel"] for route in routes if suffix in route["events"]]


__all__ = [
    "MAX_ROUTES",
    "NotificationRoute",
    "NotifyEvent",
    "Routes",
    "effective",
    "hears",
]
