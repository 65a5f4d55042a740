"""The vault page: the names of the secrets robots may receive, never their values."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from nicegui import run, ui

from controltower.core.context import Context
from controltower.rpa import ui_data
from controltower.rpa.ui_nav import submenu
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.layout import frame

COLUMNS = [
    {"name": c, "label": label, "field": c, "align": "left"}
    for c, label in (("name", "Secret"), ("description", "Description"), ("updated", "Updated"),
                     ("by", "Updated by"))
]


def register(ctx: Context) -> None:
    @page("/robots/vault")
    async def vault_page(request: Request) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        with frame(ctx, user, "Vault", "/robots/vault"):
            submenu("/robots/vault")
            ui.markdown("Secrets are stored encrypted and handed only to the runs that use them; values are never "
                        "shown here. Set or replace one from a terminal (the value is asked for, hidden):\n\n"
                        "```sh\nctower vault set erp_password --description \"ERP login of the invoice robot\"\n```")
            rows = await run.io_bound(ui_data.secret_rows, ctx)
            if not rows:
                ui.label("The vault holds no secret yet.").classes("text-lg")
            ui.table(columns=COLUMNS, rows=rows, row_key="name", pagination=100).classes("w-full").props(
                "data-testid=secrets").set_visibility(bool(rows))
        return None
