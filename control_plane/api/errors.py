"""Every error the API answers, mapped in one place to `{"detail": ...}` with its status."""

import asyncio
import json
import logging
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from pydantic import BaseModel, Field
from pydantic.alias_generators import to_camel
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.api.templates import methods_of
from control_plane.errors import ControlPlaneError, InvalidInput, Unauthorized
from control_plane.orchestrator import translate_error

logger = logging.getLogger(__name__)


class ErrorPublic(BaseModel):
    """Every error's answer but a 422's (which is FastAPI's list of the fields to fix)."""

    detail: str = Field(description="What went wrong, and what to do about it.")


_MEANINGS = {
    401: "No valid bearer token (auth is on).",
    403: "The token's scopes do not allow this.",
    404: "What the path names does not exist, or not for this token: the detail says which.",
    409: (
        "The request conflicts with the stored state: an inactive or paused connector, a run "
        "in progress, a name taken, an Idempotency-Key used for another request."
    ),
    412: "If-Match names a version other than the stored one: read it again and retry.",
    413: "The body is over the limit (CONTROL_PLANE_MAX_BODY_BYTES).",
    502: "Prefect refused the change; nothing of it was kept.",
    503: "Prefect or the database cannot be reached, or the API is shutting down: retry later.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of these error statuses, each with its schema and meaning."""
    return {status: {"model": ErrorPublic, "description": _MEANINGS[status]} for status in statuses}


def _wire_field(field: str) -> str:
    """An `InvalidInput`'s field as the API's bodies name it: the model field it starts with by
    the models' alias generator (`models.base.ApiModel`), and the keys after it (a config's, a
    stream's name) as the client sent them. A name that is no identifier (the Idempotency-Key
    header) is no model field: it stays as it is."""
    model_field, dot, keys = field.partition(".")
    return (to_camel(model_field) if model_field.isidentifier() else model_field) + dot + keys


def _answer(error: ControlPlaneError) -> JSONResponse:
    if isinstance(error, InvalidInput):
        # The same shape as FastAPI's own 422s: the field in `loc`, what to fix in `msg`.
        field = _wire_field(error.field)
        detail: object = [
            {"loc": ["body", *field.split(".")], "msg": error.explain(field), "type": "value_error"}
        ]
    else:
        detail = error.detail
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
    return JSONResponse({"detail": detail}, status_code=error.status_code, headers=headers)


async def _control_plane_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ControlPlaneError)
    return _answer(error)


async def _prefect_error(_: Request, error: Exception) -> JSONResponse:
    return _answer(translate_error(error))


async def _statement_error(request: Request, error: Exception) -> JSONResponse:
    # An error of ours raised while SQLAlchemy processed a value (the key file, decrypting).
    cause = getattr(error, "orig", None)
    if isinstance(cause, ControlPlaneError):
        return _answer(cause)
    return await _unexpected_error(request, error)


async def _integrity_error(_: Request, error: Exception) -> JSONResponse:
    # A concurrent request stored the same unique value between our check and our insert.
    return JSONResponse(
        {"detail": f"conflicts with a stored row: {getattr(error, 'orig', error)}"},
        status_code=409,
    )


async def _database_error(_: Request, error: Exception) -> JSONResponse:
    logger.warning("database error: %s", error)
    return JSONResponse(
        {"detail": f"the control plane's database failed: {getattr(error, 'orig', error)}"},
        status_code=503,
    )


async def _unexpected_error(_: Request, error: Exception) -> JSONResponse:
    logger.exception("unexpected error", exc_info=error)
    return JSONResponse(
        {"detail": f"internal error ({type(error).__name__}); the API's log has the details"},
        status_code=500,
    )


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's own errors as FastAPI answers them, but a 405's `Allow` lists every method
    documented for the path: Starlette names those of the one route it tried."""
    assert isinstance(error, HTTPException)
    if error.status_code == 405:
        allowed = ", ".join(methods_of(request.app, request.url.path))
        error.headers = {**(error.headers or {}), "Allow": allowed}
    return await http_exception_handler(request, error)


class _AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped, so an echoed lone surrogate (a valid JSON
    escape that UTF-8 cannot encode) cannot turn a 422 into a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


async def _request_validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return _AsciiJSONResponse({"detail": jsonable_encoder(error.errors())}, status_code=422)


_CUT_SHORT = "the API is shutting down and stopped this request before it finished; retry it"


class AnswerCutRequests:
    """ASGI middleware: a request cancelled before its answer started gets a JSON 503.

    uvicorn cancels the requests still running when its graceful shutdown times out
    (`--timeout-graceful-shutdown`), and answers each with a plain-text 500 of its own. Here
    the request runs in a task of its own, shielded from that cancellation, so the 503 goes out
    at once and the task is cancelled after it: a cancelled control flow first reports its
    crash to Prefect, which takes a minute of the client's retries when Prefect is down.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = answered = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the 503 went out instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        request = asyncio.ensure_future(self.app(scope, receive, tracked_send))
        try:
            await asyncio.shield(request)
        except asyncio.CancelledError:
            request.cancel()
            # Nobody awaits it any more: take its outcome, so none is logged as unretrieved.
            request.add_done_callback(lambda task: task.cancelled() or task.exception())
            if started:
                raise  # too late for another answer; uvicorn closes the connection
            answered = True
            logger.warning("%s %s cut short by shutdown", scope["method"], scope["path"])
            cut = JSONResponse({"detail": _CUT_SHORT}, status_code=503)
            cut.headers["Connection"] = "close"
            await cut(scope, receive, send)


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ControlPlaneError, _control_plane_error)
    for prefect_error in (PrefectHTTPStatusError, ObjectNotFound, httpx.HTTPError):
        app.add_exception_handler(prefect_error, _prefect_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(StatementError, _statement_error)
    app.add_exception_handler(PoolTimeout, _database_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
