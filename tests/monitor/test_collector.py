"""Monitor's resource collector: the named host metrics with sane values, rates from the second sample on."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import psutil

from controltower.agent.outbox import Outbox
from controltower.agent.plugins import AgentContext
from controltower.config import Settings
from controltower.monitor.collector import METRICS_PATH, Sample, Sampler, host_facts, plugin

GAUGES = {
    "host.cpu.percent",
    "host.cpu.core.percent",
    "host.load.1",
    "host.load.5",
    "host.load.15",
    "host.memory.total_bytes",
    "host.memory.used_bytes",
    "host.memory.available_bytes",
    "host.memory.percent",
    "host.swap.total_bytes",
    "host.swap.used_bytes",
    "host.swap.percent",
    "host.disk.total_bytes",
    "host.disk.used_bytes",
    "host.disk.free_bytes",
    "host.disk.percent",
    "host.processes",
    "host.uptime_seconds",
}
DISK_RATES = {
    "host.diskio.read_bytes_per_s",
    "host.diskio.write_bytes_per_s",
    "host.diskio.read_ops_per_s",
    "host.diskio.write_ops_per_s",
}
NET_RATES = {
    "host.net.rx_bytes_per_s",
    "host.net.tx_bytes_per_s",
    "host.net.rx_packets_per_s",
    "host.net.tx_packets_per_s",
    "host.net.rx_errors_per_s",
    "host.net.tx_errors_per_s",
    "host.net.rx_drops_per_s",
    "host.net.tx_drops_per_s",
}


def _by_name(samples: list[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(s.name, []).append(s)
    return out


def _one(samples: dict[str, list[Sample]], name: str) -> float:
    (only,) = samples[name]
    return only.value


def _burn_cpu_and_disk(tmp_path: Path) -> None:
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        sum(range(10_000))
    with open(tmp_path / "io.bin", "wb") as fh:
        fh.write(os.urandom(1 << 20))
        fh.flush()
        os.fsync(fh.fileno())


def _on_real_disk(path: Path) -> bool:
    parts = [p for p in psutil.disk_partitions(all=True) if str(path).startswith(p.mountpoint)]
    if not parts:
        return False
    best = max(parts, key=lambda p: len(p.mountpoint))
    return best.device.startswith("/dev/") and best.fstype not in ("tmpfs", "overlay")


def test_first_sample_has_gauges_but_no_rates(tmp_path: Path) -> None:
    sampler = Sampler("web-1")
    _burn_cpu_and_disk(tmp_path)
    first = _by_name(sampler.sample())
    assert set(first) >= GAUGES
    assert not (DISK_RATES | NET_RATES) & set(first)
    assert all(s.labels["host"] == "web-1" for group in first.values() for s in group)


def test_second_sample_has_sane_values_and_rates(tmp_path: Path) -> None:
    sampler = Sampler("web-1")
    sampler.sample()
    _burn_cpu_and_disk(tmp_path)
    samples = sampler.sample()
    got = _by_name(samples)

    assert set(got) <= GAUGES | DISK_RATES | NET_RATES
    assert set(got) >= GAUGES
    assert all(s.labels["host"] == "web-1" for s in samples)
    assert all(isinstance(s.value, int | float) for s in samples)

    assert 0 < _one(got, "host.cpu.percent") <= 100  # we just burnt 0.3 s of CPU
    cores = got["host.cpu.core.percent"]
    assert sorted(int(s.labels["core"]) for s in cores) == list(range(psutil.cpu_count()))
    assert all(0 <= s.value <= 100 for s in cores)
    for n in ("1", "5", "15"):
        assert _one(got, f"host.load.{n}") >= 0

    total = _one(got, "host.memory.total_bytes")
    assert total == psutil.virtual_memory().total
    assert 0 < _one(got, "host.memory.used_bytes") < total
    assert 0 < _one(got, "host.memory.available_bytes") <= total
    assert 0 < _one(got, "host.memory.percent") < 100
    assert 0 <= _one(got, "host.swap.used_bytes") <= _one(got, "host.swap.total_bytes")
    assert 0 <= _one(got, "host.swap.percent") <= 100

    mounts = {s.labels["mount"] for s in got["host.disk.total_bytes"]}
    assert mounts == set(sampler.mounts()) and mounts
    for name in ("host.disk.used_bytes", "host.disk.free_bytes", "host.disk.percent"):
        assert {s.labels["mount"] for s in got[name]} == mounts
    for s in got["host.disk.total_bytes"]:
        used = next(u.value for u in got["host.disk.used_bytes"] if u.labels == s.labels)
        assert 0 < used <= s.value

    assert _one(got, "host.processes") >= 2
    assert _one(got, "host.uptime_seconds") > 0

    disks = {s.labels["disk"] for s in got.get("host.diskio.write_bytes_per_s", [])}
    for name in DISK_RATES:
        assert {s.labels["disk"] for s in got.get(name, [])} == disks
        assert all(s.value >= 0 for s in got.get(name, []))
    assert not any(d.startswith(("loop", "ram", "zram")) for d in disks)
    if _on_real_disk(tmp_path):  # we fsynced 1 MiB there, so some disk wrote
        assert sum(s.value for s in got["host.diskio.write_bytes_per_s"]) > 0

    nics = {s.labels["interface"] for s in got["host.net.rx_bytes_per_s"]}
    assert nics == {n for n in psutil.net_io_counters(pernic=True) if not n.startswith(("lo", "veth"))}
    for name in NET_RATES:
        assert {s.labels["interface"] for s in got[name]} == nics
        assert all(s.value >= 0 for s in got[name])


def test_facts_describe_the_host() -> None:
    facts = host_facts()
    assert facts["os"] and facts["kernel"] and facts["cpu_model"]
    assert facts["cpu_cores"] == psutil.cpu_count()
    assert facts["memory_total_bytes"] == psutil.virtual_memory().total
    assert isinstance(facts["addresses"], list)
    assert not any(a.startswith("127.") for a in facts["addresses"])
    assert 0 < facts["boot_time"] < time.time()


def test_plugin_puts_one_metrics_message_per_interval(tmp_path: Path) -> None:
    async def scenario() -> Outbox:
        stop = asyncio.Event()
        outbox = Outbox(tmp_path / "outbox.db", 100)
        async with httpx.AsyncClient() as http:
            ctx = AgentContext(
                settings=Settings(),
                interval_s=0.2,
                outbox=outbox,
                agent_name="db-7",
                agent_id=7,
                labels=[],
                http=http,
                stop=stop,
            )
            task = asyncio.create_task(plugin.run(ctx))
            deadline = time.monotonic() + 10
            while len(outbox) < 3:
                assert time.monotonic() < deadline, "collector produced too few messages"
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 5)
        return outbox

    outbox = asyncio.run(scenario())
    messages = outbox.messages()
    assert len(messages) >= 3
    assert {m.path for m in messages} == {METRICS_PATH}
    stamps = [m.body["ts"] for m in messages]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 60
    for m in messages:
        assert set(m.body) == {"ts", "samples", "dropped"}
        assert m.body["dropped"] == 0
        assert {s["labels"]["host"] for s in m.body["samples"]} == {"db-7"}
    names_first = {s["name"] for s in messages[0].body["samples"]}
    names_second = {s["name"] for s in messages[1].body["samples"]}
    assert "host.cpu.percent" in names_first
    assert names_second >= NET_RATES
    outbox.close()
