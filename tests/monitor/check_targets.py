"""Real targets for check tests (HTTP, TCP, DNS, TLS servers on local ports) and a Context on a test db."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controltower.client import Client
from controltower.config import Settings
from controltower.core.actions import ActionRegistry
from controltower.core.blobs import BlobStore
from controltower.core.context import Context
from controltower.core.db import Database
from controltower.core.events import EventBus
from controltower.core.scheduler import Scheduler
from controltower.core.series import SeriesStore
from controltower.core.work import WorkQueue


def make_ctx(db: Database, tmp_path: Path) -> Context:
    """A Context over a migrated test database (no subsystem set up)."""
    settings = Settings(data_dir=tmp_path, database_url=db.url)
    events = EventBus(db)
    return Context(
        settings=settings,
        db=db,
        events=events,
        actions=ActionRegistry(),
        work=WorkQueue(db, events, settings),
        scheduler=Scheduler(db, tick_s=0.05),
        series=SeriesStore(db, settings),
        blobs=BlobStore(tmp_path / "blobs", settings.blob_max_bytes),
    )


def closed_port() -> int:
    """A local TCP port nobody listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *_args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/ok":
            self._send(200, b"<html>hello tower</html>", {"Content-Type": "text/html; charset=utf-8"})
        elif self.path.startswith("/status/"):
            self._send(int(self.path.rsplit("/", 1)[1]), b"status")
        elif self.path == "/redirect":
            self._send(302, b"", {"Location": "/ok"})
        elif self.path == "/slow":
            time.sleep(3)
            self._send(200, b"slow")
        else:
            self._send(404, b"not found")


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (a probe timeout) is expected


class HttpTarget:
    """A real HTTP server in a thread: /ok, /status/NNN, /redirect (-> /ok), /slow (3 s)."""

    def __init__(self, port: int = 0) -> None:
        self.server = _QuietServer(("127.0.0.1", port), _Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/ok") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpTarget:
    """A listening TCP socket that accepts and closes connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                conn.close()
            except TimeoutError:
                continue
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


class DnsTarget:
    """A tiny authoritative DNS server over UDP built with dnspython: `records[(name, type)] = [answers]`."""

    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        self.records = records
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(wire)
            self.queries += 1
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            question = query.question[0]
            name = question.name.to_text().rstrip(".")
            rdtype = dns.rdatatype.to_text(question.rdtype)
            answers = self.records.get((name, rdtype))
            if answers is None:
                known = {n for n, _ in self.records}
                response.set_rcode(dns.rcode.NOERROR if name in known else dns.rcode.NXDOMAIN)
            else:
                response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", rdtype, answers))
            self.sock.sendto(response.to_wire(), peer)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


def self_signed(tmp_path: Path, days_valid: float, days_since_start: float = 1) -> tuple[Path, Path]:
    """A self-signed cert for 127.0.0.1/localhost expiring in `days_valid` days; (cert, key) PEM paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=days_since_start))
        .not_valid_after(now + dt.timedelta(days=days_valid))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    tag = f"{days_valid:g}"
    cert_path, key_path = tmp_path / f"cert-{tag}.pem", tmp_path / f"key-{tag}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class TlsTarget:
    """A TLS server with a self-signed certificate: completes the handshake, then closes."""

    def __init__(self, tmp_path: Path, days_valid: float, days_since_start: float = 1) -> None:
        cert, key = self_signed(tmp_path, days_valid, days_since_start)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(2)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)  # wait for the client to finish and close
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


def enrol_agent(client: Client, name: str, facts: dict[str, Any] | None = None) -> Client:
    """Enrol an agent over the API (admin `client`); return a client holding the agent's own token."""
    enrolment = client.post("agents/enrollments", {"ttl_s": 600})["token"]
    body = {"enrolment_token": enrolment, "name": name, "facts": facts or {}}
    enrolled = client.post("agents/enroll", body)
    return Client(client.server, enrolled["token"])
