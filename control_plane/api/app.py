"""The FastAPI app: `uvicorn control_plane.api.app:app`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Security
from prefect.settings import PREFECT_API_URL

from control_plane.api.auth import bearer
from control_plane.api.deps import current_caller
from control_plane.api.errors import add_error_handlers
from control_plane.api.flow_context import FlowContext, SharedFlowContext, flow_context
from control_plane.api.limits import BodyLimit
from control_plane.api.routes import connectors, endpoints, health, projects
from control_plane.db import get_engine
from control_plane.encryption import check_key_file
from control_plane.settings import get_settings


@asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[dict[str, FlowContext]]:
    if not PREFECT_API_URL.value():
        raise RuntimeError(
            "PREFECT_API_URL is not set: start the stack with `control-plane up`, "
            "or point PREFECT_API_URL at your Prefect server"
        )
    # Refuse to start, rather than fail every request that reads a config.
    check_key_file()
    async with flow_context() as state:
        yield state
    await get_engine().dispose()


def create_app() -> FastAPI:
    app = FastAPI(
        title="Connector control plane",
        description="Connectors on Prefect: every change is an audited Prefect flow run.",
        version="0.1.0",
        lifespan=_lifespan,
    )
    guards = [Depends(current_caller)]
    if get_settings().auth_enabled:
        # Only declares the scheme in the OpenAPI document: `current_caller` reads the token.
        guards.append(Security(bearer))
    api = APIRouter(prefix="/api/v1", dependencies=guards)
    api.include_router(projects.router)
    api.include_router(endpoints.endpoint_router("source"))
    api.include_router(endpoints.endpoint_router("destination"))
    api.include_router(endpoints.types_router)
    api.include_router(connectors.router)
    app.include_router(api)
    app.include_router(health.router)
    add_error_handlers(app)
    app.add_middleware(SharedFlowContext)
    # Outside the routes, so an oversized or undecodable body is refused before it is parsed.
    app.add_middleware(BodyLimit)
    return app


app = create_app()
