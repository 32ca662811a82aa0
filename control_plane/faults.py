"""A testing aid: named points where a flow stops, so a test can kill the process there and
prove that what was left half-done is repaired or never counted twice.

With `CONTROL_PLANE_PAUSE_POINTS='["create-connector:before-commit"]'`, the create flow writes
`<data_dir>/paused-at-create-connector:before-commit` once Prefect has its deployment but the
row is not committed yet, and waits there until it is killed, or until the test deletes the
file (to act while a run is half-way, then let it go on). Unset, a point costs nothing.
"""

import asyncio
import time

from control_plane.settings import get_settings


def _wait_until_released(name: str) -> None:
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    marker = settings.data_dir / f"paused-at-{name}"
    marker.touch()
    while marker.exists():
        time.sleep(0.1)


async def pause_point(name: str) -> None:
    """A point in a flow's event loop: waits in a thread, so the loop runs on."""
    if name in get_settings().pause_points:
        await asyncio.to_thread(_wait_until_released, name)


def blocking_pause_point(name: str) -> None:
    """A point in a thread, such as the one a sync run moves records in."""
    if name in get_settings().pause_points:
        _wait_until_released(name)


__all__ = ["blocking_pause_point", "pause_point"]
