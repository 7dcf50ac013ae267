"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``, Triton's superset).

Converts protobuf <-> the v2 core's dataclasses and calls the core. The messages are tritonclient's
generated stubs: the protocol's own package, file and field numbers, so Triton and KServe clients work
unchanged, and a process that imports tritonclient (tests, a client in the same process) sees one
definition of ``grpc_service.proto`` in protobuf's descriptor pool, not two that clash.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from imgcls.server.domain.errors import InvalidInputError, UnimplementedError, forget_frames
from imgcls.server.domain.types import MAX_TENSOR_RANK
from imgcls.server.engine.engine import MAX_REQUEST_ID_CHARS, Engine
from imgcls.server.engine.ordering import InOrder
from imgcls.server.grpc.servicer import deadline_of
from imgcls.server.grpc.status import status_of, translate_stream, translate_unary
from imgcls.server.v1.converters import check_input_count
from imgcls.server.v2 import (
    GRPC_EXTENSIONS,
    InferRequest,
    InferResponse,
    InputTensor,
    OpenInferenceCore,
    RequestedOutput,
)
from imgcls.server.v2.tensors import named
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

PROTOCOL = "v2-grpc"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

# The typed contents field each datatype travels in (FP16 and BF16 have none: raw_input_contents only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_from_pb(parameters: Any) -> dict[str, Any]:
    """map<string, InferParameter> as plain values."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def request_from_pb(request: pb.ModelInferRequest, max_inputs: int | None = None) -> InferRequest:
    """max_inputs: refuse more inputs (or raw entries) than that before converting any (Engine.input_bound);
    6 MB of empty inputs took seconds of the event loop to convert before the model's limit refused them."""
    check_input_count(len(request.inputs), max_inputs)
    check_input_count(len(request.raw_input_contents), max_inputs, "raw_input_contents entries")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries but the request has {len(request.inputs)} inputs "
            "(one entry per input, in order, or none)"
        )
    inputs = []
    for index, tensor in enumerate(request.inputs):
        # Counted in C before anything is converted: 60M packed dims, or 30M empty BYTES elements, became GBs of
        # Python objects.
        if len(tensor.shape) > MAX_TENSOR_RANK:
            raise InvalidInputError(
                f"{named(tensor.name)}: {len(tensor.shape)} dims, over the limit of {MAX_TENSOR_RANK}"
            )
        if max_inputs is not None and len(tensor.contents.bytes_contents) > max_inputs:
            raise InvalidInputError(
                f"{named(tensor.name)}: {len(tensor.contents.bytes_contents)} BYTES elements, over the limit of "
                f"{max_inputs} images"
            )
        has_contents = tensor.HasField("contents")
        if raw and has_contents:
            raise InvalidInputError(f"{named(tensor.name)}: has both raw_input_contents and contents; send one")
        data: Any = None
        if not raw:
            field = _CONTENTS_FIELD.get(tensor.datatype)
            if field is None and tensor.datatype in ("FP16", "BF16"):
                raise InvalidInputError(
                    f"{named(tensor.name)}: {tensor.datatype} values travel in raw_input_contents "
                    "(contents has no field for them)"
                )
            data = getattr(tensor.contents, field) if field is not None else []
        inputs.append(
            InputTensor(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=tuple(tensor.shape),
                raw=raw[index] if raw else None,
                data=data,
                parameters=parameters_from_pb(tensor.parameters),
            )
        )
    outputs = []
    for output in request.outputs:
        parameters = parameters_from_pb(output.parameters)
        outputs.append(RequestedOutput(output.name, parameters=parameters))
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        parameters=parameters_from_pb(request.parameters),
    )


def response_to_pb(response: InferResponse, *, typed: bool = False) -> pb.ModelInferResponse:
    """Outputs in raw_output_contents, as Triton answers; in typed contents when asked (``typed``: the request
    came in typed contents, e.g. from grpcurl) and every output has a typed field (FP32, BYTES; not FP16).
    """
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    typed = typed and all(o.datatype in ("FP32", "BYTES") for o in response.outputs)
    for output in response.outputs:
        tensor = message.outputs.add(name=output.name, datatype=output.datatype, shape=list(output.shape))
        if not typed:
            message.raw_output_contents.append(output.raw_bytes())
        elif isinstance(output.data, list):
            tensor.contents.bytes_contents.extend(output.data)
        else:
            tensor.contents.fp32_contents.extend(output.data.reshape(-1).tolist())
    return message


class OpenInferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService over the engine; RPCs imgcls does not implement answer UNIMPLEMENTED."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # Refuses a model set where some NAME_image is another model's name (ConfigError at start).
        self._core = OpenInferenceCore(engine, extensions=GRPC_EXTENSIONS)
        self._max_in_flight = engine.settings.stream_max_in_flight

    # -- health and metadata ---------------------------------------------------------
    # Live and ready answer during shutdown too (not ready then), so probes see the truth, not an error.
    @translate_unary
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self._core.server_live())

    @translate_unary
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._core.server_ready())

    @translate_unary
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ModelReadyResponse(ready=self._core.model_ready(request.name, request.version))

    @translate_unary
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        self._engine.admit()
        metadata = self._core.server_metadata()
        return pb.ServerMetadataResponse(
            name=metadata.name, version=metadata.version, extensions=list(metadata.extensions)
        )

    @translate_unary
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        self._engine.admit()
        metadata = self._core.model_metadata(request.name, request.version)

        def tensors(items: Any) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=list(t.shape))
                for t in items
            ]

        return pb.ModelMetadataResponse(
            name=metadata.name,
            versions=list(metadata.versions),
            platform=metadata.platform,
            inputs=tensors(metadata.inputs),
            outputs=tensors(metadata.outputs),
        )

    @translate_unary
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext) -> Any:
        self._engine.admit()
        config = json_format.ParseDict(
            self._core.model_config(request.name, request.version), model_config_pb2.ModelConfig()
        )
        return pb.ModelConfigResponse(config=config)

    @translate_unary
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext) -> Any:
        self._engine.admit()
        return json_format.ParseDict(
            self._core.model_statistics(request.name, request.version), pb.ModelStatisticsResponse()
        )

    # -- inference ---------------------------------------------------------------------
    @translate_unary
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        model = self._core.engine_model(request.model_name)
        owner = context.peer() or ""  # the connection: its fair share of the memory budget
        with self._engine.observe(PROTOCOL, "ModelInfer", model, request.id, len(request.inputs), owner=owner) as call:
            converted = request_from_pb(request, self._engine.input_bound)
            response = await self._core.infer(converted, deadline=deadline_of(context), call=call)
        return response_to_pb(response, typed=not request.raw_input_contents)

    @translate_stream
    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per request, in request order, carrying its id; a failed request is answered with
        its error_message (and its id) and the stream goes on. At most stream_max_in_flight requests are
        read and not yet answered: a sender that outpaces the server is held back by flow control.
        """
        owner = context.peer() or ""
        # Admission and the open-streams limit; each request is charged to the budget while it runs (engine.score).
        async with self._engine.admit_stream(owner):
            await context.send_initial_metadata(())
            order: InOrder[pb.ModelInferRequest, pb.ModelStreamInferResponse] = InOrder(
                self._max_in_flight, lambda request: asyncio.create_task(self._stream_one(request, owner))
            )
            async for answer in order.run(request_iterator):
                yield answer

    async def _stream_one(self, request: pb.ModelInferRequest, owner: str) -> pb.ModelStreamInferResponse:
        model = self._core.engine_model(request.model_name)
        method = "ModelStreamInfer"
        try:
            # The stream was admitted when it opened: its requests are served through the shutdown grace.
            with self._engine.observe(
                PROTOCOL, method, model, request.id, len(request.inputs), owner=owner, admit=False
            ) as call:
                response = await self._core.infer(request_from_pb(request, self._engine.input_bound), call=call)
            typed = not request.raw_input_contents
            return pb.ModelStreamInferResponse(infer_response=response_to_pb(response, typed=typed))
        except Exception as exc:
            _code, message = status_of(exc)  # a bug is logged here and answered with its type only
            forget_frames(exc)
        # The caller's own strings are echoed only when short: an answer must not carry a large value back.
        return pb.ModelStreamInferResponse(
            error_message=message,
            infer_response=pb.ModelInferResponse(
                model_name=_short(request.model_name),
                model_version=_short(request.model_version),
                id=_short(request.id),
            ),
        )


def _short(text: str) -> str:
    return text if len(text) <= MAX_REQUEST_ID_CHARS else ""


_IMPLEMENTED = {
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
}


def _unimplemented(method: str) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise UnimplementedError(f"{SERVICE_NAME}/{method} is not implemented by imgcls")

    handler.__name__ = handler.__qualname__ = method
    return translate_unary(handler)


# Every other RPC of the service (repository control, shared memory, trace and log settings): UNIMPLEMENTED
# naming itself. All of them are unary.
for _method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
    if _method.name not in _IMPLEMENTED:
        setattr(OpenInferenceServicer, _method.name, _unimplemented(_method.name))
