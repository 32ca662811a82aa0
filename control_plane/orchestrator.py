"""The one way into Prefect's API: a client whose errors arrive as the control plane's own,
and the probe of whether Prefect and its database answer."""

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL

from control_plane.errors import (
    ControlPlaneError,
    DeploymentMissing,
    PrefectRejected,
    PrefectUnavailable,
    WorkPoolMissing,
)

# Collections in the paths of Prefect's API, by the object the segment after them names.
# The most objects Prefect's API answers a read or filter request with.
PREFECT_PAGE = 200
_OBJECTS = {
    "deployments": "deployment",
    "schedules": "deployment schedule",
    "work_pools": "work pool",
    "queues": "work queue",
    "work_queues": "work queue",
    "flows": "flow",
    "flow_runs": "flow run",
    "task_runs": "task run",
    "automations": "automation",
    "block_documents": "block document",
    "variables": "variable",
    "artifacts": "artifact",
    "concurrency_limits": "concurrency limit",
}
_OPERATIONS = {"filter", "count", "paginate", "bulk_delete"}  # after a collection, not ids
_WORK_POOL_NOT_FOUND = re.compile(r"""work pool ["'](?P<name>[^"']+)["'] not found""", re.I)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        # Most of Prefect's errors say it in `detail`, the automations' in `exception_message`.
        found = body.get("detail") or body.get("exception_message")
        if found:
            return str(found)[:500]
    return response.text[:500]


def _missing(response: httpx.Response, detail: str) -> tuple[str, str | None]:
    """What a 404 of Prefect's API did not find: the kind of object, and its id or name.

    The path names the object (`/work_pools/{name}`, `/deployments/{id}`); where it names two
    (`/deployments/{id}/schedules/{id}`) Prefect's detail says which one is missing, and where
    it names none (a create, which refers to others in its body) only the detail does, e.g.
    `Work pool "connectors" not found.`.
    """
    if match := _WORK_POOL_NOT_FOUND.search(detail):
        return "work pool", match["name"]
    segments = response.request.url.path.split("/")
    named: list[tuple[str, str]] = []
    for at, segment in enumerate(segments[:-1]):
        name = segments[at + 1]
        if segment in _OBJECTS and name and name not in _OPERATIONS:
            # `/deployments/name/{flow}/{deployment}`, `/flows/name/{flow}`
            name = "/".join(segments[at + 2 :]) if name == "name" else name
            named.append((_OBJECTS[segment], name))
    subject = detail.lower().partition(" not found")[0].strip()  # "schedule", "flow run"
    said = [(kind, name) for kind, name in named if kind.endswith(subject)]
    if said or named:
        return (said or named)[-1]
    return "object", None


def _not_found(error: httpx.HTTPStatusError) -> ControlPlaneError:
    detail = _detail(error.response)
    kind, name = _missing(error.response, detail)
    if kind == "deployment":
        return DeploymentMissing(
            f"the connector's deployment ({name}) does not exist in Prefect; "
            "a reconcile (or deactivating and activating the connector) creates it again"
        )
    if kind == "work pool":
        return WorkPoolMissing(
            f'Prefect has no work pool "{name}" to run the deployments on: create it with '
            f"`prefect work-pool create {name} --type process` (`control-plane up` creates "
            "the one CONTROL_PLANE_WORK_POOL names), or set CONTROL_PLANE_WORK_POOL to a pool "
            "that exists"
        )
    request = error.request
    return PrefectRejected(
        f"Prefect has no {kind}{f' {name}' if name else ''} "
        f"({request.method} {request.url.path}): {detail}"
    )


def translate_error(error: Exception) -> ControlPlaneError:
    """A Prefect or transport error as the control plane's: 409 for a missing deployment (a
    reconcile repairs it), 502 when Prefect refused the request (or lacks another object it
    names), 503 when Prefect is down or failing."""
    if isinstance(error, ObjectNotFound) and isinstance(error.http_exc, httpx.HTTPStatusError):
        return _not_found(error.http_exc)
    if isinstance(error, ObjectNotFound):
        return PrefectRejected(f"Prefect did not find what was asked for: {error}")
    if isinstance(error, PrefectHTTPStatusError):
        status = error.response.status_code
        if status == 404:
            return _not_found(error)
        detail = error.response.text[:500]
        if status >= 500 or status in (408, 429):
            return PrefectUnavailable(f"Prefect's API failed with {status}: {detail}")
        return PrefectRejected(f"Prefect's API refused the request with {status}: {detail}")
    return PrefectUnavailable(
        f"Prefect's API at {PREFECT_API_URL.value()} cannot be reached: "
        f"{type(error).__name__}: {error}"
    )


@asynccontextmanager
async def prefect_client() -> AsyncIterator[PrefectClient]:
    """Prefect's client; inside a flow run the engine's own, so no new connection per call."""
    try:
        async with get_client() as client:
            yield client
    except (ObjectNotFound, PrefectHTTPStatusError, httpx.HTTPError) as error:
        raise translate_error(error) from error


async def check_health() -> None:
    """Return when Prefect's API and its database answer; raise `Unavailable` saying which not.

    Reads one work pool: Prefect's `/api/health` answers 200 without a query, also when its
    database is gone (SQLite files deleted under a running server).
    """
    async with prefect_client() as client:
        await client.read_work_pools(limit=1)


__all__ = ["check_health", "prefect_client", "translate_error"]
