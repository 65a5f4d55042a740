"""The dashboard in a real browser: log in, live host charts, a check going UP and DOWN, an alert acknowledged,
and a viewer who finds no controls and an API that refuses."""

from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from controltower.client import ApiError, Client
from tests.e2e.browser import log_in, open_tab
from tests.support import wait_for

pytestmark = pytest.mark.timeout(240)


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        pass


def _points(text: str) -> int:
    match = re.match(r"(\d+) points", text)
    return int(match.group(1)) if match else 0


def test_login_rejects_a_wrong_password_then_lets_admin_in(browser, dashboard, admin_password, request):
    with open_tab(browser, request.node.name) as tab:
        page = tab.page
        page.goto(dashboard.url + "/monitor")
        assert "/login" in page.url  # every page needs a session
        page.get_by_label("User name").fill("admin")
        page.get_by_label("Password").fill("not-the-password")
        page.get_by_role("button", name="Log in").click()
        page.get_by_text("Wrong user name or password.").wait_for()
        tab.shot("login-refused")
        page.get_by_label("Password").fill(admin_password)
        page.get_by_role("button", name="Log in").click()
        page.get_by_test_id("whoami").wait_for()
        assert page.url.endswith("/monitor")
        assert page.get_by_test_id("whoami").inner_text() == "admin (admin)"
        cookie = next(c for c in page.context.cookies() if c["name"] == "ctower_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        for area in ("Devices", "Robots", "Processes", "AI", "Data"):
            assert page.get_by_role("link", name=area).count() == 1
        tab.shot("fleet")
        page.get_by_role("button", name="Log out").click()
        page.get_by_role("button", name="Log in").wait_for()
        page.goto(dashboard.url + "/monitor/checks")
        assert "/login" in page.url  # the session really ended


def test_local_host_cpu_chart_shows_real_data(browser, dashboard, admin_password, request):
    host = socket.gethostname()
    with open_tab(browser, request.node.name) as tab:
        page = tab.page
        log_in(tab, dashboard.url, "admin", admin_password, "/monitor")
        card = page.locator(f"[data-host='{host}']")
        card.wait_for(timeout=60_000)
        wait_for(lambda: "%" in card.locator("[data-metric=cpu]").inner_text(), timeout=60,
                 message="the host card's CPU figure")
        tab.shot("fleet")
        card.get_by_role("link", name=host).click()
        page.wait_for_url(f"**/monitor/hosts/{host}")
        caption = page.locator("[data-caption=cpu]")
        # The page reloads its 15-minute charts every 10 s without a page reload: wait for two or more samples.
        wait_for(lambda: _points(caption.inner_text()) >= 2, timeout=90, message="CPU samples on the host page")
        assert re.search(r"latest \d+(\.\d)? %", caption.inner_text())
        assert page.locator("[data-chart=cpu] canvas").count() >= 1
        tab.shot("host-15m")
        page.get_by_test_id("range").get_by_text("24H").click()
        wait_for(lambda: "60 s steps" in caption.inner_text() or "300 s steps" in caption.inner_text(),
                 timeout=30, message="the 24 h range's rollup steps")
        tab.shot("host-24h")


def test_check_goes_up_then_down_fires_an_alert_that_is_acknowledged(browser, dashboard, admin_password, request):
    target = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{target.server_address[1]}/health"
    try:
        with open_tab(browser, request.node.name) as tab:
            page = tab.page
            log_in(tab, dashboard.url, "admin", admin_password, "/monitor/alerts")

            page.get_by_test_id("add-rule").click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_label("Name", exact=True).fill("e2e-check-down")
            dialog.get_by_label("Condition", exact=True).fill("check.up{check=e2e-web} ==")
            dialog.get_by_role("button", name="Save rule").click()
            dialog.get_by_text(re.compile("expr|condition|threshold|number", re.I)).first.wait_for()
            tab.shot("rule-invalid")
            dialog.get_by_label("Condition", exact=True).fill("check.up{check=e2e-web} == 0")
            dialog.get_by_role("button", name="Save rule").click()
            page.get_by_role("cell", name="e2e-check-down", exact=True).wait_for()
            tab.shot("rule-added")

            page.goto(dashboard.url + "/monitor/checks")
            page.get_by_test_id("add-check").click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_label("Name", exact=True).fill("e2e-web")
            dialog.get_by_label("Target", exact=True).fill("not a url")
            dialog.get_by_label("Interval", exact=True).fill("1s")
            dialog.get_by_role("button", name="Save").click()
            error = dialog.locator(".q-field--error")
            error.first.wait_for()
            assert "Target" in error.first.inner_text()  # the message sits next to the field it is about
            tab.shot("check-invalid")
            dialog.get_by_label("Target", exact=True).fill(url)
            dialog.get_by_role("button", name="Save").click()
            row = page.get_by_role("row").filter(has_text="e2e-web")
            row.locator("[data-state=up]").wait_for(timeout=60_000)
            tab.shot("check-up")

            target.shutdown()
            target.server_close()
            row.locator("[data-state=down]").wait_for(timeout=60_000)
            tab.shot("check-down")

            page.goto(dashboard.url + "/monitor/checks/e2e-web")
            page.get_by_test_id("check-state").get_by_text("DOWN").wait_for()
            page.get_by_role("cell", name="down", exact=True).first.wait_for()  # state history
            tab.shot("check-detail")

            page.goto(dashboard.url + "/monitor/alerts")
            firing = page.locator("[data-alerts=firing]").get_by_role("row").filter(has_text="e2e-check-down")
            firing.wait_for(timeout=60_000)
            tab.shot("alert-firing")
            firing.get_by_role("button", name="Acknowledge").click()
            firing.get_by_role("cell", name="admin", exact=True).wait_for()
            assert firing.get_by_role("button", name="Acknowledge").count() == 0
            tab.shot("alert-acked")

            page.goto(dashboard.url + "/monitor")
            page.get_by_text("e2e-check-down (warning)").wait_for()  # firing alerts on top of the fleet page
            assert "1 down" in page.locator("[data-checks=down]").inner_text()
            tab.shot("fleet-with-alert")
    finally:
        target.server_close()
    with dashboard.client() as api:
        acked = [a for a in api.get("monitor/alerts", state="firing") if a["rule"] == "e2e-check-down"]
    assert acked and acked[0]["acked_by"] == "admin"


def test_viewer_finds_no_controls_and_the_api_refuses(browser, dashboard, request):
    with dashboard.client() as admin:
        admin.post("users", {"name": "wall", "role": "viewer", "password": "wallscreen-pw"})
        admin.post("monitor/checks", {"name": "e2e-viewer-sees", "type": "tcp", "target": "127.0.0.1:9",
                                      "interval": "5s"})
        admin.post("monitor/rules", {"name": "e2e-viewer-alert", "expr": "check.up{check=e2e-viewer-sees} == 0"})
        viewer_token = admin.post("tokens", {"name": "wall-token", "role": "viewer"})["token"]
        alert_id = wait_for(
            lambda: next((a["id"] for a in admin.get("monitor/alerts", state="firing")
                          if a["rule"] == "e2e-viewer-alert"), None),
            timeout=60, message="the viewer test's alert to fire")
    with open_tab(browser, request.node.name, width=800, height=1100) as tab:  # tablet width
        page = tab.page
        log_in(tab, dashboard.url, "wall", "wallscreen-pw", "/monitor/checks")
        page.get_by_role("link", name="e2e-viewer-sees").wait_for()
        assert page.get_by_test_id("add-check").count() == 0
        assert page.get_by_role("button", name="Edit").count() == 0
        tab.shot("checks-as-viewer")
        page.goto(dashboard.url + "/monitor/alerts")
        page.locator("[data-alerts=firing]").get_by_role("row").filter(has_text="e2e-viewer-alert").wait_for()
        assert page.get_by_role("button", name="Acknowledge").count() == 0
        assert page.get_by_role("button", name="Silence").count() == 0
        assert page.get_by_test_id("add-rule").count() == 0
        tab.shot("alerts-as-viewer")
        response = page.request.get(dashboard.url + "/users")  # the session's cookie, outside the page
        assert response.status == 403  # the admin page itself checks the role, not only the navigation
    with Client(dashboard.url, viewer_token) as viewer:
        for call in (lambda: viewer.post("monitor/checks", {"name": "x", "type": "tcp", "target": "127.0.0.1:9"}),
                     lambda: viewer.post(f"monitor/alerts/{alert_id}/ack"),
                     lambda: viewer.post("users", {"name": "y", "role": "admin", "password": "12345678x"})):
            with pytest.raises(ApiError) as refused:
                call()
            assert refused.value.status == 403
