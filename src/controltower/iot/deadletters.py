"""Dead letters: what ingestion refused (malformed JSON, wrong types, unknown device, oversize) and why."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controltower.iot.models import DeadLetter

PAYLOAD_KEEP = 4096  # bytes of the refused payload kept for inspection
KINDS = ("malformed_json", "invalid", "unknown_device", "oversize", "forbidden", "late_response", "incomplete",
         "error")


def record(
    session: Session,
    *,
    source: str,
    topic: str,
    kind: str,
    reason: str,
    payload: bytes | str = b"",
    device_id: str | None = None,
) -> DeadLetter:
    """Keep a refused message (its first PAYLOAD_KEEP bytes) in the caller's transaction."""
    raw = payload.encode() if isinstance(payload, str) else bytes(payload)
    row = DeadLetter(
        source=source,
        topic=topic[:255],
        kind=kind,
        reason=reason[:2000],
        size=len(raw),
        payload=raw[:PAYLOAD_KEEP].decode("utf-8", errors="replace"),
        device_id=device_id[:64] if device_id else None,
    )
    session.add(row)
    return row


def read(
    session: Session,
    *,
    limit: int = 100,
    kind: str | None = None,
    device_id: str | None = None,
    before_id: int | None = None,
) -> list[DeadLetter]:
    """Newest first."""
    stmt = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
    if kind is not None:
        stmt = stmt.where(DeadLetter.kind == kind)
    if device_id is not None:
        stmt = stmt.where(DeadLetter.device_id == device_id)
    if before_id is not None:
        stmt = stmt.where(DeadLetter.id < before_id)
    return list(session.scalars(stmt))


def counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(DeadLetter.kind, func.count()).group_by(DeadLetter.kind)).all()
    return {kind: int(n) for kind, n in rows}
