"""RPA's agent plug-in: pull `rpa.run` work, fetch the package, build or reuse its environment, run it, report.

It streams the robot's log lines while it runs, renews the work item's lease, uploads output.xml, log.html,
report.html and the artifacts, then reports the outcome. Imports no server code: only the package format,
the environment builder and the executor, which are shared with `ctower robot run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from controltower.config import Settings
from controltower.rpa.archive import extract
from controltower.rpa.envs import EnvCache, default_cache_dir, find_uv
from controltower.rpa.execute import RunOutcome, run_task
from controltower.rpa.masking import Masker
from controltower.rpa.package import load_robot

log = logging.getLogger("controltower.rpa.runner")

WORK_KIND = "rpa.run"
FETCH_WAIT_S = 20.0
LOG_FLUSH_S = 0.5
RENEW_EVERY_S = 15.0
UPLOAD_TIMEOUT_S = 300.0
MAX_BATCH = 1000


class _AgentContext(Protocol):
    """The part of the agent shell's context this plug-in uses (structural: rpa imports no agent code)."""

    settings: Settings
    http: httpx.AsyncClient
    agent_name: str

    @property
    def stopping(self) -> bool: ...

    async def sleep(self, seconds: float) -> bool: ...


class ReportError(Exception):
    """The server refused or could not be reached for a step of the run."""


