"""What the HTTP routes share: error answering, deadlines, JSON bodies in and out."""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

from imgcls.server.domain.errors import InvalidInputError, forget_frames
from imgcls.server.http.errors import error_response
from imgcls.server.http.guard import HttpLimits, body_state
from starlette.requests import Request
from starlette.responses import Response

P = ParamSpec("P")

# The caller's deadline, in seconds from now (a decimal number), like gRPC's grpc-timeout header.
TIMEOUT_HEADER = "timeout"
# The largest a deadline may be: a year, so the arithmetic below stays finite.
MAX_TIMEOUT_S = 365 * 24 * 3600.0


def answer_errors(
    limits: HttpLimits,
) -> Callable[[Callable[P, Awaitable[Response]]], Callable[P, Awaitable[Response]]]:
    """A route's exceptions become its error response (errors.py), closing the connection when its body
    was left unread and is too long to drain."""

    def decorate(handler: Callable[P, Awaitable[Response]]) -> Callable[P, Awaitable[Response]]:
        @functools.wraps(handler)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
            request = kwargs.get("request")
            try:
                return await handler(*args, **kwargs)
            except Exception as exc:
                close = isinstance(request, Request) and body_state(request).must_close(limits)
                response = error_response(exc, close=close)
                forget_frames(exc)
                return response

        return wrapper

    return decorate


def deadline_of(request: Request) -> float | None:
    """The `timeout` header (seconds) as a deadline on the monotonic clock the engine uses; None without one."""
    value = request.headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInputError(f"header {TIMEOUT_HEADER}: expected seconds as a non-negative number")
    return time.monotonic() + min(seconds, MAX_TIMEOUT_S)


def _float(text: str) -> float:
    return float(text)


def _int(text: str) -> int:
    return int(text)


def _constant(name: str) -> float:
    return float(name)  # NaN, Infinity, -Infinity: as json.loads reads them


# json.loads holds the interpreter from start to end when it converts numbers itself: 16 MiB of JSON numbers
# stalled every other thread, the event loop included, for 420 ms. Converted by a Python function, each number
# is a point where the interpreter can switch threads (longest stall measured 16 ms, for 22-31% more parse time).
# Objects, arrays, strings and true/false/null, which json.loads converts without one, are bounded in count
# (json_bodies).
NUMBER_HOOKS: dict[str, Any] = {"parse_float": _float, "parse_int": _int, "parse_constant": _constant}


def parse_json(body: bytes, what: str = "request body", **options: Any) -> Any:
    """json.loads(body, **options), numbers converted where threads can switch; InvalidInputError for anything
    it cannot read."""
    try:
        return json.loads(body, **NUMBER_HOOKS, **options)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{what}: not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidInputError(f"{what}: JSON nested too deeply") from None
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise InvalidInputError(f"{what}: a JSON number has more than {sys.get_int_max_str_digits()} digits") from None


class JSONResponse(Response):
    """JSON as compact as it goes; a model's NaN or Inf score is written as Python's json writes it."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
