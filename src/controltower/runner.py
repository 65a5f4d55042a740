"""`ctower up`: run the app under uvicorn, supervise the local agent, shut down cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import uvicorn

from controltower.client import Client
from controltower.config import Settings
from controltower.core.ports import MQTT_PORT_HINT, PortBusyError, check_port_free

log = logging.getLogger("controltower.runner")


class _Server(uvicorn.Server):
    """uvicorn's server, with SIGINT/SIGTERM handled here so shutdown ends in a normal exit code."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._request_exit)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _request_exit(self) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


def _settings(host: str | None, port: int | None, data_dir: str | None) -> Settings:
    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if data_dir is not None:
        overrides["data_dir"] = Path(data_dir)
    return Settings(**overrides).prepare()  # type: ignore[arg-type]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the server process dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start_local_agent(settings: Settings, url: str) -> subprocess.Popen[bytes]:
    """Enrol (first time) and start the local agent as a child process labelled `local`."""
    state_dir = settings.data_dir / "local-agent"
    state_dir.mkdir(parents=True, exist_ok=True)
    token = None
    if not (state_dir / "agent-token").exists():
        admin_token = settings.admin_token_path.read_text().strip()
        with Client(url, admin_token) as client:
            token = client.post("agents/enrollments", {"ttl_s": 600, "labels": ["local"]})["token"]
    cmd = [sys.executable, "-m", "controltower", "agent", "--server", url, "--state-dir", str(state_dir),
           "--labels", "local"]
    env = dict(os.environ)
    if token:
        env["CT_AGENT_TOKEN"] = token  # through the environment, so it never shows in `ps`
    log_file = open(state_dir / "agent.log", "ab")  # noqa: SIM115  (lives as long as the child)
    return subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)


async def _serve(settings: Settings, local_agent: bool) -> int:
    from controltower.server import create_app

    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            lifespan="on", access_log=False)
    server = _Server(config)
    serve_task = asyncio.create_task(server.serve())
    while not server.started and not serve_task.done():
        await asyncio.sleep(0.05)
    agent: subprocess.Popen[bytes] | None = None
    # Ingest allocates many short-lived containers per request; the default thresholds run the
    # cyclic collector every ~700 allocations and scan everything imported. Freeze what start-up
    # made and collect less often (about 10 % more samples/s in bench/ingest.py).
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1] if settings.port == 0 else settings.port
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        url = f"http://{host}:{port}"
        log.warning("%s listening on %s (data dir %s)", settings.name, url, settings.data_dir.resolve())
        if local_agent:
            agent = await asyncio.to_thread(_start_local_agent, settings, url)
            agent_log = settings.data_dir / "local-agent" / "agent.log"
            log.warning("local agent started (pid %s, log %s)", agent.pid, agent_log)
    try:
        await serve_task
    finally:
        if agent is not None:
            agent.terminate()
            try:
                await asyncio.to_thread(agent.wait, 10)
            except subprocess.TimeoutExpired:
                agent.kill()
    return 0 if server.started else 1


def run_server(host: str | None, port: int | None, data_dir: str | None, local_agent: bool) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(host, port, data_dir)
    logging.getLogger().setLevel(settings.log_level.upper())
    for chatty in ("alembic", "httpx"):  # per-request and per-plug-in INFO lines; warnings still show
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        if settings.port:
            check_port_free(settings.host, settings.port, "CT_PORT", " (or --port)")
        if settings.mqtt_port and not settings.mqtt_url:
            check_port_free(settings.mqtt_host, settings.mqtt_port, "CT_MQTT_PORT", MQTT_PORT_HINT)
    except PortBusyError as exc:
        log.error("%s", exc)
        return 2
    return asyncio.run(_serve(settings, local_agent))
