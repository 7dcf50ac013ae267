"""The one bearer-token check both doors use."""

from __future__ import annotations

import pytest
from imgcls.server.engine.tokens import TokenCheck


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("Bearer s3cret", True),
        (b"Bearer s3cret", True),
        ("bearer s3cret ", True),  # the scheme is case-insensitive; surrounding space ignored
        ("Bearer other", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        ("Bearer ", False),
        (None, False),
        (b"Bearer \xff\xfe", False),  # not UTF-8: refused, never an exception
    ],
)
def test_a_header_value_is_allowed_only_with_an_accepted_token(value: str | bytes | None, allowed: bool) -> None:
    check = TokenCheck(["s3cret", "second"])
    assert check.authorized(value) is allowed
    assert bool(check) and not TokenCheck([])
