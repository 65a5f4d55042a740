"""FastAPI dependency aliases shared by every router: the Context and a database session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from controltower.core.context import Context


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


CtxDep = Annotated[Context, Depends(get_ctx)]


def get_session(ctx: CtxDep) -> Iterator[Session]:
    """A session for one request. Handlers call `session.commit()` themselves before they answer,
    so a failed commit is an error response rather than a lost write after a 2xx."""
    session = ctx.db.sessionmaker()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
