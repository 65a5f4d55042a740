"""Protocol probes for health checks (HTTP, TCP, ICMP, DNS, TLS expiry): a ProbeResult each, never a raise."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import logging
import os
import ssl
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import httpx
import icmplib
from cryptography import x509

MAX_BODY_BYTES = 4 * 1024 * 1024
PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"

# httpx logs every request at INFO; checks would flood the log, so their requests are left out.
_in_probe: contextvars.ContextVar[bool] = contextvars.ContextVar("controltower_http_probe", default=False)


class _SkipProbeRequests(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _in_probe.get()


logging.getLogger("httpx").addFilter(_SkipProbeRequests())


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    latency_ms: float | None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 3)


# -- target and parameter parsing (shared with the checks' validation) -----------------------------


def parse_host_port(target: str, default_port: int | None = None) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or (with a default port) a bare host; ValueError says what is wrong."""
    target = target.strip()
    host, port_text = target, ""
    if target.startswith("["):
        end = target.find("]")
        if end < 0:
            raise ValueError(f"{target!r}: unclosed '[' in an IPv6 address")
        host, rest = target[1:end], target[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{target!r}: expected ':port' after ']'")
        port_text = rest[1:]
    elif target.count(":") == 1:
        host, port_text = target.split(":")
    elif target.count(":") > 1:
        raise ValueError(f"{target!r}: write an IPv6 address as [addr]:port")
    if not host:
        raise ValueError(f"{target!r}: the host is empty")
    if any(c.isspace() or c in "/?#@" for c in host):
        raise ValueError(f"{target!r}: {host!r} is not a host name or address")
    if not port_text:
        if default_port is None:
            raise ValueError(f"{target!r}: expected host:port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{target!r}: port must be 1-65535")
    return host, int(port_text)


def parse_status_spec(spec: Any) -> list[tuple[int, int]]:
    """Accepted HTTP statuses from `200`, `[200, 204]`, `"200-299"` or `"200-299,301"`, as ranges."""
    items: list[Any]
    if isinstance(spec, bool):
        raise ValueError("expected a status, a list of statuses, or a range like '200-299'")
    if isinstance(spec, int):
        items = [spec]
    elif isinstance(spec, str):
        items = [part.strip() for part in spec.split(",") if part.strip()]
    elif isinstance(spec, list):
        items = spec
    else:
        raise ValueError("expected a status, a list of statuses, or a range like '200-299'")
    ranges: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            lo = hi = item
        elif isinstance(item, str) and "-" in item:
            lo_text, _, hi_text = item.partition("-")
            if not (lo_text.strip().isdigit() and hi_text.strip().isdigit()):
                raise ValueError(f"{item!r} is not a status range like '200-299'")
            lo, hi = int(lo_text), int(hi_text)
        elif isinstance(item, str) and item.isdigit():
            lo = hi = int(item)
        else:
            raise ValueError(f"{item!r} is not an HTTP status")
        if not (100 <= lo <= hi <= 599):
            raise ValueError(f"{item!r}: statuses are 100-599, low to high")
        ranges.append((lo, hi))
    if not ranges:
        raise ValueError("no status given")
    return ranges


def format_status_spec(ranges: list[tuple[int, int]]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


# -- HTTP -----------------------------------------------------------------------------------------


class HttpClients:
    """Shared connection pools for HTTP probes, opened lazily inside the running loop.

    Many small pools, not one big one: httpx's pool scans its connections for every request, so one pool
    with hundreds of busy connections collapses under load, while 64 pools of 8 keep up (`key` picks one,
    so a check keeps reusing its own keep-alive connection).
    """

    def __init__(self, max_connections: int = 512, shards: int = 64) -> None:
        self.shards = max(1, shards)
        per_shard = max(1, max_connections // self.shards)
        self._limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        self._clients: dict[tuple[bool, int], httpx.AsyncClient] = {}

    def get(self, verify: bool, key: int = 0) -> httpx.AsyncClient:
        slot = (verify, key % self.shards)
        client = self._clients.get(slot)
        if client is None:
            client = httpx.AsyncClient(verify=verify, limits=self._limits, headers={"User-Agent": "controltower-check"})
            self._clients[slot] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()


async def probe_http(
    url: str,
    *,
    timeout: float,
    expect_status: str | int | list[Any] | None = None,
    keyword: str | None = None,
    follow_redirects: bool = True,
    verify: bool = True,
    client: httpx.AsyncClient | None = None,
) -> ProbeResult:
    """GET `url`; ok when the status is accepted (default 200-299) and the body holds `keyword`, if given."""
    ranges = parse_status_spec(expect_status if expect_status is not None else "200-299")
    own = client is None
    http = client or httpx.AsyncClient(verify=verify)
    quiet = _in_probe.set(True)
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            response = await http.send(
                http.build_request("GET", url, timeout=timeout),
                follow_redirects=follow_redirects,
                stream=True,
            )
            try:
                body = bytearray()  # read even without a keyword, so the connection can be reused
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) >= MAX_BODY_BYTES:
                        break
            finally:
                await response.aclose()
    except TimeoutError:
        return ProbeResult(False, None, f"no answer from {url} within {timeout:g}s")
    except httpx.HTTPError as exc:
        return ProbeResult(False, None, f"GET {url} failed: {_describe(exc)}")
    finally:
        _in_probe.reset(quiet)
        if own:
            await http.aclose()
    latency = _ms(start)
    detail: dict[str, Any] = {"status": response.status_code}
    if str(response.url) != url:
        detail["final_url"] = str(response.url)
    if not any(lo <= response.status_code <= hi for lo, hi in ranges):
        error = f"HTTP {response.status_code}, expected {format_status_spec(ranges)}"
        location = response.headers.get("location")
        if location and response.is_redirect:
            error += f" (redirect to {location})"
        return ProbeResult(False, latency, error, detail)
    if keyword is not None:
        text = bytes(body).decode(response.charset_encoding or "utf-8", errors="replace")
        if keyword not in text:
            return ProbeResult(False, latency, f"keyword {keyword!r} not found in the response body", detail)
    return ProbeResult(True, latency, None, detail)


# -- TCP ------------------------------------------------------------------------------------------


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def probe_tcp(host: str, port: int, *, timeout: float) -> ProbeResult:
    """Open a TCP connection; latency is the connect time."""
    start = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return ProbeResult(False, None, f"no TCP connection to {host}:{port} within {timeout:g}s")
    except ConnectionRefusedError:
        return ProbeResult(False, None, f"connection to {host}:{port} refused")
    except OSError as exc:
        return ProbeResult(False, None, f"cannot connect to {host}:{port}: {_describe(exc)}")
    latency = _ms(start)
    await _close(writer)
    return ProbeResult(True, latency, None, {})


# -- ICMP -----------------------------------------------------------------------------------------


class IcmpUnavailable(Exception):
    """This process may neither open unprivileged ICMP sockets nor raw ones."""


def icmp_privileged() -> bool:
    """False when the kernel allows unprivileged ICMP for our group, True as root, else IcmpUnavailable."""
    try:
        with open(PING_GROUP_RANGE) as fh:
            lo, hi = (int(x) for x in fh.read().split())
    except (OSError, ValueError):
        lo, hi = 1, 0
    groups = {os.getgid(), os.getegid(), *os.getgroups()}
    if any(lo <= g <= hi for g in groups):
        return False
    if os.geteuid() == 0:
        return True
    raise IcmpUnavailable(
        "ICMP ping needs unprivileged ICMP sockets or root: allow them with "
        "`sysctl -w net.ipv4.ping_group_range='0 2147483647'` (persist in /etc/sysctl.d), "
        "or run the server as root / with CAP_NET_RAW"
    )


async def probe_icmp(host: str, *, timeout: float) -> ProbeResult:
    """One ICMP echo request; latency is the round trip."""
    try:
        privileged = icmp_privileged()
    except IcmpUnavailable as exc:
        return ProbeResult(False, None, str(exc))
    try:
        reply = await icmplib.async_ping(host, count=1, timeout=timeout, privileged=privileged)
    except icmplib.exceptions.ICMPLibError as exc:
        return ProbeResult(False, None, f"ping {host} failed: {_describe(exc)}")
    except OSError as exc:
        return ProbeResult(False, None, f"ping {host} failed: {_describe(exc)}")
    detail = {"address": reply.address, "privileged": privileged}
    if not reply.is_alive:
        return ProbeResult(False, None, f"no ICMP echo reply from {host} within {timeout:g}s", detail)
    return ProbeResult(True, round(reply.avg_rtt, 3), None, detail)


# -- DNS ------------------------------------------------------------------------------------------


def _rdata_text(rdata: Any) -> str:
    if rdata.rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode(errors="replace")
    return rdata.to_text()


def _norm(answer: str) -> str:
    return answer.strip().rstrip(".").lower()


async def probe_dns(
    name: str,
    *,
    timeout: float,
    record_type: str = "A",
    expect: str | None = None,
    nameserver: str | None = None,
) -> ProbeResult:
    """Resolve `name`; ok when answered (with `expect` among the answers, if given); nameserver: ip[:port]."""
    start = time.perf_counter()
    try:
        resolver = dns.asyncresolver.Resolver(configure=nameserver is None)
        if nameserver is not None:
            host, port = parse_host_port(nameserver, 53)
            resolver.nameservers = [host]
            resolver.port = port
        resolver.timeout = timeout
        resolver.lifetime = timeout
        answer = await resolver.resolve(name, record_type)
    except dns.exception.Timeout:
        return ProbeResult(False, None, f"no DNS answer for {name} {record_type} within {timeout:g}s")
    except dns.exception.DNSException as exc:
        return ProbeResult(False, None, f"resolving {name} {record_type} failed: {_describe(exc)}")
    latency = _ms(start)
    answers = sorted(_rdata_text(rdata) for rdata in answer)
    detail: dict[str, Any] = {"answers": answers, "record_type": record_type}
    if expect is not None and _norm(expect) not in {_norm(a) for a in answers}:
        return ProbeResult(False, latency, f"expected {expect!r} in the answer, got {', '.join(answers)}", detail)
    return ProbeResult(True, latency, None, detail)


# -- TLS certificate expiry -----------------------------------------------------------------------


async def _peer_certificate(host: str, port: int, timeout: float, verify: bool, server_name: str | None) -> bytes:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=context, server_hostname=server_name or host), timeout
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        await _close(writer)
    if not der:
        raise ssl.SSLError(f"{host}:{port} sent no certificate")
    return der


def _certificate_detail(der: bytes) -> dict[str, Any]:
    cert = x509.load_der_x509_certificate(der)
    not_after = cert.not_valid_after_utc
    days_left = (not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400.0
    return {
        "days_left": round(days_left, 2),
        "not_after": not_after.isoformat(),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
    }


async def probe_tls(
    host: str,
    port: int = 443,
    *,
    timeout: float,
    min_days: float = 14,
    verify: bool = True,
    server_name: str | None = None,
) -> ProbeResult:
    """Read the peer certificate; ok when it verifies (unless `verify` is off) and has `min_days` left."""
    start = time.perf_counter()
    where = f"{host}:{port}"
    try:
        der = await _peer_certificate(host, port, timeout, verify, server_name)
    except ssl.SSLCertVerificationError as exc:
        error = f"certificate of {where} failed verification: {exc.verify_message or exc}"
        detail: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            detail = _certificate_detail(await _peer_certificate(host, port, timeout, False, server_name))
        return ProbeResult(False, _ms(start), error, detail)
    except TimeoutError:
        return ProbeResult(False, None, f"no TLS handshake with {where} within {timeout:g}s")
    except (OSError, ssl.SSLError) as exc:
        return ProbeResult(False, None, f"TLS connection to {where} failed: {_describe(exc)}")
    latency = _ms(start)
    detail = _certificate_detail(der)
    days_left = detail["days_left"]
    if days_left < 0:
        return ProbeResult(False, latency, f"certificate of {where} expired {-days_left:.1f} days ago", detail)
    if days_left < min_days:
        error = f"certificate of {where} expires in {days_left:.1f} days (< min_days {min_days:g})"
        return ProbeResult(False, latency, error, detail)
    return ProbeResult(True, latency, None, detail)


# -- dispatch -------------------------------------------------------------------------------------


def _probe_call(
    check_type: str, target: str, params: dict[str, Any], timeout: float, http: HttpClients | None, key: int
) -> Awaitable[ProbeResult]:
    if check_type == "http":
        verify = bool(params.get("verify", True))
        return probe_http(
            target,
            timeout=timeout,
            expect_status=params.get("expect_status"),
            keyword=params.get("keyword"),
            follow_redirects=bool(params.get("follow_redirects", True)),
            verify=verify,
            client=http.get(verify, key) if http is not None else None,
        )
    if check_type == "tcp":
        host, port = parse_host_port(target)
        return probe_tcp(host, port, timeout=timeout)
    if check_type == "icmp":
        return probe_icmp(target, timeout=timeout)
    if check_type == "dns":
        return probe_dns(
            target,
            timeout=timeout,
            record_type=params.get("record_type", "A"),
            expect=params.get("expect"),
            nameserver=params.get("nameserver"),
        )
    if check_type == "tls":
        host, port = parse_host_port(target, 443)
        return probe_tls(
            host,
            port,
            timeout=timeout,
            min_days=float(params.get("min_days", 14)),
            verify=bool(params.get("verify", True)),
            server_name=params.get("server_name"),
        )
    raise ValueError(f"unknown check type {check_type!r}")


async def run_probe(
    check_type: str,
    target: str,
    params: dict[str, Any],
    timeout: float,
    http: HttpClients | None = None,
    key: int = 0,
) -> ProbeResult:
    """Run the probe for `check_type`; any failure, even an unexpected one, is a failed ProbeResult.

    `http` shares connection pools between HTTP probes; `key` (e.g. the check id) picks one of them.
    """
    try:
        async with asyncio.timeout(timeout + 2.0):
            return await _probe_call(check_type, target, params, timeout, http, key)
    except TimeoutError:
        return ProbeResult(False, None, f"{check_type} probe of {target} gave no result within {timeout:g}s")
    except Exception as exc:
        return ProbeResult(False, None, f"{check_type} probe of {target} failed: {_describe(exc)}")
