"""Each metrics push counted on its agent's Host row: at once, or all of a transaction's pushes in one UPDATE
when it commits (SQLite's group commit, where every statement costs the writer a wait for the GIL)."""

from __future__ import annotations

import datetime as dt
import functools

from sqlalchemy import TextClause, bindparam, event, select, text, update
from sqlalchemy.orm import Session

from controltower.core.db import UtcDateTime, utcnow
from controltower.monitor.models import Host

_PENDING = "ct_host_counts_pending"  # session.info: agent id -> [host name, samples, dropped]

_hosts = Host.__table__
# Built once, a plain Core statement: the ORM's bulk-update path cost more than the update itself.
_COUNT_PUSH = (
    update(_hosts)
    .where(_hosts.c.agent_id == bindparam("agent"))
    .values(
        name=bindparam("name"),
        last_metrics_at=bindparam("now"),
        samples_received=_hosts.c.samples_received + bindparam("count"),
        samples_dropped_by_agent=_hosts.c.samples_dropped_by_agent + bindparam("dropped"),
    )
)
_with_host: set[int] = set()  # agents whose Host row was there at their last count (a hint, checked each time)


def count_now(session: Session, agent_id: int, name: str, count: int, dropped: int, now: dt.datetime) -> None:
    """Count the push on the agent's Host, creating it (or adopting one of that name) on the first push."""
    counted = session.connection().execute(
        _COUNT_PUSH, {"agent": agent_id, "name": name, "now": now, "count": count, "dropped": dropped}
    )
    _with_host.add(agent_id)
    if counted.rowcount:
        return
    host = session.scalar(select(Host).where(Host.name == name))  # the first push, or the first since a delete
    if host is None:
        host = Host(name=name, status_since=now, samples_received=0, samples_dropped_by_agent=0,
                    history=[])  # status: the model's default, unknown until liveness decides
        session.add(host)
    host.agent_id = agent_id
    host.last_metrics_at = now
    host.samples_received = (host.samples_received or 0) + count
    host.samples_dropped_by_agent = (host.samples_dropped_by_agent or 0) + dropped
    session.flush()


def count_at_commit(session: Session, agent_id: int, name: str, count: int, dropped: int) -> None:
    """Like `count_now`, but written with the transaction's other pushes just before it commits (SQLite only)."""
    if agent_id not in _with_host:
        count_now(session, agent_id, name, count, dropped, utcnow())
        return
    pending: dict[int, list] | None = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = {}
        event.listen(session, "before_commit", _flush)
        event.listen(session, "after_rollback", _forget)
    counts = pending.get(agent_id)
    if counts is None:
        pending[agent_id] = [name, count, dropped]
    else:  # the same agent twice in one transaction (a backlog): one row of VALUES, summed
        counts[0], counts[1], counts[2] = name, counts[1] + count, counts[2] + dropped


@functools.lru_cache(maxsize=64)
def _count_pushes_sql(agents: int) -> TextClause:
    rows = ",".join(f"(:a{i},:n{i},:c{i},:d{i})" for i in range(agents))
    return text(
        "UPDATE monitor_hosts SET name = v.name, last_metrics_at = :now, "
        "samples_received = monitor_hosts.samples_received + v.count, "
        "samples_dropped_by_agent = monitor_hosts.samples_dropped_by_agent + v.dropped "
        "FROM (SELECT column1 AS agent, column2 AS name, column3 AS count, column4 AS dropped "
        f"FROM (VALUES {rows})) AS v WHERE monitor_hosts.agent_id = v.agent RETURNING monitor_hosts.agent_id"
    ).bindparams(bindparam("now", type_=UtcDateTime()))


def _flush(session: Session) -> None:
    pending: dict[int, list] = session.info.pop(_PENDING, None) or {}
    if not pending:
        return
    now = utcnow()
    params: dict[str, object] = {"now": now}
    for i, (agent_id, (name, count, dropped)) in enumerate(pending.items()):
        params.update({f"a{i}": agent_id, f"n{i}": name, f"c{i}": count, f"d{i}": dropped})
    counted = set(session.connection().execute(_count_pushes_sql(len(pending)), params).scalars())
    for agent_id, (name, count, dropped) in pending.items():
        if agent_id not in counted:  # its Host was deleted since: made again, as on a first push
            count_now(session, agent_id, name, count, dropped, now)


def _forget(session: Session) -> None:
    session.info.pop(_PENDING, None)
