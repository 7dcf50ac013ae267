"""What every HTTP request passes before a route sees it, and how a route reads its body.

The guard is plain ASGI, outside the framework: it refuses a request from its headers alone (a missing
or wrong token: 401; a Content-Length over the limit: 413; a Content-Encoding it cannot undo: 415), so
a refused caller costs no more than its headers and its body is never read. A route then reads its
body with ``read_body``, which counts while it streams (chunked bodies have no Content-Length), undoes
gzip/deflate within the same limit, and gives up on a body that stalls or trickles (408).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from imgcls.server.domain.errors import ErrorKind, InvalidInputError, RequestError, TooLargeError
from imgcls.server.engine.admission import LIGHT_MESSAGE_BYTES, ReadGate
from imgcls.server.engine.budget import Lease
from imgcls.server.engine.engine import Engine
from imgcls.server.engine.tokens import TokenCheck
from imgcls.server.http import json_bodies
from imgcls.server.http.errors import HttpError, send_error
from starlette.requests import Request

ASGIApp = Callable[[dict[str, Any], Any, Any], Any]

# Where the guard leaves what it learnt from the headers, for read_body and the error responses.
SCOPE_KEY = "imgcls.body"
# Set in the scope (by the door's protocol) once the whole body has been read off the socket.
BODY_COMPLETE_KEY = "imgcls.body_complete"
# Bodies of at most this Content-Length are received in the engine's small body slots (read_body).
SMALL_BODY_BYTES = LIGHT_MESSAGE_BYTES
# A body's rate is judged after this long in its slot, checked at least this often while others wait.
RATE_GRACE_S = 1.0
RATE_CHECK_S = 0.25


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds on what one connection or request may cost; max_body_bytes comes from max_message_bytes."""

    max_body_bytes: int
    # Request line and headers together; httptools itself has no limit.
    max_header_bytes: int = 64 * 1024
    # From a connection's first byte (or a request's) until its headers are complete.
    header_timeout_s: float = 10.0
    # A body must keep arriving: at most this long between two chunks, and all of it within body_timeout_s.
    body_idle_timeout_s: float = 15.0
    body_timeout_s: float = 120.0
    # While others wait for a read slot, a body slower than this (bytes a second, after RATE_GRACE_S), or too
    # slow to arrive within body_timeout_s at its rate, is cut (408) and its connection served last for a while.
    min_body_rate: int = 16 * 1024
    # An idle keep-alive connection is closed after this long (longer than clients' own pool expiry, so a
    # client never sends on a connection the server is closing: aiohttp 15 s, httpx 5 s).
    keep_alive_s: float = 30.0
    max_connections: int = 10_000
    # Largest JSON body a route parses (max_json_bytes).
    max_json_bytes: int = 16 << 20
    # A request refused before its body was read keeps its connection when the rest of the body is at most
    # this long (the server reads and drops it); a longer or chunked body closes the connection instead.
    drain_bytes: int = 1 << 20
    # Closing such a connection at once would reset it under a client still sending, which then never reads
    # the answer: the server half-closes and drops what arrives for at most this long, or this many bytes.
    linger_s: float = 5.0
    linger_bytes: int = 64 << 20


@dataclass(slots=True)
class BodyState:
    length: int | None  # Content-Length; None for a chunked body
    encoding: str  # "", "gzip" or "deflate"
    read: bool = False
    broken: bool = False  # reading stopped half-way (timed out, over the limit): the rest cannot be drained

    @property
    def pending(self) -> bool:
        return not self.read and (self.length is None or self.length > 0)

    def must_close(self, limits: HttpLimits) -> bool:
        """Answering now would leave body bytes unread that are too many (or too slow) to drain."""
        return self.broken or (self.pending and (self.length is None or self.length > limits.drain_bytes))


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


class Guard:
    """Tokens and body limits from the headers, before any route runs or any body byte is read."""

    def __init__(
        self, app: ASGIApp, *, tokens: Sequence[str], is_open: Callable[[str], bool], limits: HttpLimits
    ) -> None:
        self.app = app
        self._tokens = TokenCheck(tokens)
        self._is_open = is_open
        self.limits = limits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        try:
            body = _body_state(headers)
        except HttpError as exc:
            await send_error(send, exc.status, exc.message, close=True)
            return
        close = body.must_close(self.limits)
        if (
            self._tokens
            and not self._is_open(scope["path"])
            and not self._tokens.authorized(_header(headers, b"authorization"))
        ):
            message = "missing or invalid bearer token (send 'Authorization: Bearer <token>')"
            await send_error(send, 401, message, close=close)
            return
        if body.length is not None and body.length > self.limits.max_body_bytes:
            message = f"request body of {body.length} bytes is over the limit of {self.limits.max_body_bytes} bytes"
            await send_error(send, 413, message, close=close)
            return
        scope[SCOPE_KEY] = body
        await self.app(scope, receive, send)


def _body_state(headers: Sequence[tuple[bytes, bytes]]) -> BodyState:
    length: int | None = 0
    encoding = ""
    for key, value in headers:
        if key == b"content-length":
            text = value.strip()
            if not text.isdigit():
                raise HttpError(400, "Content-Length is not a number")
            length = int(text)
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            length = None
        elif key == b"content-encoding":
            name = value.strip().lower().decode("latin-1")
            if name in ("gzip", "x-gzip"):
                encoding = "gzip"
            elif name == "deflate":
                encoding = "deflate"
            elif name not in ("", "identity"):
                raise HttpError(415, f"Content-Encoding {name[:40]!r} is not supported (gzip, deflate or identity)")
    return BodyState(length, encoding)


