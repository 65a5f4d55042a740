"""Admins manage dashboard users: add one with a role and password, change a role, reset a password, remove."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from nicegui import run, ui

from controltower.core import users
from controltower.core.auth import Role
from controltower.core.context import Context
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.layout import frame, notify_error

ROLES = [r.value for r in users.PERSON_ROLES]


def _rows(ctx: Context) -> list[dict[str, str]]:
    with ctx.db.read_session() as session:
        return [{"name": u.name, "role": u.role, "created": u.created_at.strftime("%Y-%m-%d %H:%M")}
                for u in users.read_users(session)]


def _create(ctx: Context, name: str, role: str, password: str) -> None:
    with ctx.db.session() as session:
        users.create_user(session, name, role, password)


def _update(ctx: Context, name: str, role: str | None, password: str | None) -> None:
    with ctx.db.session() as session:
        user = users.update_user(session, name, role=role, password=password)
        subject = f"user:{user.id}"
    ctx.principals.forget_subject(subject)


def _delete(ctx: Context, name: str) -> None:
    with ctx.db.session() as session:
        user_id = users.read_user(session, name).id
        users.delete_user(session, name)
    ctx.principals.forget_subject(f"user:{user_id}")


def register(ctx: Context) -> None:
    @page("/users")
    async def users_view(request: Request) -> Response | None:
        user = web_session.page_user(ctx, request, Role.admin)
        if isinstance(user, Response):
            return user
        with frame(ctx, user, "Users", "/users"):
            ui.label("Users").classes("text-2xl font-bold")
            table = ui.table(
                columns=[
                    {"name": "name", "label": "Name", "field": "name", "align": "left", "sortable": True},
                    {"name": "role", "label": "Role", "field": "role", "align": "left"},
                    {"name": "created", "label": "Created", "field": "created", "align": "left"},
                ],
                rows=await run.io_bound(_rows, ctx),
                row_key="name",
                selection="single",
            ).classes("w-full")

            async def reload() -> None:
                table.rows = await run.io_bound(_rows, ctx)
                table.selected = []
                table.update()

            with ui.card().classes("w-full max-w-xl"):
                ui.label("Add a user").classes("font-bold")
                name = ui.input("Name").classes("w-full")
                role = ui.select(ROLES, value="viewer", label="Role").classes("w-full")
                password = ui.input("Password", password=True).classes("w-full")
                fields = {"name": name, "role": role, "password": password}

                async def add() -> None:
                    for field in fields.values():
                        field.error = None
                    try:
                        web_session.require(ctx, Role.admin)
                        await run.io_bound(_create, ctx, name.value, role.value, password.value)
                    except users.UserInvalid as exc:
                        fields[exc.field].error = exc.reason
                        return
                    except (users.UserExists, web_session.Forbidden) as exc:
                        name.error = str(exc) if isinstance(exc, users.UserExists) else None
                        notify_error(exc)
                        return
                    ui.notify(f"user {name.value} added", type="positive")
                    name.set_value("")
                    password.set_value("")
                    await reload()

                ui.button("Add user", on_click=add)

            with ui.card().classes("w-full max-w-xl"):
                ui.label("Change the selected user").classes("font-bold")
                new_role = ui.select(ROLES, label="New role").classes("w-full")
                new_password = ui.input("New password", password=True).classes("w-full")

                async def change() -> None:
                    if not table.selected:
                        ui.notify("select a user in the table first", type="warning")
                        return
                    target = table.selected[0]["name"]
                    try:
                        web_session.require(ctx, Role.admin)
                        await run.io_bound(_update, ctx, target, new_role.value or None, new_password.value or None)
                    except (users.UserInvalid, users.UserNotFound, web_session.Forbidden) as exc:
                        notify_error(exc)
                        return
                    ui.notify(f"user {target} changed", type="positive")
                    new_password.set_value("")
                    await reload()

                async def remove() -> None:
                    if not table.selected:
                        ui.notify("select a user in the table first", type="warning")
                        return
                    target = table.selected[0]["name"]
                    try:
                        web_session.require(ctx, Role.admin)
                        await run.io_bound(_delete, ctx, target)
                    except (users.UserInvalid, users.UserNotFound, web_session.Forbidden) as exc:
                        notify_error(exc)
                        return
                    ui.notify(f"user {target} removed", type="positive")
                    await reload()

                with ui.row():
                    ui.button("Save changes", on_click=change)
                    ui.button("Remove user", on_click=remove, color="negative")
        return None
