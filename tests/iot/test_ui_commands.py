"""The command form's fields become the API's CommandCreate, or an error naming the field."""

from __future__ import annotations

import pytest

from controltower.iot.ui_commands import FormError, parse_form


def test_fields_become_a_command() -> None:
    body = parse_form(" capture ", '{"resolution": "640x480"}', 12.5)
    assert (body.name, body.params, body.timeout_s) == ("capture", {"resolution": "640x480"}, 12.5)
    assert parse_form("reboot", "  ", None).params == {} and parse_form("reboot", "", None).timeout_s == 30.0


@pytest.mark.parametrize(
    ("name", "params", "timeout", "field", "reason"),
    [
        ("x", '{"a": ', 5, "params", "not valid JSON"),
        ("x", "[1, 2]", 5, "params", "JSON object"),
        ("", "{}", 5, "name", "at least 1"),
        ("bad name!", "{}", 5, "name", "pattern"),
        ("x", "{}", 0, "timeout_s", "greater than 0"),
    ],
)
def test_bad_fields_are_named(name: str, params: str, timeout: float, field: str, reason: str) -> None:
    with pytest.raises(FormError) as info:
        parse_form(name, params, timeout)
    assert info.value.field == field and reason in info.value.reason
