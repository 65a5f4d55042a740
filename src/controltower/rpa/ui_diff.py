"""The robot page's comparison of two versions: files added, removed and changed, and the text diff."""

from __future__ import annotations

from nicegui import run, ui

from controltower.core.context import Context
from controltower.rpa import robots, ui_data
from controltower.web.layout import notify_error

KINDS = (("added", "positive"), ("removed", "negative"), ("changed", "warning"))


async def diff_card(ctx: Context, name: str, numbers: list[int]) -> None:
    """Two version pickers (the latest two preselected), a Compare button and the result."""
    with ui.card().classes("w-full").props("data-testid=diff"):
        ui.label("Compare versions").classes("font-bold")
        if len(numbers) < 2:
            ui.label("Push a second version to compare it with the first.").classes("text-sm opacity-70")
            return
        options = {n: f"v{n}" for n in numbers}
        with ui.row().classes("items-center gap-3"):
            a_in = ui.select(options, value=numbers[1], label="From").classes("w-28").props("data-testid=diff-a")
            b_in = ui.select(options, value=numbers[0], label="To").classes("w-28").props("data-testid=diff-b")
            compare = ui.button("Compare", icon="difference")
        result = ui.column().classes("w-full gap-2")

        async def show() -> None:
            try:
                diff = await run.io_bound(ui_data.version_diff, ctx, name, int(a_in.value), int(b_in.value))
            except robots.RobotNotFound as exc:
                notify_error(exc)
                return
            result.clear()
            with result:
                if not (diff.added or diff.removed or diff.changed):
                    ui.label(f"v{diff.a} and v{diff.b} hold the same files.")
                for kind, color in KINDS:
                    for path in getattr(diff, kind):
                        with ui.row().classes("items-center gap-2").props(f"data-diff-{kind}={path}"):
                            ui.badge(kind, color=color)
                            ui.label(path).classes("font-mono text-sm")
                if diff.diff:
                    ui.code(diff.diff, language="diff").classes("w-full text-xs").props("data-testid=diff-text")

        compare.on_click(show)
        await show()