class _LogBuffer:
    """Lines from the robot's thread, taken in batches by the reporting loop."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.masker = Masker(())  # the run's secret values, once fetched

    def add(self, line: str) -> None:
        line = self.masker.mask(line)
        with self._lock:
            self._lines.append(line)

    def take(self) -> list[str]:
        with self._lock:
            lines, self._lines = self._lines[:MAX_BATCH], self._lines[MAX_BATCH:]
        return lines


async def _check(response_coro: Any, what: str) -> httpx.Response:
    try:
        response = await response_coro
    except httpx.HTTPError as exc:
        raise ReportError(f"{what}: {exc.__class__.__name__}: {exc}") from exc
    if response.status_code >= 400:
        raise ReportError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")
    return response


class RpaRunner:
    """The plug-in object named in pyproject's `controltower.agent_plugins` entry points."""

    name = "rpa"

    def __init__(self) -> None:
        self.envs: EnvCache | None = None

    def facts(self) -> dict[str, Any]:
        return {"rpa": {"python": platform.python_version(), "uv": find_uv() is not None}}

    def _cache(self, settings: Settings) -> EnvCache:
        if self.envs is None:
            root = settings.rpa_env_cache_dir or default_cache_dir()
            self.envs = EnvCache(Path(root).expanduser(), settings.rpa_env_cache_max)
        return self.envs

    async def run(self, ctx: _AgentContext) -> None:
        """Take robot runs, as many at a time as the agent's capacity (CT_AGENT_CAPACITY)."""
        await asyncio.gather(*(self._take_runs(ctx) for _ in range(max(1, ctx.settings.agent_capacity))))

    async def _take_runs(self, ctx: _AgentContext) -> None:
        backoff = 1.0
        while not ctx.stopping:
            try:
                response = await ctx.http.post(
                    "/api/v1/work/fetch", json={"kinds": [WORK_KIND], "limit": 1, "wait_s": FETCH_WAIT_S},
                    timeout=FETCH_WAIT_S + 30,
                )
                if response.status_code >= 400:
                    raise ReportError(f"HTTP {response.status_code}: {response.text[:300]}")
            except (httpx.HTTPError, ReportError) as exc:
                log.warning("cannot fetch robot runs (%s); retrying in %.0fs", exc, backoff)
                if await ctx.sleep(backoff):
                    return
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            for item in response.json():
                await self.run_item(ctx, item)

    async def run_item(self, ctx: _AgentContext, item: dict[str, Any]) -> None:
        """Run one work item end to end; what goes wrong is reported as the run's error when possible."""
        payload = {**item["payload"], "lease_s": item.get("lease_s")}
        run_id, item_id = int(payload["run_id"]), int(item["id"])
        base = f"/api/v1/rpa/runs/{run_id}"
        workdir = Path(tempfile.mkdtemp(prefix=f"ctower-rpa-run-{run_id}-"))
        logs = _LogBuffer()
        try:
            # Variables and input come with the start answer, to the agent holding the run only.
            started = (await _check(ctx.http.post(f"{base}/start"), "start")).json()
            payload = {**payload, "variables": started.get("variables") or {}, "input": started.get("input")}
            if started.get("secrets"):  # values only from this endpoint, only while this agent runs the run
                payload["secrets"] = (await _check(ctx.http.get(f"{base}/secrets"), "secrets")).json()
                logs.masker = Masker(payload["secrets"].values())
            response = await _check(ctx.http.get(f"{base}/package", timeout=UPLOAD_TIMEOUT_S), "download")
            data = response.content
            if hashlib.sha256(data).hexdigest() != payload["sha256"]:
                raise ReportError("download: the package's sha256 does not match the version's")
            package_dir = workdir / "package"
            spec = await asyncio.to_thread(self._unpack, data, package_dir, ctx.settings.rpa_package_max_bytes)
            payload["input_files"] = await self._fetch_inputs(ctx, base, started.get("input_files") or [],
                                                              workdir / "inputs")
            logs.add(f"agent {ctx.agent_name}: {payload['robot']} v{payload['version']}, task {payload['task']!r}")
            outcome = await self._execute(ctx, item_id, spec, package_dir, workdir / "run", payload, logs, base)
            await self._upload(ctx, base, outcome)
            body = {k: v for k, v in outcome.summary().items() if k in _FINISH_FIELDS}
        except Exception as exc:  # the robot's failures are outcomes; this is the agent's own trouble
            log.exception("run %s failed on the agent", run_id)
            body = {"status": "error", "message": logs.masker.mask(f"agent {ctx.agent_name}: {exc}"),
                    "duration_s": 0.0}
            logs.add(body["message"])
        try:
            await self._flush(ctx, base, logs)
            await _check(ctx.http.post(f"{base}/finish", json=body), "finish")
        except ReportError as exc:
            log.warning("run %s: could not report the outcome (%s); its lease will expire", run_id, exc)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    @staticmethod
    def _unpack(data: bytes, package_dir: Path, max_bytes: int) -> Any:
        extract(data, package_dir, max_bytes=max_bytes)
        return load_robot(package_dir)

    async def _execute(self, ctx: _AgentContext, item_id: int, spec: Any, package_dir: Path, run_dir: Path,
                       payload: dict[str, Any], logs: _LogBuffer, base: str) -> RunOutcome:
        cancel = threading.Event()
        envs = self._cache(ctx.settings)
        job = asyncio.create_task(asyncio.to_thread(
            run_task, spec, package_dir, run_dir, envs, task=payload["task"],
            variables=payload.get("variables") or {}, input_data=payload.get("input"),
            input_files=payload.get("input_files"), output_max_bytes=ctx.settings.rpa_data_max_bytes,
            timeout_s=payload.get("timeout_s"), on_line=logs.add, cancel=cancel, secrets=payload.get("secrets"),
        ))
        renew_every = min(RENEW_EVERY_S, float(payload.get("lease_s") or RENEW_EVERY_S * 3) / 3)
        last_renew = time.monotonic()
        while not job.done():
            await asyncio.wait({job}, timeout=LOG_FLUSH_S)
            if ctx.stopping:
                cancel.set()
            with contextlib.suppress(ReportError):
                await self._flush(ctx, base, logs)
            if time.monotonic() - last_renew >= renew_every:
                last_renew = time.monotonic()
                try:
                    await _check(ctx.http.post(f"/api/v1/work/{item_id}/renew"), "renew")
                except ReportError as exc:
                    if "HTTP 409" in str(exc) or "HTTP 404" in str(exc):
                        logs.add(f"the server took the run back ({exc}); stopping the robot")
                        cancel.set()
                    else:
                        log.warning("lease renewal failed: %s", exc)
        return job.result()

    async def _fetch_inputs(self, ctx: _AgentContext, base: str, entries: list[dict[str, Any]],
                            target: Path) -> dict[str, Path]:
        """Download the run's input files (each checked against its sha256) to `target`."""
        files: dict[str, Path] = {}
        for entry in entries:
            name = str(entry["name"])
            response = await _check(ctx.http.get(f"{base}/inputs/{name}", timeout=UPLOAD_TIMEOUT_S),
                                    f"input file {name}")
            if hashlib.sha256(response.content).hexdigest() != entry["sha256"]:
                raise ReportError(f"input file {name}: the download's sha256 does not match")
            target.mkdir(parents=True, exist_ok=True)
            path = target / Path(name).name
            await asyncio.to_thread(path.write_bytes, response.content)
            files[name] = path
        return files

    async def _flush(self, ctx: _AgentContext, base: str, logs: _LogBuffer) -> None:
        while lines := logs.take():
            await _check(ctx.http.post(f"{base}/log", json={"lines": lines}), "log")

    async def _upload(self, ctx: _AgentContext, base: str, outcome: RunOutcome) -> None:
        uploads = [(name, path) for name, path in outcome.files.items()]
        uploads += [(f"artifacts/{rel}", path) for rel, path in outcome.artifacts.items()]
        for name, path in uploads:
            data = await asyncio.to_thread(path.read_bytes)
            await _check(ctx.http.put(f"{base}/files/{name}", content=data, timeout=UPLOAD_TIMEOUT_S),
                         f"upload {name}")


_FINISH_FIELDS = frozenset({"status", "message", "exit_code", "stats", "duration_s", "env_hash", "env_built",
                            "env_build_s", "output"})

plugin = RpaRunner()
