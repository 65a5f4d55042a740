"""The page frame: header with the server's name and health, navigation, live event feed, light/dark theme."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

from nicegui import app, background_tasks, run, ui

from controltower.core.auth import Role
from controltower.core.context import Context
from controltower.core.events import Event
from controltower.web import session as web_session
from controltower.web.areas import AREAS, area_of
from controltower.web.session import WebUser

log = logging.getLogger("controltower.web")

FEED_SIZE = 40
HEALTH_EVERY_S = 15.0


def _summary(payload: dict[str, Any]) -> str:
    keys = ("host", "check", "rule", "name", "state", "to", "summary")
    parts = [f"{k}={payload[k]}" for k in keys if k in payload and payload[k] not in (None, "")]
    return ", ".join(parts)[:160]


def _feed_item(container: ui.element, ev: Event) -> None:
    with container, ui.column().classes("gap-0 w-full ct-event") as item:
        ts = ev.ts.astimezone().strftime("%H:%M:%S")
        ui.label(f"{ts}  {ev.topic}").classes("text-xs font-mono font-bold")
        text = _summary(ev.payload)
        if text:
            ui.label(text).classes("text-xs opacity-80 break-all")
    item.move(target_index=0)
    while len(container.default_slot.children) > FEED_SIZE:
        container.remove(container.default_slot.children[-1])


def _recent_events(ctx: Context) -> list[Event]:
    with ctx.db.read_session() as session:
        return ctx.events.recent(session, "#", limit=FEED_SIZE // 2)


def event_feed(ctx: Context) -> None:
    """The newest events, then each new one as it is published (one bus stream per open page)."""
    container = ui.column().classes("w-full gap-2").props('aria-live="polite"')
    client = ui.context.client

    async def follow() -> None:
        recent = await run.io_bound(_recent_events, ctx)
        for ev in recent:
            _feed_item(container, ev)
        stream = ctx.events.open_stream("#", since_id=recent[-1].id if recent else None)
        client.on_delete(stream.close)
        try:
            async for ev in stream:
                if client.id not in client.instances:
                    break
                _feed_item(container, ev)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dashboard event feed stopped")
        finally:
            stream.close()

    background_tasks.create(follow(), name=f"event-feed-{client.id}")


def _health(ctx: Context) -> bool:
    return ctx.db.ping()


def _health_badge(ctx: Context) -> None:
    badge = ui.badge("checking…").classes("text-sm").props("data-testid=health")

    async def refresh() -> None:
        ok = await run.io_bound(_health, ctx)
        badge.set_text("healthy" if ok else "database unreachable")
        badge.props(f"color={'positive' if ok else 'negative'}")
        badge.tooltip(f"checked {dt.datetime.now().strftime('%H:%M:%S')}")

    ui.timer(HEALTH_EVERY_S, refresh, immediate=True)


def _theme() -> ui.dark_mode:
    dark = ui.dark_mode(value=bool(app.storage.user.get("dark", False)))

    def toggle() -> None:
        dark.toggle()
        app.storage.user["dark"] = bool(dark.value)

    ui.button(icon="dark_mode", on_click=toggle).props("flat round color=white aria-label='Toggle dark theme'")
    return dark


async def _logout() -> None:
    web_session.end_session()
    ui.navigate.to("/login")


@contextlib.contextmanager
def frame(ctx: Context, user: WebUser, title: str, path: str) -> Iterator[ui.column]:
    """Lay out a page; the caller fills the yielded column."""
    ui.page_title(f"{title} · {ctx.settings.name}")
    ui.add_css(".ct-event { border-left: 3px solid var(--q-primary); padding-left: 6px; }")
    current = area_of(path)
    with ui.header(elevated=True).classes("items-center gap-3 px-3 py-2"):
        nav_button = ui.button(icon="menu").props("flat round color=white aria-label='Navigation'")
        ui.link(ctx.settings.name, "/").classes("text-lg font-bold text-white no-underline")
        _health_badge(ctx)
        ui.space()
        feed_button = ui.button(icon="notifications").props("flat round color=white aria-label='Events'")
        _theme()
        ui.label(f"{user.name} ({user.role.value})").classes("text-sm max-sm:hidden").props("data-testid=whoami")
        ui.button(icon="logout", on_click=_logout).props("flat round color=white aria-label='Log out'")
    with (ui.left_drawer(value=None, fixed=True).props("breakpoint=1023 bordered width=210") as nav,
          ui.column().classes("w-full gap-1")):
        for area in AREAS:
            active = current is not None and current.path == area.path
            with ui.link(target=area.path).classes(
                "w-full no-underline rounded px-2 py-2 flex items-center gap-2 "
                + ("bg-primary text-white" if active else "text-inherit")
            ):
                ui.icon(area.icon)
                ui.label(area.name)
        if user.can(Role.admin):
            ui.separator()
            with ui.link(target="/users").classes("w-full no-underline rounded px-2 py-2 flex items-center gap-2 "
                                                  "text-inherit"):
                ui.icon("group")
                ui.label("Users")
    with ui.right_drawer(value=None, fixed=True).props("breakpoint=1279 bordered width=280") as feed:
        ui.label("Live events").classes("text-base font-bold")
        event_feed(ctx)
    nav_button.on_click(nav.toggle)
    feed_button.on_click(feed.toggle)
    with ui.column().classes("w-full gap-4 p-2 sm:p-4") as main:
        yield main


def notify_error(exc: Exception) -> None:
    ui.notify(str(exc), type="negative", multi_line=True)
