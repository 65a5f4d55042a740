"""The Prometheus exporter: parsed back with prometheus_client's own parser, from a db and from a real server."""

from __future__ import annotations

import time

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controltower.core.agents import register_agent
from controltower.core.series import Sample
from controltower.monitor import exporter, hosts
from controltower.monitor.models import Check
from controltower.monitor.schemas import METRICS_PUSH
from tests.monitor.check_targets import HttpTarget, enrol_agent, make_ctx
from tests.support import wait_for


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """family name -> {sorted label items: value}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_names_are_prometheus_safe():
    assert exporter.metric_name("host.net.rx_bytes_per_s") == "ctower_host_net_rx_bytes_per_s"
    assert exporter.label_name("mount-point") == "mount_point"
    assert exporter.label_name("9lives") == "l_9lives"


def test_collector_exports_hosts_and_checks(db, tmp_path):
    ctx = make_ctx(db, tmp_path)
    exporter.setup(ctx)
    now = time.time()
    with db.session() as session:
        agent = register_agent(session, name="web1", facts={}, labels=[], capacity=1, version=None)
        session.add_all(
            [
                Check(name="site", type="http", target="http://x/", state="up", last_latency_ms=12.5, params={}),
                Check(name="db", type="tcp", target="x:1", state="down", params={}),
                Check(name="new", type="tcp", target="x:2", state="unknown", params={}),
            ]
        )
    push = METRICS_PUSH.validate_python(
        {
            "ts": now,
            "samples": [
                {"name": "host.cpu.percent", "labels": {}, "value": 33.0},
                {"name": "host.disk.percent", "labels": {"mount": "/"}, "value": 50.0},
                {"name": "host.disk.percent", "labels": {"mount": "/data"}, "value": 75.0},
                {"name": "host.net.rx_bytes_per_s", "labels": {"interface": "eth0"}, "value": 1024.0},
            ],
        }
    )
    with db.session() as session:
        hosts.ingest_metrics(ctx, session, agent.id, push)
    ctx.series.write([Sample("host.cpu.percent", {"host": "gone"}, now, 99.0)])  # no such host: not exported
    hosts.evaluate_liveness(ctx)

    metrics = parse(generate_latest(ctx.metrics).decode())
    assert metrics["ctower_host_cpu_percent"] == {(("host", "web1"),): 33.0}
    assert metrics["ctower_host_disk_percent"] == {
        (("host", "web1"), ("mount", "/")): 50.0,
        (("host", "web1"), ("mount", "/data")): 75.0,
    }
    assert metrics["ctower_host_net_rx_bytes_per_s"] == {(("host", "web1"), ("interface", "eth0")): 1024.0}
    assert metrics["ctower_host_up"] == {(("host", "web1"),): 1.0}
    assert metrics["ctower_check_up"] == {
        (("check", "db"), ("type", "tcp")): 0.0,
        (("check", "site"), ("type", "http")): 1.0,
    }
    assert metrics["ctower_check_latency_ms"] == {(("check", "site"), ("type", "http")): 12.5}


def test_metrics_endpoint_parses_with_checks_and_hosts(server):
    admin = server.client()
    target = HttpTarget()
    try:
        agent = enrol_agent(admin, "web1")
        agent.post(
            "monitor/hosts/metrics",
            {
                "ts": time.time(),
                "samples": [
                    {"name": "host.memory.percent", "labels": {}, "value": 61.5},
                    {"name": "host.disk.percent", "labels": {"mount": "/"}, "value": 20.0},
                ],
            },
        )
        admin.post("monitor/checks", {"name": "site", "type": "http", "target": target.url(), "interval": 1})
        wait_for(lambda: admin.get("monitor/checks/site")["state"] == "up", message="check UP")
        text = admin.http.get("/metrics").text
    finally:
        target.stop()
    metrics = parse(text)
    assert metrics["ctower_host_memory_percent"] == {(("host", "web1"),): 61.5}
    assert metrics["ctower_host_disk_percent"] == {(("host", "web1"), ("mount", "/")): 20.0}
    assert metrics["ctower_check_up"][(("check", "site"), ("type", "http"))] == 1.0
    assert metrics["ctower_check_latency_ms"][(("check", "site"), ("type", "http"))] > 0
    assert metrics["ctower_check_uptime_ratio_24h"][(("check", "site"), ("type", "http"))] == 1.0
    assert sum(metrics["ctower_check_start_lateness_seconds_count"].values()) >= 1
    assert (("host", "web1"),) in wait_for(
        lambda: parse(admin.http.get("/metrics").text).get("ctower_host_up"), message="ctower_host_up"
    )
