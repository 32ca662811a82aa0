"""ASGI middleware: each request timed into the request latency histogram, by its route's
template, and its log lines kept together (`logs.request_scope`)."""

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane import logs
from control_plane.api.templates import template_of
from control_plane.metrics import REQUEST_SECONDS


class Observed:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless an answer starts

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with logs.request_scope():
            try:
                await self.app(scope, receive, timed_send)
            finally:
                # The template, not the path: one series per route, whatever the ids.
                route = template_of(scope["app"], scope["path"]) or "unmatched"
                seconds = time.perf_counter() - started
                REQUEST_SECONDS.labels(route, scope["method"], str(status)).observe(seconds)
