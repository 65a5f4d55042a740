"""The Robots pages in a real browser: two pushed versions and their diff, promote, a run started from the form
whose live log reaches "passed", Robot Framework's log.html, an artifact download, and a viewer without controls."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.e2e.browser import chromium_missing, log_in, open_tab
from tests.support import RunningServer, start_server, wait_for

pytestmark = pytest.mark.timeout(300)

ROBOT = "e2e-files-bot"
OPERATOR = ("hana", "hana-robots-pw")
VIEWER = ("seo", "seo-viewer-pw")


@pytest.fixture(scope="module")
def rpa_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """`ctower up` with its local agent (label `local`) and an environment cache of its own."""
    if chromium_missing():
        skip_or_fail(chromium_missing() or "")
    base = tmp_path_factory.mktemp("rpa-pages")
    srv = start_server(base / "data", env={"CT_RPA_ENV_CACHE_DIR": str(base / "envs"),
                                           "CT_AGENT_HEARTBEAT_S": "1"}, args=[])
    with srv.client() as client:
        wait_for(lambda: any("local" in a["labels"] for a in client.get("agents")), timeout=60,
                 message="the local agent to enrol")
        client.post("users", {"name": OPERATOR[0], "role": "operator", "password": OPERATOR[1]})
        client.post("users", {"name": VIEWER[0], "role": "viewer", "password": VIEWER[1]})
    yield srv
    srv.stop()


def _ctower(srv: RunningServer, cwd: Path, *args: str) -> str:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CT_")},
           "CT_SERVER": srv.url, "CT_TOKEN": srv.token}
    proc = subprocess.run([sys.executable, "-m", "controltower", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def two_versions(rpa_server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The files template pushed twice with `ctower robot new` / `ctower robot push`; v2 logs one more line."""
    work = tmp_path_factory.mktemp("robot-src")
    _ctower(rpa_server, work, "robot", "new", ROBOT)
    assert "version 1" in _ctower(rpa_server, work, "robot", "push", ROBOT)
    suite = work / ROBOT / "tasks.robot"
    suite.write_text(suite.read_text().replace("    Create Directory    ${OUTPUT}\n",
                                               "    Create Directory    ${OUTPUT}\n    Log    version two\n"))
    assert "version 2" in _ctower(rpa_server, work, "robot", "push", ROBOT, "--note", "logs more")
    return ROBOT


def test_robots_list_says_how_to_create_one_when_empty(browser, rpa_server, request):
    with open_tab(browser, request.node.name) as tab:
        log_in(tab, rpa_server.url, *OPERATOR, "/robots")
        tab.page.get_by_text("No robot yet.").wait_for()
        text = tab.page.locator("body").inner_text()
        assert "ctower robot new" in text and "ctower robot push" in text
        tab.shot("robots-empty")


