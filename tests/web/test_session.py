"""Dashboard session rules that need no browser: role ranks and where a login may send the user."""

from __future__ import annotations

import pytest

from controltower.core.auth import Role
from controltower.web.session import WebUser, safe_next


def test_roles_imply_lesser_roles() -> None:
    viewer, operator, admin = (WebUser(1, "v", Role.viewer), WebUser(2, "o", Role.operator),
                               WebUser(3, "a", Role.admin))
    assert viewer.can(Role.viewer) and not viewer.can(Role.operator)
    assert operator.can(Role.operator) and not operator.can(Role.admin)
    assert admin.can(Role.admin) and admin.can(Role.viewer)


@pytest.mark.parametrize(
    ("target", "expected"),
    [("/monitor/checks", "/monitor/checks"), ("/monitor?x=1", "/monitor?x=1"), (None, "/"),
     ("https://evil.example/", "/"), ("//evil.example/", "/"), ("/\\evil.example", "/"), ("monitor", "/")],
)
def test_login_redirects_stay_on_this_server(target, expected) -> None:
    assert safe_next(target) == expected
