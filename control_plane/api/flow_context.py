"""What the control flows that the API runs in-process share across requests.

Prefect's engine opens a new API client for every flow run that finds none in its context,
and each builds a TLS context from certifi's bundle; it also starts a heartbeat thread that
emits an event. For sub-second flows awaited inside a request, that is most of their cost. Here
each write request gets one client pair, built on the process's one TLS context, and runs
without heartbeats (they detect crashed long runs; a request's flow ends with the request),
and without asking for a CSRF token when the server, asked once, wants none.

The clients are per request, not per process: Prefect's client retries connection errors with
backoff once it has connected, so a long-lived one would hold a request for minutes while
Prefect is down, where a fresh one fails at once and the request answers 503.
"""

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import certifi
import httpx
from prefect.client.orchestration import get_client
from prefect.context import AsyncClientContext, SettingsContext, SyncClientContext
from prefect.settings import PREFECT_CLIENT_CSRF_SUPPORT_ENABLED, PREFECT_FLOWS_HEARTBEAT_FREQUENCY
from starlette.types import ASGIApp, Receive, Scope, Send

STATE_KEY = "control_flow_context"
READS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class FlowContext:
    settings: SettingsContext
    httpx_settings: dict[str, Any]


def _tls_context(settings: SettingsContext) -> ssl.SSLContext:
    """The TLS context Prefect's client would build for itself, built once."""
    api = settings.settings.api
    if api.tls_insecure_skip_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=api.ssl_cert_file or certifi.where())


async def _asks_for_csrf_tokens(api_url: str, verify: ssl.SSLContext) -> bool:
    """Whether Prefect's server wants a CSRF token with each write, asked once, as its client
    asks: a client made for each request would ask before its first write, one more call per
    request, and on a server with CSRF protection off (its default) learn it needs none. When
    the server cannot say (down, behind auth), each client asks for itself."""
    try:
        async with httpx.AsyncClient(verify=verify, timeout=10) as client:
            answer = await client.get(f"{api_url}/csrf-token", params={"client": str(uuid4())})
    except httpx.HTTPError:
        return True
    disabled = answer.status_code == 422 and "CSRF protection is disabled." in answer.text
    return not (answer.status_code == 404 or disabled)


@asynccontextmanager
async def flow_context() -> AsyncIterator[dict[str, FlowContext]]:
    """For the app's lifespan: what the requests share, as lifespan state."""
    current = SettingsContext.get()
    assert current is not None
    verify = _tls_context(current)
    updates: dict[Any, Any] = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    api_url = current.settings.api.url
    if api_url and not await _asks_for_csrf_tokens(api_url, verify):
        updates[PREFECT_CLIENT_CSRF_SUPPORT_ENABLED] = False
    settings = current.settings.copy_with_update(updates=updates)
    yield {
        STATE_KEY: FlowContext(
            SettingsContext(profile=current.profile, settings=settings), {"verify": verify}
        )
    }


class SharedFlowContext:
    """ASGI middleware: each write request's control flows run in the lifespan's context."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        shared: FlowContext | None = scope.get("state", {}).get(STATE_KEY)
        if shared is None or scope["type"] != "http" or scope["method"] in READS:
            await self.app(scope, receive, send)
            return
        with SettingsContext(profile=shared.settings.profile, settings=shared.settings.settings):
            async with get_client(httpx_settings=shared.httpx_settings) as client:
                with (
                    get_client(sync_client=True, httpx_settings=shared.httpx_settings) as sync,
                    AsyncClientContext.model_construct(client=client),
                    SyncClientContext.model_construct(client=sync),
                ):
                    await self.app(scope, receive, send)


__all__ = ["FlowContext", "SharedFlowContext", "flow_context"]
