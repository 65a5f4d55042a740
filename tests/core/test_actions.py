"""Action registry: registration, schemas, validation, roles, the built-in HTTP actions, REST routes."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field

from controltower.config import Settings
from controltower.core.actions import (
    SYSTEM_PRINCIPAL,
    ActionFailed,
    ActionForbidden,
    ActionNotFound,
    ActionParamsInvalid,
    ActionRegistry,
    register_builtin_actions,
)
from controltower.core.auth import Principal, Role, issue_token
from controltower.core.db import Database
from tests.support import RunningServer, free_port

OPERATOR = Principal(token_id=1, name="op", role=Role.operator, subject="user:1")
VIEWER = Principal(token_id=2, name="viewer", role=Role.viewer, subject="user:2")


class Upstream:
    """A real local HTTP server: /echo reflects the request, /status/N answers N, /flaky/K fails K times."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failures: dict[str, int] = {}
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                seen = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                        "body": body}
                upstream.requests.append(seen)
                status = 200
                if self.path.startswith("/status/"):
                    status = int(self.path.rsplit("/", 1)[1])
                elif self.path.startswith("/flaky/"):
                    wanted = int(self.path.rsplit("/", 1)[1])
                    done = upstream.failures.get(self.path, 0)
                    if done < wanted:
                        upstream.failures[self.path] = done + 1
                        status = 503
                out = json.dumps(seen).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("X-Upstream", "yes")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


@pytest.fixture
def registry() -> ActionRegistry:
    reg = ActionRegistry()
    register_builtin_actions(reg, Settings(webhook_retries=2))
    return reg


class Greet(BaseModel):
    name: str = Field(min_length=1)
    times: int = Field(1, ge=1, le=5)


class Greeting(BaseModel):
    text: str
    thread: int


def test_register_rejects_duplicates_and_bad_names() -> None:
    reg = ActionRegistry()
    reg.register("demo.greet", Greet, lambda p, _who: {"text": p.name}, description="Say hello")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("demo.greet", Greet, lambda p, _who: None, description="again")
    for bad in ("greet", "Demo.greet", "demo..greet", "demo.greet!"):
        with pytest.raises(ValueError, match="action name"):
            reg.register(bad, Greet, lambda p, _who: None, description="bad")
    with pytest.raises(TypeError, match="pydantic"):
        reg.register("demo.dict", dict, lambda p, _who: None, description="bad")  # type: ignore[arg-type]
    assert "demo.greet" in reg and "demo.other" not in reg


def test_list_and_get_give_json_schemas(registry: ActionRegistry) -> None:
    registry.register("demo.greet", Greet, lambda p, _who: None, description="Say hello", role=Role.viewer,
                      output_model=Greeting)
    names = [spec.name for spec in registry.list()]
    assert names == sorted(names) and {"http.request", "notify.webhook", "demo.greet"} <= set(names)

    spec = registry.get("demo.greet")
    assert spec.role is Role.viewer and spec.description == "Say hello"
    assert spec.input_schema["required"] == ["name"]
    assert spec.input_schema["properties"]["times"]["maximum"] == 5
    assert set(spec.output_schema["properties"]) == {"text", "thread"}

    http_spec = registry.get("http.request").to_json()
    assert http_spec["role"] == "operator"
    inputs = set(http_spec["input_schema"]["properties"])
    assert {"method", "url", "headers", "body", "json", "timeout_s"} <= inputs
    assert {"status", "headers", "text"} <= set(http_spec["output_schema"]["properties"])
    with pytest.raises(ActionNotFound, match=r"no action named 'nope\.nope'"):
        registry.get("nope.nope")


