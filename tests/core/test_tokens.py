"""Tokens for people and scripts, and the rule that every route checks who is calling."""

from __future__ import annotations

import subprocess
import sys

import httpx

from controltower.client import ApiError, Client
from controltower.server import create_app

PUBLIC = {"/healthz", "/readyz", "/metrics", "/api/v1/agents/enroll"}


def test_every_api_route_requires_a_token(tmp_path, monkeypatch) -> None:
    """The bearer-token dependency shows in OpenAPI as `security` on each operation that uses it."""
    monkeypatch.setenv("CT_DATA_DIR", str(tmp_path))
    spec = create_app().openapi()
    operations = [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]
    assert len(operations) > 40
    unguarded = [f"{method.upper()} {path}" for path, method, op in operations
                 if path not in PUBLIC and not op.get("security")]
    assert not unguarded, f"routes without an auth dependency: {unguarded}"


def test_viewer_reads_but_cannot_write(server) -> None:
    with server.client() as admin:
        viewer_token = admin.post("tokens", {"name": "wallscreen", "role": "viewer"})["token"]
        operator_token = admin.post("tokens", {"name": "mina", "role": "operator"})["token"]
    with Client(server.url, viewer_token) as viewer:
        assert viewer.get("info")["you"]["role"] == "viewer"
        viewer.get("monitor/checks")
        try:
            viewer.post("monitor/checks", {"name": "web", "type": "tcp", "target": "127.0.0.1:9"})
            raise AssertionError("a viewer added a check")
        except ApiError as exc:
            assert exc.status == 403
        try:
            viewer.post("tokens", {"name": "x", "role": "admin"})
            raise AssertionError("a viewer issued a token")
        except ApiError as exc:
            assert exc.status == 403
    with Client(server.url, operator_token) as operator:
        created = operator.post("monitor/checks", {"name": "web", "type": "tcp", "target": "127.0.0.1:9"})
        assert created["name"] == "web"


def test_revoked_token_stops_working_and_bad_role_is_refused(server) -> None:
    with server.client() as admin:
        issued = admin.post("tokens", {"name": "script", "role": "operator"})
        as_script = {"Authorization": f"Bearer {issued['token']}"}
        assert httpx.get(server.url + "/api/v1/info", headers=as_script).status_code == 200
        admin.delete(f"tokens/{issued['id']}")
        bad = httpx.post(server.url + "/api/v1/tokens", json={"name": "d", "role": "device"},
                         headers={"Authorization": f"Bearer {server.token}"})
        listed = admin.get("tokens")
    assert httpx.get(server.url + "/api/v1/info", headers=as_script).status_code == 401
    assert bad.status_code == 422 and "role" in bad.text
    assert all(issued["token"] not in str(row) for row in listed)


def test_cli_tokens_add_prints_a_working_token(server) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "controltower", "tokens", "add", "grafana", "--role", "viewer",
         "--server", server.url, "--token", server.token],
        capture_output=True, text=True, timeout=60, check=True,
    )
    token = result.stdout.strip()
    with Client(server.url, token) as client:
        assert client.get("info")["you"]["role"] == "viewer"
