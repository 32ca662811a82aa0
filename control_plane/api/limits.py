"""Limits on what a request may carry, so hostile input is refused before it costs anything.

`BodyLimit` is a pure ASGI middleware over the raw body: at most `max_body_bytes` (413, by
Content-Length when given, else by counting the streamed chunks, never holding more than the
limit), UTF-8 (RFC 8259; the API takes nothing but JSON), and, when it is JSON, nested at most
`MAX_BODY_DEPTH` levels (Python's parser raises RecursionError on deep enough input).

`models.base.check_json_value` is the models' side: a validator that refuses, naming the
field, a value nested deeper than `MAX_JSON_DEPTH` or holding text no database stores (NUL,
lone surrogates).
"""

import codecs
import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.settings import get_settings
from models.base import MAX_JSON_DEPTH

"""Deepest nesting of a value in a body's field (a config, an override)."""

MAX_BODY_DEPTH = 2 * MAX_JSON_DEPTH
"""Deepest nesting of a whole JSON body; no valid body comes near it."""

# The bytes that change the nesting or the string state of JSON text. No byte of a multi-byte
# UTF-8 character is ASCII, so scanning bytes is exact.
_JSON_TOKENS = re.compile(rb'[\\"\[\]{}]')
_QUOTE, _BACKSLASH, _OPENERS = ord('"'), ord("\\"), (ord("["), ord("{"))


class _Refused(Exception):
    """The body broke a limit: the answer replaces whatever the app makes of the cut body."""

    def __init__(self, status: int, detail: object) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _body_error(msg: str, type_: str) -> _Refused:
    # FastAPI's own shape for a body that is not JSON: a 422 with the problem in `msg`.
    return _Refused(422, [{"type": type_, "loc": ["body"], "msg": msg}])


def _too_large(limit: int) -> _Refused:
    return _Refused(
        413,
        f"request body over {limit} bytes; send less (configs hold settings, not data), "
        "or raise CONTROL_PLANE_MAX_BODY_BYTES",
    )


class _DepthScanner:
    """The nesting depth of JSON text fed in chunks, without parsing it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.depth = 0
        self.in_string = False
        self.escaped = False  # the previous chunk ended on a backslash inside a string

    def feed(self, chunk: bytes) -> bool:
        """Scan the next chunk; False as soon as the nesting goes deeper than the limit."""
        if not chunk:
            return True
        skip = 0 if self.escaped else -1  # the position of an escaped byte, not a token
        self.escaped = False
        for match in _JSON_TOKENS.finditer(chunk):
            position = match.start()
            if position == skip:
                continue
            byte = chunk[position]
            if self.in_string:
                if byte == _BACKSLASH:
                    skip = position + 1
                    self.escaped = skip == len(chunk)
                elif byte == _QUOTE:
                    self.in_string = False
            elif byte == _QUOTE:
                self.in_string = True
            elif byte in _OPENERS:
                self.depth += 1
                if self.depth > self.limit:
                    return False
            elif byte != _BACKSLASH:
                self.depth -= 1
        return True


def _is_json(scope: Scope) -> bool:
    """Whether FastAPI would parse the body as JSON: no Content-Type, or a JSON one."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type = value.split(b";", 1)[0].strip().lower()
            return media_type == b"application/json" or media_type.endswith(b"+json")
    return True


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses such a request before it gets here
    return None


class _BodyChecks:
    """Checks one request's body chunk by chunk, as the app reads it."""

    def __init__(self, limit: int, json_body: bool) -> None:
        self.limit = limit
        self.received = 0
        # Every body, JSON or not: FastAPI answers a 500 when it echoes undecodable bytes.
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.depth = _DepthScanner(MAX_BODY_DEPTH) if json_body else None

    def check(self, chunk: bytes, *, final: bool) -> None:
        before = self.received
        self.received += len(chunk)
        if self.received > self.limit:
            raise _too_large(self.limit)
        pending = len(self.decoder.getstate()[0])
        try:
            self.decoder.decode(chunk, final=final)
        except UnicodeDecodeError as error:
            # The decoder reports positions in its pending bytes followed by this chunk.
            position = before - pending + error.start
            bad = bytes(error.object[error.start : error.start + 1]).hex()
            raise _body_error(
                f"the body is not UTF-8 (byte 0x{bad} at position {position}); "
                "send JSON encoded as UTF-8",
                "json_invalid",
            ) from None
        if self.depth is not None and not self.depth.feed(chunk):
            raise _body_error(
                f"JSON nested deeper than {MAX_BODY_DEPTH} levels; flatten it", "json_too_deep"
            )


class BodyLimit:
    """Refuse a request body over `max_body_bytes` (413), or JSON that is not UTF-8 or nests
    absurdly deep (422), before the app parses it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Read per request, so a test that clears the settings' cache sees its own limit.
        limit = get_settings().max_body_bytes
        length = _content_length(scope)
        if length is not None and length > limit:
            await _answer(send, _too_large(limit))
            return
        checks = _BodyChecks(limit, _is_json(scope))
        refusal: _Refused | None = None
        started = False

        async def checked_receive() -> Message:
            nonlocal refusal
            if refusal is not None:
                raise refusal  # not one byte more, whatever the app made of the first refusal
            message = await receive()
            if message["type"] == "http.request":
                try:
                    checks.check(message.get("body", b""), final=not message.get("more_body"))
                except _Refused as error:
                    refusal = error
                    raise
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refusal is not None and not started:
                return  # the app's answer to a body it never fully got; ours goes instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, checked_receive, guarded_send)
        except Exception:
            if refusal is None or started:
                raise
        if refusal is not None and not started:
            await _answer(send, refusal)


async def _answer(send: Send, refusal: _Refused) -> None:
    body = json.dumps({"detail": refusal.detail}, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The rest of the body is never read: the connection cannot carry another request.
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["MAX_BODY_DEPTH", "BodyLimit"]
