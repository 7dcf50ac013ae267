"""Bearer tokens, checked the same way by every front door: from the header alone, in constant time.

A door asks before it reads a request's message or body (tokens before bytes); tokens are never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence


class TokenCheck:
    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def authorized(self, value: str | bytes | None) -> bool:
        """Whether an `authorization` header value is `Bearer <an accepted token>`."""
        if value is None:
            return False
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        scheme, _, token = raw.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        given = token.strip()
        return any(hmac.compare_digest(given, t) for t in self._tokens)
