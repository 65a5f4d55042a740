"""Mount the dashboard on the API's FastAPI app: session cookies, the login page, home, and unbuilt areas."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from nicegui import core, run, ui
from nicegui.storage import Storage

from controltower.core.context import Context
from controltower.web import session as web_session
from controltower.web import users_page
from controltower.web.areas import AREAS, Area, has_page, page
from controltower.web.layout import frame
from controltower.web.secret import storage_secret

log = logging.getLogger("controltower.web")

SESSION_COOKIE = "ctower_session"
SESSION_MAX_AGE_S = 7 * 86400
_mounted = False


def _login_page(ctx: Context) -> None:
    @page("/login")
    def login(request: Request, next: str = "/") -> Response | None:
        target = web_session.safe_next(next)
        if web_session.current_user(ctx) is not None:
            return RedirectResponse(target, status_code=303)
        ui.page_title(f"Log in · {ctx.settings.name}")
        with ui.card().classes("absolute-center w-80 max-w-full"):
            ui.label(ctx.settings.name).classes("text-xl font-bold")
            name = ui.input("User name").props("autofocus autocomplete=username").classes("w-full")
            password = ui.input("Password", password=True, password_toggle_button=True).props(
                "autocomplete=current-password"
            ).classes("w-full")
            error = ui.label().classes("text-negative text-sm").props("role=alert")

            async def submit() -> None:
                error.set_text("")
                found = await run.io_bound(web_session.check_login, ctx, name.value.strip(), password.value)
                if found is None:
                    password.set_value("")
                    error.set_text("Wrong user name or password.")
                    return
                web_session.start_session(*found)
                ui.navigate.to(target)

            password.on("keydown.enter", submit)
            ui.button("Log in", on_click=submit).classes("w-full")
        return None


def _home_page(ctx: Context) -> None:
    @page("/")
    def home(request: Request) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        for area in AREAS:
            if has_page(area.path):
                return RedirectResponse(area.path, status_code=303)
        with frame(ctx, user, "Home", "/"):
            ui.label("No area has pages yet.")
        return None


def _area_page(ctx: Context, area: Area) -> None:
    """An area whose subsystem is not built yet says in one line what it will do; no made-up data."""

    @page(area.path)
    def coming(request: Request) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        with frame(ctx, user, area.name, area.path):
            ui.label(area.name).classes("text-2xl font-bold")
            ui.label(f"Not built yet. This area will show: {area.purpose}")
        return None


def mount(app: FastAPI, ctx: Context) -> None:
    """Serve the dashboard at `/` of `app`. Call after every subsystem's setup() registered its pages."""
    global _mounted
    _login_page(ctx)
    _home_page(ctx)
    users_page.register(ctx)
    for area in AREAS:
        if not has_page(area.path):
            _area_page(ctx, area)
    if _mounted:  # NiceGUI is one per process: a second app (tests build several) shares its pages
        app.mount("/", core.app)
        return
    _mounted = True
    Storage.path = (ctx.settings.data_dir / "web-sessions").resolve()
    ui.run_with(
        app,
        title=ctx.settings.name,
        favicon="🗼",
        dark=False,
        storage_secret=storage_secret(ctx.settings.data_dir),
        session_middleware_kwargs={
            "session_cookie": SESSION_COOKIE,
            "same_site": "lax",
            "max_age": SESSION_MAX_AGE_S,
        },
        show_welcome_message=False,
        binding_refresh_interval=None,
        reconnect_timeout=10.0,
    )
