"""Health: 200 when the database and Prefect answer, 503 naming what is down."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from control_plane import deployments
from control_plane.api.deps import SessionDep
from control_plane.errors import Unavailable

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(session: SessionDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        checks["database"] = "ok"
    except DBAPIError as error:
        checks["database"] = f"failed: {error.orig}"
    try:
        checks["prefect"] = await deployments.check_health() or "ok"
    except Unavailable as error:
        checks["prefect"] = error.detail
    if all(value == "ok" for value in checks.values()):
        return JSONResponse(checks)
    return JSONResponse({"detail": checks}, status_code=503)
