"""The imgcls.v1 gRPC servicer: converts protobuf <-> engine types and calls the engine. Nothing else."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
from imgcls.server.domain.errors import forget_frames
from imgcls.server.engine.engine import Engine
from imgcls.server.engine.streams import StreamFrame
from imgcls.server.grpc.status import translate_stream, translate_unary
from imgcls.server.v1 import converters
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc

PROTOCOL = "imgcls.v1"


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline on the monotonic clock the engine uses."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class ImageClassifierServicer(pb_grpc.ImageClassifierServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @translate_unary
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        with self._engine.observe(
            PROTOCOL, "Classify", request.model, request.request_id, len(request.inputs), owner=context.peer() or ""
        ) as call:
            domain = converters.request_from_pb(request, self._engine.input_bound)
            answer = await self._engine.classify(domain, deadline=deadline_of(context), call=call)
        return converters.response_to_pb(request.request_id, answer.model, answer.rankings)

    @translate_stream
    async def ClassifyStream(
        self,
        request_iterator: AsyncIterator[pb.ClassifyStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ClassifyStreamResponse]:
        async with self._engine.open_stream(PROTOCOL, owner=context.peer() or "") as stream:
            # Headers at once: the client waits for them before sending frames (see AsyncClient).
            await context.send_initial_metadata(())
            async for result in stream.run(_frames(request_iterator, self._engine.input_bound)):
                forget_frames(result.error)  # a frame's error is answered here: keep nothing it passed through
                yield converters.frame_result_to_pb(result)

    @translate_unary
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        self._engine.admit()
        return pb.ListModelsResponse(models=[self._info(name) for name in self._engine.models])

    @translate_unary
    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.GetModelResponse:
        self._engine.admit()
        return pb.GetModelResponse(model=self._info(request.name))

    def _info(self, name: str) -> pb.ModelInfo:
        model = self._engine.describe(name)
        return converters.model_info_to_pb(
            model, self._engine.stats(name), is_default=model.name == self._engine.default_model
        )


async def _frames(
    request_iterator: AsyncIterator[pb.ClassifyStreamRequest], max_inputs: int
) -> AsyncIterator[StreamFrame]:
    # No local keeps the message while the stream waits for the next one (it may be up to the message limit).
    messages = aiter(request_iterator)
    while True:
        try:
            frame = converters.frame_from_pb(await anext(messages), max_inputs)  # a bad frame carries its error
        except StopAsyncIteration:
            return
        yield frame
