"""Protocol probes against real local servers: HTTP, TCP, ICMP, DNS (dnspython-built answers) and TLS."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from controltower.monitor import probes
from controltower.monitor.probes import (
    HttpClients,
    IcmpUnavailable,
    parse_host_port,
    parse_status_spec,
    probe_dns,
    probe_http,
    probe_icmp,
    probe_tcp,
    probe_tls,
    run_probe,
)
from tests.monitor.check_targets import DnsTarget, HttpTarget, TcpTarget, TlsTarget, closed_port


@pytest.fixture(scope="module")
def http() -> Iterator[HttpTarget]:
    target = HttpTarget()
    yield target
    target.stop()


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsTarget]:
    target = DnsTarget(
        {
            ("web.test", "A"): ["10.0.0.7", "10.0.0.8"],
            ("web.test", "TXT"): ['"v=tower1"'],
            ("alias.test", "CNAME"): ["web.test."],
        }
    )
    yield target
    target.stop()


def run(coro):
    return asyncio.run(coro)


# -- parsing --------------------------------------------------------------------------------------


def test_parse_host_port_forms_and_errors():
    assert parse_host_port("example.org:443") == ("example.org", 443)
    assert parse_host_port("[::1]:8080") == ("::1", 8080)
    assert parse_host_port("example.org", 443) == ("example.org", 443)
    for bad, why in [
        ("example.org", "host:port"),
        ("h:0", "1-65535"),
        ("h:x", "1-65535"),
        ("::1:80", "IPv6"),
        (":80", "empty"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_host_port(bad)


def test_parse_status_spec_accepts_codes_lists_and_ranges():
    assert parse_status_spec(200) == [(200, 200)]
    assert parse_status_spec("200-299,301") == [(200, 299), (301, 301)]
    assert parse_status_spec([200, "204", "300-302"]) == [(200, 200), (204, 204), (300, 302)]
    for bad in ("abc", "299-200", 99, "", True):
        with pytest.raises(ValueError):
            parse_status_spec(bad)


# -- HTTP -----------------------------------------------------------------------------------------


def test_http_ok_with_latency(http):
    result = run(probe_http(http.url(), timeout=5))
    assert result.ok, result.error
    assert result.latency_ms is not None and result.latency_ms > 0
    assert result.detail["status"] == 200


def test_http_status_mismatch_and_expected_status(http):
    result = run(probe_http(http.url("/status/500"), timeout=5))
    assert not result.ok
    assert result.error == "HTTP 500, expected 200-299"
    assert run(probe_http(http.url("/status/503"), timeout=5, expect_status="500-503")).ok
    assert run(probe_http(http.url("/status/204"), timeout=5, expect_status=[200, 204])).ok


def test_http_keyword(http):
    assert run(probe_http(http.url(), timeout=5, keyword="hello tower")).ok
    missing = run(probe_http(http.url(), timeout=5, keyword="goodbye"))
    assert not missing.ok
    assert "keyword 'goodbye' not found" in missing.error


def test_http_redirects_followed_or_not(http):
    followed = run(probe_http(http.url("/redirect"), timeout=5, keyword="hello"))
    assert followed.ok, followed.error
    assert followed.detail["final_url"] == http.url("/ok")
    not_followed = run(probe_http(http.url("/redirect"), timeout=5, follow_redirects=False))
    assert not not_followed.ok
    assert "HTTP 302" in not_followed.error and "redirect to /ok" in not_followed.error
    assert run(probe_http(http.url("/redirect"), timeout=5, follow_redirects=False, expect_status=302)).ok


def test_http_unreachable_and_timeout_are_results_not_exceptions(http):
    port = closed_port()
    refused = run(probe_http(f"http://127.0.0.1:{port}/", timeout=2))
    assert not refused.ok
    assert refused.error.startswith(f"GET http://127.0.0.1:{port}/ failed: ConnectError")
    slow = run(probe_http(http.url("/slow"), timeout=0.5))
    assert not slow.ok
    assert "0.5s" in slow.error


def test_http_shared_clients_are_reused(http):
    async def twice() -> list[probes.ProbeResult]:
        clients = HttpClients(max_connections=4)
        try:
            return [await probe_http(http.url(), timeout=5, client=clients.get(True)) for _ in range(2)]
        finally:
            await clients.aclose()

    assert all(r.ok for r in run(twice()))


# -- TCP ------------------------------------------------------------------------------------------


def test_tcp_open_and_closed_ports():
    target = TcpTarget()
    try:
        result = run(probe_tcp("127.0.0.1", target.port, timeout=2))
        assert result.ok and result.latency_ms is not None
    finally:
        target.stop()
    port = closed_port()
    refused = run(probe_tcp("127.0.0.1", port, timeout=2))
    assert not refused.ok
    assert refused.error == f"connection to 127.0.0.1:{port} refused"
    unresolvable = run(probe_tcp("no-such-host.invalid", 80, timeout=2))
    assert not unresolvable.ok and "no-such-host.invalid:80" in unresolvable.error


# -- ICMP -----------------------------------------------------------------------------------------


def test_icmp_ping_localhost():
    try:
        privileged = probes.icmp_privileged()
    except IcmpUnavailable as exc:
        pytest.skip(f"the kernel forbids unprivileged ICMP and we are not root: {exc}")
    result = run(probe_icmp("127.0.0.1", timeout=2))
    assert result.ok, result.error
    assert result.latency_ms is not None
    assert result.detail == {"address": "127.0.0.1", "privileged": privileged}


def test_icmp_unresolvable_host_is_an_error_result():
    result = run(probe_icmp("no-such-host.invalid", timeout=1))
    assert not result.ok
    assert "no-such-host.invalid" in result.error


# -- DNS ------------------------------------------------------------------------------------------


def test_dns_resolves_against_a_real_server(dns_server):
    result = run(probe_dns("web.test", timeout=2, nameserver=dns_server.address))
    assert result.ok, result.error
    assert sorted(result.detail["answers"]) == ["10.0.0.7", "10.0.0.8"]
    assert run(probe_dns("web.test", timeout=2, nameserver=dns_server.address, expect="10.0.0.8")).ok
    txt = run(
        probe_dns("web.test", timeout=2, record_type="TXT", nameserver=dns_server.address, expect="v=tower1")
    )
    assert txt.ok, txt.error
    cname = run(
        probe_dns(
            "alias.test", timeout=2, record_type="CNAME", nameserver=dns_server.address, expect="web.test"
        )
    )
    assert cname.ok, cname.error


def test_dns_wrong_answer_nxdomain_and_silent_server(dns_server):
    wrong = run(probe_dns("web.test", timeout=2, nameserver=dns_server.address, expect="10.9.9.9"))
    assert not wrong.ok
    assert wrong.error == "expected '10.9.9.9' in the answer, got 10.0.0.7, 10.0.0.8"
    missing = run(probe_dns("nothing.test", timeout=2, nameserver=dns_server.address))
    assert not missing.ok and "NXDOMAIN" in missing.error
    silent = run(probe_dns("web.test", timeout=0.5, nameserver=f"127.0.0.1:{closed_port()}"))
    assert not silent.ok and "web.test" in silent.error


# -- TLS ------------------------------------------------------------------------------------------


def test_tls_days_left_and_min_days(tmp_path):
    target = TlsTarget(tmp_path, days_valid=30)
    try:
        ok = run(probe_tls("127.0.0.1", target.port, timeout=3, verify=False))
        assert ok.ok, ok.error
        assert 29 < ok.detail["days_left"] <= 30
        assert ok.detail["subject"] == "CN=localhost"
        too_soon = run(probe_tls("127.0.0.1", target.port, timeout=3, verify=False, min_days=60))
        assert not too_soon.ok
        assert "expires in 30.0 days (< min_days 60)" in too_soon.error
        unverified = run(probe_tls("127.0.0.1", target.port, timeout=3))
        assert not unverified.ok
        assert "failed verification" in unverified.error and "self" in unverified.error
        assert 29 < unverified.detail["days_left"] <= 30
    finally:
        target.stop()


def test_tls_expired_certificate(tmp_path):
    target = TlsTarget(tmp_path, days_valid=-2, days_since_start=10)
    try:
        result = run(probe_tls("127.0.0.1", target.port, timeout=3, verify=False))
        assert not result.ok
        assert "expired 2.0 days ago" in result.error
    finally:
        target.stop()


def test_tls_unreachable():
    port = closed_port()
    result = run(probe_tls("127.0.0.1", port, timeout=2))
    assert not result.ok
    assert result.error.startswith(f"TLS connection to 127.0.0.1:{port} failed")


# -- dispatch -------------------------------------------------------------------------------------


def test_run_probe_dispatches_and_never_raises(http):
    assert run(run_probe("http", http.url(), {"keyword": "hello"}, 5)).ok
    bad = run(run_probe("gopher", "x", {}, 1))
    assert not bad.ok and "unknown check type 'gopher'" in bad.error
    broken = run(run_probe("tcp", "no-port", {}, 1))
    assert not broken.ok and "expected host:port" in broken.error
