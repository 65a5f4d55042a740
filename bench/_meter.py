"""CPU time and RSS of one process over a measured window, the same way for ours and the peers."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import psutil


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


@dataclass
class ProcessMeter:
    """Started at the beginning of the window; `sample()` records RSS; `stop()` returns the figures.

    CPU % is the process's own user+system CPU time over the wall time of the window, as a percentage
    of one core, so another process running at the same time does not change it (on an idle core).
    """

    pid: int
    _proc: psutil.Process = field(init=False)
    _cpu0: float = field(init=False)
    _t0: float = field(init=False)
    _rss: list[int] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._proc = psutil.Process(self.pid)
        self._cpu0 = _cpu_seconds(self._proc)
        self._t0 = time.monotonic()
        self.sample()

    def sample(self) -> None:
        self._rss.append(self._proc.memory_info().rss)

    def stop(self) -> dict[str, float]:
        self.sample()
        wall = time.monotonic() - self._t0
        cpu = _cpu_seconds(self._proc) - self._cpu0
        return {
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 3),
            "cpu_percent": round(cpu / wall * 100, 3),
            "rss_mb": round(self._rss[-1] / 2**20, 1),
            "rss_max_mb": round(max(self._rss) / 2**20, 1),
        }
