"""One exception hierarchy for the whole server.

Each error carries the gRPC status it is answered with; the gRPC layer
translates them in one place (``imgcls.server.grpc.status``). Anything that is
not an ``ImgclsError`` is a bug: it is logged and answered as INTERNAL.
"""

from __future__ import annotations

from grpc import StatusCode


class ImgclsError(Exception):
    """Base of every error the server answers on purpose."""

    status_code: StatusCode = StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(ImgclsError):
    """The caller sent something that cannot be classified (bad image, tensor or parameter)."""

    status_code = StatusCode.INVALID_ARGUMENT


class ModelNotFoundError(ImgclsError):
    """The request names a model this server does not serve."""

    status_code = StatusCode.NOT_FOUND


class QueueFullError(ImgclsError):
    """The model's queue is at its limit; the caller should back off and retry."""

    status_code = StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(ImgclsError):
    """The caller's deadline passed before its inputs could run."""

    status_code = StatusCode.DEADLINE_EXCEEDED


class UnavailableError(ImgclsError):
    """The model or server cannot take work now (shutting down, batcher stopped)."""

    status_code = StatusCode.UNAVAILABLE


class InferenceError(ImgclsError):
    """ONNX Runtime failed while running a batch."""

    status_code = StatusCode.INTERNAL


class ModelLoadError(ImgclsError):
    """A model could not be found, downloaded or loaded at start-up."""

    status_code = StatusCode.FAILED_PRECONDITION


class ConfigError(ImgclsError):
    """The server's configuration is invalid."""

    status_code = StatusCode.INVALID_ARGUMENT
