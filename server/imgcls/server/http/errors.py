"""The one place where error kinds become HTTP statuses: every route and the guard answer errors here.

Bodies are ``{"error": "..."}``, as both the Hugging Face Inference API and the Open Inference Protocol
answer them. A bug is logged and answered 500 with its exception type only.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from imgcls.server.domain.errors import ErrorKind, RequestError
from starlette.responses import Response

log = logging.getLogger(__name__)

# Messages are cut so an error never echoes a large input back (as over gRPC).
MAX_MESSAGE_CHARS = 1000
# Seconds a refused caller should wait before retrying (queue full, budget full, shutting down).
RETRY_AFTER_S = 1

STATUS_OF_KIND: dict[ErrorKind, int] = {
    ErrorKind.INVALID_INPUT: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.OVERLOADED: 429,
    # nginx's "client closed request": nobody reads it, but metrics and logs see a distinct code.
    ErrorKind.CANCELLED: 499,
    ErrorKind.INTERNAL: 500,
    ErrorKind.UNIMPLEMENTED: 501,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.DEADLINE_EXCEEDED: 504,
}


class HttpError(RequestError):
    """An HTTP-only refusal with its own status (408 body timeout, 431 headers too large, 405, ...)."""

    def __init__(self, status: int, message: str, *, kind: ErrorKind = ErrorKind.INVALID_INPUT) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def status_and_message(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, HttpError):
        return exc.status, exc.message[:MAX_MESSAGE_CHARS]
    if isinstance(exc, RequestError):
        return STATUS_OF_KIND[exc.kind], exc.message[:MAX_MESSAGE_CHARS]
    log.error("unexpected error while handling an HTTP request", exc_info=exc)
    return 500, f"internal error: {type(exc).__name__}"


def error_headers(status: int, *, close: bool = False) -> dict[str, str]:
    headers: dict[str, str] = {}
    if status == 401:
        headers["www-authenticate"] = 'Bearer realm="imgcls"'
    if status in (429, 503):
        headers["retry-after"] = str(RETRY_AFTER_S)
    if close:
        # The request body was not read (or not all of it): the connection cannot carry another request.
        headers["connection"] = "close"
    return headers


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}, ensure_ascii=False, separators=(",", ":")).encode()


def error_response(exc: BaseException, *, close: bool = False) -> Response:
    status, message = status_and_message(exc)
    return Response(
        error_body(message),
        status_code=status,
        headers=error_headers(status, close=close),
        media_type="application/json",
    )


async def send_error(send: Any, status: int, message: str, *, close: bool = False) -> None:
    """An error straight onto an ASGI send (for the guard, before any route runs)."""
    body = error_body(message[:MAX_MESSAGE_CHARS])
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in error_headers(status, close=close).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
