"""The agent plug-in protocol, the context a plug-in runs with, and loading plug-ins from entry points."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import httpx

from controltower.agent.outbox import Outbox
from controltower.config import Settings

log = logging.getLogger("controltower.agent.plugins")

ENTRY_POINT_GROUP = "controltower.agent_plugins"


@dataclass
class AgentContext:
    """What a plug-in gets: settings, its interval, the outbox, who the agent is, the server, a stop flag.

    `http` is an httpx.AsyncClient whose base URL is the server and which carries the agent's token, so a
    plug-in pulls work with e.g. `await ctx.http.post("/api/v1/work/fetch", json=...)`. Data for the server
    goes through `outbox.put(path, body)`, which survives restarts and outages.
    """

    settings: Settings
    interval_s: float
    outbox: Outbox
    agent_name: str
    agent_id: int | None
    labels: list[str]
    http: httpx.AsyncClient
    stop: asyncio.Event

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when the agent is stopping (return from `run` then)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=max(0.0, seconds))
        return self.stop.is_set()


@runtime_checkable
class AgentPlugin(Protocol):
    """An agent-side part of a subsystem, declared as an entry point in `controltower.agent_plugins`.

    `run(ctx)` runs for the agent's life and returns when `ctx.stop` is set. An optional
    `facts() -> dict` adds to the facts sent at enrolment and on the first heartbeat.
    """

    name: str

    async def run(self, ctx: AgentContext) -> None: ...


def load_plugins(group: str = ENTRY_POINT_GROUP) -> list[AgentPlugin]:
    """Every installed plug-in; one that fails to import or is malformed is logged and skipped."""
    plugins: list[AgentPlugin] = []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            obj = ep.load()
        except Exception:
            log.exception("agent plug-in %r (%s) failed to load; skipped", ep.name, ep.value)
            continue
        if not isinstance(obj, AgentPlugin) or not inspect.iscoroutinefunction(obj.run):
            log.error("agent plug-in %r (%s) has no `name` and `async run(ctx)`; skipped", ep.name, ep.value)
            continue
        plugins.append(obj)
    return plugins


def collect_facts(plugins: list[AgentPlugin]) -> dict[str, Any]:
    """Merge every plug-in's facts() (a failing one is logged and left out)."""
    facts: dict[str, Any] = {}
    for plugin in plugins:
        hook = getattr(plugin, "facts", None)
        if hook is None:
            continue
        try:
            result = hook()
        except Exception:
            log.exception("plug-in %s: facts() failed", plugin.name)
            continue
        if isinstance(result, dict):
            facts.update(result)
    return facts


async def supervise(
    plugin: AgentPlugin,
    ctx: AgentContext,
    backoff_initial: float = 1.0,
    backoff_max: float = 60.0,
) -> None:
    """Run a plug-in until the agent stops; a crash is logged and the plug-in restarted after a backoff.

    A plug-in that returns on its own has finished and is not restarted. The backoff resets once a run
    has lasted longer than `backoff_max`.
    """
    backoff = backoff_initial
    while not ctx.stop.is_set():
        started = time.monotonic()
        try:
            await plugin.run(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            if ctx.stop.is_set():
                log.exception("plug-in %s failed while stopping", plugin.name)
                return
            if time.monotonic() - started > backoff_max:
                backoff = backoff_initial
            log.exception("plug-in %s crashed; restarting in %.1fs", plugin.name, backoff)
            if await ctx.sleep(backoff):
                return
            backoff = min(backoff * 2, backoff_max)
            continue
        if not ctx.stop.is_set():
            log.info("plug-in %s finished", plugin.name)
        return
