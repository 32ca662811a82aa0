"""What the control flows that the API runs in-process share across requests.

Prefect's engine opens a new API client for every flow run that finds none in its context
(each one builds a TLS context and fetches a CSRF token) and starts a heartbeat thread that
emits an event. For sub-second flows awaited inside a request, that is most of their cost:
here every request runs with the process's one client pair, and without heartbeats (they
detect crashed long runs; a request's flow ends with the request).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prefect.client.orchestration import PrefectClient, SyncPrefectClient, get_client
from prefect.context import AsyncClientContext, SettingsContext, SyncClientContext
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, Settings
from starlette.types import ASGIApp, Receive, Scope, Send

STATE_KEY = "control_flow_context"


@dataclass(frozen=True)
class FlowContext:
    settings: SettingsContext
    client: PrefectClient
    sync_client: SyncPrefectClient


@asynccontextmanager
async def flow_context() -> AsyncIterator[dict[str, FlowContext]]:
    """For the app's lifespan: the clients and settings, as lifespan state for the requests."""
    current = SettingsContext.get()
    assert current is not None
    settings: Settings = current.settings.copy_with_update(
        updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    )
    with get_client(sync_client=True) as sync_client:
        async with get_client() as client:
            yield {
                STATE_KEY: FlowContext(
                    SettingsContext(profile=current.profile, settings=settings),
                    client,
                    sync_client,
                )
            }


class SharedFlowContext:
    """ASGI middleware: each request's control flows use the lifespan's `FlowContext`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        shared: FlowContext | None = scope.get("state", {}).get(STATE_KEY)
        if shared is None:
            await self.app(scope, receive, send)
            return
        # Fresh context objects per request (each keeps its own reset token), shared clients.
        with (
            SettingsContext(profile=shared.settings.profile, settings=shared.settings.settings),
            AsyncClientContext.model_construct(client=shared.client),
            SyncClientContext.model_construct(client=shared.sync_client),
        ):
            await self.app(scope, receive, send)


__all__ = ["FlowContext", "SharedFlowContext", "flow_context"]
