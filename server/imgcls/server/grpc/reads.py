"""Bounded reads: every gRPC request message is received through the engine's admission, then parsed here.

grpc.aio would receive and parse a unary call's message before any handler or check runs, so a flood
of large (or slowly sent) messages would sit in memory uncounted. This interceptor gives every method a
handler that reads its messages as raw bytes itself:

- a unary message is received only once the engine's read gate gives the call a slot (fair across
  connections); until then its bytes stay with the sender (HTTP/2 flow control; the server's
  BDP probing is off so nothing is pulled in ahead of time);
- it must arrive within message_timeout_s, and be no larger than the method allows (image methods:
  the message limit; everything else, e.g. health, reflection, model metadata: SMALL_MESSAGE_BYTES);
- it is parsed only if the memory budget has room, and a message that is not valid protobuf (invalid
  UTF-8 in a string field included) is INVALID_ARGUMENT, not UNKNOWN;
- a stream's messages are received the same way, each in a slot of a gate of their own (streams idle
  between messages, and must not hold up unary calls): a stream asking for its next message lets the
  sender send up to the message limit, so how many may do so at once is bounded too; a stream that holds
  a slot without its message arriving while others wait is cut (RESOURCE_EXHAUSTED, see admission.py);
- messages are read with ``context.read()``, not through the request iterator: grpc's iterator is an
  async generator that keeps the last message it yielded alive until the call is torn down (measured:
  a burst of 12 MB requests left ~2.5x the memory budget alive, most of it messages already answered).

The original handler then runs as it would have, with the parsed message.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from imgcls.server.domain.errors import DeadlineExceededError, InvalidInputError, RequestError, TooLargeError
from imgcls.server.engine.admission import ReadGate
from imgcls.server.engine.engine import Engine
from imgcls.server.grpc.status import status_of
from imgcls.server.grpc.wire_cost import MAX_FIELDS, TooManyFields, parsed_cost

log = logging.getLogger(__name__)

# Methods that carry images or tensors may use the whole message limit; anything else is small.
SMALL_MESSAGE_BYTES = 64 * 1024
LARGE_METHODS = (
    "/imgcls.v1.ImageClassifierService/Classify",
    "/imgcls.v1.ImageClassifierService/ClassifyStream",
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelStreamInfer",
)

# Bounded handlers kept for reuse: far more than the methods registered (imgcls.v1, v2, health, reflection).
MAX_KEPT_METHODS = 256

# A stream may wait this long for its next message in a slot while other streams wait for one.
STREAM_PATIENCE_S = 5.0

Deserialize = Callable[[bytes], Any]
# What context.read() returns once the client has sent its last message (grpc-stubs does not declare it).
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


def stream_gate(engine: Engine, max_message_bytes: int) -> ReadGate:
    """Streams asking for their next message at once: each may be sent up to max_message_bytes, so as many as
    the unary gate has (a quarter of the memory budget at the message limit, at least 2). No cap per connection
    (one client may run several streams on one connection, idle in turns): a stream idle in its slot while
    another waits is cut instead."""
    slots = engine.read_gate.slots
    return ReadGate(
        slots,
        per_owner=slots,
        max_waiting=4 * engine.settings.max_streams,
        max_waiting_per_owner=engine.settings.max_calls_per_connection,
        patience_s=STREAM_PATIENCE_S,
    )


class BoundedReadInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, engine: Engine, *, max_message_bytes: int, message_timeout_s: float) -> None:
        self._engine = engine
        self._max_message_bytes = max_message_bytes
        self._timeout = message_timeout_s
        self.stream_gate = stream_gate(engine, max_message_bytes)
        # Per method: the handler found for it, and the bounded handler built around it once (not per call).
        # Only methods that resolved to a handler are kept: the registered ones, however many names callers send.
        self._bounded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method or ""
        known = self._bounded.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        limit = self._max_message_bytes if method in LARGE_METHODS else SMALL_MESSAGE_BYTES
        reader = _Reader(self._engine, self.stream_gate, method, limit, self._timeout, handler.request_deserializer)
        bounded = _bounded(handler, reader)
        if len(self._bounded) < MAX_KEPT_METHODS:
            self._bounded[method] = (handler, bounded)
        return bounded


class _Reader:
    def __init__(
        self,
        engine: Engine,
        streams: ReadGate,
        method: str,
        limit: int,
        timeout: float,
        deserialize: Deserialize | None,
    ) -> None:
        self._engine = engine
        self._streams = streams
        self._method = method
        self._limit = limit
        self._timeout = timeout
        self._deserialize = deserialize or (lambda raw: raw)
        # The request type, for the walk that says what its parse will hold (None: raw bytes, or not protobuf).
        message_class = getattr(deserialize, "__self__", None)
        self._descriptor = getattr(message_class, "DESCRIPTOR", None)

    async def one(self, context: grpc.aio.ServicerContext) -> Any:
        """The unary request: received in a read-gate slot, within the message timeout."""
        owner = context.peer() or ""
        gate = self._engine.read_gate
        async with gate.slot(owner) as ticket:
            try:
                async with asyncio.timeout(self._timeout):
                    raw = await context.read()
                ticket.nbytes = len(raw) if isinstance(raw, bytes) else 0
            except TimeoutError:
                gate.strike(owner)
                raise DeadlineExceededError(
                    f"the request message did not arrive within {self._timeout:g}s; send it faster or in parts"
                ) from None
        if raw is EOF:
            raise InvalidInputError("the call carried no request message")
        return self.parse(raw, owner)

    async def each(self, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """A stream's messages, each received in a slot of the stream gate, checked and parsed as it comes
        (a stream may idle between messages: no timeout, but see STREAM_PATIENCE_S).

        One that cannot be taken ends them, and the call ends with its status once the handler has answered
        what came before it (set, not raised: nothing of the stream is kept, see _or_abort)."""
        owner = context.peer() or ""
        while True:
            try:
                async with self._streams.slot(owner) as ticket:
                    raw = await context.read()
                    ticket.nbytes = len(raw) if isinstance(raw, bytes) else 0
                if raw is EOF:
                    return
                # Not charged to the budget here: the stream gate bounds how many are parsed at once, and a
                # frame the budget cannot take is answered on its own (RESOURCE_EXHAUSTED) by the stream, which
                # goes on.
                message = [self.parse(raw, None)]
                del raw
            except RequestError as exc:
                code, details = status_of(exc)
                break
            # Handed on, not kept by this frame: a generator's local would pin the last message (up to the
            # message limit) for as long as the stream waits for the next one.
            yield message.pop()
        context.set_code(code)
        context.set_details(details)

    def parse(self, raw: bytes, owner: str | None) -> Any:
        """The message, parsed; with an owner, only if the memory budget has room for it (refused at once)."""
        if len(raw) > self._limit:
            raise TooLargeError(
                f"request message of {len(raw)} bytes is over the limit of {self._limit} bytes for {self._method}"
            )
        parsed = len(raw)
        if self._descriptor is not None and len(raw) > SMALL_MESSAGE_BYTES:
            try:
                estimate = parsed_cost(raw, self._descriptor)
            except TooManyFields:
                raise InvalidInputError(
                    f"request message has more than {MAX_FIELDS} fields; no {self._method} request has that many"
                ) from None
            parsed = max(parsed, estimate or 0)
        if owner is None:
            return self._parse(raw)
        # The bytes and the parsed message are both in memory until the parse is done.
        with self._engine.budget.lease(len(raw) + parsed, owner):
            return self._parse(raw)

    def _parse(self, raw: bytes) -> Any:
        try:
            return self._deserialize(raw)
        except DecodeError:
            raise InvalidInputError(
                "request is not a valid protobuf message for "
                f"{self._method} (for example, a string field that is not valid UTF-8)"
            ) from None


def _bounded(original: grpc.RpcMethodHandler, reader: _Reader) -> grpc.RpcMethodHandler:
    handler: Any = original  # grpc-stubs types the behaviours as synchronous; these are grpc.aio's
    serializer = handler.response_serializer
    # The request is handed over in a list the handler's argument is popped from, so no frame here keeps it
    # (see _or_abort).
    if not handler.request_streaming and not handler.response_streaming:
        unary = handler.unary_unary

        async def unary_unary(raw_messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            request = [await _or_abort(reader.one(context), context)]
            return await unary(request.pop(), context)

        return grpc.stream_unary_rpc_method_handler(unary_unary, None, serializer)
    if not handler.request_streaming:
        streaming = handler.unary_stream
        if inspect.isasyncgenfunction(streaming):

            async def unary_stream_gen(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
                request = [await _or_abort(reader.one(context), context)]
                async for response in streaming(request.pop(), context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(unary_stream_gen, None, serializer)

        async def unary_stream(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            request = [await _or_abort(reader.one(context), context)]
            return await streaming(request.pop(), context)  # writes its responses through the context

        return grpc.stream_stream_rpc_method_handler(unary_stream, None, serializer)
    if not handler.response_streaming:
        client_streaming = handler.stream_unary

        async def stream_unary(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            return await client_streaming(reader.each(context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, None, serializer)
    both = handler.stream_stream
    if inspect.isasyncgenfunction(both):

        async def stream_stream_gen(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            async for response in both(reader.each(context), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream_gen, None, serializer)

    async def stream_stream(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        return await both(reader.each(context), context)

    return grpc.stream_stream_rpc_method_handler(stream_stream, None, serializer)


async def _or_abort(read: Awaitable[Any], context: grpc.aio.ServicerContext) -> Any:
    """The request, or the call ends with the status of why it could not be taken.

    context.abort() is called outside the except block, and no frame on the way holds the request: grpc keeps
    the AbortError it raises on the call, and with it the error's traceback and every frame in it (with their
    locals) in a reference cycle only the cycle collector frees. Raised inside the except block, it chained
    the request's own error and the frames holding the message; measured, a burst of refused 6 MB requests
    kept ~640 MB alive (3x the memory budget) until gc ran.
    """
    try:
        return await read
    except RequestError as exc:
        code, message = status_of(exc)
    await context.abort(code, message)
