"""imgcls.v1 as JSON over HTTP: every unary method of ImageClassifierService, with the proto's JSON mapping.

    POST /v1/classify            ClassifyRequest  -> ClassifyResponse
    GET  /v1/models              ListModelsRequest -> ListModelsResponse
    GET  /v1/models/{name}       GetModelRequest  -> GetModelResponse

Bodies are parsed by protobuf's own JSON parser (json_format), so every field, enum name and encoding
(bytes as base64, int64 as strings) is exactly the mapping grpcurl and every protobuf runtime use;
answers are written with the .proto's field names and every field present (an index of 0 included).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from imgcls.server.domain.errors import InvalidInputError
from imgcls.server.domain.types import (
    Base64Image,
    ClassifyOptions,
    ClassifyRequest,
    EncodedImage,
    FunctionToApply,
    ImageInput,
    PixelFormat,
    Ranking,
    RawImage,
    TensorDType,
    TensorInput,
)
from imgcls.server.engine.description import ModelDescription, ModelStats
from imgcls.server.engine.engine import Engine
from imgcls.server.http.common import JSONResponse, answer_errors, deadline_of
from imgcls.server.http.guard import HttpLimits, read_body
from imgcls.v1 import classifier_pb2 as pb

PROTOCOL = "v1-http"


def router(engine: Engine, limits: HttpLimits) -> APIRouter:
    routes = APIRouter(tags=["imgcls.v1"])

    @routes.post(
        "/v1/classify",
        summary="Classify (imgcls.v1.ImageClassifierService/Classify as JSON)",
        openapi_extra=_json_body("imgcls.v1.ClassifyRequest in the proto's JSON mapping", _CLASSIFY_EXAMPLE),
        responses={200: {"description": "imgcls.v1.ClassifyResponse in the proto's JSON mapping"}},
    )
    @answer_errors(limits)
    async def classify(request: Request) -> JSONResponse:
        with engine.observe(PROTOCOL, "Classify", "") as call:
            deadline = deadline_of(request)
            message = parse(await read_body(request, limits), pb.ClassifyRequest())
            call.model = engine.model_label(message.model)
            call.request_id = message.request_id
            call.inputs = len(message.inputs)
            answer = await engine.classify(request_from_pb(message), deadline=deadline, call=call)
        response = pb.ClassifyResponse(
            request_id=message.request_id, model=answer.model, results=results_to_pb(answer.rankings)
        )
        return JSONResponse(to_json(response))

    @routes.get(
        "/v1/models",
        summary="ListModels (imgcls.v1.ImageClassifierService/ListModels as JSON)",
        responses={200: {"description": "imgcls.v1.ListModelsResponse in the proto's JSON mapping"}},
    )
    @answer_errors(limits)
    async def list_models(request: Request) -> JSONResponse:
        with engine.observe(PROTOCOL, "ListModels", ""):
            response = pb.ListModelsResponse(models=[_info(engine, name) for name in engine.models])
        return JSONResponse(to_json(response))

    @routes.get(
        "/v1/models/{name:path}",
        summary="GetModel (imgcls.v1.ImageClassifierService/GetModel as JSON)",
        responses={200: {"description": "imgcls.v1.GetModelResponse in the proto's JSON mapping"}},
    )
    @answer_errors(limits)
    async def get_model(name: str, request: Request) -> JSONResponse:
        with engine.observe(PROTOCOL, "GetModel", name):
            response = pb.GetModelResponse(model=_info(engine, name))
        return JSONResponse(to_json(response))

    return routes


def parse(body: bytes, message: Message) -> Any:
    try:
        return json_format.Parse(body, message)
    except json_format.ParseError as exc:
        raise InvalidInputError(f"{message.DESCRIPTOR.full_name}: {exc}") from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise InvalidInputError(f"{message.DESCRIPTOR.full_name}: not valid JSON ({type(exc).__name__})") from None


def to_json(message: Message) -> dict[str, Any]:
    """Every field, with the .proto's names, in the .proto's order (json_format puts unset fields last)."""
    return _in_proto_order(
        message.DESCRIPTOR,
        json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True),
    )


def _in_proto_order(descriptor: Any, value: dict[str, Any]) -> dict[str, Any]:
    ordered: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.name not in value:
            continue
        item = value[field.name]
        inner = field.message_type
        if inner is not None and not inner.GetOptions().map_entry and inner.full_name.startswith("imgcls."):
            if isinstance(item, list):
                item = [_in_proto_order(inner, element) for element in item]
            else:
                item = _in_proto_order(inner, item)
        ordered[field.name] = item
    return ordered


def _info(engine: Engine, name: str) -> pb.ModelInfo:
    model = engine.describe(name)
    return model_info_to_pb(model, engine.stats(name), is_default=model.name == engine.default_model)


def _json_body(description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": {"type": "object"}, "example": example}},
        }
    }


_CLASSIFY_EXAMPLE = {
    "model": "",
    "inputs": [{"image_base64": "<base64 of a JPEG, PNG, WebP, GIF, BMP or TIFF file, or a data: URL>"}],
    "parameters": {"top_k": 3, "function_to_apply": "FUNCTION_TO_APPLY_SOFTMAX"},
    "request_id": "42",
}


# -- imgcls.v1 messages <-> engine types -----------------------------------------------------------
# The same conversions as grpc/converters.py, which the HTTP door may not import (the layer contract keeps
# the doors independent). When those move below both doors, this section goes.

_FUNCTIONS = {
    pb.FUNCTION_TO_APPLY_UNSPECIFIED: None,
    pb.FUNCTION_TO_APPLY_SOFTMAX: FunctionToApply.SOFTMAX,
    pb.FUNCTION_TO_APPLY_SIGMOID: FunctionToApply.SIGMOID,
    pb.FUNCTION_TO_APPLY_NONE: FunctionToApply.NONE,
}
_FUNCTIONS_PB = {v: k for k, v in _FUNCTIONS.items() if v is not None}
_PIXEL_FORMATS = {
    pb.PIXEL_FORMAT_RGB8: PixelFormat.RGB8,
    pb.PIXEL_FORMAT_RGBA8: PixelFormat.RGBA8,
    pb.PIXEL_FORMAT_BGR8: PixelFormat.BGR8,
    pb.PIXEL_FORMAT_GRAY8: PixelFormat.GRAY8,
}
_DTYPES = {pb.DATA_TYPE_FLOAT32: TensorDType.FLOAT32, pb.DATA_TYPE_FLOAT16: TensorDType.FLOAT16}
_DTYPES_PB = {"float32": pb.DATA_TYPE_FLOAT32, "float16": pb.DATA_TYPE_FLOAT16}


def input_from_pb(message: pb.Input, index: int) -> ImageInput:
    kind = message.WhichOneof("kind")
    if kind == "image":
        return EncodedImage(message.image)
    if kind == "image_base64":
        return Base64Image(message.image_base64)
    if kind == "raw":
        raw = message.raw
        pixel_format = _PIXEL_FORMATS.get(raw.format)
        if pixel_format is None:
            raise InvalidInputError(
                f"inputs[{index}]: raw.format {raw.format} is not a known PixelFormat "
                "(PIXEL_FORMAT_RGB8, PIXEL_FORMAT_RGBA8, PIXEL_FORMAT_BGR8, PIXEL_FORMAT_GRAY8)"
            )
        return RawImage(raw.width, raw.height, pixel_format, raw.data)
    if kind == "tensor":
        tensor = message.tensor
        dtype = _DTYPES.get(tensor.dtype)
        if dtype is None:
            raise InvalidInputError(
                f"inputs[{index}]: tensor.dtype {tensor.dtype} is not DATA_TYPE_FLOAT32 or DATA_TYPE_FLOAT16"
            )
        return TensorInput(tuple(tensor.dims), dtype, tensor.raw_data, tensor.float_data)  # type: ignore[arg-type]
    raise InvalidInputError(f"inputs[{index}]: set one of image, image_base64, raw or tensor")


def options_from_pb(parameters: pb.Parameters) -> ClassifyOptions:
    if parameters.function_to_apply not in _FUNCTIONS:
        raise InvalidInputError(
            f"parameters.function_to_apply {parameters.function_to_apply} is not a known FunctionToApply"
        )
    return ClassifyOptions(
        top_k=parameters.top_k if parameters.HasField("top_k") else None,
        threshold=parameters.threshold if parameters.HasField("threshold") else None,
        function_to_apply=_FUNCTIONS[parameters.function_to_apply],
    )


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(struct)
    except ValueError:
        raise InvalidInputError("preprocessor_overrides: numbers must be finite") from None


def request_from_pb(request: pb.ClassifyRequest) -> ClassifyRequest:
    return ClassifyRequest(
        model=request.model,
        inputs=tuple(input_from_pb(item, i) for i, item in enumerate(request.inputs)),
        options=options_from_pb(request.parameters),
        request_id=request.request_id,
        preprocessor_overrides=struct_to_dict(request.preprocessor_overrides),
    )


def results_to_pb(rankings: list[Ranking]) -> list[pb.Result]:
    return [
        pb.Result(labels=[pb.Label(label=s.label, score=s.score, index=s.index) for s in ranking])
        for ranking in rankings
    ]


def model_info_to_pb(model: ModelDescription, stats: ModelStats, *, is_default: bool) -> pb.ModelInfo:
    info = pb.ModelInfo(
        name=model.name,
        source=model.source,
        variant=model.variant,
        input_name=model.input_name,
        input_shape=[-1 if d is None else d for d in model.input_shape],
        input_dtype=_DTYPES_PB.get(model.input_dtype, pb.DATA_TYPE_UNSPECIFIED),
        num_labels=model.num_labels,
        labels=list(model.labels),
        default_function_to_apply=_FUNCTIONS_PB[model.default_function],
        is_default=is_default,
        input_layout=model.layout,
        max_batch_size=model.batching.max_batch_size,
        ready=model.ready,
        stats=pb.ModelStats(
            requests=stats.requests,
            inputs=stats.inputs,
            batches=stats.batches,
            batch_size_counts=dict(stats.batch_size_counts),
            queue_time_us=int(stats.queue_time_s * 1e6),
            compute_time_us=int(stats.compute_time_s * 1e6),
            failed_requests=stats.failed_requests,
            dropped_inputs=stats.dropped_inputs,
        ),
    )
    info.preprocessing.update(model.preprocessing)
    return info
