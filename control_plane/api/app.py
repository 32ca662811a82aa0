"""The FastAPI app: `uvicorn control_plane.api.app:app`."""

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext
from importlib.metadata import version

from fastapi import APIRouter, Depends, FastAPI, Security
from prefect import flow_engine
from prefect.settings import PREFECT_API_URL

from control_plane import logs, metrics
from control_plane.api.auth import bearer
from control_plane.api.deps import current_caller
from control_plane.api.errors import AnswerCutRequests, add_error_handlers, error_responses
from control_plane.api.flow_context import FlowContext, SharedFlowContext, flow_context
from control_plane.api.limits import BodyLimit
from control_plane.api.observed import Observed
from control_plane.api.routes import connectors, endpoints, health, projects, schedules
from control_plane.db import get_engine
from control_plane.encryption import check_key_file
from control_plane.settings import get_settings


@contextmanager
def _sigterm_left_to_uvicorn() -> Iterator[None]:
    """Keep Prefect's flow engine from taking SIGTERM over while the API runs control flows.

    In a flow run's own process, the engine turns SIGTERM into a TerminationSignal raised
    wherever the main thread is. Here the flows run in uvicorn's event loop, so the raise lands
    in the loop itself: uvicorn's graceful shutdown never starts, asyncio cancels every request
    in flight, and uvicorn answers each with a plain-text 500. Without it, SIGTERM reaches
    uvicorn, which lets the requests in flight finish.
    """
    capture_sigterm = flow_engine.capture_sigterm
    flow_engine.capture_sigterm = nullcontext  # type: ignore[assignment]
    try:
        yield
    finally:
        flow_engine.capture_sigterm = capture_sigterm


@asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[dict[str, FlowContext]]:
    if not PREFECT_API_URL.value():
        raise RuntimeError(
            "PREFECT_API_URL is not set: start the stack with `control-plane up`, "
            "or point PREFECT_API_URL at your Prefect server"
        )
    # Refuse to start, rather than fail every request that reads a config.
    check_key_file()
    with _sigterm_left_to_uvicorn():
        async with flow_context() as state:
            yield state
    await get_engine().dispose()


def create_app() -> FastAPI:
    app = FastAPI(
        title="Connector control plane",
        description="Connectors on Prefect: every change is an audited Prefect flow run.",
        version=version("connector-control-plane"),
        lifespan=_lifespan,
    )
    guards = [Depends(current_caller)]
    # What any route may answer: its 422 FastAPI documents, 412 the routes that take If-Match.
    errors = [404, 409, 413, 502, 503]
    if get_settings().auth_enabled:
        # Only declares the scheme in the OpenAPI document: `current_caller` reads the token.
        guards.append(Security(bearer))
        errors += [401, 403]
    api = APIRouter(prefix="/api/v1", dependencies=guards, responses=error_responses(*errors))
    api.include_router(projects.router)
    api.include_router(endpoints.endpoint_router("source"))
    api.include_router(endpoints.endpoint_router("destination"))
    api.include_router(endpoints.types_router)
    api.include_router(connectors.router)
    api.include_router(schedules.router)
    app.include_router(api)
    app.include_router(health.router)
    add_error_handlers(app)
    metrics.instrument("flows")
    logs.configure(get_settings().log_format)
    app.add_middleware(SharedFlowContext)
    # Outside the routes, so an oversized or undecodable body is refused before it is parsed.
    app.add_middleware(BodyLimit)
    app.add_middleware(Observed)
    # Outermost, so every request a shutdown cuts short answers JSON, whatever it was doing.
    app.add_middleware(AnswerCutRequests)
    return app


app = create_app()