def body_state(request: Request) -> BodyState:
    state = request.scope.get(SCOPE_KEY)
    return state if isinstance(state, BodyState) else BodyState(0, "", read=True)


async def read_body(request: Request, limits: HttpLimits, engine: Engine | None = None, *, json: bool = False) -> bytes:
    """The whole (decoded) body, at most limits.max_body_bytes of it, or an error naming why not.

    TooLargeError (413) as soon as the count passes the limit, before the rest arrives; HttpError 408
    when the body stalls for body_idle_timeout_s or is not all there after body_timeout_s. With the
    engine, the body is received as a gRPC message is: only in a slot of one of the engine's body gates (until
    then it waits with the sender: uvicorn stops reading a connection whose body is not being read), and
    its bytes count in the memory budget while they arrive (the engine charges the request from there).
    json: the body is JSON to parse, limited to limits.max_json_bytes (json_bodies).
    """
    state = body_state(request)
    if state.read:
        return b""
    if engine is None:
        return await _receive_body(request, limits, state, None, json)
    owner = owner_of(request)
    # A body that says it is small is received in a slot reserved for small ones: never behind large or slow
    # ones, which cannot take those slots.
    small = state.length is not None and state.length <= SMALL_BODY_BYTES
    if small and request.scope.get(BODY_COMPLETE_KEY):
        # It came with its headers and is in memory already: receiving it takes no turn (a caller on a fresh
        # connection per request is not queued behind slow senders).
        with engine.budget.lease(0, owner) as lease:
            return await _receive_body(request, limits, state, lease, json)
    gate = engine.small_body_gate if small else engine.body_gate
    async with gate.slot(owner):
        with engine.budget.lease(0, owner) as lease:
            try:
                return await _receive_body(request, limits, state, lease, json, gate)
            except HttpError as exc:
                if exc.status == 408:
                    gate.strike(owner)  # served after everyone else for a while, as a gRPC message that timed out
                raise


def _hopeless(limits: HttpLimits, state: BodyState, received: int, started: float, now: float, ends: float) -> str:
    """Why the body, at the rate it is arriving, should give up its slot to those waiting; "" if it should not.

    After RATE_GRACE_S: slower than limits.min_body_rate, or (with a Content-Length) too slow to be all there
    by its timeout.
    """
    elapsed = now - started
    if elapsed < RATE_GRACE_S:
        return ""
    rate = received / elapsed
    if rate < limits.min_body_rate:
        return f"{rate:.0f} B/s, under the {limits.min_body_rate} B/s the server requires while others wait"
    if state.length is not None and (state.length - received) > rate * (ends - now):
        return f"{rate:.0f} B/s, too slow for its {state.length} bytes to arrive within {limits.body_timeout_s:g}s"
    return ""


async def _receive_body(
    request: Request,
    limits: HttpLimits,
    state: BodyState,
    lease: Lease | None,
    json: bool,
    gate: ReadGate | None = None,
) -> bytes:
    limit = limits.max_json_bytes if json else limits.max_body_bytes
    decoder = _DECODERS[state.encoding]() if state.encoding else None
    chunks: list[bytes] = []
    size = 0
    received = 0  # on the wire (before decoding)
    started = last = time.monotonic()
    ends = started + limits.body_timeout_s
    try:
        while True:
            now = time.monotonic()
            wait = min(last + limits.body_idle_timeout_s, ends) - now
            if gate is not None:
                wait = min(wait, RATE_CHECK_S)  # wake to check the rate even when nothing arrives
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    message = await request.receive()
            except TimeoutError:
                now = time.monotonic()
                if now >= min(last + limits.body_idle_timeout_s, ends):
                    state.broken = True
                    raise HttpError(408, "the request body did not arrive in time") from None
                waiting = gate is not None and gate.waiting > 0
                why = _hopeless(limits, state, received, started, now, ends) if waiting else ""
                if why:
                    state.broken = True
                    raise HttpError(408, f"the request body is arriving at {why}; send it faster") from None
                continue
            last = time.monotonic()
            if message["type"] == "http.disconnect":
                raise HttpError(499, "the client went away before sending its body", kind=ErrorKind.CANCELLED)
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            received += len(chunk)
            if decoder is not None:
                # Never more out than the limit allows: a small compressed body cannot expand into a huge one.
                chunk = decoder.decompress(chunk, limit - size + 1)
                if decoder.unconsumed_tail:
                    size = limit + 1
                elif not more:
                    chunk += decoder.flush()
            size += len(chunk)
            if size > limit:
                state.broken = True
                if json:
                    raise json_bodies.too_large(None, limit)
                raise TooLargeError(f"request body is over the limit of {limit} bytes")
            if lease is not None:
                try:
                    lease.grow(len(chunk))
                except RequestError:
                    state.broken = True
                    raise
            chunks.append(chunk)
            if not more:
                break
            if gate is not None and gate.waiting:
                why = _hopeless(limits, state, received, started, last, ends)
                if why:
                    state.broken = True
                    raise HttpError(408, f"the request body is arriving at {why}; send it faster")
    except zlib.error as exc:
        raise InvalidInputError(f"request body: cannot {state.encoding}-decode it ({exc})") from None
    state.read = True
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_DECODERS: dict[str, Callable[[], Any]] = {
    "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "deflate": lambda: zlib.decompressobj(zlib.MAX_WBITS),
}


def owner_of(request: Request) -> str:
    """Who the request's work is charged to in the memory budget: its connection (client address and port)."""
    client = request.client
    return f"http:{client.host}:{client.port}" if client is not None else "http"
