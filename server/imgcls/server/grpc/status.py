"""The one place where errors become gRPC statuses, for unary and streaming handlers alike."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from imgcls.server.domain.errors import ImgclsError

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")

# Messages are cut so an error never echoes a large input back.
MAX_MESSAGE_CHARS = 1000


def status_code_of(exc: BaseException) -> grpc.StatusCode:
    """The status a call ending with exc is answered with (what metrics and logs record)."""
    if isinstance(exc, ImgclsError):
        return exc.status_code
    if isinstance(exc, GeneratorExit | asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def _status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ImgclsError):
        return exc.status_code, exc.message[:MAX_MESSAGE_CHARS]
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
            code, message = _status_of(exc)
            await context.abort(code, message)
            raise  # unreachable: abort raises

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
            code, message = _status_of(exc)
            await context.abort(code, message)

    return wrapper
