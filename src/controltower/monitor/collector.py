"""Monitor's agent plug-in: sample host resources with psutil every interval and queue them for the server."""

from __future__ import annotations

import logging
import os
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import psutil

log = logging.getLogger("controltower.monitor.collector")

METRICS_PATH = "/api/v1/monitor/hosts/metrics"

# Filesystems that hold no user data; psutil's all=False already drops the "nodev" ones on Linux.
PSEUDO_FILESYSTEMS = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "mqueue",
        "nsfs",
        "overlay",
        "proc",
        "pstore",
        "ramfs",
        "rpc_pipefs",
        "securityfs",
        "squashfs",
        "sysfs",
        "tmpfs",
        "tracefs",
        "iso9660",
        "udf",
        "nullfs",
        "fdescfs",
    }
)
# Block devices that are not disks: loop-mounted images, RAM disks, compressed swap, floppies, optical drives.
SKIP_DISK_PREFIXES = ("loop", "ram", "zram", "fd", "sr")
SKIP_INTERFACE_PREFIXES = ("lo", "veth")
MOUNT_REFRESH_S = 60.0


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "labels": self.labels, "value": self.value}


class _Outbox(Protocol):
    def put(self, path: str, body: Any, items: int = 1) -> int: ...


class _AgentContext(Protocol):
    """The part of the agent shell's context this plug-in uses (structural: monitor imports no agent code)."""

    interval_s: float
    agent_name: str
    outbox: _Outbox

    async def sleep(self, seconds: float) -> bool: ...


@dataclass
class _Counters:
    """Cumulative counters at one instant, kept to turn the next reading into rates."""

    at: float
    values: dict[str, tuple[float, ...]]


def _cpu_busy_total(t: Any) -> tuple[float, float]:
    """(busy, total) seconds from one cpu_times entry, the way psutil.cpu_percent counts them."""
    total = sum(t)
    # On Linux guest time is already inside user/nice; counting it twice would exceed 100 %.
    total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


def _percent(busy0: float, total0: float, busy1: float, total1: float) -> float | None:
    d_total = total1 - total0
    if d_total <= 0:
        return None
    return round(min(100.0, max(0.0, (busy1 - busy0) / d_total * 100.0)), 2)


def _whole_disks() -> set[str] | None:
    """Names of whole block devices (not partitions) on Linux; None elsewhere (then every disk counts)."""
    try:
        return set(os.listdir("/sys/block"))
    except OSError:
        return None


