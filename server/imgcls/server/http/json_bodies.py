"""JSON request bodies: bounded in size, charged by what they become, parsed off the event loop.

JSON text becomes Python objects several times its size (a number ``0.1,`` is 4 bytes of text and then a
24-byte float in an 8-byte list slot), and ``json.loads`` holds the interpreter for as long as it runs
(about 15 ms a MB of numbers). So a JSON body over ``max_json_bytes`` is refused (413, from its
Content-Length when it has one) with a pointer to the forms that carry the same data without the parse;
one under it is charged to the memory budget by its parsed size (json_cost) and, when it is not small,
parsed and converted on one thread of its own, one body at a time: concurrent large bodies queue there
instead of taking turns with every other request on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

from imgcls.server.domain.errors import TooLargeError
from starlette.requests import Request

T = TypeVar("T")

# Parsed where it is: the hop to the thread would cost more than the parse.
SMALL_JSON_BYTES = 64 * 1024
# Bytes of Python objects per JSON value beyond its text: a float (24) and its list slot (8).
_BYTES_PER_VALUE = 32

HINT = (
    "send tensors with the binary tensor data extension (Inference-Header-Content-Length) or an image as "
    "its raw bytes (Content-Type: image/jpeg), which carry the same data without parsing it"
)


def json_cost(text: bytes) -> int:
    """An upper bound of the memory parsing text takes, for the budget: its values are at most its commas
    plus one, and a long string (base64) costs its length."""
    return len(text) + _BYTES_PER_VALUE * (text.count(b",") + 1)


def too_large(size: int | None, limit: int) -> TooLargeError:
    what = "JSON body" if size is None else f"JSON body of {size} bytes"
    return TooLargeError(f"{what} is over the limit of {limit} bytes for JSON (max_json_bytes); {HINT}")


def refuse_declared(request: Request, limit: int) -> None:
    """TooLargeError before any byte of the body is read, when its Content-Length is over the JSON limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)


class JsonParsing:
    """The one thread large JSON bodies are parsed on; started on first use, stopped with the door."""

    def __init__(self) -> None:
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    async def run(self, text: bytes, parse: Callable[..., T], *args: object) -> T:
        """parse(*args), which reads text: where it is when text is small, else on the JSON thread."""
        if len(text) <= SMALL_JSON_BYTES:
            return parse(*args)
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="imgcls-json")
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: parse(*args))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
