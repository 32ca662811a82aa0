"""Idempotency keys: reserved by a request, answered when it succeeds, released when it fails."""

from datetime import datetime
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from models import IdempotencyKey


async def reserve_idempotency_key(
    *, session: AsyncSession, scope: str, key: str, request_hash: str, expired_before: datetime
) -> IdempotencyKey | None:
    """Reserve the key for this request (None), or the row of the request that holds it."""
    await session.exec(
        delete(IdempotencyKey).where(col(IdempotencyKey.created_at) < expired_before)
    )
    await session.commit()
    session.add(IdempotencyKey(scope=scope, key=key, request_hash=request_hash))
    try:
        await session.commit()
        return None
    except IntegrityError:
        await session.rollback()
    return await session.get(IdempotencyKey, (scope, key))


async def answer_idempotency_key(
    *, session: AsyncSession, scope: str, key: str, status_code: int, body: Any
) -> None:
    await session.exec(
        update(IdempotencyKey)
        .where(col(IdempotencyKey.scope) == scope, col(IdempotencyKey.key) == key)
        .values(status_code=status_code, body=body)
    )


async def release_idempotency_key(*, session: AsyncSession, scope: str, key: str) -> None:
    await session.exec(
        delete(IdempotencyKey).where(
            col(IdempotencyKey.scope) == scope, col(IdempotencyKey.key) == key
        )
    )
