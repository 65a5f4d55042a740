"""FastAPI dependency aliases shared by every router: the Context and a database session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from controltower.core.context import Context

# Dependencies here are `async def` although they do no I/O: FastAPI runs a plain `def` dependency in its
# thread pool, and those hand-offs (several per request) cost more than the work itself.


async def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


CtxDep = Annotated[Context, Depends(get_ctx)]


async def get_session(ctx: CtxDep) -> AsyncIterator[Session]:
    """A session for one request. Handlers call `session.commit()` themselves before they answer,
    so a failed commit is an error response rather than a lost write after a 2xx. Creating it connects
    nothing; at the end there is normally no transaction left, so the rollback does no I/O."""
    session = ctx.db.sessionmaker()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
