"""A testing aid: named points where a control flow stops, so a test can kill the process
there and prove that reconcile repairs what was left half-done.

With `CONTROL_PLANE_PAUSE_POINTS='["create-connector:before-commit"]'`, the create flow writes
`<data_dir>/paused-at-create-connector:before-commit` once Prefect has its deployment but the
row is not committed yet, and waits there until it is killed. Unset, a point costs nothing.
"""

import asyncio

from control_plane.settings import get_settings


async def pause_point(name: str) -> None:
    settings = get_settings()
    if name not in settings.pause_points:
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / f"paused-at-{name}").touch()
    while True:
        await asyncio.sleep(3600)


__all__ = ["pause_point"]
