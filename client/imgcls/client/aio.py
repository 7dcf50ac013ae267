"""AsyncClient: Client's calls on a grpc.aio channel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any, TypeVar, Unpack

import grpc
from imgcls.client import _core
from imgcls.client.connection import CLIENT_TIMEOUT, _Options
from imgcls.client.inputs import ImageLike
from imgcls.client.messages import ClassifyOptions, Frame, RequestOptions, call_options
from imgcls.client.results import Prediction, StreamResult, client_errors, stream_result
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc

T = TypeVar("T")


class AsyncClient(_Options):
    """The asyncio twin of Client: the same methods, as coroutines (classify_stream an async iterator)."""

    channel: grpc.aio.Channel
    stub: pb_grpc.ImageClassifierServiceAsyncStub

    def _connect(
        self, options: list[tuple[str, Any]]
    ) -> tuple[grpc.aio.Channel, pb_grpc.ImageClassifierServiceAsyncStub]:
        if self.credentials is None:
            channel = grpc.aio.insecure_channel(self.target, options=options)
        else:
            channel = grpc.aio.secure_channel(self.target, self.credentials, options=options)
        return channel, pb_grpc.ImageClassifierServiceStub(channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close(None)
        if self._probe is not None:
            await self._probe.close(None)

    async def _unary(self, call: _core.Unary[T], timeout: float | None) -> T:
        with client_errors():
            return call.result(await self._send(call, timeout))

    async def classify(
        self, image: ImageLike, *, request_id: str = "", **options: Unpack[ClassifyOptions]
    ) -> list[Prediction]:
        ranking, timeout = call_options(options, CLIENT_TIMEOUT)
        return await self._unary(_core.classify(image, ranking, request_id), timeout)

    async def classify_batch(
        self, images: Sequence[ImageLike], *, request_id: str = "", **options: Unpack[ClassifyOptions]
    ) -> list[list[Prediction]]:
        ranking, timeout = call_options(options, CLIENT_TIMEOUT)
        return await self._unary(_core.classify_batch(images, ranking, request_id), timeout)

    async def classify_request(
        self, request: pb.ClassifyRequest, *, timeout: float | None = CLIENT_TIMEOUT
    ) -> pb.ClassifyResponse:
        """A ClassifyRequest as it is (see build_request) -> the ClassifyResponse."""
        return await self._unary(_core.classify_request(request), timeout)

    def classify_stream(
        self,
        frames: AsyncIterable[ImageLike | pb.ClassifyStreamRequest] | Iterable[ImageLike | pb.ClassifyStreamRequest],
        *,
        drop_stale: bool = False,
        **options: Unpack[ClassifyOptions],
    ) -> AsyncIterator[StreamResult]:
        """Yield one StreamResult per frame, in order; a frame that cannot be sent ends the stream as in Client.

        An async iterator (``async for``); a keyword that is not an option is a TypeError when it is called.
        """
        ranking, timeout = call_options(options, None)
        return self._stream(frames, ranking, drop_stale, timeout)

    async def _stream(
        self,
        frames: AsyncIterable[Frame] | Iterable[Frame],
        options: RequestOptions,
        drop_stale: bool,
        timeout: float | None,
    ) -> AsyncIterator[StreamResult]:
        stream = _core.Stream(options, drop_stale)
        # grpc-stubs' aio stream call wants its request iterator up front and reads `object`; frames are
        # written to this one as they come, so it stays untyped.
        call: Any = self.stub.ClassifyStream(timeout=timeout, metadata=self.metadata)  # type: ignore[call-arg]
        writer = asyncio.ensure_future(_write(call, frames, stream))
        try:
            with stream.errors():
                while (response := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
                    yield stream_result(response)
                stream.finish(await call.code(), await call.details())
        finally:
            if not writer.done():
                writer.cancel()
                call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def list_models(self, *, timeout: float | None = CLIENT_TIMEOUT) -> list[pb.ModelInfo]:
        return await self._unary(_core.list_models(), timeout)

    async def get_model(self, name: str = "", *, timeout: float | None = CLIENT_TIMEOUT) -> pb.ModelInfo:
        return await self._unary(_core.get_model(name), timeout)

    async def health(self, service: str = "", *, timeout: float | None = CLIENT_TIMEOUT) -> bool:
        return await self._unary(_core.health(service), timeout)


async def _write(call: Any, frames: AsyncIterable[Frame] | Iterable[Frame], stream: _core.Stream) -> None:
    try:
        # The server sends its headers as soon as it accepts a stream; a refused stream
        # (auth, shutdown) gets its status instead. Writing before knowing races that status,
        # and grpc.aio then reports the failed write as INTERNAL (grpc/grpc#36066).
        await call.initial_metadata()
        if call.done():
            return
        async for frame in _aiter(frames):
            try:
                request = stream.message(frame)
            except Exception as exc:
                # The frames before it are answered, then the reader raises this.
                stream.failure = exc
                break
            await call.write(request)
        await call.done_writing()
    except (grpc.RpcError, asyncio.InvalidStateError):
        # The server ended the call (an error status, or shutdown) while frames were still
        # being written; the reader reports the call's real status, not this write's.
        return
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the caller's frames iterator failed: end the call, the reader raises it
        stream.failure = exc
        call.cancel()


async def _aiter(items: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
