"""Declarative lifecycles: each transition names the states it may start from and the state it leads to.

Work items, device commands, robot runs and process instances each subclass `Transition` per move
(Prefect's FROM_STATES / TO_STATE rules), so an illegal move is refused the same way everywhere.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class IllegalTransition(ValueError):
    """The current state does not allow the move."""


class Transition:
    """A legal move: from any of FROM_STATES to TO_STATE."""

    NAME: ClassVar[str]
    FROM_STATES: ClassVar[frozenset[StrEnum]]
    TO_STATE: ClassVar[StrEnum]

    @classmethod
    def allows(cls, state: str) -> bool:
        return any(state == s.value for s in cls.FROM_STATES)

    @classmethod
    def refusal(cls, subject: str, state: str) -> str:
        """Why the move is refused, e.g. `command 7 is sent; cannot send it (only from: queued)`."""
        allowed = ", ".join(sorted(s.value for s in cls.FROM_STATES))
        return f"{subject} is {state}; cannot {cls.NAME} it (only from: {allowed})"

    @classmethod
    def check(cls, subject: str, state: str) -> None:
        """Raise IllegalTransition unless the move may start from `state`."""
        if not cls.allows(state):
            raise IllegalTransition(cls.refusal(subject, state))
