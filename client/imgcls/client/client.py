"""The blocking Client, and the module imgcls.client takes its names from (AsyncClient is in imgcls.client.aio)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar, Unpack

import grpc
from google.protobuf import struct_pb2
from imgcls.client import _core
from imgcls.client.aio import AsyncClient
from imgcls.client.connection import CLIENT_TIMEOUT, _Options
from imgcls.client.connection import DEFAULT_MAX_MESSAGE_BYTES as DEFAULT_MAX_MESSAGE_BYTES
from imgcls.client.connection import DEFAULT_TARGET as DEFAULT_TARGET
from imgcls.client.connection import RETRY_POLICY as RETRY_POLICY
from imgcls.client.connection import channel_options as channel_options
from imgcls.client.connection import channel_target as channel_target
from imgcls.client.inputs import ImageLike
from imgcls.client.messages import ClassifyOptions, Frame, RequestOptions, call_options
from imgcls.client.messages import build_request as build_request
from imgcls.client.results import ClientError, Prediction, StreamResult, client_errors, stream_result
from imgcls.client.results import predictions as predictions
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc

T = TypeVar("T")


class Client(_Options):
    """Blocking client. ``classify`` one image -> [Prediction]; ``classify_batch`` several -> [[Prediction]].

    ``timeout`` (seconds, None: no deadline) applies to every unary call; each method takes its own
    ``timeout`` too. Streams have no deadline unless given one.
    """

    channel: grpc.Channel
    stub: pb_grpc.ImageClassifierServiceStub

    def _connect(self, options: list[tuple[str, Any]]) -> tuple[grpc.Channel, pb_grpc.ImageClassifierServiceStub]:
        if self.credentials is None:
            channel = grpc.insecure_channel(self.target, options=options)
        else:
            channel = grpc.secure_channel(self.target, self.credentials, options=options)
        return channel, pb_grpc.ImageClassifierServiceStub(channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()
        if self._probe is not None:
            self._probe.close()

    def _unary(self, call: _core.Unary[T], timeout: float | None) -> T:
        with client_errors():
            return call.result(self._send(call, timeout))

    def classify(
        self, image: ImageLike, *, request_id: str = "", **options: Unpack[ClassifyOptions]
    ) -> list[Prediction]:
        """One image's ranked predictions (the keywords: ClassifyOptions)."""
        ranking, timeout = call_options(options, CLIENT_TIMEOUT)
        return self._unary(_core.classify(image, ranking, request_id), timeout)

    def classify_batch(
        self, images: Sequence[ImageLike], *, request_id: str = "", **options: Unpack[ClassifyOptions]
    ) -> list[list[Prediction]]:
        """Several images in one request; one list of predictions per input, in order."""
        ranking, timeout = call_options(options, CLIENT_TIMEOUT)
        return self._unary(_core.classify_batch(images, ranking, request_id), timeout)

    def classify_request(
        self, request: pb.ClassifyRequest, *, timeout: float | None = CLIENT_TIMEOUT
    ) -> pb.ClassifyResponse:
        """A ClassifyRequest as it is (see build_request) -> the ClassifyResponse."""
        return self._unary(_core.classify_request(request), timeout)

    def classify_stream(
        self,
        frames: Iterable[ImageLike | pb.ClassifyStreamRequest],
        *,
        drop_stale: bool = False,
        **options: Unpack[ClassifyOptions],
    ) -> Iterator[StreamResult]:
        """Yield one StreamResult per frame, in order, as they come back.

        A frame that cannot be sent (a missing file, an unsupported value) or an exception of the frames
        iterator itself ends the stream: the frames before it are answered, then that exception is raised
        here, in the caller's thread. A keyword that is not an option is a TypeError here and now.
        """
        ranking, timeout = call_options(options, None)
        return self._stream(frames, ranking, drop_stale, timeout)

    def _stream(
        self, frames: Iterable[Frame], options: RequestOptions, drop_stale: bool, timeout: float | None
    ) -> Iterator[StreamResult]:
        stream = _core.Stream(options, drop_stale)
        with stream.errors():
            for response in self.stub.ClassifyStream(stream.messages(frames), timeout=timeout, metadata=self.metadata):
                yield stream_result(response)
        stream.finish()

    def list_models(self, *, timeout: float | None = CLIENT_TIMEOUT) -> list[pb.ModelInfo]:
        return self._unary(_core.list_models(), timeout)

    def get_model(self, name: str = "", *, timeout: float | None = CLIENT_TIMEOUT) -> pb.ModelInfo:
        return self._unary(_core.get_model(name), timeout)

    def health(self, service: str = "", *, timeout: float | None = CLIENT_TIMEOUT) -> bool:
        return self._unary(_core.health(service), timeout)


# The "name as name" imports above keep what callers imported from this module before it was split.
__all__ = ["AsyncClient", "ClassifyOptions", "Client", "ClientError", "Prediction", "StreamResult", "struct_pb2"]
