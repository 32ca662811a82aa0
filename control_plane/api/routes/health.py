"""Probes: `/livez` says the process serves; `/readyz` that the database and Prefect's database
answer a query, 503 naming what is down; `/health` is `/readyz` for the clients that use it.

Liveness depends on nothing else on purpose: a probe that restarts the process when it fails
would restart every API process during a Prefect outage, although a restart brings nothing
back and the processes answer again on their own once Prefect does.
"""

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from control_plane import metrics, orchestrator
from control_plane.api.deps import SessionDep
from control_plane.api.errors import error_responses
from control_plane.errors import Unavailable

router = APIRouter(tags=["health"])
NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"description": "Not ready: `detail` maps each dependency to `ok` or what is wrong."}
}

# A probe waits for an answer; a dependency slower than this counts as down.
_CHECK_SECONDS = 5


@router.get("/livez", operation_id="livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", operation_id="readyz", responses=NOT_READY)
@router.get("/health", operation_id="health", responses=NOT_READY)
async def readyz(session: SessionDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(_CHECK_SECONDS):
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        checks["database"] = "ok"
    except DBAPIError as error:
        checks["database"] = f"failed: {error.orig}"
    except TimeoutError:
        checks["database"] = f"no answer within {_CHECK_SECONDS} s"
    try:
        async with asyncio.timeout(_CHECK_SECONDS):
            await orchestrator.check_health()
        checks["prefect"] = "ok"
    except Unavailable as error:
        checks["prefect"] = error.detail
    except TimeoutError:
        checks["prefect"] = f"Prefect's API answered no query within {_CHECK_SECONDS} s"
    if all(value == "ok" for value in checks.values()):
        return JSONResponse(checks)
    return JSONResponse({"detail": checks}, status_code=503)


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}, **error_responses(503)},
)
async def prometheus_metrics(session: SessionDep) -> Response:
    """Prometheus' text format: this process's requests and control flow runs, and what the
    database and Prefect's latest reconcile pass hold (`control_plane.metrics`)."""
    return Response(await metrics.render(session), media_type=CONTENT_TYPE_LATEST)
