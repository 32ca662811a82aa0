"""Dependencies that carry the checks every route shares."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query
from sqlmodel.ext.asyncio.session import AsyncSession

from control_plane.db import session_scope

ANONYMOUS = "anonymous"


async def get_session() -> AsyncIterator[AsyncSession]:
    async with session_scope() as session:
        yield session


def current_actor() -> str:
    """Who is calling, for the audit tags of control flow runs."""
    return ANONYMOUS


class Page:
    """`limit` and `offset` query parameters of every list."""

    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=1000, description="Most items to return.")] = 100,
        offset: Annotated[int, Query(ge=0, description="Items to skip.")] = 0,
    ) -> None:
        self.limit = limit
        self.offset = offset


SessionDep = Annotated[AsyncSession, Depends(get_session)]
CurrentActor = Annotated[str, Depends(current_actor)]
PageDep = Annotated[Page, Depends()]
