"""A run's files for the dashboard (log.html, report.html, output.xml, artifacts), behind the web session."""

from __future__ import annotations

import posixpath
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import PlainTextResponse, Response
from nicegui import app, run

from controltower.core.context import Context
from controltower.rpa import runs
from controltower.web import session as web_session

SHOWN = {"log.html": "text/html", "report.html": "text/html", "output.xml": "application/xml"}
# Robot Framework's pages run their own scripts: in an opaque origin they cannot act with the viewer's session.
SANDBOX = "sandbox allow-scripts allow-popups allow-popups-to-escape-sandbox allow-downloads"


def file_url(run_id: int, name: str) -> str:
    return f"/robots/runs/{run_id}/files/{name}"


def _read(ctx: Context, run_id: int, name: str) -> bytes | None:
    with ctx.db.read_session() as session:
        try:
            entry: dict[str, Any] | None = (runs.get_run(session, run_id).files or {}).get(name)
        except runs.RunNotFound:
            return None
    if entry is None:
        return None
    with ctx.blobs.open(entry["sha256"]) as fh:
        return fh.read()


def register(ctx: Context) -> None:
    path = "/robots/runs/{run_id}/files/{name:path}"
    app.remove_route(path)  # tests build several apps in one process: the latest ctx serves

    @app.get(path, include_in_schema=False)
    async def run_file(request: Request, run_id: int, name: str) -> Response:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        data = await run.io_bound(_read, ctx, run_id, name)
        if data is None:
            return PlainTextResponse(f"run {run_id} has no file {name!r}", status_code=404)
        headers = {"X-Content-Type-Options": "nosniff"}
        if name in SHOWN:
            headers["Content-Security-Policy"] = SANDBOX
            return Response(data, media_type=SHOWN[name], headers=headers)
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(posixpath.basename(name))}"
        return Response(data, media_type="application/octet-stream", headers=headers)
