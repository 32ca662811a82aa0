"""The one way into Prefect's API: a client whose errors arrive as the control plane's own."""

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
)


def translate_error(error: Exception) -> ControlPlaneError:
    """A Prefect or transport error as a 503 (Prefect down or failing) or 502 (refused)."""
    if isinstance(error, ObjectNotFound) or (
        isinstance(error, PrefectHTTPStatusError) and error.response.status_code == 404
    ):
        return DeploymentMissing(
            "the connector's deployment does not exist in Prefect; "
            "a reconcile (or deactivating and activating the connector) creates it again"
        )
    if isinstance(error, PrefectHTTPStatusError):
        status = error.response.status_code
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


__all__ = ["prefect_client", "translate_error"]
