"""`Idempotency-Key`: a retried POST with the same key and body gets the first answer, and
does not act twice; the same key with another body is a 422. Keys are kept per caller and
route for CONTROL_PLANE_IDEMPOTENCY_KEY_HOURS. Only successful answers are kept: a request
that failed may be retried with its key and runs again."""

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from control_plane import crud
from control_plane.api.deps import CallerDep
from control_plane.db import session_scope
from control_plane.errors import Conflict, InvalidInput
from control_plane.settings import get_settings
from models.base import utcnow

HEADER = "Idempotency-Key"


class Idempotency:
    """The request's Idempotency-Key, if it sent one, scoped to the caller and the route."""

    def __init__(
        self,
        request: Request,
        caller: CallerDep,
        key: Annotated[
            str | None,
            Header(
                alias=HEADER,
                max_length=200,
                description="Retries with the same key and body get the first answer.",
            ),
        ] = None,
    ) -> None:
        self.key = key
        self.scope = f"{caller.actor} {request.method} {request.url.path}"

    async def run(
        self, action: Callable[[], Awaitable[BaseModel]], *, body: Any, status_code: int
    ) -> Any:
        """The first answer for this key and body, or the action's, kept for the retries."""
        if self.key is None:
            return await action()
        request_hash = hashlib.sha256(
            json.dumps(body, sort_keys=True, default=str).encode()
        ).hexdigest()
        expired_before = utcnow() - timedelta(hours=get_settings().idempotency_key_hours)
        async with session_scope() as session:
            held = await crud.reserve_idempotency_key(
                session=session,
                scope=self.scope,
                key=self.key,
                request_hash=request_hash,
                expired_before=expired_before,
            )
        if held is not None:
            if held.request_hash != request_hash:
                raise InvalidInput(HEADER, "this key was used with another body; use a new key")
            if held.status_code is None:
                raise Conflict("a request with this Idempotency-Key is still running; retry later")
            return JSONResponse(held.body, status_code=held.status_code)
        try:
            result = await action()
        except BaseException:
            async with session_scope() as session:
                await crud.release_idempotency_key(session=session, scope=self.scope, key=self.key)
                await session.commit()
            raise
        async with session_scope() as session:
            await crud.answer_idempotency_key(
                session=session,
                scope=self.scope,
                key=self.key,
                status_code=status_code,
                body=jsonable_encoder(result),
            )
            await session.commit()
        return result


IdempotencyDep = Annotated[Idempotency, Depends()]