def test_operator_compares_promotes_runs_and_reads_the_log(browser, rpa_server, two_versions, request):
    with open_tab(browser, request.node.name) as tab:
        page = tab.page
        log_in(tab, rpa_server.url, *OPERATOR, "/robots")
        row = page.get_by_role("row").filter(has_text=two_versions)
        row.wait_for()
        cells = [c.inner_text() for c in row.get_by_role("cell").all()]
        assert cells[:4] == [two_versions, "Reads the files in inbox/ and writes a report", "2", ""]
        tab.shot("robots")
        row.get_by_role("link", name=two_versions).click()
        page.wait_for_url(f"**/robots/{two_versions}")

        versions = page.get_by_test_id("versions")
        versions.locator("[data-version='2']").wait_for()
        assert versions.locator("[data-version='1']").count() == 1
        assert "logs more" in versions.inner_text() and "hana" not in versions.inner_text()
        diff = page.get_by_test_id("diff")
        diff.locator("[data-diff-changed='tasks.robot']").wait_for()
        assert "+    Log    version two" in diff.get_by_test_id("diff-text").inner_text()
        assert page.get_by_test_id("production").inner_text() == "no production version"
        tab.shot("robot-diff")

        versions.get_by_role("row").filter(has_text="v1").get_by_role("button", name="Promote").click()
        page.get_by_test_id("production").get_by_text("production v1").wait_for()
        versions.locator("[data-version='1'] [data-testid=production-badge]").wait_for()
        page.get_by_test_id("history").get_by_role("cell", name="promote").wait_for()
        assert "hana (user:" in page.get_by_test_id("history").inner_text()

        form = page.get_by_test_id("start-run")
        assert "v1 (production)" in form.inner_text() and "Process files" in form.inner_text()
        form.get_by_label("Target labels").fill("local")
        form.get_by_label("JSON input").fill("{not json")
        form.get_by_test_id("start-button").click()
        form.get_by_text(re.compile("not JSON")).wait_for()  # the reason sits next to the field
        form.get_by_label("JSON input").fill('{"invoice": 42}')
        form.get_by_label("Variables").fill("WHO=e2e")
        tab.shot("start-form")
        form.get_by_test_id("start-button").click()
        page.wait_for_url(re.compile(r".*/robots/runs/\d+$"))
        run_id = int(page.url.rsplit("/", 1)[1])

        # No reload from here on: the status and the log lines arrive while the page stays open.
        page.locator("[data-testid=run-status][data-status=passed]").wait_for(timeout=180_000)
        run_log = page.get_by_test_id("run-log")
        wait_for(lambda: "1 task, 1 passed, 0 failed" in run_log.inner_text(), timeout=30,
                 message="Robot Framework's summary line in the live log")
        page.locator("[data-stat=passed]").get_by_text("1 passed").wait_for()
        assert page.locator("[data-fact=environment]").inner_text() != ""
        assert '"invoice": 42' in page.locator("[data-run-data=input]").inner_text()
        assert "WHO=e2e" in page.locator("[data-run-data=variables]").inner_text()
        assert page.get_by_test_id("cancel-run").is_hidden()
        tab.shot("run-passed")

        frame = page.frame_locator("[data-testid=rf-log]")
        frame.get_by_text("Process files").first.wait_for()  # Robot Framework's own log, rendered by its scripts
        with page.expect_popup() as popup_info:
            page.get_by_test_id("rf-log-tab").click()
        popup = popup_info.value
        popup.wait_for_load_state()
        assert f"/robots/runs/{run_id}/files/log.html" in popup.url
        popup.get_by_text("Process files").first.wait_for()
        popup.close()
        tab.shot("run-log-html")

        with page.expect_download() as download_info:
            page.locator("[data-artifact='artifacts/report.txt']").click()
        download = download_info.value
        assert download.suggested_filename == "report.txt"
        assert Path(download.path()).read_text().startswith("invoice-001.txt: ")

        page.goto(f"{rpa_server.url}/robots/runs")
        runs = page.get_by_test_id("runs")
        runs.get_by_role("link", name=str(run_id), exact=True).wait_for()
        assert runs.locator("[data-status=passed]").count() >= 1
        tab.shot("runs")
    with rpa_server.client() as api:
        run = api.get(f"rpa/runs/{run_id}")
    assert (run["version"], run["status"], run["labels"]) == (1, "passed", ["local"])
    assert run["variables"] == {"WHO": "e2e"} and run["input"] == {"invoice": 42}
    assert run["created_by"].startswith("hana (user:")


