"""A load generator's fleet split over child processes, each answering `snapshot` and `stop` over its pipe."""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any


class ChildProcesses:
    """`target(conn, *args)` in one spawned process per `args`, with a simulator's start / wait_connected /
    snapshot / stop; snapshots are the children's counts summed."""

    def __init__(self, target: Callable[..., None], args_per_child: list[tuple[Any, ...]], devices: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.total = devices
        self._conns: list[Connection] = []
        self._procs: list[BaseProcess] = []
        self._final: dict[str, int] | None = None  # the counts when stopped
        for args in args_per_child:
            parent, child = context.Pipe()
            self._conns.append(parent)
            self._procs.append(context.Process(target=target, daemon=True, args=(child, *args)))

    def start(self) -> ChildProcesses:
        for proc in self._procs:
            proc.start()
        return self

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs if proc.pid is not None]

    def _ask(self, command: str) -> dict[str, int]:
        for conn in self._conns:
            conn.send(command)
        total: Counter[str] = Counter()
        for conn in self._conns:
            total.update(conn.recv())
        return dict(total)

    def snapshot(self) -> dict[str, int]:
        return dict(self._final) if self._final is not None else self._ask("snapshot")

    def wait_connected(self, timeout: float = 60.0) -> bool:
        """True once every device is connected; False at the timeout, or as soon as the devices that gave up
        (a child's `gave_up` count: refused logins, for a fleet that does not retry) leave too few."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.snapshot()
            connected = counts.get("connected", 0)
            if connected >= self.total:
                return True
            if connected + counts.get("gave_up", 0) >= self.total:
                return False
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        if self._final is not None:
            return
        self._final = self._ask("stop")
        for proc in self._procs:
            proc.join(30)
