"""The vault through a real server and real agents: values reach only the run's task, masked in every output."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import termios
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from controltower.client import ApiError, Client
from controltower.config import Settings
from controltower.rpa import vault
from controltower.rpa.archive import pack
from tests.conftest import POSTGRES_URL, _postgres_available, reset_postgres, skip_or_fail
from tests.support import RunningServer, start_server, wait_for

SECRET = "s3cr3t-Pa55 w0rd&<x>"
FINISHED = {"passed", "failed", "timed_out", "error", "lost", "cancelled"}

ROBOT_YAML = """\
name: {name}
tasks:
  Use secret:
    robot: tasks.robot
secrets: [erp_password]
artifacts: output
timeout: 5m
"""

SUITE = """\
*** Settings ***
Library    OperatingSystem

*** Variables ***
${PAUSE}    0s

*** Tasks ***
Use secret
    Log    password is ${erp_password}
    Log To Console    console says ${erp_password}
    Should Be Equal    %{CT_SECRET_ERP_PASSWORD}    ${erp_password}
    ${digest}=    Evaluate    hashlib.sha256($erp_password.encode()).hexdigest()    modules=hashlib
    Create File    ${OUTPUT_DIR}/digest.txt    ${digest}
    Create File    ${OUTPUT_DIR}/leak.txt    the value is ${erp_password}
    Create File    ${OUTPUT_FILE}    {"user": "${erp_password}"}
    Sleep    ${PAUSE}
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("vault-server") / "data", env={"CT_AGENT_HEARTBEAT_S": "1"})
    yield server
    server.stop()


