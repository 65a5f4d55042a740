"""Plug-in loading from entry points, facts merging, and supervision (a crash restarts, never kills)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from controltower.agent.outbox import Outbox
from controltower.agent.plugins import AgentContext, AgentPlugin, collect_facts, load_plugins, supervise
from controltower.config import Settings


class _Flaky:
    """Crashes on its first `crashes` runs, then puts one message and waits for the stop."""

    name = "flaky"

    def __init__(self, crashes: int) -> None:
        self.crashes = crashes
        self.runs = 0

    async def run(self, ctx: AgentContext) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"boom {self.runs}")
        ctx.outbox.put("/api/v1/test", {"run": self.runs})
        while not await ctx.sleep(10):
            pass


class _Facts:
    def __init__(self, name: str, facts: Any) -> None:
        self.name = name
        self._facts = facts

    def facts(self) -> dict[str, Any]:
        if isinstance(self._facts, Exception):
            raise self._facts
        return self._facts

    async def run(self, ctx: AgentContext) -> None:
        return None


def _ctx(tmp_path: Path, http: httpx.AsyncClient, stop: asyncio.Event) -> AgentContext:
    return AgentContext(
        settings=Settings(),
        interval_s=1.0,
        outbox=Outbox(tmp_path / "outbox.db", 100),
        agent_name="a1",
        agent_id=1,
        labels=[],
        http=http,
        stop=stop,
    )


def test_monitor_collector_is_an_installed_plugin() -> None:
    plugins = load_plugins()
    names = [p.name for p in plugins]
    assert "monitor" in names
    assert all(isinstance(p, AgentPlugin) for p in plugins)


def test_load_plugins_skips_an_unknown_group() -> None:
    assert load_plugins("controltower.no_such_group") == []


def test_facts_merge_and_a_failing_hook_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    plugins = [_Facts("a", {"os": "Linux"}), _Facts("b", RuntimeError("no /proc")), _Facts("c", {"cores": 4})]
    assert collect_facts(plugins) == {"os": "Linux", "cores": 4}  # type: ignore[arg-type]
    assert "plug-in b: facts() failed" in caplog.text


def test_a_crashing_plugin_is_restarted_with_backoff(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plugin = _Flaky(crashes=2)

    async def scenario() -> AgentContext:
        stop = asyncio.Event()
        async with httpx.AsyncClient() as http:
            ctx = _ctx(tmp_path, http, stop)
            task = asyncio.create_task(supervise(plugin, ctx, backoff_initial=0.01, backoff_max=0.05))
            deadline = asyncio.get_running_loop().time() + 10
            while len(ctx.outbox) == 0:
                assert asyncio.get_running_loop().time() < deadline, "plug-in never recovered"
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.wait_for(task, 5)
            return ctx

    ctx = asyncio.run(scenario())
    assert plugin.runs == 3
    assert [m.body for m in ctx.outbox.messages()] == [{"run": 3}]
    assert caplog.text.count("plug-in flaky crashed; restarting") == 2
    assert "boom 2" in caplog.text


def test_a_plugin_that_returns_is_not_restarted(tmp_path: Path) -> None:
    plugin = _Facts("done", {})
    calls = []
    original = plugin.run

    async def run(ctx: AgentContext) -> None:
        calls.append(1)
        await original(ctx)

    plugin.run = run  # type: ignore[method-assign]

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            await asyncio.wait_for(supervise(plugin, _ctx(tmp_path, http, asyncio.Event())), 5)  # type: ignore[arg-type]

    asyncio.run(scenario())
    assert calls == [1]
