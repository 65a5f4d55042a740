"""The six areas of the navigation, and the pages subsystems register under them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nicegui import ui


@dataclass(frozen=True)
class Area:
    name: str
    path: str
    icon: str
    purpose: str


AREAS: tuple[Area, ...] = (
    Area("Monitor", "/monitor", "monitor_heart", "Hosts, health checks and alerts."),
    Area("Devices", "/devices", "sensors", "IoT devices over MQTT: their telemetry, state and commands."),
    Area("Robots", "/robots", "smart_toy", "Software robots: run them on desktops and follow each run."),
    Area("Processes", "/processes", "account_tree", "BPMN business processes: start them, follow instances, "
                                                   "complete user tasks."),
    Area("AI", "/ai", "psychology", "AI models served and trained on this server's own hardware."),
    Area("Data", "/data", "storage", "Big-data jobs on local workers or a Dask cluster, and data exports."),
)

_registered: set[str] = set()


def page(path: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`ui.page`, remembering the path so the shell knows which areas have pages of their own."""
    _registered.add(path)
    return ui.page(path, **kwargs)


def has_page(path: str) -> bool:
    return path in _registered


def area_of(path: str) -> Area | None:
    for area in AREAS:
        if path == area.path or path.startswith(area.path + "/"):
            return area
    return None
