"""Agent enrolment: one-time tokens exchanged for the agent's own token; heartbeats."""

from __future__ import annotations

import httpx

from controltower.client import Client


def _enrol(server, name: str, token: str) -> httpx.Response:
    return httpx.post(server.url + "/api/v1/agents/enroll",
                      json={"enrolment_token": token, "name": name, "facts": {"os": "Linux"}, "labels": ["desktop"]})


def test_enrolment_is_one_time(server) -> None:
    with server.client() as admin:
        token = admin.post("agents/enrollments", {"ttl_s": 60, "labels": ["finance"]})["token"]
    first = _enrol(server, "pc-1", token)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["token"].startswith("ct_")
    again = _enrol(server, "pc-2", token)
    assert again.status_code == 401
    assert "already used" in again.json()["detail"]
    with Client(server.url, body["token"]) as agent:
        me = agent.get("agents/me")
    assert me["name"] == "pc-1"
    assert me["labels"] == ["desktop", "finance"]
    assert me["facts"] == {"os": "Linux"}


def test_unknown_enrolment_token_and_bad_name(server) -> None:
    assert _enrol(server, "pc-1", "cte_unknown").status_code == 401
    with server.client() as admin:
        token = admin.post("agents/enrollments", {"ttl_s": 60})["token"]
    bad = _enrol(server, "no spaces allowed", token)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "name"


def test_heartbeat_updates_last_seen(server) -> None:
    with server.client() as admin:
        token = admin.post("agents/enrollments", {"ttl_s": 60})["token"]
    agent_token = _enrol(server, "pc-9", token).json()["token"]
    with Client(server.url, agent_token) as agent:
        before = agent.get("agents/me")["last_seen"]
        agent.post("agents/heartbeat", {"interval_s": 5})
        after = agent.get("agents/me")["last_seen"]
    assert after > before
    with server.client() as admin:
        names = [a["name"] for a in admin.get("agents")]
    assert "pc-9" in names


def test_re_enrolment_keeps_identity_and_revokes_old_token(server) -> None:
    with server.client() as admin:
        first = admin.post("agents/enrollments", {"ttl_s": 60})["token"]
        second = admin.post("agents/enrollments", {"ttl_s": 60})["token"]
    one = _enrol(server, "pc-5", first).json()
    two = _enrol(server, "pc-5", second).json()
    assert one["agent_id"] == two["agent_id"]
    old = httpx.get(server.url + "/api/v1/agents/me", headers={"Authorization": f"Bearer {one['token']}"})
    assert old.status_code == 401
