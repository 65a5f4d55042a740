"""Hosts: metrics pushed by agents' collectors, UP/DOWN liveness from heartbeats, and their API views."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controltower.core.agents import Agent
from controltower.core.context import Context
from controltower.core.db import Database, utcnow
from controltower.core.series import BatchShape, LatestSample, PreparedSamples, Sample
from controltower.monitor import host_counts
from controltower.monitor.models import Host
from controltower.monitor.schemas import HostDetail, HostPublic, HostStatusChange, MetricsPush, MetricValue

UP, DOWN = "up", "down"
HISTORY_LIMIT = 50
FACT_SUMMARY_KEYS = (
    "hostname",
    "os_release",
    "kernel",
    "arch",
    "cpu_model",
    "cpu_cores",
    "memory_total_bytes",
    "addresses",
)


class HostNotFound(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no monitored host named {name!r}")


class AgentGone(LookupError):
    """The calling agent's row was deleted."""


# -- ingestion ------------------------------------------------------------------------------------


async def receive_metrics(ctx: Context, agent_id: int, push: MetricsPush) -> tuple[str, int]:
    """An agent's push, stored in a write transaction it may share with other pushes (SQLite group commit).

    Returns the host's name and how many samples were stored. SeriesError (naming e.g. `samples.3.name`)
    and AgentGone come before anything is written. This is the ingest hot path: pushes are validated one
    at a time, and only the inserts run in the writer's transaction. A push of up to `INLINE_SAMPLES` is
    validated on the event loop itself (a millisecond or two): handing it to a thread and back cost more than
    validating it. (Validating on many threads at once made the writer wait for the GIL between its
    statements: fewer samples/s, not more.)
    """
    loop = asyncio.get_running_loop()
    name = _known_agent_name(ctx, agent_id) or await loop.run_in_executor(None, _read_agent_name, ctx, agent_id)
    if len(push["samples"]) <= INLINE_SAMPLES:
        prepared = _prepare(ctx, agent_id, name, push)
    else:
        validator = _VALIDATOR if ctx.db.dialect == "sqlite" else None  # PostgreSQL's writers run side by side
        prepared = await loop.run_in_executor(validator, _prepare, ctx, agent_id, name, push)
    count, dropped = len(push["samples"]), push.get("dropped", 0)
    stored = await ctx.db.write_async(
        lambda session: _store(ctx, session, agent_id, name, prepared, count, dropped, defer=True)
    )
    return name, stored


INLINE_SAMPLES = 10_000
_VALIDATOR = ThreadPoolExecutor(1, thread_name_prefix="metrics-validate")


def ingest_metrics(ctx: Context, session: Session, agent_id: int, push: MetricsPush) -> tuple[str, int]:
    """Like `receive_metrics`, in the caller's transaction."""
    name = _known_agent_name(ctx, agent_id) or _read_agent_name(ctx, agent_id)
    prepared = _prepare(ctx, agent_id, name, push)
    return name, _store(ctx, session, agent_id, name, prepared, len(push["samples"]), push.get("dropped", 0))


# By agent id, with the database it was read from: an agent's name never changes (re-enrolling keeps the
# name and the id, and agents are not deleted), so a push need not read it again (the read cost more than
# validating a push of a hundred samples).
_agent_names: dict[int, tuple[Database, str]] = {}


def _known_agent_name(ctx: Context, agent_id: int) -> str | None:
    known = _agent_names.get(agent_id)
    return known[1] if known is not None and known[0] is ctx.db else None


def _read_agent_name(ctx: Context, agent_id: int) -> str:
    with ctx.db.read_session() as reader:
        name = reader.scalar(select(Agent.name).where(Agent.id == agent_id))
    if name is None:
        raise AgentGone(f"agent {agent_id} no longer exists")
    if len(_agent_names) >= 100_000:
        _agent_names.clear()
    _agent_names[agent_id] = (ctx.db, name)
    return name


@dataclass(frozen=True, slots=True)
class _PushShape:
    """The series an agent pushed last time, in order: its next push of the same series skips validating
    and keying each sample (an agent pushes the same series every interval)."""

    host: str
    idents: list[tuple[str, dict[str, str] | None]]  # (name, labels as sent) per sample
    series: BatchShape


_push_shapes: dict[int, _PushShape] = {}  # by agent id


def _prepare(ctx: Context, agent_id: int, name: str, push: MetricsPush) -> PreparedSamples | None:
    """The agent's validated samples, the `host` label forced to its name."""
    ts, samples = push["ts"], push["samples"]
    if not samples:
        return None
    # parse_metrics_push checked the shape: each sample is an object with a name and a value.
    idents = [(s["name"], s.get("labels")) for s in samples]
    known = _push_shapes.get(agent_id)
    if known is not None and known.host == name and known.idents == idents:
        prepared = ctx.series.prepare_shaped(known.series, ts, [s["value"] for s in samples])
        if prepared is not None:
            return prepared
    rows = ((s["name"], {**s.get("labels", {}), "host": name}, ts, s["value"]) for s in samples)
    prepared = ctx.series.prepare(rows)
    series_shape = ctx.series.shape(prepared)
    if series_shape is not None:
        _push_shapes[agent_id] = _PushShape(name, idents, series_shape)
    return prepared


def _store(ctx: Context, session: Session, agent_id: int, name: str, prepared: PreparedSamples | None,
           count: int, dropped: int, defer: bool = False) -> int:
    """Insert the samples and count them on the agent's Host; reads and writes plain columns only. With
    `defer` (SQLite's group commit), both are written with the transaction's other pushes when it commits."""
    stored = ctx.series.store(session, prepared, defer) if prepared is not None else 0
    if defer and ctx.db.dialect == "sqlite":
        host_counts.count_at_commit(session, agent_id, name, count, dropped)
    else:
        host_counts.count_now(session, agent_id, name, count, dropped, utcnow())
    return stored