class Sampler:
    """Reads host resources; rates come from the difference to the previous reading (none on the first)."""

    def __init__(self, host: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.clock = clock
        self.boot_time = psutil.boot_time()
        self._cpu: list[tuple[float, float]] | None = None
        self._disk: _Counters | None = None
        self._net: _Counters | None = None
        self._mounts: list[str] = []
        self._mounts_at = float("-inf")
        self._whole_disks = _whole_disks()
        self._prime_cpu()

    def _prime_cpu(self) -> None:
        self._cpu = [_cpu_busy_total(t) for t in psutil.cpu_times(percpu=True)]

    def sample(self) -> list[Sample]:
        """One reading of every metric; each has the `host` label."""
        out: list[Sample] = []
        now = self.clock()
        self._cpu_samples(out)
        self._load_samples(out)
        self._memory_samples(out)
        self._disk_usage_samples(out)
        self._disk_io_samples(now, out)
        self._net_samples(now, out)
        out.append(self._s("host.processes", len(psutil.pids())))
        out.append(self._s("host.uptime_seconds", round(time.time() - self.boot_time, 1)))
        return out

    def _s(self, name: str, value: float, **labels: str) -> Sample:
        return Sample(name, {"host": self.host, **labels}, value)

    def _cpu_samples(self, out: list[Sample]) -> None:
        current = [_cpu_busy_total(t) for t in psutil.cpu_times(percpu=True)]
        previous = self._cpu
        self._cpu = current
        if previous is None or len(previous) != len(current):
            return
        busy0 = sum(b for b, _ in previous)
        total0 = sum(t for _, t in previous)
        busy1 = sum(b for b, _ in current)
        total1 = sum(t for _, t in current)
        total = _percent(busy0, total0, busy1, total1)
        if total is not None:
            out.append(self._s("host.cpu.percent", total))
        for core, ((b0, t0), (b1, t1)) in enumerate(zip(previous, current, strict=True)):
            pct = _percent(b0, t0, b1, t1)
            if pct is not None:
                out.append(self._s("host.cpu.core.percent", pct, core=str(core)))

    def _load_samples(self, out: list[Sample]) -> None:
        try:
            load1, load5, load15 = psutil.getloadavg()
        except (OSError, AttributeError):
            return
        out.append(self._s("host.load.1", round(load1, 2)))
        out.append(self._s("host.load.5", round(load5, 2)))
        out.append(self._s("host.load.15", round(load15, 2)))

    def _memory_samples(self, out: list[Sample]) -> None:
        vm = psutil.virtual_memory()
        out.append(self._s("host.memory.total_bytes", vm.total))
        out.append(self._s("host.memory.used_bytes", vm.used))
        out.append(self._s("host.memory.available_bytes", vm.available))
        out.append(self._s("host.memory.percent", vm.percent))
        sw = psutil.swap_memory()
        out.append(self._s("host.swap.total_bytes", sw.total))
        out.append(self._s("host.swap.used_bytes", sw.used))
        out.append(self._s("host.swap.percent", sw.percent))

    def mounts(self) -> list[str]:
        """Mount points of real filesystems, one per device (the shortest path), refreshed every minute."""
        now = self.clock()
        if now - self._mounts_at < MOUNT_REFRESH_S:
            return self._mounts
        by_device: dict[str, str] = {}
        for part in psutil.disk_partitions(all=False):
            if part.fstype in PSEUDO_FILESYSTEMS or not part.fstype:
                continue
            if not os.path.isdir(part.mountpoint):  # files bind-mounted into containers (/etc/hosts, ...)
                continue
            seen = by_device.get(part.device)
            if seen is None or len(part.mountpoint) < len(seen):
                by_device[part.device] = part.mountpoint
        self._mounts = sorted(by_device.values())
        self._mounts_at = now
        return self._mounts

    def _disk_usage_samples(self, out: list[Sample]) -> None:
        for mount in self.mounts():
            try:
                du = psutil.disk_usage(mount)
            except OSError:
                continue
            out.append(self._s("host.disk.total_bytes", du.total, mount=mount))
            out.append(self._s("host.disk.used_bytes", du.used, mount=mount))
            out.append(self._s("host.disk.free_bytes", du.free, mount=mount))
            out.append(self._s("host.disk.percent", du.percent, mount=mount))

    def _is_disk(self, name: str) -> bool:
        if name.startswith(SKIP_DISK_PREFIXES):
            return False
        return self._whole_disks is None or name in self._whole_disks

    def _disk_io_samples(self, now: float, out: list[Sample]) -> None:
        counters = psutil.disk_io_counters(perdisk=True) or {}
        current = _Counters(
            now,
            {
                name: (c.read_bytes, c.write_bytes, c.read_count, c.write_count)
                for name, c in counters.items()
                if self._is_disk(name)
            },
        )
        previous, self._disk = self._disk, current
        names = (
            "host.diskio.read_bytes_per_s",
            "host.diskio.write_bytes_per_s",
            "host.diskio.read_ops_per_s",
            "host.diskio.write_ops_per_s",
        )
        for disk, rates in _rates(previous, current):
            for name, rate in zip(names, rates, strict=True):
                out.append(self._s(name, rate, disk=disk))

    def _net_samples(self, now: float, out: list[Sample]) -> None:
        counters = psutil.net_io_counters(pernic=True) or {}
        current = _Counters(
            now,
            {
                nic: (
                    c.bytes_recv,
                    c.bytes_sent,
                    c.packets_recv,
                    c.packets_sent,
                    c.errin,
                    c.errout,
                    c.dropin,
                    c.dropout,
                )
                for nic, c in counters.items()
                if not nic.startswith(SKIP_INTERFACE_PREFIXES)
            },
        )
        previous, self._net = self._net, current
        names = (
            "host.net.rx_bytes_per_s",
            "host.net.tx_bytes_per_s",
            "host.net.rx_packets_per_s",
            "host.net.tx_packets_per_s",
            "host.net.rx_errors_per_s",
            "host.net.tx_errors_per_s",
            "host.net.rx_drops_per_s",
            "host.net.tx_drops_per_s",
        )
        for nic, rates in _rates(previous, current):
            for name, rate in zip(names, rates, strict=True):
                out.append(self._s(name, rate, interface=nic))


def _rates(previous: _Counters | None, current: _Counters) -> list[tuple[str, tuple[float, ...]]]:
    """Per-second rates for each key present in both readings; a counter that went back (reset) is skipped."""
    if previous is None:
        return []
    elapsed = current.at - previous.at
    if elapsed <= 0:
        return []
    result = []
    for key, values in current.values.items():
        before = previous.values.get(key)
        if before is None:
            continue
        deltas = [v - b for v, b in zip(values, before, strict=True)]
        if any(d < 0 for d in deltas):
            continue
        result.append((key, tuple(round(d / elapsed, 3) for d in deltas)))
    return result


def _os_release() -> str | None:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _addresses() -> list[str]:
    found: set[str] = set()
    for nic, addrs in psutil.net_if_addrs().items():
        if nic.startswith("lo"):
            continue
        for addr in addrs:
            if addr.family in (socket.AF_INET, socket.AF_INET6) and not addr.address.startswith(
                ("127.", "::1", "fe80")
            ):
                found.add(addr.address.split("%", 1)[0])
    return sorted(found)


def host_facts() -> dict[str, Any]:
    """What the host is: OS, kernel, CPU, memory, addresses, boot time."""
    return {
        "hostname": socket.gethostname(),
        "os": platform.system(),
        "os_release": _os_release() or f"{platform.system()} {platform.release()}",
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_cores": psutil.cpu_count(logical=True),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "memory_total_bytes": psutil.virtual_memory().total,
        "swap_total_bytes": psutil.swap_memory().total,
        "addresses": _addresses(),
        "boot_time": psutil.boot_time(),
        "python": platform.python_version(),
    }


class ResourceCollector:
    """Entry point `controltower.agent_plugins: monitor`. One outbox message per interval."""

    name = "monitor"

    def facts(self) -> dict[str, Any]:
        return host_facts()

    async def run(self, ctx: _AgentContext) -> None:
        sampler = Sampler(ctx.agent_name)
        interval = ctx.interval_s
        # Sample on a fixed grid so a slow round does not drift the schedule; missed ticks are skipped.
        # The first sample comes a second after start (rates need two readings), so a new host shows at once.
        next_at = time.monotonic() + min(interval, 1.0)
        while not await ctx.sleep(next_at - time.monotonic()):
            ts = time.time()
            samples = sampler.sample()
            # Counted per sample: if the outbox overflows, the server learns how many samples were lost.
            ctx.outbox.put(METRICS_PATH, metrics_body(ts, samples), items=len(samples))
            now = time.monotonic()
            next_at += interval
            if next_at <= now:
                next_at += ((now - next_at) // interval + 1) * interval


def metrics_body(ts: float, samples: list[Sample]) -> dict[str, Any]:
    """The body of POST /api/v1/monitor/hosts/metrics; the outbox adds its drop count to `dropped`."""
    return {"ts": round(ts, 3), "samples": [s.as_json() for s in samples], "dropped": 0}


plugin = ResourceCollector()