def test_viewer_sees_robots_and_runs_but_no_controls(browser, rpa_server, two_versions, request):
    with rpa_server.client() as api:
        run_id = api.post("rpa/runs", {"robot": two_versions, "labels": ["local"]})["id"]
        wait_for(lambda: api.get(f"rpa/runs/{run_id}")["status"] == "passed", timeout=180,
                 message=f"run {run_id} to pass")
    with open_tab(browser, request.node.name, width=800, height=1100) as tab:
        page = tab.page
        log_in(tab, rpa_server.url, *VIEWER, f"/robots/{two_versions}")
        page.get_by_test_id("versions").locator("[data-version='2']").wait_for()
        page.get_by_test_id("diff").locator("[data-diff-changed='tasks.robot']").wait_for()
        assert page.get_by_role("button", name="Promote").count() == 0
        assert page.get_by_test_id("rollback").count() == 0
        assert page.get_by_test_id("start-run").count() == 0
        tab.shot("robot-as-viewer")
        page.goto(f"{rpa_server.url}/robots/runs/{run_id}")
        page.locator("[data-testid=run-status][data-status=passed]").wait_for()
        assert page.get_by_test_id("cancel-run").count() == 0
        tab.shot("run-as-viewer")
        log_html = page.request.get(f"{rpa_server.url}/robots/runs/{run_id}/files/log.html")
        assert log_html.status == 200 and "<html" in log_html.text()[:500].lower()
    anonymous = browser.new_context()
    try:
        response = anonymous.request.get(f"{rpa_server.url}/robots/runs/{run_id}/files/log.html", max_redirects=0)
        assert response.status == 303 and "/login" in response.headers["location"]
    finally:
        anonymous.close()


def test_operator_rolls_back_and_cancels_a_queued_run(browser, rpa_server, two_versions, request):
    with rpa_server.client() as api:
        api.post(f"rpa/robots/{two_versions}/promote", {"version": 1})
    with open_tab(browser, request.node.name) as tab:
        page = tab.page
        log_in(tab, rpa_server.url, *OPERATOR, f"/robots/{two_versions}")
        versions = page.get_by_test_id("versions")
        versions.get_by_role("row").filter(has_text="v2").get_by_role("button", name="Promote").click()
        page.get_by_test_id("production").get_by_text("production v2").wait_for()
        page.get_by_test_id("rollback").click()
        page.get_by_test_id("production").get_by_text("production v1").wait_for()
        page.get_by_test_id("history").get_by_role("cell", name="rollback").wait_for()
        tab.shot("rolled-back")

        form = page.get_by_test_id("start-run")
        form.get_by_label("Target labels").fill("no-such-desktop")  # no agent carries it: the run stays queued
        form.get_by_test_id("start-button").click()
        page.wait_for_url(re.compile(r".*/robots/runs/\d+$"))
        run_id = int(page.url.rsplit("/", 1)[1])
        page.locator("[data-testid=run-status][data-status=queued]").wait_for()
        page.get_by_test_id("cancel-run").click()
        page.locator("[data-testid=run-status][data-status=cancelled]").wait_for()
        assert page.get_by_test_id("cancel-run").is_hidden()
        tab.shot("cancelled")
    with rpa_server.client() as api:
        assert api.get(f"rpa/runs/{run_id}")["status"] == "cancelled"
        assert api.get(f"rpa/robots/{two_versions}/versions/production")["number"] == 1


def test_queue_counts_items_and_a_dead_item_is_retried(browser, rpa_server, two_versions, request):
    with rpa_server.client() as api:
        api.post("rpa/queues", {"name": "e2e-invoices", "robot": two_versions, "labels": ["no-such-desktop"],
                                "max_attempts": 1})
        [item] = api.post("rpa/queues/e2e-invoices/items", {"payload": {"invoice": "INV-7"}})
        run_id = wait_for(lambda: api.get(f"rpa/queues/e2e-invoices/items/{item['id']}")["run_id"], timeout=30,
                          message="the item's run")
        api.post(f"rpa/runs/{run_id}/cancel")  # its only attempt fails: the item is dead
        wait_for(lambda: api.get(f"rpa/queues/e2e-invoices/items/{item['id']}")["status"] == "dead", timeout=30,
                 message="the item to be dead")
    with open_tab(browser, request.node.name) as tab:
        page = tab.page
        log_in(tab, rpa_server.url, *OPERATOR, "/robots/queues")
        row = page.get_by_test_id("queues").get_by_role("row").filter(has_text="e2e-invoices")
        row.wait_for()
        assert [c.inner_text() for c in row.get_by_role("cell").all()][-1] == "1"  # the dead column
        tab.shot("queues")
        row.get_by_role("link", name="e2e-invoices").click()
        page.wait_for_url("**/robots/queues/e2e-invoices")
        page.locator("[data-count=dead]").get_by_text("1 dead").wait_for()
        item_row = page.get_by_test_id("items").get_by_role("row").filter(has_text="INV-7")
        item_row.locator("[data-status=dead]").wait_for()
        assert f"run {run_id} cancelled" in item_row.inner_text()
        tab.shot("queue-dead-item")
        item_row.get_by_role("button", name="Retry").click()
        item_row.locator("[data-status=in_progress]").wait_for()
        page.locator("[data-count=dead]").get_by_text("0 dead").wait_for()
        tab.shot("queue-retried")
    with open_tab(browser, request.node.name + "-viewer") as tab:
        log_in(tab, rpa_server.url, *VIEWER, "/robots/queues/e2e-invoices")
        tab.page.get_by_test_id("items").get_by_role("row").filter(has_text="INV-7").wait_for()
        assert tab.page.get_by_role("button", name="Retry").count() == 0
    with rpa_server.client() as api:
        again = api.get(f"rpa/queues/e2e-invoices/items/{item['id']}")
        assert again["status"] == "in_progress" and again["attempts"] == 1 and len(again["run_ids"]) == 2
        api.post(f"rpa/runs/{again['run_id']}/cancel")


