"""Entry point for `python -m controltower`, the same as the `ctower` command."""

from controltower.cli import main

main()