def test_call_runs_sync_handlers_in_a_thread_and_async_ones_on_the_loop(registry: ActionRegistry) -> None:
    def greet(params: Greet, who: Principal) -> Greeting:
        text = f"hello {params.name} from {who.name}" * params.times
        return Greeting(text=text, thread=threading.get_ident())

    async def agreet(params: Greet, _who: Principal) -> dict[str, Any]:
        return {"text": params.name.upper(), "thread": threading.get_ident()}

    registry.register("demo.greet", Greet, greet, description="sync", output_model=Greeting)
    registry.register("demo.agreet", Greet, agreet, description="async", output_model=Greeting)

    async def main() -> None:
        loop_thread = threading.get_ident()
        sync_result = await registry.call("demo.greet", {"name": "ada"}, OPERATOR)
        async_result = await registry.call("demo.agreet", {"name": "ada"}, SYSTEM_PRINCIPAL)
        assert sync_result["text"] == "hello ada from op"
        assert sync_result["thread"] != loop_thread
        assert async_result == {"text": "ADA", "thread": loop_thread}

    asyncio.run(main())


def test_call_errors_name_the_action_the_field_and_the_role(registry: ActionRegistry) -> None:
    registry.register("demo.greet", Greet, lambda p, _who: p.name, description="Say hello")

    async def main() -> None:
        with pytest.raises(ActionNotFound):
            await registry.call("demo.missing", {}, OPERATOR)
        with pytest.raises(ActionForbidden, match=r"'viewer' may not call .*; needs operator"):
            await registry.call("demo.greet", {"name": "x"}, VIEWER)
        with pytest.raises(ActionParamsInvalid) as info:
            await registry.call("demo.greet", {"times": 9}, OPERATOR)
        fields = {e["field"]: e["reason"] for e in info.value.errors}
        assert set(fields) == {"name", "times"}
        assert "required" in fields["name"].lower() and "5" in fields["times"]
        assert "demo.greet" in str(info.value) and "name:" in str(info.value)
        with pytest.raises(ActionParamsInvalid, match="JSON object"):
            await registry.call("demo.greet", ["not", "a", "dict"], OPERATOR)  # type: ignore[arg-type]
        assert await registry.call("demo.greet", {"name": "ok"}, OPERATOR) == "ok"

    asyncio.run(main())


def test_http_request_against_a_local_server(registry: ActionRegistry, upstream: Upstream) -> None:
    async def main() -> None:
        got = await registry.call("http.request", {"url": f"{upstream.url}/echo?q=1"}, OPERATOR)
        assert got["status"] == 200 and got["headers"]["x-upstream"] == "yes" and not got["truncated"]
        assert json.loads(got["text"])["path"] == "/echo?q=1"

        posted = await registry.call(
            "http.request",
            {"method": "POST", "url": f"{upstream.url}/echo", "json": {"a": [1, 2]},
             "headers": {"X-Test": "t"}},
            OPERATOR,
        )
        echoed = json.loads(posted["text"])
        assert echoed["method"] == "POST" and json.loads(echoed["body"]) == {"a": [1, 2]}
        assert echoed["headers"]["X-Test"] == "t"

        put = {"method": "PUT", "url": f"{upstream.url}/echo", "body": "plain"}
        raw = await registry.call("http.request", put, OPERATOR)
        assert json.loads(raw["text"])["body"] == "plain"

        missing = await registry.call("http.request", {"url": f"{upstream.url}/status/404"}, OPERATOR)
        assert missing["status"] == 404  # an HTTP error status is a result, not a failure

        with pytest.raises(ActionParamsInvalid, match="either 'body' or 'json'"):
            await registry.call("http.request", {"url": upstream.url, "body": "x", "json": {}}, OPERATOR)
        with pytest.raises(ActionParamsInvalid) as info:
            await registry.call("http.request", {"url": "ftp://example.org/x", "method": "BREW"}, OPERATOR)
        assert {e["field"] for e in info.value.errors} == {"url", "method"}

        closed = f"http://127.0.0.1:{free_port()}/"
        with pytest.raises(ActionFailed, match="ConnectError"):
            await registry.call("http.request", {"url": closed, "timeout_s": 5}, OPERATOR)

    asyncio.run(main())