def test_schedules_pause_and_the_vault_shows_names_only(browser, rpa_server, two_versions, request):
    secret_value = "s3cr3t-value-never-shown"
    with rpa_server.client() as api:
        api.put("rpa/vault/erp_password", {"value": secret_value, "description": "ERP login"})
        schedule = api.post("rpa/schedules", {"robot": two_versions, "cron": "0 6 * * mon-fri",
                                              "timezone": "Europe/Berlin", "labels": ["finance"],
                                              "secrets": ["erp_password"], "description": "morning invoices"})
    with open_tab(browser, request.node.name) as tab:
        page = tab.page
        log_in(tab, rpa_server.url, *OPERATOR, "/robots/schedules")
        row = page.get_by_test_id("schedules").get_by_role("row").filter(has_text="morning invoices")
        row.wait_for()
        assert "0 6 * * mon-fri" in row.inner_text() and "Europe/Berlin" in row.inner_text()
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row.locator(f"[data-next='{schedule['id']}']").inner_text())
        tab.shot("schedules")
        row.get_by_role("button", name="Pause").click()
        row.locator(f"[data-next='{schedule['id']}']").get_by_text("paused").wait_for()
        row.get_by_role("button", name="Resume").wait_for()
        tab.shot("schedule-paused")
        with rpa_server.client() as api:
            assert api.get(f"rpa/schedules/{schedule['id']}")["paused"] is True

        page.goto(f"{rpa_server.url}/robots/vault")
        page.get_by_test_id("secrets").get_by_role("cell", name="erp_password", exact=True).wait_for()
        assert "ERP login" in page.get_by_test_id("secrets").inner_text()
        assert secret_value not in page.content()
        tab.shot("vault")

        page.goto(f"{rpa_server.url}/robots/{two_versions}")
        form = page.get_by_test_id("start-run")
        form.get_by_label("Vault secrets").click()
        page.get_by_role("option", name="erp_password").click()
        page.keyboard.press("Escape")
        form.get_by_label("Target labels").fill("no-such-desktop")
        form.get_by_test_id("start-button").click()
        page.wait_for_url(re.compile(r".*/robots/runs/\d+$"))
        run_id = int(page.url.rsplit("/", 1)[1])
    with rpa_server.client() as api:
        run = api.get(f"rpa/runs/{run_id}")
        assert run["secrets"] == ["erp_password"]
        api.post(f"rpa/runs/{run_id}/cancel")
    with open_tab(browser, request.node.name + "-viewer") as tab:
        log_in(tab, rpa_server.url, *VIEWER, "/robots/schedules")
        tab.page.get_by_test_id("schedules").get_by_role("row").filter(has_text="morning invoices").wait_for()
        assert tab.page.get_by_role("button", name="Resume").count() == 0
