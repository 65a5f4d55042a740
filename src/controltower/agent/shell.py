"""`ctower agent`: enrol, heartbeat, run the installed plug-ins, send the outbox; stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from controltower import __version__
from controltower.agent.outbox import Outbox
from controltower.agent.plugins import AgentContext, AgentPlugin, collect_facts, load_plugins, supervise
from controltower.config import Settings

log = logging.getLogger("controltower.agent")

ENROLMENT_PREFIX = "cte_"
AGENT_TOKEN_PREFIX = "ct_"
TOKEN_FILE = "agent-token"
IDENTITY_FILE = "agent.json"
OUTBOX_FILE = "outbox.db"
HTTP_TIMEOUT_S = 10.0
STOP_GRACE_S = 5.0


class AgentSetupError(Exception):
    """The agent cannot start as configured (no usable token, refused enrolment); exit code 2."""


def default_state_dir() -> Path:
    return Path(os.environ.get("CT_AGENT_STATE_DIR") or "~/.ctower-agent").expanduser()


def parse_labels(labels: str) -> list[str]:
    return sorted({part.strip() for part in labels.split(",") if part.strip()})


def write_secret(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600, atomically (no moment where it is readable by others)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class AgentShell:
    """One agent: its state dir (token, identity, outbox), its plug-ins, and the loops that run them."""

    def __init__(
        self,
        server: str,
        settings: Settings,
        state_dir: Path,
        plugins: list[AgentPlugin],
        name: str | None = None,
        labels: list[str] | None = None,
        interval_s: float | None = None,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.server = server.rstrip("/")
        self.settings = settings
        self.state_dir = state_dir
        self.plugins = plugins
        self.labels = labels or []
        self.interval_s = interval_s or settings.agent_interval_s
        self.backoff_max_s = backoff_max_s
        self.stop = asyncio.Event()
        self.agent_id: int | None = None
        self.agent_name: str = name or socket.gethostname()
        self.facts_sent = False

    @property
    def token_path(self) -> Path:
        return self.state_dir / TOKEN_FILE

    @property
    def identity_path(self) -> Path:
        return self.state_dir / IDENTITY_FILE

    # --- credentials -------------------------------------------------------------------------

    def stored_token(self) -> str | None:
        try:
            return self.token_path.read_text().strip() or None
        except OSError:
            return None

    def _load_identity(self) -> bool:
        try:
            data = json.loads(self.identity_path.read_text())
        except (OSError, ValueError):
            return False
        if data.get("server") not in (None, self.server):
            return False
        self.agent_id = int(data["agent_id"])
        self.agent_name = str(data["name"])
        return True

    def _save_identity(self) -> None:
        text = json.dumps({"agent_id": self.agent_id, "name": self.agent_name, "server": self.server})
        write_secret(self.identity_path, text + "\n")

    async def credentials(self, token: str | None) -> str | None:
        """The agent token to use, enrolling first if given an enrolment token; None if stopped meanwhile."""
        if token and token.startswith(ENROLMENT_PREFIX):
            try:
                return await self._enrol(token)
            except AgentSetupError as exc:
                stored = self.stored_token()
                if stored is None:
                    raise
                log.warning("%s; using the token stored in %s", exc, self.token_path)
                token = stored
        elif token and not token.startswith(AGENT_TOKEN_PREFIX):
            raise AgentSetupError(
                f"--token / CT_AGENT_TOKEN must be an enrolment token ({ENROLMENT_PREFIX}...) "
                f"or an agent token ({AGENT_TOKEN_PREFIX}...)"
            )
        explicit = token is not None
        token = token or self.stored_token()
        if token is None:
            raise AgentSetupError(
                f"no agent token: pass --token with an enrolment token (`ctower agent enroll` prints one) "
                f"or put the agent's token in {self.token_path}"
            )
        # A stored token comes with its identity on disk, so the agent starts even while the server is down.
        known = not explicit and self._load_identity()
        if not known and not await self._fetch_identity(token):
            return None
        return token

    async def _enrol(self, enrolment_token: str) -> str | None:
        facts = await asyncio.to_thread(collect_facts, self.plugins)
        body = {
            "enrolment_token": enrolment_token,
            "name": self.agent_name,
            "facts": facts,
            "labels": self.labels,
            "capacity": self.settings.agent_capacity,
            "version": __version__,
        }
        async with httpx.AsyncClient(base_url=self.server, timeout=HTTP_TIMEOUT_S) as http:
            response = await self._retrying(lambda: http.post("/api/v1/agents/enroll", json=body), "enrol")
        if response is None:
            return None
        if response.status_code >= 400:
            raise AgentSetupError(f"enrolment refused ({response.status_code}): {_detail(response)}")
        data = response.json()
        self.facts_sent = True
        self.agent_id = int(data["agent_id"])
        self.agent_name = str(data["name"])
        write_secret(self.token_path, data["token"] + "\n")
        self._save_identity()
        log.warning(
            "enrolled as %s (agent id %d); token stored in %s",
            self.agent_name,
            self.agent_id,
            self.token_path,
        )
        return str(data["token"])

    async def _fetch_identity(self, token: str) -> bool:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=self.server, timeout=HTTP_TIMEOUT_S, headers=headers) as http:
            response = await self._retrying(lambda: http.get("/api/v1/agents/me"), "identify")
        if response is None:
            return False
        if response.status_code >= 400:
            raise AgentSetupError(f"the server refused the agent token ({response.status_code}): {_detail(response)}")
        data = response.json()
        self.agent_id = int(data["id"])
        self.agent_name = str(data["name"])
        self._save_identity()
        return True

    async def _retrying(self, send: Any, what: str) -> httpx.Response | None:
        """Call `send()` until the server answers with something other than a 5xx; None if stopped first."""
        backoff = 0.5
        while not self.stop.is_set():
            try:
                response = await send()
                if response.status_code < 500:
                    return response
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = exc.__class__.__name__
            log.warning("cannot %s with %s yet (%s); retrying in %.1fs", what, self.server, problem, backoff)
            await self._sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)
        return None

    # --- running -----------------------------------------------------------------------------

    async def main(self, token: str | None) -> int:
        self._install_signal_handlers()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            agent_token = await self.credentials(token)
        except AgentSetupError as exc:
            log.error("%s", exc)
            return 2
        if agent_token is None:
            return 0
        outbox = Outbox(self.state_dir / OUTBOX_FILE, self.settings.agent_outbox_max)
        headers = {"Authorization": f"Bearer {agent_token}", "User-Agent": f"ctower-agent/{__version__}"}
        async with httpx.AsyncClient(base_url=self.server, headers=headers, timeout=HTTP_TIMEOUT_S) as http:
            ctx = AgentContext(
                settings=self.settings,
                interval_s=self.interval_s,
                outbox=outbox,
                agent_name=self.agent_name,
                agent_id=self.agent_id,
                labels=self.labels,
                http=http,
                stop=self.stop,
            )
            log.warning(
                "agent %s running against %s with plug-ins: %s (interval %.3gs)",
                self.agent_name,
                self.server,
                ", ".join(p.name for p in self.plugins) or "none",
                self.interval_s,
            )
            sender = asyncio.create_task(
                outbox.send_forever(http, self.stop, backoff_max=self.backoff_max_s), name="outbox"
            )
            heartbeat = asyncio.create_task(self._heartbeat_loop(http, outbox), name="heartbeat")
            runs = [asyncio.create_task(supervise(p, ctx), name=f"plugin:{p.name}") for p in self.plugins]
            await self.stop.wait()
            log.warning("stopping")
            await _finish(runs, STOP_GRACE_S)
            await _finish([heartbeat, sender], HTTP_TIMEOUT_S)
            left = await outbox.flush(http, deadline_s=STOP_GRACE_S)
            if left:
                log.warning("%d message(s) stay in the outbox for the next start", left)
        outbox.close()
        return 0

    async def _heartbeat_loop(self, http: httpx.AsyncClient, outbox: Outbox) -> None:
        every = self.settings.agent_heartbeat_s
        # Facts went with the enrolment; after a restart they go with the first heartbeat (they may differ).
        facts = None if self.facts_sent else await asyncio.to_thread(collect_facts, self.plugins) or None
        failing = False
        while not self.stop.is_set():
            body: dict[str, Any] = {"interval_s": every}
            if facts:
                body["facts"] = facts
            problem = None
            try:
                response = await http.post("/api/v1/agents/heartbeat", json=body)
                if response.status_code >= 400:
                    problem = f"HTTP {response.status_code}: {_detail(response)}"
            except httpx.HTTPError as exc:
                problem = exc.__class__.__name__
            if problem is None:
                facts = None
                if failing:
                    log.warning("heartbeat accepted again")
                    outbox.nudge()
                failing = False
            elif not failing:
                log.warning("heartbeat failed (%s); will keep trying every %.3gs", problem, every)
                failing = True
            await self._sleep(every)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread, or no Unix signals
                with contextlib.suppress(ValueError):
                    signal.signal(sig, lambda *_: loop.call_soon_threadsafe(self.stop.set))


async def _finish(tasks: list[asyncio.Task[Any]], grace_s: float) -> None:
    """Give tasks `grace_s` to end on their own, then cancel the rest."""
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=grace_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:500]
    return str(data.get("detail", data)) if isinstance(data, dict) else str(data)[:500]


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level.upper())
    # httpx logs every request at INFO; keep the agent's log about the agent.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def run_agent(
    server: str,
    token: str | None,
    name: str | None,
    labels: str,
    state_dir: str | None,
    interval: float | None,
) -> int:
    """Run an agent until SIGINT/SIGTERM; returns the exit code (2: no usable token)."""
    settings = Settings()
    _configure_logging(settings.log_level)
    if interval is not None and interval <= 0:
        log.error("--interval must be positive, got %s", interval)
        return 2
    shell = AgentShell(
        server=server,
        settings=settings,
        state_dir=Path(state_dir).expanduser() if state_dir else default_state_dir(),
        plugins=load_plugins(),
        name=name,
        labels=parse_labels(labels),
        interval_s=interval,
    )
    started = time.monotonic()
    code = asyncio.run(shell.main(token))
    log.info("agent exited with %d after %.0fs", code, time.monotonic() - started)
    return code
