"""Listen-port checks whose error names the setting to change."""

from __future__ import annotations

import errno
import socket

MQTT_PORT_HINT = ", or use an external broker with CT_MQTT_URL"


class PortBusyError(Exception):
    """The port is taken; the message names the setting that moves it."""


def check_port_free(host: str, port: int, setting: str, alternative: str = "") -> None:
    """Raise PortBusyError when `host:port` cannot be bound. `alternative` is appended as another way out."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortBusyError(
                    f"port {port} on {host} is already in use: stop what holds it, or choose another with "
                    f"{setting}=<port>{alternative}"
                ) from exc
            raise