def _start_agent(srv: RunningServer, state_dir: Path, label: str) -> tuple[subprocess.Popen[bytes], str]:
    """A real `ctower agent` carrying `label`; the process and its agent token once it has enrolled."""
    with srv.client() as client:
        enrolment = client.post("agents/enrollments", {"ttl_s": 600, "labels": [label]})["token"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CT_")},
           "CT_AGENT_TOKEN": enrolment, "CT_RPA_ENV_CACHE_DIR": str(srv.data_dir.parent / "envs")}
    state_dir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "controltower", "agent", "--server", srv.url, "--name", state_dir.name,
           "--state-dir", str(state_dir), "--labels", label]
    with open(state_dir / "agent.log", "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    token_file = state_dir / "agent-token"
    wait_for(token_file.is_file, timeout=60, message=f"agent {state_dir.name} to enrol")
    return proc, token_file.read_text().strip()


@pytest.fixture(scope="module")
def agent(srv: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The agent (label `vaulted`) that runs this module's robots; yields its agent token."""
    proc, token = _start_agent(srv, tmp_path_factory.mktemp("agents") / "vaulted", "vaulted")
    yield token
    proc.terminate()
    proc.wait(30)


def _push(srv: RunningServer, root: Path, name: str, suite: str = SUITE) -> None:
    root.mkdir(parents=True)
    (root / "robot.yaml").write_text(ROBOT_YAML.format(name=name))
    (root / "tasks.robot").write_text(suite)
    response = httpx.post(f"{srv.url}/api/v1/rpa/robots", content=pack(root, artifacts="output"), timeout=120,
                          headers={"Authorization": f"Bearer {srv.token}", "Content-Type": "application/zip"})
    assert response.status_code == 201, response.text


def _vault_set(srv: RunningServer, name: str, value: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`ctower vault set` as a person would run it, with the value on stdin."""
    env = {**os.environ, "CT_SERVER": srv.url, "CT_TOKEN": srv.token}
    return subprocess.run([sys.executable, "-m", "controltower", "vault", "set", name, "--from-stdin", *extra],
                          input=value + "\n", capture_output=True, text=True, env=env, timeout=60, check=False)


def _finished(client: Client, run_id: int) -> dict:
    return wait_for(lambda: (r := client.get(f"rpa/runs/{run_id}"))["status"] in FINISHED and r,
                    timeout=300, interval=0.3, message=f"run {run_id} to finish")


def _log_html_strings(page: str) -> list[str]:
    """Every string Robot Framework embedded in log.html, decompressed (the log's messages are among them)."""
    strings: list[str] = []
    for chunk in re.findall(r'window\.output\["strings"\] = (?:window\.output\["strings"\]\.concat\()?(\[.*?\])\)?;',
                            page, re.S):
        for item in json.loads(re.sub(r"\\x([0-9a-fA-F]{2})", r"\\u00\1", chunk)):  # JS \x3c is not JSON
            strings.append(item[1:] if item.startswith("*") else zlib.decompress(base64.b64decode(item)).decode())
    return strings


def test_a_secret_reaches_the_task_and_is_masked_in_every_output(srv: RunningServer, agent: str,
                                                                 tmp_path: Path) -> None:
    stored = _vault_set(srv, "erp_password", SECRET, "--description", "ERP login")
    assert stored.returncode == 0, stored.stderr
    assert SECRET not in stored.stdout + stored.stderr
    _push(srv, tmp_path / "vault-bot", "vault-bot")
    seen_in_ps: list[str] = []
    with srv.client() as client:
        run = client.post("rpa/runs", {"robot": "vault-bot", "labels": ["vaulted"], "variables": {"PAUSE": "3s"}})
        assert run["secrets"] == ["erp_password"]

        def robot_is_sleeping() -> bool:
            if client.get(f"rpa/runs/{run['id']}")["status"] in FINISHED:
                return True  # too late to look at the processes: the assertions below say why
            return any("console says" in line["line"] for line in client.get(f"rpa/runs/{run['id']}/log"))

        wait_for(robot_is_sleeping, timeout=300, interval=0.2, message="the robot to log its console line")
        for proc in psutil.process_iter(["cmdline"]):
            if SECRET in " ".join(proc.info["cmdline"] or []):
                seen_in_ps.append(str(proc.info["cmdline"]))
        run = _finished(client, run["id"])
        assert run["status"] == "passed", run  # the task compared the variable with CT_SECRET_ERP_PASSWORD

        def file(name: str) -> str:
            return client.http.get(f"/api/v1/rpa/runs/{run['id']}/files/{name}").text

        assert file("artifacts/digest.txt") == hashlib.sha256(SECRET.encode()).hexdigest()
        assert file("artifacts/leak.txt") == "the value is ***"
        assert run["output"] == {"user": "***"}
        lines = [line["line"] for line in client.get(f"rpa/runs/{run['id']}/log")]
        output_xml, log_html, report_html = file("output.xml"), file("log.html"), file("report.html")
        log_strings = _log_html_strings(log_html)
        events = client.get("events", topic="rpa.vault.read")
        listing = client.http.get("/api/v1/rpa/vault").text
    assert seen_in_ps == []
    assert any("console says ***" in line for line in lines)
    assert "password is ***" in output_xml and "password is ***" in log_strings
    escaped = SECRET.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for where, content in [("log lines", "\n".join(lines)), ("output.xml", output_xml), ("log.html", log_html),
                           ("log.html strings", "\n".join(log_strings)), ("report.html", report_html),
                           ("run", json.dumps(run)), ("vault listing", listing)]:
        assert SECRET not in content and escaped not in content, f"the secret shows in {where}"
    assert any(e["payload"] == {"run_id": run["id"], "agent_id": run["agent_id"], "names": ["erp_password"]}
               for e in events)
    assert json.loads(listing)[0]["description"] == "ERP login"


def test_values_go_only_to_the_agent_holding_the_running_run(srv: RunningServer, agent: str, tmp_path: Path) -> None:
    assert _vault_set(srv, "erp_password", SECRET).returncode == 0
    _push(srv, tmp_path / "slow-vault-bot", "slow-vault-bot")
    bystander_proc, bystander = _start_agent(srv, tmp_path / "bystander", "bystander")
    try:
        with srv.client() as client:
            viewer = client.post("tokens", {"name": "look", "role": "viewer"})["token"]
            run = client.post("rpa/runs", {"robot": "slow-vault-bot", "labels": ["vaulted"],
                                           "variables": {"PAUSE": "20s"}})
            wait_for(lambda: client.get(f"rpa/runs/{run['id']}")["status"] == "running", timeout=300,
                     message="the run to start")
            url = f"{srv.url}/api/v1/rpa/runs/{run['id']}/secrets"

            def ask(token: str) -> httpx.Response:
                return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

            holder = ask(agent)
            other = ask(bystander)
            as_viewer, as_admin = ask(viewer), ask(srv.token)
            # An agent that forgot to mask: the server masks on ingest too.
            as_agent = {"Authorization": f"Bearer {agent}"}
            base = f"{srv.url}/api/v1/rpa/runs/{run['id']}"
            assert httpx.post(f"{base}/log", json={"lines": [f"unmasked {SECRET}!"]}, headers=as_agent,
                              timeout=30).status_code == 200
            assert httpx.put(f"{base}/files/artifacts/raw.txt", content=f"raw {SECRET}".encode(), headers=as_agent,
                             timeout=30).status_code == 200
            ingested = [line["line"] for line in client.get(f"rpa/runs/{run['id']}/log")]
            raw_file = client.http.get(f"/api/v1/rpa/runs/{run['id']}/files/artifacts/raw.txt").text
            client.post(f"rpa/runs/{run['id']}/cancel")
            _finished(client, run["id"])
            after = ask(agent)
    finally:
        bystander_proc.terminate()
        bystander_proc.wait(30)
    assert holder.status_code == 200 and holder.json() == {"erp_password": SECRET}
    assert holder.headers["cache-control"] == "no-store"
    assert other.status_code == 403 and "is not leased to agent" in other.json()["detail"]
    assert as_viewer.status_code == 403 and as_admin.status_code == 403  # people never read values
    assert after.status_code in (403, 409) and SECRET not in after.text
    assert "unmasked ***!" in ingested and raw_file == "raw ***"


def test_people_manage_names_but_never_read_values(srv: RunningServer) -> None:
    with srv.client() as client:
        viewer_token = client.post("tokens", {"name": "viewer", "role": "viewer"})["token"]
    with Client(srv.url, viewer_token) as viewer:
        with pytest.raises(ApiError) as err:
            viewer.put("rpa/vault/api_key", {"value": "x" * 8})
        assert err.value.status == 403
        with pytest.raises(ApiError) as err:
            viewer.delete("rpa/vault/api_key")
        assert err.value.status == 403
    assert _vault_set(srv, "api_key", "first-value").returncode == 0
    with srv.client() as client:
        listed = client.get("rpa/vault")
        one = client.get("rpa/vault/api_key")
        with pytest.raises(ApiError) as err:
            client.put("rpa/vault/bad-name", {"value": "x"})
        assert err.value.status == 422 and str(err.value.detail).startswith("name: 'bad-name' must be")
        with pytest.raises(ApiError) as err:
            client.put("rpa/vault/other", {"value": ""})
        assert err.value.status == 422 and str(err.value.detail).startswith("value: must be 1 to")
        with pytest.raises(ApiError) as err:
            client.put("rpa/vault/API_KEY", {"value": "clash"})
        assert err.value.status == 422 and "differs from the existing 'api_key' only in case" in str(err.value.detail)
    assert {"name", "description", "created_at", "updated_at", "updated_by"} == set(one)
    assert all("value" not in row and "ciphertext" not in row for row in listed)
    env = {**os.environ, "CT_SERVER": srv.url, "CT_TOKEN": srv.token}
    listing = subprocess.run([sys.executable, "-m", "controltower", "vault", "list", "--json"], capture_output=True,
                             text=True, env=env, timeout=60, check=True)
    assert "api_key" in listing.stdout and "first-value" not in listing.stdout
    removed = subprocess.run([sys.executable, "-m", "controltower", "vault", "rm", "api_key"], capture_output=True,
                             text=True, env=env, timeout=60, check=False)
    assert removed.returncode == 0, removed.stderr
    with srv.client() as client:
        assert all(row["name"] != "api_key" for row in client.get("rpa/vault"))


def test_a_run_naming_an_unknown_secret_is_refused(srv: RunningServer, tmp_path: Path) -> None:
    assert _vault_set(srv, "erp_password", SECRET).returncode == 0
    _push(srv, tmp_path / "refused-bot", "refused-bot")
    with srv.client() as client:
        with pytest.raises(ApiError) as err:
            client.post("rpa/runs", {"robot": "refused-bot", "secrets": ["sap_token"]})
        assert err.value.status == 422
        assert str(err.value.detail).startswith("secrets: no secret named 'sap_token' in the vault")
        client.delete("rpa/vault/erp_password")  # robot.yaml declares it
        with pytest.raises(ApiError) as err:
            client.post("rpa/runs", {"robot": "refused-bot"})
        assert err.value.status == 422 and "no secret named 'erp_password'" in str(err.value.detail)
        assert client.get("rpa/runs", robot="refused-bot") == []


def test_the_key_file_is_made_on_first_use_with_mode_0600(srv: RunningServer) -> None:
    assert _vault_set(srv, "file_key_secret", "value-under-file-key").returncode == 0
    key_file = srv.data_dir / "vault.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    engine = create_engine(f"sqlite:///{srv.data_dir / 'ctower.db'}")
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT ciphertext FROM rpa_vault_secrets WHERE name = 'file_key_secret'")).scalar()
    engine.dispose()
    assert "value-under-file-key" not in stored
    assert Fernet(key_file.read_bytes().strip()).decrypt(stored.encode()) == b"value-under-file-key"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_ct_vault_key_encrypts_and_decrypts_what_is_stored(backend: str, tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    env = {"CT_VAULT_KEY": key}
    url = f"sqlite:///{tmp_path / 'data' / 'ctower.db'}"
    if backend == "postgres":
        if reason := _postgres_available():
            skip_or_fail(reason)
        reset_postgres()
        env["CT_DATABASE_URL"] = url = POSTGRES_URL
    server = start_server(tmp_path / "data", env=env)
    try:
        with server.client() as client:
            client.put("rpa/vault/erp_password", {"value": SECRET, "description": "ERP"})
        logs = server.logs()
    finally:
        server.stop()

    def stored() -> str:
        engine = create_engine(url)
        with engine.connect() as conn:
            value = conn.execute(text("SELECT ciphertext FROM rpa_vault_secrets WHERE name = 'erp_password'")).scalar()
        engine.dispose()
        return value

    assert not (tmp_path / "data" / "vault.key").exists()
    assert Fernet(key.encode()).decrypt(stored().encode()).decode() == SECRET
    assert key not in logs and SECRET not in logs
    # Rotation: the new key first, the old one still listed; `ctower vault rotate` re-encrypts with the new one.
    new_key = Fernet.generate_key().decode()
    server.env["CT_VAULT_KEY"] = f"{new_key},{key}"
    server.start()
    try:
        rotated = subprocess.run([sys.executable, "-m", "controltower", "vault", "rotate"], capture_output=True,
                                 text=True, env={**os.environ, "CT_SERVER": server.url, "CT_TOKEN": server.token},
                                 timeout=60, check=False)
    finally:
        server.stop()
    assert rotated.returncode == 0 and "re-encrypted 1 secret(s)" in rotated.stdout, rotated.stderr
    assert Fernet(new_key.encode()).decrypt(stored().encode()).decode() == SECRET


def test_a_malformed_vault_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(vault.VaultKeyError, match=r"^CT_VAULT_KEY: not a Fernet key"):
        vault.cipher(Settings(data_dir=tmp_path, vault_key="not-a-key"))
    assert "not-a-key" not in repr(Settings(data_dir=tmp_path, vault_key="not-a-key"))


def test_a_local_run_takes_secrets_from_the_environment_and_masks_them(srv: RunningServer, tmp_path: Path) -> None:
    root = tmp_path / "local-bot"
    root.mkdir()
    (root / "robot.yaml").write_text(ROBOT_YAML.format(name="local-bot"))
    (root / "tasks.robot").write_text(SUITE)
    env = {**os.environ, "CT_SECRET_ERP_PASSWORD": SECRET, "CT_RPA_ENV_CACHE_DIR": str(srv.data_dir.parent / "envs")}
    done = subprocess.run([sys.executable, "-m", "controltower", "robot", "run", str(root), "--out",
                           str(tmp_path / "work"), "--json"], capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "work" / "output"
    assert (out / "digest.txt").read_text() == hashlib.sha256(SECRET.encode()).hexdigest()
    assert "password is ***" in (out / "output.xml").read_text()
    assert "password is ***" in _log_html_strings((out / "log.html").read_text())
    for text_ in (done.stdout, done.stderr, (out / "output.xml").read_text(), (out / "leak.txt").read_text()):
        assert SECRET not in text_
    missing = subprocess.run([sys.executable, "-m", "controltower", "robot", "run", str(root)], capture_output=True,
                             text=True, env={k: v for k, v in env.items() if k != "CT_SECRET_ERP_PASSWORD"},
                             stdin=subprocess.DEVNULL, timeout=120, check=False)
    assert missing.returncode == 2
    assert "secret erp_password: set CT_SECRET_ERP_PASSWORD or run in a terminal" in missing.stderr


def test_vault_set_asks_for_the_value_without_echoing_it(srv: RunningServer) -> None:
    master, slave = os.openpty()

    def take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty becomes the prompt's /dev/tty

    env = {**os.environ, "CT_SERVER": srv.url, "CT_TOKEN": srv.token}
    proc = subprocess.Popen([sys.executable, "-m", "controltower", "vault", "set", "prompted_pw"], stdin=slave,
                            stdout=slave, stderr=slave, env=env, start_new_session=True, preexec_fn=take_terminal)
    os.close(slave)
    screen = b""

    def read_until(marker: bytes) -> None:
        nonlocal screen
        while marker not in screen:
            chunk = os.read(master, 1024)
            assert chunk, f"the prompt {marker!r} never came: {screen!r}"
            screen += chunk

    try:
        read_until(b"Value: ")
        os.write(master, b"typed-in-secret\n")
        read_until(b"Again: ")
        os.write(master, b"typed-in-secret\n")
        read_until(b"stored prompted_pw")
    finally:
        assert proc.wait(60) == 0
        os.close(master)
    assert b"typed-in-secret" not in screen  # echo was off
    engine = create_engine(f"sqlite:///{srv.data_dir / 'ctower.db'}")
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT ciphertext FROM rpa_vault_secrets WHERE name = 'prompted_pw'")).scalar()
    engine.dispose()
    key = (srv.data_dir / "vault.key").read_bytes().strip()
    assert Fernet(key).decrypt(stored.encode()) == b"typed-in-secret"
