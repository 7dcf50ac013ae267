"""The calls of both clients without their transport: which RPC, what it is sent, what becomes of the answer.

Client and AsyncClient differ only in how they wait: each one hands these to its channel, blocking or
awaiting, so that requests, options, errors and the assembly of stream results are written once.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imgcls.client.inputs import ImageLike
from imgcls.client.messages import Frame, RequestOptions, frame_request, with_defaults
from imgcls.client.results import ClientError, Prediction, batch_predictions, client_error
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc

T = TypeVar("T")


class Stubs(NamedTuple):
    """The services a client calls, over one channel (blocking or asyncio: the stubs take either)."""

    classifier: pb_grpc.ImageClassifierServiceStub
    health: health_pb2_grpc.HealthStub


@dataclass(frozen=True, slots=True)
class Unary(Generic[T]):
    """One unary call: the stub method it goes to, its request, and what its response is turned into."""

    method: Callable[[Stubs], Any]
    request: Message
    result: Callable[[Any], T]


_CLASSIFY = operator.attrgetter("classifier.Classify")


def classify(image: ImageLike, options: RequestOptions, request_id: str) -> Unary[list[Prediction]]:
    return Unary(_CLASSIFY, options.request([image], request_id), lambda response: batch_predictions(response)[0])


def classify_batch(
    images: Sequence[ImageLike], options: RequestOptions, request_id: str
) -> Unary[list[list[Prediction]]]:
    return Unary(_CLASSIFY, options.request(images, request_id), batch_predictions)


def classify_request(request: pb.ClassifyRequest) -> Unary[pb.ClassifyResponse]:
    return Unary(_CLASSIFY, request, lambda response: response)


def list_models() -> Unary[list[pb.ModelInfo]]:
    return Unary(operator.attrgetter("classifier.ListModels"), pb.ListModelsRequest(), lambda r: list(r.models))


def get_model(name: str) -> Unary[pb.ModelInfo]:
    return Unary(operator.attrgetter("classifier.GetModel"), pb.GetModelRequest(name=name), lambda r: r.model)


def health(service: str) -> Unary[bool]:
    return Unary(
        operator.attrgetter("health.Check"),
        health_pb2.HealthCheckRequest(service=service),
        lambda r: bool(r.status == health_pb2.HealthCheckResponse.SERVING),
    )


class Stream:
    """One classify_stream call's frames: numbered, the first carrying the stream's defaults.

    A frame that cannot be sent, or a failing frames iterator, ends the stream; the exception is kept
    here and raised to the caller once the frames before it are answered.
    """

    def __init__(self, options: RequestOptions, drop_stale: bool) -> None:
        self._defaults = options.stream_defaults(drop_stale)
        self._sent = 0
        self.failure: Exception | None = None

    def message(self, frame: Frame) -> pb.ClassifyStreamRequest:
        request = frame_request(frame, self._sent)
        if self._sent == 0:
            request = with_defaults(request, self._defaults)
        self._sent += 1
        return request

    def messages(self, frames: Iterable[Frame]) -> Iterator[pb.ClassifyStreamRequest]:
        # gRPC iterates this on a thread of its own, where an exception would only be logged and the
        # call failed as UNKNOWN "Exception iterating requests!": keep it and end the stream instead.
        try:
            for frame in frames:
                yield self.message(frame)
        except Exception as exc:
            self.failure = exc

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """A failed call as ClientError; failed or cancelled because a frame failed, as that frame's exception."""
        try:
            yield
        except grpc.RpcError as exc:
            raise self.failure or client_error(exc) from None
        except asyncio.CancelledError:
            # AsyncClient's writer cancels the call when the frames iterator fails: its exception, not this.
            if self.failure is not None:
                raise self.failure from None
            raise

    def finish(self, code: grpc.StatusCode = grpc.StatusCode.OK, details: str | None = "") -> None:
        """The end of a stream that was not refused: the kept failure first, then the call's status."""
        if self.failure is not None:
            raise self.failure
        if code != grpc.StatusCode.OK:
            raise ClientError(code, details or "")
