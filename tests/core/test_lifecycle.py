"""Declarative transitions refuse a move from a state they do not start from, naming the allowed ones."""

from __future__ import annotations

from enum import StrEnum

import pytest

from controltower.core.lifecycle import IllegalTransition, Transition


class Light(StrEnum):
    red = "red"
    amber = "amber"
    green = "green"


class Go(Transition):
    NAME = "go"
    FROM_STATES = frozenset({Light.red, Light.amber})
    TO_STATE = Light.green


def test_allowed_moves_pass() -> None:
    Go.check("light 1", "red")
    assert Go.allows("amber") and not Go.allows("green")


def test_refusal_names_subject_state_and_allowed_states() -> None:
    with pytest.raises(IllegalTransition, match=r"light 1 is green; cannot go it \(only from: amber, red\)"):
        Go.check("light 1", "green")
