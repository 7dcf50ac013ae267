"""JSON request bodies: bounded in size, charged by what they become, parsed off the event loop.

JSON text becomes Python objects several times its size (a number ``0.1,`` is 4 bytes of text and then a
24-byte float in an 8-byte list slot; ``{"":[]},`` is 8 bytes and then ~250 of dict, list and slot), and
``json.loads`` holds the interpreter for as long as it runs (about 15-30 ms a MB of numbers, several times
that of nested containers) except where it calls Python (common.parse_json has it convert numbers that way).
So a JSON body over ``max_json_bytes`` is refused (413, from its Content-Length when it has one) with a
pointer to the forms that carry the same data without the parse; so is one with more objects, arrays or
strings than any request needs (MAX_JSON_CONTAINERS, MAX_JSON_STRINGS: numbers, the bulk of a JSON tensor,
are not limited). One under both is charged to the memory budget by what its parse can hold (json_cost,
from a count of its structural characters, measured against tracemalloc for every shape of value) and, when
it is not small, counted, parsed and converted on one thread of its own, one body at a time: concurrent
large bodies queue there instead of taking turns with every other request on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from imgcls.server.domain.errors import TooLargeError
from imgcls.server.engine.budget import Lease, MemoryBudget
from starlette.requests import Request

T = TypeVar("T")

# Parsed where it is: the hop to the thread would cost more than the parse.
SMALL_JSON_BYTES = 64 * 1024
# What parsing holds beyond twice the text (json.loads decodes bytes to a str first, and a long string value
# is a copy of its text), per structural character, each an upper bound over the values it can start
# (tests/server/http/test_json_bodies.py measures them): a value (","), 24-28 bytes of number and its 8-byte
# slot; an object ("{"), an empty dict and growth; an array ("["), an empty list and over-allocation; a key
# (":"), its entry in the dict's table; a string ('"', two a string), a str object's header.
_PER_BODY = 4096  # the decoder's own state and the top value's header
_PER_VALUE = 40
_PER_OBJECT = 256
_PER_ARRAY = 104
_PER_KEY = 64
_PER_QUOTE = 28
_STRUCTURE = b'{}[],:"'
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in _STRUCTURE)
_DIGITS = b"0123456789"
# Far above any request of any door: objects (a v2 request has a few per tensor), strings (one per image
# or key), literals (true, false, null: a few flags). Arrays are allowed this many beyond the digits the body
# holds: a v2 tensor nested by its shape has an array per row, 50,401 for one 1x224x224x3 image, each holding
# numbers (the parse can switch threads at each, common.parse_json); empty arrays are what it cannot switch in.
# Numbers are not counted: they are what a JSON tensor is made of.
MAX_JSON_OBJECTS = 65536
MAX_JSON_STRINGS = 65536
MAX_JSON_LITERALS = 65536
MAX_JSON_EMPTY_ARRAYS = 65536

HINT = (
    "send tensors with the binary tensor data extension (Inference-Header-Content-Length) or an image as "
    "its raw bytes (Content-Type: image/jpeg), which carry the same data without parsing it"
)


def json_cost(text: bytes) -> int:
    """An upper bound of the memory parsing text takes, for the budget; TooLargeError (413) before any parse
    for a body of more objects, strings, literals or arrays than any request needs (what json.loads converts
    without a point where other threads can run)."""
    structure = text.translate(None, _NOT_STRUCTURE)  # one pass; a base64 body keeps a few bytes of it
    objects, arrays = structure.count(b"{"), structure.count(b"[")
    strings = structure.count(b'"') // 2  # an upper bound: escaped quotes are counted too
    literals = text.count(b"true") + text.count(b"false") + text.count(b"null")
    digits = len(text) - len(text.translate(None, _DIGITS)) if arrays > MAX_JSON_EMPTY_ARRAYS else 0
    counts = {"objects": objects, "strings": strings, "true, false or null": literals}
    limits = {"objects": MAX_JSON_OBJECTS, "strings": MAX_JSON_STRINGS, "true, false or null": MAX_JSON_LITERALS}
    over = [f"{counts[k]} {k} (the limit: {limits[k]})" for k in counts if counts[k] > limits[k]]
    if arrays > MAX_JSON_EMPTY_ARRAYS + digits:
        over.append(f"{arrays} arrays for {digits} digits (the limit: {MAX_JSON_EMPTY_ARRAYS} more arrays than digits)")
    if over:
        raise TooLargeError(f"JSON body holds {', '.join(over)}; {HINT}")
    return (
        json_floor(text)
        + _PER_VALUE * (structure.count(b",") + 1)
        + _PER_OBJECT * objects
        + _PER_ARRAY * arrays
        + _PER_KEY * structure.count(b":")
        + _PER_QUOTE * 2 * strings
    )


def json_floor(text: bytes) -> int:
    """What parsing text holds at the least (json_cost's first terms): charged while text waits to be counted.

    Twice the text for ASCII (json.loads decodes it to a str, and a string value is a copy); one character
    beyond U+FFFF, raw or as a \\u escape pair, makes the decoded str and the values 4 bytes a character."""
    wide = not text.isascii() or b"\\u" in text
    return (8 if wide else 2) * len(text) + _PER_BODY


@contextlib.asynccontextmanager
async def json_lease(budget: MemoryBudget, owner: str, parsing: JsonParsing, text: bytes) -> AsyncIterator[Lease]:
    """The budget's lease for parsing text, held until the block ends: json_floor at once (the body is charged
    from the moment the door has it, as it was while it arrived), grown to json_cost once text is counted (on
    the JSON thread when large, where bodies queue)."""
    floor = json_floor(text)
    with budget.lease(floor, owner) as lease:
        lease.grow(await parsing.run(text, json_cost, text) - floor)
        yield lease


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
