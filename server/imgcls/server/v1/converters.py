"""imgcls.v1 protobuf messages <-> engine types, for every door that speaks imgcls.v1 (gRPC, JSON over HTTP)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2
from imgcls.server.domain.errors import ErrorKind, InvalidInputError, RequestError
from imgcls.server.domain.types import (
    MAX_TENSOR_RANK,
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
from imgcls.server.engine.engine import MAX_REQUEST_ID_CHARS
from imgcls.server.engine.streams import FrameResult, StreamFrame
from imgcls.v1 import classifier_pb2 as pb

T = TypeVar("T")

# A preprocessor_overrides Struct's encoded size at most: image_mean and a dozen settings take a few hundred
# bytes.
MAX_OVERRIDES_BYTES = 16 * 1024

# The one mapping of error kinds to status codes for imgcls.v1: google.rpc.Code numbers, as the gRPC door
# answers calls with and as a stream frame's status carries them.
RPC_CODE_OF_KIND: dict[ErrorKind, int] = {
    ErrorKind.INVALID_INPUT: 3,  # INVALID_ARGUMENT
    ErrorKind.NOT_FOUND: 5,  # NOT_FOUND
    ErrorKind.OVERLOADED: 8,  # RESOURCE_EXHAUSTED
    ErrorKind.TOO_LARGE: 8,  # RESOURCE_EXHAUSTED
    ErrorKind.DEADLINE_EXCEEDED: 4,  # DEADLINE_EXCEEDED
    ErrorKind.CANCELLED: 1,  # CANCELLED
    ErrorKind.UNAVAILABLE: 14,  # UNAVAILABLE
    ErrorKind.UNAUTHENTICATED: 16,  # UNAUTHENTICATED
    ErrorKind.UNIMPLEMENTED: 12,  # UNIMPLEMENTED
    ErrorKind.INTERNAL: 13,  # INTERNAL
}


def code_number(error: RequestError) -> int:
    return RPC_CODE_OF_KIND[error.kind]


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
        if len(tensor.dims) > MAX_TENSOR_RANK:  # counted in C: 60M packed dims became 2 GB of Python ints
            raise InvalidInputError(
                f"inputs[{index}]: tensor: {len(tensor.dims)} dims, over the limit of {MAX_TENSOR_RANK}"
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
    if not struct.fields:  # most requests: nothing to convert (MessageToDict costs ~10 us even then)
        return {}
    # Measured in C before MessageToDict, which is Python and takes seconds for a Struct of a million values.
    if struct.ByteSize() > MAX_OVERRIDES_BYTES:
        raise InvalidInputError(
            f"preprocessor_overrides is {struct.ByteSize()} bytes, over the limit of {MAX_OVERRIDES_BYTES}; an "
            "image processor has a few settings"
        )
    try:
        return json_format.MessageToDict(struct)
    except ValueError:  # a binary Struct can carry NaN or Inf, which JSON (and the overrides) cannot
        raise InvalidInputError("preprocessor_overrides: numbers must be finite") from None


def check_input_count(count: int, max_inputs: int | None, what: str = "inputs") -> None:
    """Before any input is converted: a message of millions of empty inputs (2 bytes each) took seconds of the
    event loop to convert before the model's limit refused it."""
    if max_inputs is not None and count > max_inputs:
        raise InvalidInputError(f"request has {count} {what}, over the limit of {max_inputs}")


def request_from_pb(request: pb.ClassifyRequest, max_inputs: int | None = None) -> ClassifyRequest:
    """max_inputs: refuse more inputs than that before converting any (Engine.input_bound)."""
    check_input_count(len(request.inputs), max_inputs)
    return ClassifyRequest(
        model=request.model,
        inputs=tuple(input_from_pb(item, i) for i, item in enumerate(request.inputs)),
        options=options_from_pb(request.parameters),
        request_id=request.request_id,
        preprocessor_overrides=struct_to_dict(request.preprocessor_overrides),
    )


def frame_from_pb(request: pb.ClassifyStreamRequest, max_inputs: int | None = None) -> StreamFrame:
    """One stream message; never raises. A message that cannot be converted carries its first error
    (the frame is answered with it and the stream goes on), and its valid stream-level settings still
    count: a first frame with a bad input sets the stream's parameters all the same.
    max_inputs: as request_from_pb's.
    """
    error: InvalidInputError | None = None

    def attempt(convert: Callable[[], T]) -> T | None:
        nonlocal error
        try:
            return convert()
        except InvalidInputError as exc:
            error = error or exc
            return None

    request_id = request.request_id
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        # The frame is answered INVALID_ARGUMENT without it: an answer must not echo a large value back.
        error = InvalidInputError(f"request_id: {len(request_id)} characters, over the limit of {MAX_REQUEST_ID_CHARS}")
        request_id = ""
    attempt(lambda: check_input_count(len(request.inputs), max_inputs))
    inputs = None if error else attempt(lambda: tuple(input_from_pb(item, i) for i, item in enumerate(request.inputs)))
    options = attempt(lambda: options_from_pb(request.parameters)) if request.HasField("parameters") else None
    overrides = (
        attempt(lambda: struct_to_dict(request.preprocessor_overrides))
        if request.HasField("preprocessor_overrides")
        else None
    )
    return StreamFrame(
        inputs=inputs or (),
        request_id=request_id,
        model=request.model,
        options=options,
        overrides=overrides,
        drop_stale=request.drop_stale,
        error=error,
    )


def results_to_pb(rankings: list[Ranking]) -> list[pb.Result]:
    return [
        pb.Result(labels=[pb.Label(label=s.label, score=s.score, index=s.index) for s in ranking])
        for ranking in rankings
    ]


def response_to_pb(request_id: str, model: str, rankings: list[Ranking]) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(request_id=request_id, model=model, results=results_to_pb(rankings))


def frame_result_to_pb(result: FrameResult) -> pb.ClassifyStreamResponse:
    response = pb.ClassifyStreamResponse(request_id=result.request_id, model=result.model, skipped=result.skipped)
    if result.error is not None:
        response.status.code = code_number(result.error)
        response.status.message = result.error.message
    else:
        response.results.extend(results_to_pb(result.rankings))
    return response


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
