"""Typed HTTP client for the REST API, used by the CLI, the agent, devices and tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8080"


class ApiError(Exception):
    """The server answered with an error status; `detail` is its explanation."""

    def __init__(self, status: int, detail: Any, method: str, path: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{method} {path} -> {status}: {detail}")


def find_token(token: str | None, data_dir: str | Path | None = None) -> str | None:
    """--token, else CT_TOKEN, else <data-dir>/admin-token (data dir from CT_DATA_DIR or ./ctower-data)."""
    if token:
        return token
    if os.environ.get("CT_TOKEN"):
        return os.environ["CT_TOKEN"]
    path = Path(data_dir or os.environ.get("CT_DATA_DIR", "./ctower-data")) / "admin-token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class Client:
    """Thin wrapper over httpx: base URL, bearer token, and errors raised as ApiError."""

    def __init__(self, server: str = DEFAULT_SERVER, token: str | None = None, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, self._url(path), **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail, method, path)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=json, **kwargs)

    def put(self, path: str, json: Any = None) -> Any:
        return self.request("PUT", path, json=json)

    def patch(self, path: str, json: Any = None) -> Any:
        return self.request("PATCH", path, json=json)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    @staticmethod
    def _url(path: str) -> str:
        if path.startswith(("/api/", "/healthz", "/readyz", "/metrics")):
            return path
        return "/api/v1/" + path.lstrip("/")
