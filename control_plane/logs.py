"""The API's log lines as JSON, one object a line, when `CONTROL_PLANE_LOG_FORMAT` is `json`,
uvicorn's access lines included.

A line logged inside a control flow run carries the run's id (`flowRunId`); so do the lines of
the request that ran it which come after it, its access log line among them: the run's id is
kept for the request (`note_flow_run`) while it lasts (`request_scope`).
"""

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from uuid import UUID

from prefect.context import FlowRunContext

# The request in progress: the control flow run it ran, once one ended.
_REQUEST: ContextVar[dict[str, str] | None] = ContextVar("control_plane_request", default=None)
# The loggers whose console output becomes JSON. Only their stream handlers are replaced:
# Prefect's handler that ships a flow run's lines to its API stays.
_LOGGERS = ("", "uvicorn", "uvicorn.access", "uvicorn.error", "prefect")


@contextmanager
def request_scope() -> Iterator[None]:
    token = _REQUEST.set({})
    try:
        yield
    finally:
        _REQUEST.reset(token)


def note_flow_run(flow_run_id: UUID) -> None:
    """The request in progress ran this control flow run: its next lines name it."""
    request = _REQUEST.get()
    if request is not None:
        request["flowRunId"] = str(flow_run_id)


def _flow_run_id() -> str | None:
    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None:
        return str(context.flow_run.id)
    request = _REQUEST.get()
    return None if request is None else request.get("flowRunId")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if flow_run_id := _flow_run_id():
            line["flowRunId"] = flow_run_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(log_format: str) -> None:
    """Log JSON lines to stderr, in place of the console handlers, when `log_format` says so."""
    if log_format != "json":
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        kept = [h for h in logger.handlers if not isinstance(h, logging.StreamHandler)]
        logger.handlers = [*kept, handler]
        if name:
            logger.propagate = False
    # Prefect's logging config quiets uvicorn to warnings; a JSON log has a line per request.
    logging.getLogger("uvicorn").setLevel(logging.INFO)


__all__ = ["JsonFormatter", "configure", "note_flow_run", "request_scope"]
