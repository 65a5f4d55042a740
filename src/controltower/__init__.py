"""Control Tower: one self-hosted server that commands and watches fleets, devices, robots and processes."""

__version__ = "0.1.0"
