"""The gRPC servicer: converts protobuf <-> domain types and calls the engine. Nothing else."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
from imgcls.server.domain.errors import UnavailableError
from imgcls.server.engine.engine import Engine
from imgcls.server.engine.streams import FrameResult, FrameStream, StreamFrame
from imgcls.server.grpc import converters
from imgcls.server.grpc.status import status_code_of, translate_stream, translate_unary
from imgcls.server.images.decoding import brief
from imgcls.server.metrics import Metrics
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc

log = logging.getLogger("imgcls.requests")


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


@dataclass(slots=True)
class _Call:
    """What a Classify call's metrics and log line report, filled in as the call goes."""

    model: str
    results: int = 0


class ImageClassifierServicer(pb_grpc.ImageClassifierServiceServicer):
    def __init__(self, engine: Engine, metrics: Metrics | None = None) -> None:
        self._engine = engine
        self._metrics = metrics
        self.active_streams = 0
        self._closing = False
        self.last_call_at = time.monotonic()

    def refuse_new_calls(self) -> None:
        """Shutdown has begun: every call that arrives from now on is answered UNAVAILABLE."""
        self._closing = True

    def _admit(self) -> None:
        self.last_call_at = time.monotonic()
        if self._closing:
            # UNAVAILABLE, not CANCELLED: clients and load balancers retry it on another replica.
            raise UnavailableError("server is shutting down; retry on another replica")

    def _model_label(self, name: str) -> str:
        # Only served names become metric labels: callers must not be able to grow the label set.
        if not name:
            return self._engine.default_model
        return name if name in self._engine.models else "_unknown"

    @contextlib.contextmanager
    def _observed(self, request: pb.ClassifyRequest) -> Iterator[_Call]:
        """Metrics and the debug line of one Classify call, with the status it is answered with."""
        call = _Call(model=request.model or self._engine.default_model)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield call
        except BaseException as exc:
            code = status_code_of(exc)
            raise
        finally:
            seconds = time.perf_counter() - started
            if self._metrics is not None:
                self._metrics.observe(self._model_label(request.model), "Classify", code, len(request.inputs), seconds)
            if log.isEnabledFor(logging.DEBUG):
                # brief(): ids and names come from callers and may be huge; never image bytes.
                log.debug(
                    "Classify request_id=%s model=%s inputs=%d results=%d status=%s %.1fms",
                    brief(request.request_id),
                    brief(call.model),
                    len(request.inputs),
                    call.results,
                    code.name,
                    seconds * 1e3,
                )

    @translate_unary
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        with self._observed(request) as call:
            self._admit()
            domain = converters.request_from_pb(request)
            call.model, rankings = await self._engine.classify(domain, _deadline(context))
            call.results = len(rankings)
        return converters.response_to_pb(request.request_id, call.model, rankings)

    @translate_stream
    async def ClassifyStream(
        self,
        request_iterator: AsyncIterator[pb.ClassifyStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ClassifyStreamResponse]:
        self._admit()
        # Headers at once: the client waits for them before sending frames (see AsyncClient).
        await context.send_initial_metadata(())
        self.active_streams += 1
        if self._metrics is not None:
            self._metrics.streams.inc()
        try:
            stream = FrameStream(self._engine, self._engine.settings.stream_max_in_flight)
            async for result in stream.run(self._frames(request_iterator)):
                self._observe_frame(result)
                yield converters.frame_result_to_pb(result)
        finally:
            self.active_streams -= 1
            if self._metrics is not None:
                self._metrics.streams.dec()

    def _observe_frame(self, result: FrameResult) -> None:
        code = result.error.status_code if result.error is not None else grpc.StatusCode.OK
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "ClassifyStream frame request_id=%s model=%s results=%d status=%s%s %.1fms",
                brief(result.request_id),
                brief(result.model),
                len(result.rankings),
                code.name,
                " skipped" if result.skipped else "",
                result.seconds * 1e3,
            )
        if self._metrics is None:
            return
        self._metrics.observe(
            self._model_label(result.model), "ClassifyStream", code, len(result.rankings), result.seconds
        )

    async def _frames(self, request_iterator: AsyncIterator[pb.ClassifyStreamRequest]) -> AsyncIterator[StreamFrame]:
        async for message in request_iterator:
            yield converters.frame_from_pb(message)  # a bad frame carries its error; the stream goes on

    @translate_unary
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        self._admit()
        default = self._engine.default_model
        return pb.ListModelsResponse(
            models=[converters.model_info_to_pb(m, is_default=m.name == default) for m in self._engine.models.values()]
        )

    @translate_unary
    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.GetModelResponse:
        self._admit()
        model = self._engine.get(request.name)
        return pb.GetModelResponse(
            model=converters.model_info_to_pb(model, is_default=model.name == self._engine.default_model)
        )
