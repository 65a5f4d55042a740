"""`ctower up`: starts, serves, refuses a busy port by naming the setting, reports readiness, stops cleanly."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
from sqlalchemy import create_engine, text

from tests.conftest import POSTGRES_URL, _postgres_available, skip_or_fail
from tests.support import free_port, start_server, wait_for


def test_sigterm_is_a_clean_shutdown(server) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert server.stop() == 0
    assert "Application shutdown complete" in server.logs()


def test_busy_port_names_the_setting(tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "controltower", "up", "--no-agent", "--port", str(port),
             "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 2
    assert "CT_PORT" in result.stderr and str(port) in result.stderr


def test_openapi_docs_are_served(server) -> None:
    assert httpx.get(server.url + "/docs").status_code == 200
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/api/v1/agents/enroll" in spec["paths"]


def test_local_agent_enrols_itself(tmp_path) -> None:
    srv = start_server(tmp_path / "data", args=[])
    try:
        with srv.client() as client:
            agents = wait_for(lambda: [a for a in client.get("agents") if "local" in a["labels"]], timeout=60,
                              message="the local agent to enrol")
        assert len(agents) == 1
        assert agents[0]["facts"], "the local agent reports host facts"
    finally:
        assert srv.stop() == 0


def test_readyz_is_503_while_the_database_is_unreachable(tmp_path) -> None:
    reason = _postgres_available()
    if reason:
        skip_or_fail(reason)
    dbname = f"ctower_ready_{free_port()}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {dbname}"))
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + dbname
    srv = start_server(tmp_path / "data", env={"CT_DATABASE_URL": url})
    try:
        assert httpx.get(srv.url + "/readyz").status_code == 200
        with admin.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false"))
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'"))
        down = wait_for(lambda: (r := httpx.get(srv.url + "/readyz")).status_code == 503 and r, timeout=20,
                        message="/readyz to answer 503")
        assert down.json()["checks"]["database"] is False
        assert httpx.get(srv.url + "/healthz").status_code == 200
        with admin.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true"))
        wait_for(lambda: httpx.get(srv.url + "/readyz").status_code == 200, timeout=20, message="/readyz back to 200")
    finally:
        srv.stop()
        with admin.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true"))
            conn.execute(text(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"))
        admin.dispose()
