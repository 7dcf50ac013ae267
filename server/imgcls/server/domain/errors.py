"""One exception hierarchy for the whole server, with protocol-neutral kinds.

A request error carries an ``ErrorKind``; each front door maps kinds to its own status codes in
one place (gRPC: ``imgcls.server.grpc.status``). Start-up errors (a model that cannot load, a bad
configuration) are never answered to a caller and carry no kind. Anything that is not an
``ImgclsError`` is a bug: it is logged and answered as internal, with the exception type only.
"""

from __future__ import annotations

import asyncio
import enum
import traceback


class ErrorKind(enum.Enum):
    """Why a request failed, in words every protocol can map to its own codes."""

    INVALID_INPUT = "invalid_input"
    NOT_FOUND = "not_found"
    # The queue or the memory budget is full: retry later (gRPC RESOURCE_EXHAUSTED, HTTP 429).
    OVERLOADED = "overloaded"
    # The request itself is over a size limit (gRPC RESOURCE_EXHAUSTED, HTTP 413).
    TOO_LARGE = "too_large"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    # Shutting down, or the model stopped: retry on another replica.
    UNAVAILABLE = "unavailable"
    UNAUTHENTICATED = "unauthenticated"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"


class ImgclsError(Exception):
    """Base of every error the server raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RequestError(ImgclsError):
    """A request is answered with this error; its kind decides the status code."""

    kind: ErrorKind = ErrorKind.INTERNAL


class InvalidInputError(RequestError):
    """The caller sent something that cannot be classified (bad image, tensor or parameter)."""

    kind = ErrorKind.INVALID_INPUT


class ModelNotFoundError(RequestError):
    """The request names a model this server does not serve."""

    kind = ErrorKind.NOT_FOUND


class OverloadedError(RequestError):
    """The model's queue or the server's memory budget is full; the caller should back off and retry."""

    kind = ErrorKind.OVERLOADED


# The name the batcher and older code use for the queue-full case.
QueueFullError = OverloadedError


class TooLargeError(RequestError):
    """The request is over a size limit; sending it again will not help."""

    kind = ErrorKind.TOO_LARGE


class DeadlineExceededError(RequestError):
    """The caller's deadline passed before its inputs could run."""

    kind = ErrorKind.DEADLINE_EXCEEDED


class UnavailableError(RequestError):
    """The model or server cannot take work now (shutting down, batcher stopped)."""

    kind = ErrorKind.UNAVAILABLE


class UnauthenticatedError(RequestError):
    """The call carries no valid token."""

    kind = ErrorKind.UNAUTHENTICATED


class UnimplementedError(RequestError):
    """The protocol has this method, and imgcls does not implement it."""

    kind = ErrorKind.UNIMPLEMENTED


class InferenceError(RequestError):
    """ONNX Runtime failed while running a batch, or a bug was answered with its type only."""

    kind = ErrorKind.INTERNAL


class StartupError(ImgclsError):
    """The server cannot start; never answered to a caller."""


class ModelLoadError(StartupError):
    """A model could not be found, downloaded or loaded at start-up."""


class ConfigError(StartupError):
    """The server's configuration is invalid."""


def kind_of(exc: BaseException) -> ErrorKind:
    """The kind a request ending with exc is answered (and observed) with."""
    if isinstance(exc, RequestError):
        return exc.kind
    if isinstance(exc, GeneratorExit | asyncio.CancelledError):
        return ErrorKind.CANCELLED
    return ErrorKind.INTERNAL


def forget_frames(error: BaseException | None) -> None:
    """Clear the locals of every finished frame an answered error (and the errors it chains) passed through.

    An error raised from a frame that also holds it (``results = gather(...); raise results[i]``) is a
    reference cycle with that frame, and through its locals with the request's data, which only the cycle
    collector frees: measured, a flood of undecodable 20 MB images kept ~600 MB alive until gc ran. Once
    answered, the frames are not needed (a logged traceback keeps its file and line numbers).
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)  # skips frames still running
        error = error.__cause__ or error.__context__