# -- liveness -------------------------------------------------------------------------------------


def down_after_s(ctx: Context, agent: Agent) -> float:
    return ctx.settings.host_down_after * (agent.heartbeat_interval_s or ctx.settings.agent_heartbeat_s)


def evaluate_liveness(ctx: Context, now: dt.datetime | None = None) -> dict[str, str]:
    """Mark each host UP or DOWN by its agent's last heartbeat; publish transitions; write `host.up{host}`."""
    now = now or utcnow()
    statuses: dict[str, str] = {}
    with ctx.db.session() as session:
        rows = session.execute(
            select(Host, Agent).join(Agent, Host.agent_id == Agent.id).order_by(Host.name)
        ).all()
        samples: list[Sample] = []
        for host, agent in rows:
            silent_s = (now - agent.last_seen).total_seconds() if agent.last_seen else None
            status = UP if silent_s is not None and silent_s <= down_after_s(ctx, agent) else DOWN
            statuses[host.name] = status
            samples.append(
                Sample("host.up", {"host": host.name}, now.timestamp(), 1.0 if status == UP else 0.0)
            )
            if status == host.status:
                continue
            change = {"ts": now.isoformat(), "from": host.status, "to": status}
            host.history = [*(host.history or []), change][-HISTORY_LIMIT:]
            previous, host.status, host.status_since = host.status, status, now
            ctx.events.publish(
                f"monitor.host.{status}",
                {
                    "host": host.name,
                    "agent_id": agent.id,
                    "from": previous,
                    "to": status,
                    "last_seen": agent.last_seen.isoformat() if agent.last_seen else None,
                },
                session=session,
            )
        if samples:
            ctx.series.write(samples, session=session)
    return statuses


# -- reading --------------------------------------------------------------------------------------


def read_hosts(session: Session) -> list[tuple[Host, Agent]]:
    rows = session.execute(
        select(Host, Agent).join(Agent, Host.agent_id == Agent.id).order_by(Host.name)
    ).all()
    return [(h, a) for h, a in rows]


def read_host(session: Session, name: str) -> tuple[Host, Agent]:
    row = session.execute(
        select(Host, Agent).join(Agent, Host.agent_id == Agent.id).where(Host.name == name)
    ).first()
    if row is None:
        raise HostNotFound(name)
    return row[0], row[1]


def delete_host(session: Session, name: str) -> None:
    """Forget a host's monitoring state (it comes back if its agent pushes metrics again)."""
    host, _ = read_host(session, name)
    session.delete(host)
    session.flush()


def facts_summary(facts: dict[str, Any]) -> dict[str, Any]:
    """The few facts worth a column: OS, CPU, memory, addresses (plug-in sub-dicts are looked into too)."""
    flat: dict[str, Any] = {}
    for key, value in facts.items():
        if isinstance(value, dict):
            for inner_key, inner in value.items():
                flat.setdefault(inner_key, inner)
        else:
            flat[key] = value
    summary = {k: flat[k] for k in FACT_SUMMARY_KEYS if k in flat}
    if not summary:
        summary = {k: v for k, v in list(flat.items())[:6] if isinstance(v, str | int | float | bool)}
    return summary


def latest_by_host(latest: list[LatestSample]) -> dict[str, list[LatestSample]]:
    by_host: dict[str, list[LatestSample]] = defaultdict(list)
    for sample in latest:
        host = sample.labels.get("host")
        if host is not None:
            by_host[host].append(sample)
    return by_host


def _headline(samples: list[LatestSample], name: str, worst: bool = False) -> float | None:
    values = [s for s in samples if s.name == name]
    if not values:
        return None
    if worst:
        return max(s.value for s in values)
    return min(values, key=lambda s: len(s.labels)).value


def host_public(host: Host, agent: Agent, samples: list[LatestSample]) -> HostPublic:
    return HostPublic(
        name=host.name,
        agent_id=agent.id,
        status=host.status,
        status_since=host.status_since,
        last_seen=agent.last_seen,
        last_metrics_at=host.last_metrics_at,
        facts=facts_summary(agent.facts or {}),
        labels=list(agent.labels or []),
        cpu_percent=_headline(samples, "host.cpu.percent"),
        memory_percent=_headline(samples, "host.memory.percent"),
        disk_percent=_headline(samples, "host.disk.percent", worst=True),
        samples_received=host.samples_received,
        samples_dropped_by_agent=host.samples_dropped_by_agent,
    )


def host_detail(host: Host, agent: Agent, samples: list[LatestSample]) -> HostDetail:
    public = host_public(host, agent, samples)
    history = [
        HostStatusChange(ts=dt.datetime.fromisoformat(c["ts"]), from_status=c["from"], to_status=c["to"])
        for c in reversed(host.history or [])
    ]
    metrics = [
        MetricValue(name=s.name, labels=s.labels, ts=dt.datetime.fromtimestamp(s.ts, dt.UTC), value=s.value)
        for s in samples
    ]
    return HostDetail(**public.model_dump(), all_facts=agent.facts or {}, history=history, metrics=metrics)


# -- wiring ---------------------------------------------------------------------------------------


def setup(ctx: Context) -> None:
    """Routes and the liveness job."""
    from controltower.monitor import api

    every = max(1.0, min(5.0, ctx.settings.agent_heartbeat_s / 2))
    ctx.scheduler.every("monitor.hosts.liveness", every, lambda: evaluate_liveness(ctx), run_at_start=True)
    ctx.include_router(api.hosts_router)
