"""What IoT's pages share: the sub-navigation and the colours of device and command states."""

from __future__ import annotations

from nicegui import ui

STATUS_COLORS = {"online": "positive", "offline": "negative", "unknown": "grey"}
COMMAND_COLORS = {"queued": "grey", "sent": "info", "succeeded": "positive", "failed": "negative",
                  "timed_out": "warning", "expired": "warning"}


def submenu(active: str) -> None:
    with ui.row().classes("gap-2"):
        for label, path in (("Devices", "/devices"), ("Dead letters", "/devices/dead-letters")):
            ui.link(label, path).classes(
                "px-3 py-1 rounded no-underline " + ("bg-primary text-white" if path == active else "border")
            )


def badge_slot(field: str, colors: dict[str, str]) -> str:
    """A Quasar table cell template showing `field` as a coloured badge with `data-<field>` for tests."""
    mapping = ", ".join(f"{k}: '{v}'" for k, v in colors.items())
    return (f'<q-td :props="props"><q-badge :color="{{{mapping}}}[props.value] || \'grey\'" '
            f':label="props.value" :data-{field}="props.value"/></q-td>')