def test_webhook_retries_with_backoff_until_delivered(registry: ActionRegistry, upstream: Upstream) -> None:
    async def main() -> None:
        flaky = await registry.call(
            "notify.webhook",
            {"url": f"{upstream.url}/flaky/2", "payload": {"alert": "cpu"}, "backoff_s": 0.01},
            OPERATOR,
        )
        assert flaky == {"delivered": True, "attempts": 3, "last_status": 200, "error": None}
        bodies = [json.loads(r["body"]) for r in upstream.requests if r["path"] == "/flaky/2"]
        assert bodies == [{"alert": "cpu"}] * 3

        # retries default to CT_WEBHOOK_RETRIES (2 here): 3 attempts, then give up
        down = await registry.call("notify.webhook", {"url": f"{upstream.url}/flaky/10", "payload": [1],
                                                      "backoff_s": 0}, OPERATOR)
        assert down == {"delivered": False, "attempts": 3, "last_status": 503, "error": "HTTP 503"}

        # a 4xx other than 408/429 is permanent: no retry
        rejected = await registry.call("notify.webhook", {"url": f"{upstream.url}/status/400", "payload": {},
                                                          "retries": 4, "backoff_s": 0}, OPERATOR)
        assert rejected["delivered"] is False and rejected["attempts"] == 1 and rejected["last_status"] == 400

        unreachable = await registry.call(
            "notify.webhook", {"url": f"http://127.0.0.1:{free_port()}/", "payload": {}, "retries": 1,
                               "backoff_s": 0}, OPERATOR)
        assert unreachable["delivered"] is False and unreachable["attempts"] == 2
        assert unreachable["last_status"] is None and "ConnectError" in unreachable["error"]

    asyncio.run(main())


# -- REST against a real server ------------------------------------------------------------


def _viewer_token(server: RunningServer) -> str:
    db = Database(f"sqlite:///{server.data_dir / 'ctower.db'}")
    try:
        with db.session() as session:
            return issue_token(session, name="test-viewer", role=Role.viewer, subject="test:viewer")
    finally:
        db.dispose()


def test_actions_rest(server: RunningServer, upstream: Upstream) -> None:
    api = server.url + "/api/v1"
    with httpx.Client(headers={"Authorization": f"Bearer {server.token}"}, timeout=30) as http:
        listed = http.get(f"{api}/actions")
        assert listed.status_code == 200
        by_name = {a["name"]: a for a in listed.json()}
        assert {"http.request", "notify.webhook"} <= set(by_name)
        assert "url" in by_name["http.request"]["input_schema"]["properties"]
        assert by_name["notify.webhook"]["output_schema"]["properties"]["delivered"]["type"] == "boolean"

        one = http.get(f"{api}/actions/http.request")
        assert one.status_code == 200 and one.json()["role"] == "operator"
        assert http.get(f"{api}/actions/no.such").status_code == 404

        params = {"url": f"{upstream.url}/echo", "method": "POST", "json": {"hi": 1}}
        called = http.post(f"{api}/actions/http.request", json=params)
        assert called.status_code == 200, called.text
        result = called.json()["result"]
        assert result["status"] == 200 and json.loads(json.loads(result["text"])["body"]) == {"hi": 1}

        bad = http.post(f"{api}/actions/http.request", json={"method": "GET"})
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "url" and "url" in bad.json()["detail"]
        bad = http.post(f"{api}/actions/http.request", json={"url": upstream.url, "timeout_s": -1})
        assert bad.status_code == 422 and "timeout_s" in bad.json()["detail"]

        unknown = http.post(f"{api}/actions/no.such", json={})
        assert unknown.status_code == 404 and "no.such" in unknown.json()["detail"]

        failed = http.post(f"{api}/actions/http.request", json={"url": f"http://127.0.0.1:{free_port()}/"})
        assert failed.status_code == 502 and "ConnectError" in failed.json()["detail"]

    viewer = _viewer_token(server)
    with httpx.Client(headers={"Authorization": f"Bearer {viewer}"}, timeout=30) as http:
        assert http.get(f"{api}/actions").status_code == 200
        forbidden = http.post(f"{api}/actions/http.request", json={"url": f"{upstream.url}/echo"})
        assert forbidden.status_code == 403 and "operator" in forbidden.json()["detail"]
    assert not any(r["path"] == "/echo" and r["method"] == "GET" for r in upstream.requests)

    assert httpx.get(f"{api}/actions", timeout=10).status_code == 401
