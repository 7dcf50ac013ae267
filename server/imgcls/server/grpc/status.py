"""Where error kinds become gRPC statuses (imgcls.v1's code numbers as grpc's enum), for unary and
streaming handlers alike."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from imgcls.server.domain.errors import ErrorKind, RequestError, forget_frames
from imgcls.server.v1.converters import RPC_CODE_OF_KIND

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")

# Messages are cut so an error never echoes a large input back.
MAX_MESSAGE_CHARS = 1000

_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
# imgcls.v1's mapping (google.rpc.Code numbers), as grpc's enum; every service on this door uses it.
STATUS_OF_KIND: dict[ErrorKind, grpc.StatusCode] = {
    kind: _STATUS_BY_NUMBER[number] for kind, number in RPC_CODE_OF_KIND.items()
}


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and message a call ending with exc is answered with; a bug is logged, its type only sent."""
    if isinstance(exc, RequestError):
        return STATUS_OF_KIND[exc.kind], exc.message[:MAX_MESSAGE_CHARS]
    log.exception("unexpected error while handling a request")
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


def translate_unary(
    handler: Callable[[Self, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    @functools.wraps(handler)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_of(exc)
            forget_frames(exc)
        # Outside the except block, without the request: grpc keeps the AbortError (and the frames in its
        # traceback) on the call in a reference cycle; see reads._or_abort.
        del request
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    return wrapper


def translate_stream(
    handler: Callable[[Self, Any, grpc.aio.ServicerContext], AsyncIterator[Resp]],
) -> Callable[[Self, Any, grpc.aio.ServicerContext], AsyncIterator[Resp]]:
    @functools.wraps(handler)
    async def wrapper(self: Self, request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Resp]:
        try:
            async for response in handler(self, request_iterator, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_of(exc)
            forget_frames(exc)
        else:
            return
        # Set, not raised with context.abort(): nothing of the stream is kept with the call (see
        # reads._or_abort), and grpc sends the status once the handler returns.
        context.set_code(code)
        context.set_details(message)

    return wrapper
